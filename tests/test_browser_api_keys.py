"""The panel's API keys page in headless Chromium against a real `tidings serve` process: a key made there is shown
once and works, and revoking one asks for a confirmation that names it.

The browser, the server and the first admin are tests/test_browser.py's fixtures (one of each for this module)."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, expect

from tests import test_browser as shared
from tests.live_server import LiveServer
from tests.test_browser import Person, admin_login, flash, new_user, open_page

pytestmark = pytest.mark.asyncio(loop_scope="module")

browser, server, admin, contexts = shared.browser, shared.server, shared.admin, shared.contexts

KEY = re.compile(r"^tdg_[A-Za-z0-9_-]{43}$")


async def send_with(server: LiveServer, key: str, user_id: str) -> int:
    """POST /api/v1/notifications with the key; the status."""
    body = {"title": "From a backend", "body": "b", "user_ids": [user_id]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/api/v1/notifications", json=body, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        return r.status


async def test_a_key_is_shown_once_and_revoked_after_a_confirmation(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"keyed_{uuid.uuid4().hex[:6]}")
    watched = await open_page(browser, contexts)
    page = watched.page
    await admin_login(watched, server, admin)
    await page.get_by_role("link", name="API keys").click()
    await expect(page).to_have_url(f"{server.url}/admin/api-keys")
    await expect(page.get_by_role("heading", level=1)).to_have_text("API keys")

    # A form error keeps what was typed and says what to do.
    name = f"billing-{uuid.uuid4().hex[:6]}"
    await page.get_by_label("Name").fill(name)
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_role("alert")).to_have_text("Choose at least one scope.")
    await expect(page.get_by_label("Name")).to_have_value(name)

    await page.get_by_label("notifications:send").check()
    await page.get_by_role("button", name="Create key").click()
    shown = page.locator("[data-secret]")
    await expect(shown).to_have_text(KEY)
    secret = (await shown.text_content() or "").strip()
    row = page.locator("tbody tr").filter(has_text=name)
    await expect(row.locator('[data-label="Key"]')).to_have_text(f"tdg_{secret[4:12]}…")
    assert await send_with(server, secret, user.id) == 201

    # Never again: not on the page once it is opened anew.
    await page.goto(f"{server.url}/admin/api-keys")
    await expect(row).to_have_count(1)
    assert secret not in await page.content()
    assert secret[12:] not in await page.content()

    # The panel's log of sends names the key as the sender.
    await page.get_by_role("link", name="Notifications").click()
    sent = page.locator("tbody tr").filter(has_text="From a backend").first
    await expect(sent.locator('[data-label="By"]')).to_have_text(f"API key {name}")
    await page.get_by_role("link", name="API keys").click()

    # Revoking asks first, naming the key; Cancel changes nothing.
    await row.get_by_role("link", name="Revoke…").click()
    await expect(page).to_have_url(re.compile(r"/admin/api-keys/[0-9a-f]{24}/revoke$"))
    await expect(page.get_by_role("heading", name=f"Revoke {name}?")).to_be_visible()
    await page.get_by_role("link", name="Cancel").click()
    await expect(page).to_have_url(f"{server.url}/admin/api-keys")
    await expect(row.locator('[data-label="Status"]')).to_contain_text("active")

    await row.get_by_role("link", name="Revoke…").click()
    await page.get_by_role("button", name=f"Revoke {name}").click()
    await expect(page).to_have_url(f"{server.url}/admin/api-keys")
    await flash(page, f"The API key {name} ({secret[4:12]}…) was revoked: it is refused from its next request.")
    await expect(row.locator('[data-label="Status"]')).to_contain_text("revoked")
    assert await send_with(server, secret, "0" * 24) == 401

    # Both are in the audit log, by this admin.
    await page.goto(f"{server.url}/admin/audit?target={name}")
    rows = page.locator("tbody tr")
    await expect(rows.filter(has_text="api_key.created").filter(has_text=admin.email)).to_have_count(1)
    await expect(rows.filter(has_text="api_key.revoked").filter(has_text=admin.email)).to_have_count(1)
    assert secret not in await page.content()
    watched.assert_clean("status of 422")  # the form without a scope
