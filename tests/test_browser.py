"""End to end in headless Chromium (Debian's, driven by Playwright) against a real `tidings serve` process."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Route,
    WebSocketRoute,
    async_playwright,
    expect,
)

from tests.live_server import LiveServer, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
ADMIN_PASSWORD = "admin pass phrase"
USER_PASSWORD = "user pass phrase"
XSS_NAME = "<script>alert(1)</script>"
TIMEOUT_MS = 10_000  # generous for a busy machine; every wait ends as soon as its condition holds

pytestmark = pytest.mark.asyncio(loop_scope="module")
expect.set_options(timeout=TIMEOUT_MS)


def chromium() -> str:
    """Debian's Chromium; never a downloaded browser. Missing, the tests fail (they are not skipped)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (`make test` does, with scripts/install-system.sh)"
        )
    return str(CHROMIUM)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """One server process (and database) for this module; each test makes its own users and browser contexts."""
    async with live_server(tmp_path_factory.mktemp("server")) as server:
        yield server


@dataclass
class Person:
    email: str
    username: str
    password: str
    id: str = ""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(server: LiveServer) -> Person:
    unique = uuid.uuid4().hex[:8]
    person = Person(f"root-{unique}@example.com", f"root_{unique}", ADMIN_PASSWORD)
    await server.create_admin(person.email, person.username, person.password)
    return person


async def new_user(server: LiveServer, username: str, full_name: str | None = None) -> Person:
    person = Person(f"{username}@example.com", username, USER_PASSWORD)
    user = await server.register(
        email=person.email, username=person.username, password=person.password, full_name=full_name
    )
    person.id = user["id"]
    return person


@dataclass
class Watched:
    """A page whose console errors, uncaught exceptions and dialogs are recorded."""

    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    accept: str | None = None  # accept a confirm() whose message starts with this; dismiss any other dialog

    def __post_init__(self) -> None:
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"{self.page.url}: uncaught {error}"))
        self.page.on("dialog", self._dialog)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{self.page.url}: {message.text}")

    async def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if self.accept is not None and dialog.type == "confirm" and dialog.message.startswith(self.accept):
            await dialog.accept()
        else:
            await dialog.dismiss()

    def assert_clean(self, *expected: str) -> None:
        """No console errors, but for one matching each of `expected` (a response status the test asked for)."""
        errors = list(self.errors)
        for text in expected:
            matching = [error for error in errors if text in error]
            assert matching, f"expected a console error with {text!r}, got {errors}"
            errors.remove(matching[0])
        assert errors == [], "console errors:\n" + "\n".join(errors)


@pytest_asyncio.fixture(loop_scope="module")
async def contexts(browser: Browser) -> AsyncIterator[list[BrowserContext]]:
    """Browser contexts (separate cookie jars) a test opens; closed after it."""
    made: list[BrowserContext] = []
    yield made
    for context in made:
        await context.close()


async def open_page(browser: Browser, contexts: list[BrowserContext]) -> Watched:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    contexts.append(context)
    return Watched(await context.new_page())


async def submit_panel_login(page: Page, server: LiveServer, path: str, person: Person) -> None:
    """Open a panel page while logged out, which leads to the login form, and log in there as `person`."""
    await page.goto(f"{server.url}{path}")
    await expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    await page.get_by_label("Email").fill(person.email)
    await page.get_by_label("Password").fill(person.password)
    await page.get_by_role("button", name="Log in").click()


async def admin_login(watched: Watched, server: LiveServer, person: Person) -> None:
    page = watched.page
    await submit_panel_login(page, server, "/admin/", person)
    await expect(page).to_have_url(f"{server.url}/admin/")
    await expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()


