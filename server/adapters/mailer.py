"""Email: messages rendered from templates/email/ (a text and an HTML part each), delivered over SMTP (aiosmtplib).

Only jobs deliver (server/services/outbox.py enqueues): a request never waits on SMTP, and a refused delivery is
retried. Without SMTP_HOST a message is written to the log instead (development and tests), links included, so
that a reset link can be followed from `make run`'s output; production warns at start-up that no mail is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2

from tidings.server.settings import Settings

log = logging.getLogger(__name__)

# templates/ is a sibling of server/ in the repository and under tidings/ in site-packages.
EMAIL_TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "email"


class MailError(Exception):
    """The SMTP server refused the message or could not be reached: the job retries."""


@dataclass(frozen=True)
class Mail:
    """One message, ready to send; its fields are what a job stores."""

    to: str
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)

    def as_job(self) -> dict[str, Any]:
        return {"to": self.to, "subject": self.subject, "text": self.text, "html": self.html, "headers": self.headers}


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(EMAIL_TEMPLATES),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )

    def render(
        self, template: str, *, to: str, subject: str, context: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Mail:
        """`template`.txt and `template`.html under templates/email/, with the same context (and `subject`)."""
        values = {**context, "subject": subject, "public_url": self.settings.public_url}
        return Mail(
            to=to,
            subject=subject,
            text=self._env.get_template(f"{template}.txt").render(values),
            html=self._env.get_template(f"{template}.html").render(values),
            headers=dict(headers or {}),
        )

    def message(self, mail: Mail) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self.settings.mail_from.rpartition("@")[2].strip("> ") or None)
        message["Auto-Submitted"] = "auto-generated"
        for name, value in mail.headers.items():
            message[name] = value
        message.set_content(mail.text)
        message.add_alternative(mail.html, subtype="html")
        return message

    def warn_if_unsent(self) -> None:
        """At start-up: production without SMTP_HOST sends nothing, and says so."""
        if self.settings.smtp_host is None and self.settings.environment == "production":
            log.warning("SMTP_HOST is not set: no email will be sent (password resets, verification, digests)")

    async def deliver(self, mail: Mail) -> None:
        """Send now (from a job). Raises MailError when the server refuses or cannot be reached."""
        settings = self.settings
        if settings.smtp_host is None:
            if settings.environment == "production":
                log.warning("mail not sent: SMTP_HOST is not set", extra={"subject": mail.subject})
                return
            # Development: the whole text part, links included, for a newcomer to follow.
            log.info("mail (SMTP_HOST is not set, so it is only logged)\nTo: %s\nSubject: %s\n\n%s", mail.to,
                     mail.subject, mail.text)  # fmt: skip
            return
        try:
            await aiosmtplib.send(
                self.message(mail),
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=settings.smtp_password,
                use_tls=settings.smtp_security == "tls",
                start_tls=settings.smtp_security == "starttls",
                timeout=settings.smtp_timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise MailError(f"SMTP delivery failed: {type(exc).__name__}: {exc}") from exc
