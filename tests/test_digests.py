"""Unread digests against a real SMTP server: sent once, never with read notifications, never after unsubscribing."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Account, Accounts, AppFactory
from tests.mail import Inbox, eventually, html_of, mail_settings, smtp, text_of, token_in
from tidings.server.keys import digests_key
from tidings.server.services.digests import UNSUBSCRIBE_TOKEN_TTL

__all__ = ["smtp"]

API = "/api/v1"
DIGEST = {"digest_after": 1.5, "digest_check_interval": 0.3, "digest_interval": 0.5}


def digests_to(smtp: Inbox, address: str) -> list[Any]:
    return [m for m in smtp.to(address) if "unread notification" in str(m["Subject"])]


async def verified(client: TestClient[Any, Any], accounts: Accounts, smtp: Inbox) -> Account:
    user = await accounts.user()
    mail = await smtp.next_to(user.email)
    response = await client.post(f"{API}/auth/verify-email", json={"token": token_in(mail)})
    assert response.status == 204
    return user


async def send(client: TestClient[Any, Any], admin: Account, title: str, **to: Any) -> dict[str, Any]:
    response = await client.post(
        f"{API}/notifications", json={"title": title, "body": "b", **to}, headers=admin.headers
    )
    assert response.status == 201, await response.text()
    sent: dict[str, Any] = (await response.json())["notifications"][0]
    return sent


async def digest_runs(caplog: pytest.LogCaptureFixture, more: int) -> None:
    """Wait until the digest job has run `more` more times (its runs are logged; there is no other event)."""

    def runs() -> int:
        return sum(
            1
            for r in caplog.records
            if r.getMessage() == "periodic job ran" and r.__dict__.get("job") == "send_digests"
        )

    target = runs() + more

    async def done() -> bool:
        return runs() >= target

    await eventually(done)


async def test_a_digest_lists_only_what_is_still_unread_and_comes_once(
    smtp: Inbox, make_client: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Each unread notification is in exactly one digest; read ones in none. (Sends that fall due on either side
    of a check go in two digests, DIGEST_INTERVAL apart: the test's interval is short, and it counts lines.)"""
    caplog.set_level(logging.INFO, logger="tidings")
    client, accounts, _ = await make_client(**mail_settings(smtp, **DIGEST))
    admin = await accounts.user(admin=True)
    user = await verified(client, accounts, smtp)
    unverified = await accounts.user()
    read = await send(client, admin, "Read at once", user_ids=[user.id])
    await send(client, admin, "Left unread", user_ids=[user.id, unverified.id])
    read_broadcast = await send(client, admin, "A broadcast read", broadcast=True)
    await send(client, admin, "A broadcast left unread", broadcast=True)
    for notification in (read, read_broadcast):
        response = await client.post(f"{API}/notifications/{notification['id']}/read", headers=user.headers)
        assert response.status == 204

    def listed(mails: list[Any]) -> list[str]:
        return [line for mail in mails for line in text_of(mail).splitlines() if line.startswith("- ")]

    def both(_: Any) -> list[Any]:
        mails = digests_to(smtp, user.email)
        lines = " ".join(listed(mails))
        return mails if "Left unread" in lines and "A broadcast left unread" in lines else []

    digests = await smtp.wait_for(both)
    await digest_runs(caplog, 8)  # more checks, well past DIGEST_AFTER and DIGEST_INTERVAL: nothing new to send
    digests = digests_to(smtp, user.email)
    lines = listed(digests)
    assert sorted(line.split(" (")[0] for line in lines) == ["- A broadcast left unread", "- Left unread"]
    mail = digests[0]
    text = text_of(mail)
    assert "Left unread" in html_of(mail) or "A broadcast left unread" in html_of(mail)
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Unsubscribe"].startswith("<http://127.0.0.1:8080/email/unsubscribe?token=")
    assert "http://127.0.0.1:8080/" in text
    assert digests_to(smtp, unverified.email) == []  # only verified addresses


async def test_one_click_unsubscribe_stops_digests(
    smtp: Inbox, make_client: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings")
    client, accounts, _ = await make_client(**mail_settings(smtp, **DIGEST))
    admin = await accounts.user(admin=True)
    user = await verified(client, accounts, smtp)
    await send(client, admin, "First", user_ids=[user.id])
    [mail] = await smtp.wait_for(lambda _: digests_to(smtp, user.email))
    url = mail["List-Unsubscribe"].strip("<>")
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]

    scanned = await client.get(path)  # a scanner's GET changes nothing
    assert scanned.status == 200 and "<script" not in await scanned.text()
    assert (await (await client.get(f"{API}/users/me", headers=user.headers)).json())["email_digest"] is True
    # RFC 8058: the mail client POSTs List-Unsubscribe=One-Click to the URL, without any login.
    response = await client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status == 200
    assert (await (await client.get(f"{API}/users/me", headers=user.headers)).json())["email_digest"] is False

    await send(client, admin, "Second", user_ids=[user.id])
    await digest_runs(caplog, 8)  # well past DIGEST_AFTER and DIGEST_INTERVAL
    assert len(digests_to(smtp, user.email)) == 1

    forged = await client.post(path.replace("token=", "token=0"), data={"List-Unsubscribe": "One-Click"})
    assert forged.status == 400
    # A link past its life (mails carry no long-lived token) is refused the same way.
    old = client.app[digests_key].unsubscribe_token(user.id, now=time.time() - UNSUBSCRIBE_TOKEN_TTL - 1)
    expired = await client.post("/email/unsubscribe", params={"token": old}, data={"List-Unsubscribe": "One-Click"})
    assert expired.status == 400


async def test_opting_out_through_patch_me(smtp: Inbox, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(**mail_settings(smtp))
    user = await accounts.user()
    response = await client.patch(f"{API}/users/me", json={"email_digest": False}, headers=user.headers)
    assert response.status == 200 and (await response.json())["email_digest"] is False
    response = await client.patch(f"{API}/users/me", json={"email_digest": "no"}, headers=user.headers)
    assert response.status == 422