async def live_login(watched: Watched, person: Person) -> None:
    """Log in on the live page `/` (it then opens its WebSocket) and wait until it is live."""
    page = watched.page
    await expect(page.locator("#login-section")).to_be_visible()
    await page.locator("#login-form").get_by_label("Email").fill(person.email)
    await page.locator("#login-form").get_by_label("Password").fill(person.password)
    await page.locator("#login-form").get_by_role("button", name="Log in").click()
    # The section shows once the login succeeded; its status (stale while hidden) then follows the new socket.
    await expect(page.locator("#live-section")).to_be_visible()
    await expect(page.locator("#status")).to_have_text("live")


async def api_token(server: LiveServer, person: Person) -> str:
    """An access token of `person`, through the JSON API (outside any browser)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.url}/api/v1/auth/login", json={"email": person.email, "password": person.password}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        token: str = (await response.json())["access_token"]
        return token


async def api_post(server: LiveServer, token: str, path: str, body: dict[str, Any]) -> int:
    """POST to the JSON API as the token's user; the status."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/api/v1{path}", json=body, headers={"Authorization": f"Bearer {token}"}) as sent,
    ):
        assert sent.status < 300, await sent.text()
        return sent.status


async def unread_of(server: LiveServer, token: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{server.url}/api/v1/notifications/unread-count", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        count: int = (await response.json())["unread"]
        return count


async def no_web_storage(page: Page) -> None:
    """Nothing at all in localStorage or sessionStorage, and no session cookie a script can read."""
    stored = await page.evaluate(
        "() => [localStorage.length, sessionStorage.length, JSON.stringify({...localStorage, ...sessionStorage})]"
    )
    assert stored == [0, 0, "{}"], stored
    assert "tidings_refresh" not in await page.evaluate("() => document.cookie")


async def flash(page: Page, text: str) -> None:
    await expect(page.locator("p.flash")).to_have_text(text)


async def test_admin_manages_a_user_who_sees_the_notification_live(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"dana_{uuid.uuid4().hex[:6]}", "Dana Scully")
    await new_user(server, f"other_{uuid.uuid4().hex[:6]}")
    panel = await open_page(browser, contexts)
    live = await open_page(browser, contexts)
    page = panel.page

    # The admin logs in through the form; the dashboard shows the figures.
    await admin_login(panel, server, admin)
    stats = await (await page.request.get(f"{server.url}/admin/dashboard.json")).json()
    await expect(page.locator('[data-stat="users.total"]')).to_have_text(str(stats["stats"]["users"]["total"]))
    await expect(page.locator("#events li").first).to_contain_text("user.registered")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "dashboard.png", full_page=True)

    # ... finds the user by searching the users page, and opens their page.
    await page.get_by_role("navigation", name="Admin sections").get_by_role("link", name="Users").click()
    await expect(page.get_by_role("heading", name="Users", exact=True)).to_be_visible()
    await expect(page.get_by_role("link", name=user.email)).to_be_visible()
    await page.screenshot(path=SCREENSHOTS / "users.png", full_page=True)
    await page.get_by_label("Search").fill(user.username[:7])
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"/admin/users\?q=dana_"))
    await expect(page.locator("tbody tr")).to_have_count(1)
    await page.get_by_role("link", name=user.email).click()
    await expect(page).to_have_url(f"{server.url}/admin/users/{user.id}")
    await expect(page.get_by_role("heading", name="Dana Scully")).to_be_visible()
    await expect(page.locator("#status")).to_have_text("active")

    # The user is on the live page, in another browser context (its own cookies).
    await live.page.goto(f"{server.url}/")
    await live_login(live, user)

    # Deactivating (after a confirmation) ends the user's socket for good: the live page returns to its login.
    panel.accept = "Deactivate"
    await page.get_by_role("button", name="Deactivate").click()
    await flash(page, "Account deactivated.")
    await expect(page.locator("#status")).to_have_text("deactivated")
    assert panel.dialogs == [f"confirm: Deactivate {user.email}? Their sessions end at once."]
    await expect(live.page.locator("#login-section")).to_be_visible()
    await expect(live.page.locator("#login-error")).to_have_text("account deactivated")

    await page.get_by_role("button", name="Activate").click()
    await flash(page, "Account activated.")
    await expect(page.locator("#status")).to_have_text("active")

    # The user logs in again; the admin sends them a notification from their page; it arrives live.
    await live_login(live, user)
    title = f"Hello from the panel {uuid.uuid4().hex[:6]}"
    form = page.locator(f'form[action="/admin/users/{user.id}/notify"]')
    await form.get_by_label("Title").fill(title)
    await form.get_by_label("Message").fill("Sent while you watch.")
    await form.get_by_role("button", name=f"Send to {user.username}").click()
    await flash(page, "Notification sent.")
    arrived = live.page.locator("#notifications li").filter(has_text=title)
    await expect(arrived).to_be_visible()
    await expect(arrived.locator("p")).to_have_text("Sent while you watch.")
    await expect(arrived).to_have_class("unread")

    # The audit log names the admin for each change; the dashboard counts the live socket.
    await page.get_by_role("link", name="Audit log").click()
    rows = page.locator("tbody tr").filter(has_text=admin.email)
    await expect(rows.filter(has_text="notification.sent").filter(has_text=title)).to_have_count(1)
    await expect(rows.filter(has_text="user.updated").filter(has_text=user.email)).to_have_count(2)
    await page.get_by_role("link", name="Dashboard").click()
    await expect(page.locator("#events li").first).to_contain_text("notification.sent")
    # At least this user's socket (the page updates itself, so sockets of earlier tests closing do not matter).
    await expect(page.locator('[data-stat="connections"]')).not_to_have_text("0")

    panel.assert_clean()
    live.assert_clean()


