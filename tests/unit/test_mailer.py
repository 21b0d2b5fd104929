"""Mail rendering: a text and an HTML part from templates/email/, autoescaped HTML; logged without SMTP_HOST."""

from __future__ import annotations

import logging

import pytest

from tidings.server.adapters.mailer import Mailer
from tidings.server.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def mailer(**overrides: object) -> Mailer:
    return Mailer(Settings(jwt_secret="x" * 40, **overrides))  # type: ignore[arg-type]


def test_both_parts_are_rendered_and_the_html_is_escaped() -> None:
    mail = mailer().render(
        "password_reset",
        to="a@example.com",
        subject="Reset",
        context={"user": "<script>alert(1)</script>", "link": "http://x/reset-password?token=a&b", "minutes": 60},
    )
    assert "<script>alert(1)</script>" in mail.text  # plain text is not HTML
    assert "&lt;script&gt;" in mail.html and "<script>" not in mail.html
    assert 'href="http://x/reset-password?token=a&amp;b"' in mail.html
    message = mailer().message(mail)
    assert message.get_body(preferencelist=("plain",)) is not None
    assert message.get_body(preferencelist=("html",)) is not None
    assert message["To"] == "a@example.com" and message["Subject"] == "Reset"


async def test_without_smtp_host_development_logs_the_message_with_its_links(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidings")
    sender = mailer(environment="development")
    mail = sender.render(
        "verify_email",
        to="a@example.com",
        subject="Confirm",
        context={"user": "a", "link": "http://x/v?t=1", "change": False},
    )
    await sender.deliver(mail)
    assert any("http://x/v?t=1" in record.getMessage() for record in caplog.records)


def test_production_without_smtp_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    mailer(environment="production").warn_if_unsent()
    assert any("no email will be sent" in record.getMessage() for record in caplog.records)
    caplog.clear()
    mailer(environment="production", smtp_host="smtp.example.com").warn_if_unsent()
    assert not caplog.records


def test_mail_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SMTP_HOST": "smtp.example.com",
            "SMTP_PORT": "465",
            "SMTP_SECURITY": "TLS",
            "PUBLIC_URL": "https://tidings.example/",
            "DIGEST_AFTER": "1.5",
            "RUN_WORKER": "0",
            "REQUIRE_VERIFIED_EMAIL": "yes",
        }
    )
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_security) == ("smtp.example.com", 465, "tls")
    assert settings.public_url == "https://tidings.example"
    assert (settings.digest_after, settings.run_worker, settings.require_verified_email) == (1.5, False, True)
    with pytest.raises(SettingsError, match="SMTP_SECURITY"):
        Settings.from_env({"SMTP_SECURITY": "ssl"})
