"""The admin panel in headless Chromium (Debian's, driven by Playwright) against a real `tidings serve` process:
deleting a user, setting a password, the audit log's filters, plurals and phone widths.

The browser, the server and the first admin are tests/test_browser.py's fixtures (one of each for this module)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, expect

from tests import test_browser as shared
from tests.live_server import LiveServer
from tests.test_browser import (
    ADMIN_PASSWORD,
    SCREENSHOTS,
    Person,
    Watched,
    admin_login,
    flash,
    live_login,
    new_user,
    open_page,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

# tests/test_browser.py's fixtures, for this module: the browser, one server process (with its database) and its
# first admin for the module, and the browser contexts a test opens.
browser, server, admin, contexts = shared.browser, shared.server, shared.admin, shared.contexts

PHONE: ViewportSize = {"width": 375, "height": 800}
NEW_PASSWORD = "a brand new pass phrase"


async def another_admin(server: LiveServer, name: str) -> Person:
    """An admin of the test's own, so that what the log shows of them is only the test's doing."""
    unique = uuid.uuid4().hex[:6]
    person = Person(f"{name}-{unique}@example.com", f"{name}_{unique}", ADMIN_PASSWORD)
    await server.create_admin(person.email, person.username, person.password)
    return person


async def api_token(page: Page, server: LiveServer, person: Person, password: str | None = None) -> str | None:
    """An access token for `person` from the API's login, or None when it refuses the password."""
    login = await page.request.post(
        f"{server.url}/api/v1/auth/login", data={"email": person.email, "password": password or person.password}
    )
    if login.status == 401:
        return None
    assert login.status == 200, await login.text()
    token: str = (await login.json())["access_token"]
    return token


# First in the module: while it runs, the module's server has one admin.
async def test_counts_take_the_right_noun(
    browser: Browser,
    contexts: list[BrowserContext],
    server: LiveServer,
    admin: Person,
) -> None:
    user = await new_user(server, f"una_{uuid.uuid4().hex[:6]}")
    watched = await open_page(browser, contexts)
    page = watched.page
    await admin_login(watched, server, admin)
    admins = page.locator('[data-stat="users.admins"]')
    await expect(admins).to_have_text("1")
    await expect(page.locator('[data-noun="users.admins"]')).to_have_text("admin")
    # A second admin: the dashboard's script updates the count and its noun together.
    await another_admin(server, "second")
    await expect(admins).to_have_text("2")
    await expect(page.locator('[data-noun="users.admins"]')).to_have_text("admins")

    await page.get_by_role("link", name="Notifications").click()
    await page.get_by_label("Users (emails or usernames").fill(user.email)
    await page.get_by_label("Title").fill("Just for you")
    await page.get_by_role("button", name="Preview").click()
    await expect(page.get_by_role("heading", name="Preview: to 1 user")).to_have_text("Preview: to 1 user")
    await page.get_by_role("button", name="Send", exact=True).click()
    await flash(page, "Notification sent to 1 user.")
    await expect(page.locator("tbody tr").filter(has_text="Just for you").locator('[data-label="To"]')).to_have_text(
        "1 user"
    )
    assert "(s)" not in (await page.text_content("main") or "")
    watched.assert_clean()


async def test_delete_a_user_after_a_confirmation_that_names_them(
    browser: Browser,
    contexts: list[BrowserContext],
    server: LiveServer,
    admin: Person,
) -> None:
    user = await new_user(server, f"gone_{uuid.uuid4().hex[:6]}", "Gone Soon")
    watched = await open_page(browser, contexts)
    page = watched.page
    await admin_login(watched, server, admin)
    await page.goto(f"{server.url}/admin/users/{user.id}")
    await page.get_by_role("link", name="Delete user…").click()
    await expect(page).to_have_url(f"{server.url}/admin/users/{user.id}/delete")
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Delete {user.email}?")
    await expect(page.locator("main")).to_contain_text(user.username)
    # Cancel goes back, and nothing happened.
    await page.get_by_role("link", name="Cancel").click()
    await expect(page).to_have_url(f"{server.url}/admin/users/{user.id}")
    await expect(page.get_by_role("heading", name="Gone Soon")).to_be_visible()

    await page.get_by_role("link", name="Delete user…").click()
    await page.get_by_role("button", name=f"Delete {user.email}").click()
    await expect(page).to_have_url(f"{server.url}/admin/users")
    await flash(page, f"{user.email} was deleted.")
    await expect(page.get_by_role("link", name=user.email)).to_have_count(0)
    assert await api_token(page, server, user) is None
    response = await page.goto(f"{server.url}/admin/users/{user.id}")
    assert response is not None and response.status == 404
    await expect(page.locator("main")).to_contain_text("There is no such user.")

    # The log has it, by whom; "History of this account" kept the deleted user's entries.
    await page.goto(f"{server.url}/admin/audit?target={user.email}")
    rows = page.locator("tbody tr")
    await expect(rows.filter(has_text="user.deleted").filter(has_text=admin.email)).to_have_count(1)
    await expect(rows.filter(has_text="user.registered")).to_have_count(1)

    # An admin may delete their own account while other admins remain: the panel then closes to them.
    me = await another_admin(server, "leaving")
    other = await open_page(browser, contexts)
    await admin_login(other, server, me)
    await other.page.goto(f"{server.url}/admin/users?q={me.username}")
    await other.page.get_by_role("link", name=me.email).click()
    await other.page.get_by_role("link", name="Delete user…").click()
    await other.page.get_by_role("button", name=f"Delete {me.email}").click()
    await expect(other.page).to_have_url(re.compile(r"/admin/login\?next="))
    watched.assert_clean("status of 404")
    other.assert_clean()


