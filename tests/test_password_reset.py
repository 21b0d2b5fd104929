"""Password reset end to end against a real SMTP server: the mail's link, the page, the new password, the sessions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import PASSWORD, AppFactory
from tests.launcher import HOST, Isolation, ServerProcess, server_env, wait_ready
from tests.mail import Inbox, html_of, link_in, mail_settings, smtp, text_of, token_in
from tests.realtime import expect_close, ready
from tidings.documents import EmailToken
from tidings.documents.clock import utcnow
from tidings.server.services.email_tokens import token_hash

__all__ = ["smtp"]

API = "/api/v1"
NEW_PASSWORD = "a brand new password"
ORIGIN = "http://tidings.test"


async def request_reset(client: TestClient[Any, Any], email: str) -> tuple[int, Any]:
    response = await client.post(f"{API}/auth/password-reset", json={"email": email})
    return response.status, await response.json()


async def confirm(client: TestClient[Any, Any], token: str, password: str = NEW_PASSWORD) -> Any:
    return await client.post(f"{API}/auth/password-reset/confirm", json={"token": token, "password": password})


async def assert_invalid_token(client: TestClient[Any, Any], token: str) -> None:
    response = await confirm(client, token)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "invalid_token"


async def test_reset_from_the_mail_to_the_new_password(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    user = await accounts.user()
    assert await request_reset(client, user.email) == (202, (await request_reset(client, "nobody@example.com"))[1])
    mail = await smtp.next_to(user.email, after=1)  # the first is the verification mail of the registration
    assert mail["Subject"] == "Reset your tidings password"
    assert "/reset-password?token=" in text_of(mail) and "/reset-password?token=" in html_of(mail)
    assert PASSWORD not in text_of(mail)

    page = await client.get(link_in(mail))  # what the browser opens
    assert page.status == 200
    html = await page.text()
    assert "<script" not in html and 'action="/reset-password"' in html and token_in(mail) in html
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]

    done = await client.post(
        "/reset-password",
        data={"token": token_in(mail), "password": NEW_PASSWORD, "password_again": NEW_PASSWORD},
    )
    assert done.status == 200, await done.text()
    assert "Password changed" in await done.text()

    # Old tokens are dead; the new password works; the user is told in the app and by mail.
    assert (await client.get(f"{API}/users/me", headers=user.headers)).status == 401
    refreshed = await client.post(f"{API}/auth/refresh", json={"refresh_token": user.refresh_token})
    assert refreshed.status == 401
    assert (await client.post(f"{API}/auth/login", json={"email": user.email, "password": PASSWORD})).status == 401
    tokens = await accounts.login(user.email, NEW_PASSWORD)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    listed = await (await client.get(f"{API}/notifications", headers=headers)).json()
    assert [n["title"] for n in listed["items"]] == ["Your password was reset"]
    told = await smtp.next_to(user.email, after=2)
    assert told["Subject"] == "Your tidings password was changed"
    # The link worked once.
    await assert_invalid_token(client, token_in(mail))


async def test_confirm_through_the_api_answers_204(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    user = await accounts.user()
    await request_reset(client, user.email)
    mail = await smtp.next_to(user.email, after=1)
    short = await confirm(client, token_in(mail), password="short")
    assert short.status == 422  # the normal password rules; the token is not spent by a refused body
    response = await confirm(client, token_in(mail))
    assert response.status == 204, await response.text()
    await accounts.login(user.email, NEW_PASSWORD)


@pytest.mark.parametrize("token", ["", "x", "not-a-token-at-all", "a" * 43, "é" * 10, "a" * 201])
async def test_malformed_and_unknown_tokens_are_invalid(token: str, smtp: Inbox, make_client: AppFactory) -> None:
    client, _, _ = await make_client(**mail_settings(smtp))
    response = await confirm(client, token)
    assert response.status in (400, 422)
    if response.status == 400:
        assert (await response.json())["error"]["code"] == "invalid_token"
    else:  # empty or over-long: refused by the schema before any lookup
        assert token in ("", "a" * 201)


async def test_expired_superseded_and_changed_password_tokens_are_invalid(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    user = await accounts.user()

    # Superseded: a newer reset ends the older link.
    await request_reset(client, user.email)
    first = token_in(await smtp.next_to(user.email, after=1))
    await request_reset(client, user.email)
    second = token_in(await smtp.next_to(user.email, after=2))
    await assert_invalid_token(client, first)

    # The password changed by another route: the pending link is dead.
    changed = await client.patch(
        f"{API}/users/me",
        json={"password": "changed by hand", "current_password": PASSWORD},
        headers=user.headers,
    )
    assert changed.status == 200, await changed.text()
    await assert_invalid_token(client, second)

    # Expired: its time has passed (moved into the past in the database rather than waited for).
    await request_reset(client, user.email)
    third = token_in(await smtp.next_to(user.email, after=3))
    stored = await EmailToken.get(token_hash(third))
    assert stored is not None
    await stored.set({EmailToken.expires_at: utcnow()})
    await assert_invalid_token(client, third)


async def test_no_enumeration(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    real = await accounts.user()
    inactive = await accounts.user()
    admin = await accounts.user(admin=True)
    response = await client.patch(f"{API}/users/{inactive.id}", json={"is_active": False}, headers=admin.headers)
    assert response.status == 200
    answers = [await request_reset(client, email) for email in (real.email, inactive.email, "nobody@example.com")]
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 202
    await smtp.next_to(real.email, after=1)  # the real account's link came
    # Only the real account got one: the jobs of the other two ran too (they were queued before it).
    assert len(smtp.to(inactive.email)) == 1 and not smtp.to("nobody@example.com")


async def test_rate_limits_per_email_and_per_address(smtp: Inbox, make_client: AppFactory) -> None:
    client, _, _ = await make_client(**mail_settings(smtp, password_reset_per_email=2, password_reset_per_address=4))
    assert [(await request_reset(client, "one@example.com"))[0] for _ in range(3)] == [202, 202, 429]
    response = await client.post(f"{API}/auth/password-reset", json={"email": "ONE@example.com"})
    assert response.status == 429 and int(response.headers["Retry-After"]) > 0
    assert (await response.json())["error"]["code"] == "rate_limited"
    # Per address: 4 an hour, whatever the email (4 counted so far).
    response = await client.post(f"{API}/auth/password-reset", json={"email": "two@example.com"})
    assert response.status == 429


async def test_a_reset_through_one_process_closes_sockets_on_both(smtp: Inbox, tmp_path: Path) -> None:
    """Two real `tidings serve` processes: the user's sockets on each close, and their tokens stop working."""
    isolation = Isolation.new("test", "reset")
    env = server_env(
        isolation,
        jwt_secret="reset-test-secret-" + "r" * 40,
        origins=ORIGIN,
        SMTP_HOST=HOST,
        SMTP_PORT=str(smtp.port),
        SMTP_SECURITY="none",
    )
    a, b = ServerProcess("A", env, tmp_path), ServerProcess("B", env, tmp_path)
    try:
        a.start()
        b.start()
        await asyncio.to_thread(wait_ready, a, b)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            body = {"email": "two-processes@example.com", "username": "two_processes", "password": PASSWORD}
            async with session.post(f"{a.url}{API}/auth/register", json=body) as response:
                assert response.status == 201, await response.text()
            login = {"email": body["email"], "password": PASSWORD}
            async with session.post(f"{b.url}{API}/auth/login", json=login) as response:
                headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
            ws_headers = {**headers, "Origin": ORIGIN}
            async with (
                session.ws_connect(f"{a.url}{API}/ws", headers=ws_headers) as on_a,
                session.ws_connect(f"{b.url}{API}/ws", headers=ws_headers) as on_b,
            ):
                await ready(on_a)
                await ready(on_b)
                async with session.post(f"{a.url}{API}/auth/password-reset", json={"email": body["email"]}) as r:
                    assert r.status == 202
                mail = await smtp.next_to(body["email"], after=1)
                form = {"token": token_in(mail), "password": NEW_PASSWORD, "password_again": NEW_PASSWORD}
                async with session.get(f"{b.url}{link_in(mail)}") as page:
                    assert page.status == 200
                async with session.post(f"{b.url}/reset-password", data=form) as done:
                    assert done.status == 200, await done.text()
                await expect_close(on_a, 4401, skip={"notification"})
                await expect_close(on_b, 4401, skip={"notification"})
            async with session.get(f"{a.url}{API}/users/me", headers=headers) as response:
                assert response.status == 401
            async with session.post(f"{a.url}{API}/auth/login", json={**login, "password": NEW_PASSWORD}) as r:
                assert r.status == 200
    finally:
        for server in (a, b):
            server.stop()
        await isolation.adrop()