async def test_non_admin_is_refused(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"eve_{uuid.uuid4().hex[:6]}")
    watched = await open_page(browser, contexts)
    page = watched.page
    await submit_panel_login(page, server, "/admin/users", user)
    await expect(page.get_by_role("alert")).to_have_text("The admin panel is for administrators only.")
    await expect(page.get_by_role("heading", name="Admin log in")).to_be_visible()
    assert [cookie["name"] for cookie in await page.context.cookies()] == ["tidings_login_csrf"]
    # Still no way in.
    await page.goto(f"{server.url}/admin/users")
    await expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    # The refusal itself is a 403 page, which Chromium reports on the console; nothing else is.
    watched.assert_clean("status of 403")


async def test_csrf_attempts_are_rejected(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"fox_{uuid.uuid4().hex[:6]}")
    watched = await open_page(browser, contexts)
    page = watched.page
    await admin_login(watched, server, admin)
    action = f"{server.url}/admin/users/{user.id}/active"

    # With the admin's cookies but without (or with a wrong) token.
    forms: list[dict[str, str | float | bool]] = [{"value": "false"}, {"value": "false", "csrf_token": "0" * 40}]
    for form in forms:
        response = await page.request.post(action, form=form, max_redirects=0)
        assert response.status == 403, await response.text()
        assert "CSRF" in (await response.json())["error"]["message"]

    # A form on another site posting to the panel: SameSite=Strict keeps the session cookie at home.
    async def evil_site(route: Route) -> None:
        form = f'<form method="post" action="{action}"><input name="value" value="false"><button>Win</button></form>'
        await route.fulfill(content_type="text/html", body=form)

    await page.route("http://evil.example/", evil_site)
    await page.goto("http://evil.example/")
    async with page.expect_response(action) as caught:
        await page.get_by_role("button", name="Win").click()
    assert (await caught.value).status == 401

    await page.goto(f"{server.url}/admin/users/{user.id}")
    await expect(page.locator("#status")).to_have_text("active")
    await page.goto(f"{server.url}/admin/audit")
    await expect(page.locator("tbody tr").filter(has_text=user.email)).to_have_count(1)  # the registration
    await expect(page.locator("tbody tr").filter(has_text=user.email).filter(has_text="user.updated")).to_have_count(0)
    watched.assert_clean("status of 401")