async def test_set_a_password_then_log_in_with_it(
    browser: Browser,
    contexts: list[BrowserContext],
    server: LiveServer,
    admin: Person,
) -> None:
    user = await new_user(server, f"pat_{uuid.uuid4().hex[:6]}")
    panel = await open_page(browser, contexts)
    live = await open_page(browser, contexts)
    page = panel.page
    await admin_login(panel, server, admin)
    await live.page.goto(f"{server.url}/")
    await live_login(live, user)

    await page.goto(f"{server.url}/admin/users/{user.id}")
    await expect(page.locator("#sockets")).to_have_text("1")
    form = page.locator(f'form[action="/admin/users/{user.id}/password"]')
    # Mistakes are said in words; the browser's own checks are bypassed to see the server's.
    await form.evaluate("form => { form.noValidate = true; }")
    await form.get_by_label("New password").fill(NEW_PASSWORD)
    await form.get_by_label("Repeat the password").fill(NEW_PASSWORD + "!")
    await form.get_by_role("button", name="Set password").click()
    await flash(page, "The two passwords differ: type the same password in both boxes.")
    await form.evaluate("form => { form.noValidate = true; }")
    await form.get_by_label("New password").fill("short")
    await form.get_by_label("Repeat the password").fill("short")
    await form.get_by_role("button", name="Set password").click()
    await flash(page, "Enter a password of 8 to 128 characters.")
    await expect(live.page.locator("#status")).to_have_text("live")

    await form.get_by_label("New password").fill(NEW_PASSWORD)
    await form.get_by_label("Repeat the password").fill(NEW_PASSWORD)
    await form.get_by_role("button", name="Set password").click()
    await flash(
        page, f"Password set for {user.email}. Their sessions have ended: they sign in again with the new password."
    )
    # The user's session ended at once: the live page is back at its login; the new password opens it again.
    await expect(live.page.locator("#login-section")).to_be_visible()
    assert await api_token(page, server, user) is None
    user.password = NEW_PASSWORD
    await live_login(live, user)
    await expect(live.page.locator("#notifications li").filter(has_text="Your password was changed")).to_have_count(1)
    await page.reload()
    await expect(page.locator("#sockets")).to_have_text("1")
    panel.assert_clean()
    # The socket closed by the password change may log a failed refresh (401) before the login form returns.
    live.errors[:] = [error for error in live.errors if "status of 401" not in error]
    live.assert_clean()


