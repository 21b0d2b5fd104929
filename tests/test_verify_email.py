"""Verified addresses: the registration's mail, a link scanner's GETs, the confirmation, resend, and email changes."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import PASSWORD, Account, AppFactory
from tests.mail import Inbox, link_in, mail_settings, smtp, text_of, token_in

__all__ = ["smtp"]

API = "/api/v1"


async def me(client: TestClient[Any, Any], user: Account) -> dict[str, Any]:
    response = await client.get(f"{API}/users/me", headers=user.headers)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def verify(client: TestClient[Any, Any], token: str) -> Any:
    return await client.post(f"{API}/auth/verify-email", json={"token": token})


async def test_registration_mails_a_link_that_only_a_post_spends(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    user = await accounts.user()
    assert (await me(client, user))["email_verified"] is False
    mail = await smtp.next_to(user.email)
    assert mail["Subject"] == "Confirm your email address for tidings"
    assert mail.get_body(preferencelist=("html",)) is not None

    # A mail client's link scanner opens the link, twice: a page with a button, nothing spent.
    for _ in range(2):
        page = await client.get(link_in(mail))
        assert page.status == 200
        html = await page.text()
        assert 'action="/verify-email"' in html and "<script" not in html
        assert page.headers["Referrer-Policy"] == "no-referrer"
    assert (await me(client, user))["email_verified"] is False

    response = await verify(client, token_in(mail))
    assert response.status == 204, await response.text()
    assert (await me(client, user))["email_verified"] is True
    again = await verify(client, token_in(mail))
    assert again.status == 400 and (await again.json())["error"]["code"] == "invalid_token"


async def test_the_pages_button_confirms(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    user = await accounts.user()
    mail = await smtp.next_to(user.email)
    done = await client.post("/verify-email", data={"token": token_in(mail)})
    assert done.status == 200, await done.text()
    assert (await me(client, user))["email_verified"] is True
    used = await client.post("/verify-email", data={"token": token_in(mail)})
    assert used.status == 400


async def test_invalid_verification_tokens(smtp: Inbox, make_client: AppFactory) -> None:
    client, _, _ = await make_client(**mail_settings(smtp))
    for token in ("nope", "a" * 43):
        response = await verify(client, token)
        assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_token"


async def test_require_verified_email_refuses_login_until_confirmed(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp, require_verified_email=True))
    user = await accounts.register()
    response = await client.post(f"{API}/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "email_not_verified"
    mail = await smtp.next_to(user["email"])
    assert (await verify(client, token_in(mail))).status == 204
    await accounts.login(user["email"])


async def test_resend_is_rate_limited(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp, verify_email_resend_per_hour=1))
    user = await accounts.user()
    await smtp.next_to(user.email)
    response = await client.post(f"{API}/auth/verify-email/resend", headers=user.headers)
    assert response.status == 202
    second = await smtp.next_to(user.email, after=1)
    assert (await verify(client, token_in(second))).status == 204
    response = await client.post(f"{API}/auth/verify-email/resend", headers=user.headers)
    assert response.status == 429 and "Retry-After" in response.headers


async def test_email_change_waits_for_the_new_address(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    user = await accounts.user()
    new_email = "moved-" + user.email
    response = await client.patch(
        f"{API}/users/me", json={"email": new_email, "current_password": PASSWORD}, headers=user.headers
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert (body["email"], body["pending_email"]) == (user.email, new_email)

    confirmation = await smtp.next_to(new_email)
    notice = await smtp.next_to(user.email, after=1)  # after the registration's verification mail
    assert "/verify-email?token=" in text_of(confirmation)
    assert new_email in text_of(notice) and "token=" not in text_of(notice)
    await accounts.login(user.email)  # the old address works until the new one confirms

    assert (await verify(client, token_in(confirmation))).status == 204
    after = await me(client, user)
    assert (after["email"], after["pending_email"], after["email_verified"]) == (new_email, None, True)
    await accounts.login(new_email)
    failed = await client.post(f"{API}/auth/login", json={"email": user.email, "password": PASSWORD})
    assert failed.status == 401
    told = await smtp.next_to(user.email, after=2)
    assert told["Subject"] == "Your tidings email address was changed"


async def test_an_address_taken_meanwhile_is_409_at_confirmation(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    user = await accounts.user()
    wanted = "wanted-" + user.email
    response = await client.patch(
        f"{API}/users/me", json={"email": wanted, "current_password": PASSWORD}, headers=user.headers
    )
    assert response.status == 200
    confirmation = await smtp.next_to(wanted)
    await accounts.register(email=wanted.upper())  # another account takes it first
    response = await verify(client, token_in(confirmation))
    assert response.status == 409, await response.text()
    assert (await response.json())["error"]["details"] == {"field": "email"}
    assert (await me(client, user))["email"] == user.email


async def test_an_admins_change_applies_at_once_and_is_audited(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    admin, user = await accounts.user(admin=True), await accounts.user()
    new_email = "set-by-admin-" + user.email
    response = await client.patch(f"{API}/users/{user.id}", json={"email": new_email}, headers=admin.headers)
    assert response.status == 200
    body = await response.json()
    assert (body["email"], body["pending_email"], body["email_verified"]) == (new_email, None, False)
    await accounts.login(new_email)
    from tidings.documents import AuditEntry

    entries = await AuditEntry.find({"action": "user.updated"}).to_list()
    assert any(entry.details.get("changes") == {"email": new_email} for entry in entries)