async def test_xss_name_and_title_render_as_text(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"mallory_{uuid.uuid4().hex[:6]}", XSS_NAME)
    panel = await open_page(browser, contexts)
    live = await open_page(browser, contexts)
    page = panel.page
    await admin_login(panel, server, admin)

    await page.goto(f"{server.url}/admin/users")
    await expect(page.get_by_role("cell", name=XSS_NAME, exact=True)).to_be_visible()
    await page.get_by_role("link", name=user.email).click()
    await expect(page.locator("h1")).to_have_text(XSS_NAME)
    assert XSS_NAME in (await page.text_content("body") or "")
    assert await page.locator("main script").count() == 0

    # A notification titled with HTML, seen by the user on the live page, is text there too.
    await live.page.goto(f"{server.url}/")
    await live_login(live, user)
    form = page.locator(f'form[action="/admin/users/{user.id}/notify"]')
    await form.get_by_label("Title").fill(XSS_NAME)
    await form.get_by_label("Message").fill('<img src=x onerror="alert(2)">')
    await form.get_by_role("button", name=re.compile("^Send to")).click()
    await flash(page, "Notification sent.")
    await expect(live.page.locator("#notifications h3")).to_have_text(XSS_NAME)
    await expect(live.page.locator("#notifications p")).to_have_text('<img src=x onerror="alert(2)">')
    assert await live.page.locator("#notifications img").count() == 0

    for path in ("/admin/notifications", "/admin/audit", "/admin/"):
        await page.goto(f"{server.url}{path}")
        assert XSS_NAME in (await page.text_content("main") or ""), path
        assert await page.locator("main script").count() == 0, path

    # The open dashboard updates itself (admin.js): a broadcast sent meanwhile through the API shows up in its
    # figures and its event feed, which the script builds as text too.
    total = int(await page.locator('[data-stat="notifications.total"]').inner_text())
    login = await page.request.post(
        f"{server.url}/api/v1/auth/login", data={"email": admin.email, "password": admin.password}
    )
    token = (await login.json())["access_token"]
    title = "<img src=x onerror=alert(3)> all"
    sent = await page.request.post(
        f"{server.url}/api/v1/notifications",
        data={"title": title, "body": "", "broadcast": True},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert sent.status == 201, await sent.text()
    await expect(page.locator('[data-stat="notifications.total"]')).to_have_text(str(total + 1))
    await expect(page.locator("#events li").first).to_contain_text(f"notification.sent · {title}")
    assert await page.locator("#events img").count() == 0
    await expect(live.page.locator("#notifications h3").first).to_have_text(title)

    assert panel.dialogs == []
    assert live.dialogs == []
    panel.assert_clean()
    live.assert_clean()


async def test_live_page_loads_existing_resumes_without_duplicates_and_marks_all_read(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"fran_{uuid.uuid4().hex[:6]}")
    live = await open_page(browser, contexts)
    page = live.page

    async def token_of(person: Person) -> str:
        login = await page.request.post(
            f"{server.url}/api/v1/auth/login", data={"email": person.email, "password": person.password}
        )
        assert login.status == 200, await login.text()
        token: str = (await login.json())["access_token"]
        return token

    admin_token = await token_of(admin)
    user_token = await token_of(user)

    async def send(title: str) -> None:
        sent = await page.request.post(
            f"{server.url}/api/v1/notifications",
            data={"title": title, "body": "", "user_ids": [user.id]},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert sent.status == 201, await sent.text()

    async def unread_count() -> int:
        response = await page.request.get(
            f"{server.url}/api/v1/notifications/unread-count", headers={"Authorization": f"Bearer {user_token}"}
        )
        assert response.status == 200, await response.text()
        count: int = (await response.json())["unread"]
        return count

    # Every socket of the page goes through Playwright, which can close it from the server's side.
    sockets: list[WebSocketRoute] = []

    def through(ws: WebSocketRoute) -> None:
        ws.connect_to_server()
        sockets.append(ws)

    await page.route_web_socket(re.compile(r"/api/v1/ws$"), through)

    # Two notifications exist before the page logs in: it shows both, newest first, and counts them.
    await send("before one")
    await send("before two")
    await page.goto(f"{server.url}/")
    await live_login(live, user)
    items = page.locator("#notifications li")
    await expect(items.locator("h3")).to_have_text(["before two", "before one"])
    await expect(page.locator("#unread")).to_have_text("2")
    await expect(page.locator("#empty")).to_be_hidden()
    await expect(page.get_by_role("button", name="Older")).to_be_hidden()

    # The server closes the socket (4000: reconnect). Three more are sent while the page is away: its reconnect
    # (which loads the newest page first) is held until they are stored.
    held, release = asyncio.Event(), asyncio.Event()

    async def hold(route: Route) -> None:
        held.set()
        await release.wait()
        await route.continue_()

    await page.route(re.compile(r"/api/v1/notifications\?"), hold)
    assert len(sockets) == 1
    await sockets[0].close(code=4000, reason="reconnect")
    await asyncio.wait_for(held.wait(), TIMEOUT_MS / 1000)
    for n in range(3):
        await send(f"missed {n}")
    release.set()
    await expect(page.locator("#status")).to_have_text("live")
    await expect(items.locator("h3")).to_have_text(["missed 2", "missed 1", "missed 0", "before two", "before one"])
    await page.unroute(re.compile(r"/api/v1/notifications\?"), hold)
    assert len(sockets) == 2
    await expect(page.locator("#unread")).to_have_text(str(await unread_count()))
    await expect(page.locator("#unread")).to_have_text("5")

    # A live one after the reconnect is counted once and shown once.
    await send("live after")
    await expect(items.locator("h3").first).to_have_text("live after")
    await expect(page.locator("#unread")).to_have_text("6")
    assert await unread_count() == 6
    ids = await items.evaluate_all("items => items.map((item) => item.id)")
    assert len(ids) == 6 and len(set(ids)) == 6, ids

    # "Mark all read" marks everything read, here and on the server.
    await page.get_by_role("button", name="Mark all read").click()
    await expect(page.locator("#unread")).to_have_text("0")
    await expect(page.locator("#notifications li.unread")).to_have_count(0)
    await expect(page.locator("#notifications li.read")).to_have_count(6)
    assert await unread_count() == 0

    assert live.dialogs == []
    live.assert_clean()


async def test_sign_up_on_the_live_page(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    taken = await new_user(server, f"gus_{uuid.uuid4().hex[:6]}")
    live = await open_page(browser, contexts)
    page = live.page
    await page.goto(f"{server.url}/")
    form = page.locator("#register-form")
    await expect(form).to_be_visible()
    await expect(page.locator("#login-form")).to_be_visible()  # beside it
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "live-forms.png", full_page=True)
    name = f"hana_{uuid.uuid4().hex[:6]}"

    # The API's validation errors, one sentence per field, in words.
    await form.get_by_label("Email").fill(f"{name}@example.com")
    await form.get_by_label("Username").fill("has space")
    await form.get_by_label("Password").fill(USER_PASSWORD)
    await form.get_by_role("button", name="Sign up").click()
    errors = page.locator("#register-error")
    await expect(errors).to_have_text("Username: 3 to 32 letters, digits, '_', '.' or '-'.")
    # Two at once, one line each.
    await form.get_by_label("Username").fill("x")
    await form.get_by_label("Full name").fill("n" * 100)
    await form.get_by_label("Full name").evaluate("input => { input.maxLength = 200; input.value += 'n'; }")
    await form.get_by_role("button", name="Sign up").click()
    await expect(errors.locator("li")).to_have_text(
        ["Username: 3 to 32 letters, digits, '_', '.' or '-'.", "Full name: Longer than maximum length 100."]
    )
    # A taken email: the API's message.
    await form.get_by_label("Email").fill(taken.email.upper())
    await form.get_by_label("Username").fill(name)
    await form.get_by_label("Full name").fill("")
    await form.get_by_role("button", name="Sign up").click()
    await expect(errors).to_have_text("This email is already taken.")
    await expect(page.locator("#login-section")).to_be_visible()

    # A good one: the account is made, and the page is signed in and live.
    await form.get_by_label("Email").fill(f"{name}@example.com")
    await form.get_by_label("Full name").fill("Hana Ito")
    await form.get_by_role("button", name="Sign up").click()
    await expect(page.locator("#live-section")).to_be_visible()
    await expect(page.locator("#status")).to_have_text("live")
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#register-error")).to_be_hidden()
    await expect(form.get_by_label("Password")).to_have_value("")
    token = await api_token(server, Person(f"{name}@example.com", name, USER_PASSWORD))
    assert await unread_of(server, token) == 0
    await no_web_storage(page)
    assert live.dialogs == []
    live.assert_clean("status of 422", "status of 422", "status of 409")


async def test_notification_data_is_text_and_only_http_urls_are_links(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"ida_{uuid.uuid4().hex[:6]}")
    live = await open_page(browser, contexts)
    page = live.page
    await page.goto(f"{server.url}/")
    await live_login(live, user)
    admin_token = await api_token(server, admin)
    sends: dict[str, dict[str, Any]] = {
        "script": {"url": "javascript:alert(1)", "note": "<b>bold</b>", "nested": {"a": [1, "<i>x</i>"]}},
        "data": {"url": "data:text/html,<script>alert(2)</script>"},
        "spaced": {"url": "  JavaScript:alert(3)"},
        "relative": {"url": "/admin/"},
        "https": {"url": "https://example.com/read?id=1&x=<y>"},
        "http": {"url": "http://example.org/"},
    }
    for title, data in sends.items():
        await api_post(
            server, admin_token, "/notifications", {"title": title, "body": "", "data": data, "user_ids": [user.id]}
        )
    items = page.locator("#notifications li")
    await expect(items.locator("h3")).to_have_text(list(reversed(sends)))

    def item(title: str) -> Locator:
        return items.filter(has=page.get_by_role("heading", name=title, exact=True))

    for title in ("script", "data", "spaced", "relative"):
        await expect(item(title).locator("a")).to_have_count(0)
        await expect(item(title).locator("dd").first).to_have_text(str(sends[title]["url"]))
    script = item("script")
    await expect(script.locator("dt")).to_have_text(["url", "note", "nested"])
    await expect(script.locator("dd")).to_have_text(["javascript:alert(1)", "<b>bold</b>", '{"a":[1,"<i>x</i>"]}'])
    assert await page.locator("#notifications b, #notifications i, #notifications script").count() == 0

    link = item("https").get_by_role("link")
    await expect(link).to_have_attribute("href", "https://example.com/read?id=1&x=%3Cy%3E")
    await expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    await expect(item("http").get_by_role("link")).to_have_attribute("href", "http://example.org/")
    await page.screenshot(path=SCREENSHOTS / "live-data.png", full_page=True)
    assert live.dialogs == []
    live.assert_clean()


async def test_broadcasts_are_marked_apart_from_personal_notifications(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"jon_{uuid.uuid4().hex[:6]}")
    live = await open_page(browser, contexts)
    page = live.page
    admin_token = await api_token(server, admin)
    # One of each before the page opens (from the history) and after (live).
    tag = uuid.uuid4().hex[:6]
    await api_post(server, admin_token, "/notifications", {"title": f"all {tag} 1", "body": "", "broadcast": True})
    await api_post(server, admin_token, "/notifications", {"title": f"you {tag} 1", "body": "", "user_ids": [user.id]})
    await page.goto(f"{server.url}/")
    await live_login(live, user)
    await api_post(server, admin_token, "/notifications", {"title": f"all {tag} 2", "body": "", "broadcast": True})
    await api_post(server, admin_token, "/notifications", {"title": f"you {tag} 2", "body": "", "user_ids": [user.id]})
    items = page.locator("#notifications li")
    await expect(items.locator("h3")).to_have_text([f"you {tag} 2", f"all {tag} 2", f"you {tag} 1", f"all {tag} 1"])
    broadcasts = items.filter(has_text=f"all {tag}")
    await expect(broadcasts).to_have_count(2)
    await expect(broadcasts.locator(".badge")).to_have_text(["Broadcast", "Broadcast"])
    await expect(broadcasts.nth(0)).to_have_class("unread broadcast")
    personal = items.filter(has_text=f"you {tag}")
    await expect(personal.locator(".badge")).to_have_count(0)
    await expect(personal.nth(0)).to_have_class("unread")
    await page.get_by_role("button", name="Mark all read").click()
    await expect(broadcasts.nth(1)).to_have_class("read broadcast")
    await page.screenshot(path=SCREENSHOTS / "live-broadcast.png", full_page=True)
    live.assert_clean()


async def test_the_password_is_cleared_after_a_failed_login_and_an_ended_session(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"kai_{uuid.uuid4().hex[:6]}")
    live = await open_page(browser, contexts)
    page = live.page
    await page.goto(f"{server.url}/")
    form = page.locator("#login-form")
    await form.get_by_label("Email").fill(user.email)
    await form.get_by_label("Password").fill("not the password")
    await form.get_by_role("button", name="Log in").click()
    await expect(page.locator("#login-error")).to_have_text("Email or password is incorrect.")
    await expect(form.get_by_label("Password")).to_have_value("")
    await expect(form.get_by_label("Email")).to_have_value(user.email)

    await live_login(live, user)
    await expect(form.get_by_label("Password")).to_have_value("")
    # The session ends elsewhere ("log out everywhere" from the API): the page is back at its form, empty.
    await api_post(server, await api_token(server, user), "/auth/logout-all", {})
    await expect(page.locator("#login-section")).to_be_visible()
    await expect(page.locator("#login-error")).to_have_text("credentials revoked")
    await expect(form.get_by_label("Password")).to_have_value("")
    # A reload with the cookie of the ended session: the form, saying so.
    await page.reload()
    await expect(page.locator("#login-error")).to_have_text("Your session has ended; log in again.")
    await expect(form.get_by_label("Password")).to_have_value("")
    assert [cookie["name"] for cookie in await page.context.cookies()] == []  # the dead cookie was cleared
    live.assert_clean("status of 401", "status of 401")


async def test_a_reload_keeps_the_session_without_web_storage(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    user = await new_user(server, f"lea_{uuid.uuid4().hex[:6]}")
    live = await open_page(browser, contexts)
    page = live.page
    await page.goto(f"{server.url}/")
    await live_login(live, user)
    admin_token = await api_token(server, admin)
    await api_post(server, admin_token, "/notifications", {"title": "kept", "body": "", "user_ids": [user.id]})
    await expect(page.locator("#notifications h3")).to_have_text(["kept"])
    await no_web_storage(page)
    (cookie,) = await page.context.cookies()
    assert cookie["name"] == "tidings_refresh"
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/api/v1/auth/page"
    assert cookie["secure"] is False  # plain http in tests; Secure in production

    # A reload signs the page in again from its cookie, without the form.
    await page.reload()
    await expect(page.locator("#live-section")).to_be_visible()
    await expect(page.locator("#status")).to_have_text("live")
    await expect(page.locator("#notifications h3")).to_have_text(["kept"])
    await expect(page.locator("#unread")).to_have_text("1")
    await expect(page.locator("#login-section")).to_be_hidden()
    await no_web_storage(page)

    # A reload that cuts off the refresh of the one before it: still signed in.
    for _ in range(3):
        async with page.expect_request(re.compile(r"/api/v1/auth/page/refresh$")):
            await page.reload(wait_until="commit")
        await page.reload()
        await expect(page.locator("#status")).to_have_text("live")

    # Two tabs reloading at once share the cookie: neither one's refresh spoils the other's.
    other = Watched(await page.context.new_page())
    await other.page.goto(f"{server.url}/")
    await expect(other.page.locator("#status")).to_have_text("live")
    for _ in range(3):
        await asyncio.gather(page.reload(), other.page.reload())
        for tab in (page, other.page):
            await expect(tab.locator("#status")).to_have_text("live")
    await api_post(server, admin_token, "/notifications", {"title": "both", "body": "", "user_ids": [user.id]})
    for tab in (page, other.page):
        await expect(tab.locator("#notifications h3").first).to_have_text("both")

    # Logging out ends the session and clears the cookie: a reload shows the form, and the other tab is out too.
    async with page.expect_response(re.compile(r"/api/v1/auth/page/logout$")) as logout:
        await page.get_by_role("button", name="Log out").click()
    assert (await logout.value).status == 204
    await expect(page.locator("#login-section")).to_be_visible()
    await expect(other.page.locator("#login-section")).to_be_visible()
    assert await page.context.cookies() == []
    await page.reload()
    await expect(page.locator("#login-section")).to_be_visible()
    await expect(page.locator("#login-error")).to_be_hidden()
    await no_web_storage(page)
    live.assert_clean()
    other.assert_clean()


async def test_a_notification_sent_between_the_history_and_ready_is_counted_once(
    browser: Browser, contexts: list[BrowserContext], server: LiveServer, admin: Person
) -> None:
    """It is in the history's gap: ready counts it, and the resume replays it. The page counts it once."""
    user = await new_user(server, f"max_{uuid.uuid4().hex[:6]}")
    live = await open_page(browser, contexts)
    page = live.page
    admin_token = await api_token(server, admin)
    await api_post(server, admin_token, "/notifications", {"title": "before", "body": "", "user_ids": [user.id]})

    async def history_then_send(route: Route) -> None:
        """The history is read; then, before the page has it (and before its socket is open), one more is sent."""
        response = await route.fetch()
        await api_post(
            server, admin_token, "/notifications", {"title": "in the gap", "body": "", "user_ids": [user.id]}
        )
        await route.fulfill(response=response)

    await page.route(re.compile(r"/api/v1/notifications\?limit=\d+$"), history_then_send, times=1)
    # Every value the counter shows, in order: it must never show a wrong one, even for a moment.
    await page.add_init_script(
        """addEventListener("DOMContentLoaded", () => {
            const unread = document.getElementById("unread");
            window.unreadShown = [];
            new MutationObserver(() => window.unreadShown.push(unread.textContent))
                .observe(unread, { childList: true, characterData: true, subtree: true });
        });"""
    )
    await page.goto(f"{server.url}/")
    async with page.expect_response(re.compile(r"/api/v1/notifications/unread-count$")) as recount:
        await live_login(live, user)
    assert (await (await recount.value).json()) == {"unread": 2}
    items = page.locator("#notifications li")
    await expect(items.locator("h3")).to_have_text(["in the gap", "before"])
    await expect(page.locator("#unread")).to_have_text("2")
    user_token = await api_token(server, user)
    assert await unread_of(server, user_token) == 2
    assert set(await page.evaluate("() => window.unreadShown")) == {"0", "2"}
    # Live ones count again after that.
    await api_post(server, admin_token, "/notifications", {"title": "after", "body": "", "user_ids": [user.id]})
    await expect(items.locator("h3").first).to_have_text("after")
    await expect(page.locator("#unread")).to_have_text("3")
    live.assert_clean()