async def test_audit_filters_are_kept_across_pages(
    browser: Browser,
    contexts: list[BrowserContext],
    server: LiveServer,
) -> None:
    sender = await another_admin(server, "sender")
    user = await new_user(server, f"reader_{uuid.uuid4().hex[:6]}")
    watched = await open_page(browser, contexts)
    page = watched.page
    token = await api_token(page, server, sender)
    for number in range(27):
        sent = await page.request.post(
            f"{server.url}/api/v1/notifications",
            data={"title": f"News {number:02d}", "body": "", "user_ids": [user.id]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert sent.status == 201, await sent.text()
    await admin_login(watched, server, sender)
    await page.get_by_role("link", name="Audit log").click()
    today = datetime.now(UTC).date().isoformat()
    await page.get_by_label("Who").fill(sender.email)
    await page.get_by_label("Action").select_option("notification.sent")
    await page.get_by_label("From", exact=True).fill(today)
    await page.get_by_label("To", exact=True).fill(today)
    await page.get_by_role("button", name="Filter").click()

    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_contain_text("News 26")
    await expect(rows.first.locator('[data-label="Details"]')).to_have_text("recipients: 1")
    await page.get_by_role("link", name="Older »").click()
    await expect(rows).to_have_count(2)
    await expect(rows.locator('[data-label="Target"]')).to_have_text(["News 01", "News 00"])
    # The filters are still there, in the address and in the form.
    for field, value in (("actor", sender.email), ("action", "notification.sent"), ("from", today), ("to", today)):
        assert f"{field}={value}".replace("@", "%40") in page.url, (field, page.url)
    await expect(page.get_by_label("Who")).to_have_value(sender.email)
    await expect(page.get_by_label("Action")).to_have_value("notification.sent")
    await expect(page.get_by_label("From", exact=True)).to_have_value(today)
    await page.get_by_role("link", name="« Newest").click()
    await expect(rows).to_have_count(25)
    await expect(page.get_by_label("To", exact=True)).to_have_value(today)
    # Nothing before today from this admin.
    await page.get_by_label("To", exact=True).fill("2020-01-01")
    await page.get_by_label("From", exact=True).fill("")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("main")).to_contain_text("No entries match.")
    watched.assert_clean()


async def lines_of(page: Page, selector: str) -> list[int]:
    """For each element: how many lines its text takes (the distinct tops of its text's boxes)."""
    counts: list[int] = await page.locator(selector).evaluate_all(
        """elements => elements.map((element) => {
            const range = document.createRange();
            range.selectNodeContents(element);
            return new Set([...range.getClientRects()].map((rect) => Math.round(rect.top))).size;
        })"""
    )
    return counts


async def overflow(page: Page) -> dict[str, Any]:
    """The page's widths, and the elements that reach past the viewport's right edge (to say what overflows)."""
    sizes: dict[str, Any] = await page.evaluate(
        """() => ({
            viewport: window.innerWidth,
            document: document.documentElement.scrollWidth,
            body: document.body.scrollWidth,
            wide: [...document.body.querySelectorAll("*")]
                .filter((element) => element.getBoundingClientRect().right > window.innerWidth + 0.5)
                .slice(0, 5)
                .map((element) => element.outerHTML.slice(0, 120)),
        })"""
    )
    return sizes


async def test_phone_width_has_no_sideways_scroll_and_one_line_dates(
    browser: Browser,
    contexts: list[BrowserContext],
    server: LiveServer,
    admin: Person,
) -> None:
    user = await new_user(server, f"phone_{uuid.uuid4().hex[:6]}", "A Rather Long Full Name For A Small Screen")
    context = await browser.new_context(viewport=PHONE)
    contexts.append(context)
    watched = Watched(await context.new_page())
    page = watched.page
    await admin_login(watched, server, admin)
    await page.goto(f"{server.url}/admin/users/{user.id}")
    form = page.locator(f'form[action="/admin/users/{user.id}/notify"]')
    await form.get_by_label("Title").fill("A title long enough to need a second line on a phone screen")
    await form.get_by_role("button", name=re.compile("^Send to")).click()
    await flash(page, "Notification sent.")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in (
        ("dashboard", "/admin/"),
        ("users", "/admin/users"),
        ("user", f"/admin/users/{user.id}"),
        ("delete", f"/admin/users/{user.id}/delete"),
        ("notifications", "/admin/notifications"),
        ("audit", "/admin/audit"),
    ):
        await page.goto(f"{server.url}{path}")
        await page.screenshot(path=SCREENSHOTS / f"phone-{name}.png", full_page=True)
        sizes = await overflow(page)
        assert sizes["document"] <= sizes["viewport"] and sizes["body"] <= sizes["viewport"], (path, sizes)
        dates = await lines_of(page, ".when")
        assert all(1 <= lines <= 2 for lines in dates), (path, dates)
        if await page.locator("table.cards").count():
            assert dates, path
            # Cards: the header row is out of sight, each cell says which column it is.
            header = await page.locator("table.cards thead").bounding_box()
            assert header is not None and header["width"] <= 1, (path, header)
            label = await page.locator("table.cards td.when").first.evaluate(
                "cell => getComputedStyle(cell, '::before').content"
            )
            assert label in ('"When"', '"Joined"'), (path, label)
    # On a wide screen the same tables stay tables.
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(f"{server.url}/admin/audit")
    await page.screenshot(path=SCREENSHOTS / "audit.png", full_page=True)
    label = await page.locator("table.cards td.when").first.evaluate(
        "cell => getComputedStyle(cell, '::before').content"
    )
    assert label == "none"
    assert await page.locator("table.cards thead").is_visible()
    watched.assert_clean()
