"""The admin panel over HTTP: sessions, CSRF, headers, every action, escaping and redirects."""

from __future__ import annotations

import asyncio
import html
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import ClientResponse, WSMsgType
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId
from bson import ObjectId
from yarl import URL

from tests.conftest import PASSWORD, Account, Accounts, AppFactory
from tests.realtime import TIMEOUT, expect_close, ready
from tidings.documents import AuditEntry
from tidings.handlers.admin.cookies import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from tidings.server.keys import redis_key
from tidings.server.services import dashboard
from tidings.server.settings import Settings

Client = TestClient[Any, Any]
API = "/api/v1"
XSS_NAME = "<script>alert(1)</script>"
NO_ID = "0" * 24
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]*)"')


# Helpers


def csrf_of(page: str) -> str:
    found = CSRF_INPUT.search(page)
    assert found is not None, page
    return html.unescape(found.group(1))


def jar_cookie(client: Client, name: str) -> str | None:
    for morsel in client.session.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


def text_of(fragment: str) -> str:
    """The visible text of some HTML, with its whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def rows_of(page: str) -> list[str]:
    """The text of each body row of the page's tables."""
    return [text_of(row) for row in re.findall(r"<tr>(.*?)</tr>", page, re.S) if "<td" in row]


def row_with(page: str, *needles: str) -> str:
    matches = [row for row in rows_of(page) if all(needle in row for needle in needles)]
    assert len(matches) == 1, (needles, rows_of(page))
    return matches[0]


def flash_of(page: str) -> tuple[str, str] | None:
    found = re.search(r'<p class="flash flash-(success|error)"[^>]*>(.*?)</p>', page, re.S)
    return (found.group(1), text_of(found.group(2))) if found else None


def older_link(page: str) -> str | None:
    found = re.search(r'<a href="([^"]+)">Older »</a>', page)
    return html.unescape(found.group(1)) if found else None


def assert_page_headers(response: ClientResponse) -> None:
    csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp, csp
    assert "unsafe-eval" not in csp, csp
    assert "frame-ancestors 'none'" in csp, csp
    assert "script-src 'self'" in csp, csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


async def login_form(client: Client) -> str:
    """Open the login page: its CSRF cookie lands in the jar; return the form's token."""
    response = await client.get("/admin/login")
    assert response.status == 200
    assert jar_cookie(client, LOGIN_CSRF_COOKIE)
    return csrf_of(await response.text())


async def submit_login(
    client: Client, email: str, password: str = PASSWORD, *, csrf: str | None = None, next_url: str | None = None
) -> ClientResponse:
    token = await login_form(client) if csrf is None else csrf
    data = {"csrf_token": token, "email": email, "password": password}
    if next_url is not None:
        data["next"] = next_url
    return await client.post("/admin/login", data=data, allow_redirects=False)


async def promote(user_id: str) -> None:
    """Make a user an admin straight in the database (in real life: the CLI)."""
    from tidings.documents import User
    from tidings.documents.ids import parse_object_id

    found = await User.get(parse_object_id(user_id))
    assert found is not None
    await found.set({User.is_admin: True})


async def api_user(client: Client, admin: Account, user_id: str) -> dict[str, Any]:
    response = await client.get(f"{API}/users/{user_id}", headers=admin.headers)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def inbox(client: Client, user: Account) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/notifications", headers=user.headers)
    assert response.status == 200, await response.text()
    items: list[dict[str, Any]] = (await response.json())["items"]
    return items


async def titles(client: Client, user: Account) -> list[str]:
    return [item["title"] for item in await inbox(client, user)]


@dataclass
class Panel:
    """A test client logged in to the panel as `admin`."""

    client: Client
    accounts: Accounts
    admin: Account
    csrf: str

    async def page(self, path: str, status: int = 200) -> str:
        response = await self.client.get(path, allow_redirects=False)
        text = await response.text()
        assert response.status == status, (path, response.status, text)
        return text

    async def post(self, path: str, data: dict[str, str] | None = None, *, csrf: str | None = None) -> ClientResponse:
        """POST a form with the session's CSRF token (or the one given), without following the redirect."""
        form = {"csrf_token": self.csrf if csrf is None else csrf, **(data or {})}
        return await self.client.post(path, data=form, allow_redirects=False)

    async def act(self, path: str, data: dict[str, str] | None = None) -> tuple[str, str, str]:
        """An action that redirects (303) with a flash: return (where it went, flash kind, flash text)."""
        response = await self.post(path, data)
        assert response.status == 303, (response.status, await response.text())
        location = response.headers["Location"]
        page = await self.page(location)
        message = flash_of(page)
        assert message is not None, page
        # Shown once: the next page has no flash.
        assert flash_of(await self.page(location)) is None
        return location, *message


async def open_panel(client: Client, accounts: Accounts, admin: Account | None = None) -> Panel:
    admin = admin or await accounts.user(admin=True)
    response = await submit_login(client, admin.email, admin.password)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/admin/"
    dashboard = await client.get("/admin/")
    assert dashboard.status == 200
    return Panel(client, accounts, admin, csrf_of(await dashboard.text()))


@pytest.fixture
async def panel(client: Client, accounts: Accounts) -> Panel:
    return await open_panel(client, accounts)


PAGES = [
    "/admin/",
    "/admin/users",
    "/admin/users?q=a&active=yes",
    "/admin/notifications",
    "/admin/audit",
    "/admin/audit?actor=system&action=user.registered&from=2020-01-01&to=2099-12-31",
]
NEW_PASSWORD = "a brand new pass phrase"


def actions(user_id: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (f"/admin/users/{user_id}/active", {"value": "false"}),
        (f"/admin/users/{user_id}/admin", {"value": "true"}),
        (f"/admin/users/{user_id}/revoke", {}),
        (f"/admin/users/{user_id}/notify", {"title": "Hello", "body": "there"}),
        (f"/admin/users/{user_id}/password", {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}),
        (f"/admin/users/{user_id}/delete", {}),
        ("/admin/notifications", {"action": "send", "audience": "broadcast", "title": "Hi", "body": ""}),
        ("/admin/logout", {}),
    ]


# No session


async def test_pages_redirect_to_login_without_a_session(client: Client, accounts: Accounts) -> None:
    user = await accounts.user()
    for path in [
        *PAGES,
        f"/admin/users/{user.id}",
        f"/admin/users/{user.id}/delete",
        "/admin/dashboard.json",
        "/admin/audit?before=" + NO_ID,
    ]:
        response = await client.get(path, allow_redirects=False)
        assert response.status == 303, path
        location = URL(response.headers["Location"])
        assert (location.path, dict(location.query)) == ("/admin/login", {"next": path}), path
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_admin_without_its_slash_goes_to_the_panel(panel: Panel) -> None:
    response = await panel.client.get("/admin", allow_redirects=False)
    assert response.status == 301
    assert response.headers["Location"] == "/admin/"
    assert "<h1>Dashboard</h1>" in await (await panel.client.get("/admin")).text()


async def test_head_is_a_page_request_not_an_action(client: Client, accounts: Accounts) -> None:
    head = await client.head("/admin/users", allow_redirects=False)
    assert head.status == 303
    assert head.headers["Location"].startswith("/admin/login?next=")
    await open_panel(client, accounts)
    for path in PAGES:
        response = await client.head(path, allow_redirects=False)
        assert response.status == 200, path
        assert_page_headers(response)


async def test_actions_without_a_session_are_401(client: Client, accounts: Accounts) -> None:
    user = await accounts.user()
    for path, data in actions(user.id):
        response = await client.post(path, data={"csrf_token": "x", **data}, allow_redirects=False)
        assert response.status == 401, path
        assert response.content_type == "application/json"
        assert (await response.json())["error"]["code"] == "not_authenticated"
    assert (await titles(client, user)) == []


async def test_session_of_a_demoted_admin_no_longer_opens_the_panel(client: Client, accounts: Accounts) -> None:
    first = await open_panel(client, accounts)
    other = await accounts.user(admin=True)
    # `other` removes `first`'s admin rights through the API while first's panel session is still open.
    response = await client.patch(f"{API}/users/{first.admin.id}", json={"is_admin": False}, headers=other.headers)
    assert response.status == 200, await response.text()
    page = await client.get("/admin/users", allow_redirects=False)
    assert page.status == 303
    assert page.headers["Location"].startswith("/admin/login?next=")
    response = await first.post(f"/admin/users/{other.id}/active", {"value": "false"})
    assert response.status == 403
    assert (await api_user(client, other, other.id))["is_active"] is True


# Logging in


async def test_login_sets_a_strict_httponly_session_cookie(client: Client, accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    response = await client.get("/admin/login")
    page = await response.text()
    assert 'action="/admin/login"' in page
    assert "Log out" not in page
    morsel = response.cookies[LOGIN_CSRF_COOKIE]
    assert (morsel["httponly"], morsel["samesite"], morsel["path"]) == (True, "Strict", "/admin")
    assert csrf_of(page) == morsel.value

    response = await submit_login(client, admin.email, csrf=morsel.value, next_url="/admin/users?q=x")
    assert response.status == 303
    assert response.headers["Location"] == "/admin/users?q=x"
    morsel = response.cookies[SESSION_COOKIE]
    assert (morsel["httponly"], morsel["samesite"], morsel["path"]) == (True, "Strict", "/admin")
    assert not morsel["secure"]
    assert int(morsel["max-age"]) == 8 * 3600
    # The one-time login CSRF cookie is gone.
    assert jar_cookie(client, LOGIN_CSRF_COOKIE) is None
    assert (await client.get("/admin/users?q=x")).status == 200


async def test_session_cookie_is_secure_when_configured(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(cookie_secure=True)
    admin = await accounts.user(admin=True)
    page = await client.get("/admin/login")
    assert page.cookies[LOGIN_CSRF_COOKIE]["secure"]
    token = csrf_of(await page.text())
    # The jar keeps Secure cookies off plain http, as a browser would; send it by hand.
    response = await client.post(
        "/admin/login",
        data={"csrf_token": token, "email": admin.email, "password": admin.password},
        cookies={LOGIN_CSRF_COOKIE: token},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    morsel = response.cookies[SESSION_COOKIE]
    assert (morsel["secure"], morsel["httponly"], morsel["samesite"]) == (True, True, "Strict")


async def test_login_refusals(client: Client, accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    other = await accounts.user(admin=True)
    response = await client.patch(f"{API}/users/{other.id}", json={"is_active": False}, headers=admin.headers)
    assert response.status == 200
    for email, password, status, message in (
        # A non-admin learns clearly that the panel is not for them.
        (user.email, user.password, 403, "The admin panel is for administrators only."),
        (admin.email, "wrong password!", 401, "Email or password is incorrect."),
        ("nobody@example.com", PASSWORD, 401, "Email or password is incorrect."),
        (other.email, other.password, 403, "This account is deactivated."),
    ):
        response = await submit_login(client, email, password)
        assert response.status == status, email
        page = await response.text()
        assert flash_of(page) == ("error", message)
        assert 'type="password"' in page
        assert_page_headers(response)
        assert SESSION_COOKIE not in response.cookies
        assert jar_cookie(client, SESSION_COOKIE) is None
    assert (await client.get("/admin/", allow_redirects=False)).status == 303


async def test_login_is_rate_limited(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(login_attempts_per_account=2, login_attempts_per_address=4)
    first, second = await accounts.register(), await accounts.register()
    await promote(first["id"])
    await promote(second["id"])
    for _ in range(2):
        assert (await submit_login(client, first["email"], "wrong password!")).status == 401
    # Per account: even the right password waits until the window is over.
    limited = await submit_login(client, first["email"], first["password"])
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert "Too many failed logins" in await limited.text()
    assert SESSION_COOKIE not in limited.cookies
    assert_page_headers(limited)
    # Per address: the fourth attempt passes, the fifth is refused whoever it is for.
    assert (await submit_login(client, second["email"], "wrong password!")).status == 401
    limited = await submit_login(client, second["email"], second["password"])
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert "Too many login attempts from this address" in await limited.text()
    assert jar_cookie(client, SESSION_COOKIE) is None


async def test_login_needs_the_double_submit_csrf_token(client: Client, accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    stale = await login_form(client)
    token = await login_form(client)  # a new login form replaces the cookie, and so the older token
    credentials = {"email": admin.email, "password": admin.password}
    for extra in ({}, {"csrf_token": ""}, {"csrf_token": token + "x"}, {"csrf_token": stale}):
        response = await client.post("/admin/login", data={**credentials, **extra}, allow_redirects=False)
        assert response.status == 403, (extra, await response.text())
        assert SESSION_COOKIE not in response.cookies
        # A person with a stale form gets a fresh one and a reason, not a JSON error.
        page = await response.text()
        message = flash_of(page)
        assert message is not None and "CSRF check failed" in message[1], page
        assert csrf_of(page) == response.cookies[LOGIN_CSRF_COOKIE].value
        assert_page_headers(response)
    # The right token, but no cookie to match it (a cross-site form cannot make the browser send it).
    token = await login_form(client)
    client.session.cookie_jar.clear()
    response = await submit_login(client, admin.email, csrf=token)
    assert response.status == 403
    assert jar_cookie(client, SESSION_COOKIE) is None


async def test_login_redirects_back_but_never_off_site(client: Client, accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    for target in ("https://evil.example", "//evil.example", "/\\evil.example", "javascript:alert(1)", "/api/v1"):
        response = await submit_login(client, admin.email, next_url=target)
        assert response.status == 303
        assert response.headers["Location"] == "/admin/", target
        # The login page does not put it into its form either.
        page = await (await client.get("/admin/login", params={"next": target})).text()
        assert 'name="next" value="/admin/"' in page, target
    # A panel page asked for without a session is where the login ends, even after a failed attempt.
    client.session.cookie_jar.clear()
    wanted = f"/admin/audit?before={NO_ID}"
    first = await client.get(wanted, allow_redirects=False)
    page = await (await client.get(first.headers["Location"])).text()
    assert f'name="next" value="{html.escape(wanted)}"' in page
    failed = await submit_login(client, admin.email, "wrong password!", csrf=csrf_of(page), next_url=wanted)
    assert failed.status == 401
    page = await failed.text()
    assert f'name="next" value="{html.escape(wanted)}"' in page
    response = await submit_login(client, admin.email, csrf=csrf_of(page), next_url=wanted)
    assert response.headers["Location"] == wanted


# Pages


async def test_every_page_renders_with_security_headers(panel: Panel) -> None:
    user = await panel.accounts.user()
    for path in [*PAGES, f"/admin/users/{user.id}", f"/admin/users/{user.id}/delete", "/admin/login"]:
        response = await panel.client.get(path, allow_redirects=False)
        assert response.status == 200, path
        assert response.content_type == "text/html", path
        assert_page_headers(response)
    missing = await panel.client.get(f"/admin/users/{NO_ID}")
    assert missing.status == 404
    assert "There is no such user." in text_of(await missing.text())
    assert (await panel.client.get("/admin/users/not-an-id")).status == 404
    assert_page_headers(missing)
    # A mistyped panel address is the panel's HTML 404 page, not the API's JSON error.
    for path in ("/admin/nope", "/admin/users/x/y/z", "/admin/audit/"):
        unknown = await panel.client.get(path, allow_redirects=False)
        assert unknown.status == 404, path
        assert unknown.content_type == "text/html", path
        assert "There is no such page." in text_of(await unknown.text())
        assert_page_headers(unknown)


async def test_dashboard_and_its_json(panel: Panel) -> None:
    user = await panel.accounts.user()
    await panel.act(f"/admin/users/{user.id}/notify", {"title": "Welcome", "body": "Hi"})
    response = await panel.client.get("/admin/dashboard.json")
    assert response.status == 200
    body = await response.json()
    assert body["stats"]["users"] == {"total": 2, "active": 2, "admins": 1, "new_this_week": 2}
    assert body["stats"]["notifications"] == {"today": 1, "total": 1}
    assert body["stats"]["connections"] == 0
    assert body["events"][0]["action"] == "notification.sent"
    assert body["events"][0]["actor_email"] == panel.admin.email
    assert {event["action"] for event in body["events"]} >= {"user.registered", "notification.sent"}
    page = text_of(await panel.page("/admin/"))
    assert "Users 2 2 active · 1 admin · 2 new this week" in page
    assert f"notification.sent · Welcome by {panel.admin.email}" in page


async def test_dashboard_marks_estimated_totals(panel: Panel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past EXACT_BELOW documents a total is the database's estimate, and the dashboard says so."""
    body = await (await panel.client.get("/admin/dashboard.json")).json()
    assert body["stats"]["estimated"] == []
    assert "Users ≈" not in text_of(await panel.page("/admin/"))
    monkeypatch.setattr(dashboard, "EXACT_BELOW", 1)
    await panel.accounts.user()
    body = await (await panel.client.get("/admin/dashboard.json")).json()
    assert body["stats"]["estimated"] == ["users.total", "users.active"]
    assert body["stats"]["users"]["total"] >= 2  # at least what the bounded read counted
    assert body["stats"]["users"]["admins"] == 1  # counted exactly
    assert "Users ≈" in text_of(await panel.page("/admin/"))


# Actions


async def test_every_action_needs_the_csrf_token(panel: Panel) -> None:
    user = await panel.accounts.user()
    before = await api_user(panel.client, panel.admin, user.id)
    for path, data in actions(user.id):
        for token in ("", "0" * 40, panel.csrf[:-1] + ("0" if panel.csrf[-1] != "0" else "1")):
            response = await panel.post(path, data, csrf=token)
            assert response.status == 403, (path, token)
            assert "CSRF" in (await response.json())["error"]["message"]
        # Without the field at all.
        response = await panel.client.post(path, data=data, allow_redirects=False)
        assert response.status == 403, path
    assert await api_user(panel.client, panel.admin, user.id) == before
    assert await titles(panel.client, user) == []
    # The user's token still works (no session was revoked), the password is the old one, and the admin's panel
    # session works too.
    assert (await panel.client.get(f"{API}/users/me", headers=user.headers)).status == 200
    await panel.accounts.login(user.email)
    assert "Nothing sent yet." in await panel.page("/admin/notifications")
    audit = await panel.page("/admin/audit")
    assert {row.split()[4] for row in rows_of(audit)} == {"user.registered"}


async def test_csrf_token_in_a_header_and_bound_to_the_session(client: Client, accounts: Accounts) -> None:
    first = await open_panel(client, accounts)
    user = await accounts.user()
    response = await client.post(
        f"/admin/users/{user.id}/revoke", headers={"X-CSRF-Token": first.csrf}, allow_redirects=False
    )
    assert response.status == 303
    wrong = await client.post(
        f"/admin/users/{user.id}/revoke", headers={"X-CSRF-Token": "nope"}, data={"csrf_token": first.csrf}
    )
    assert wrong.status == 403
    # A second session of the same admin has its own token; the first one's does not work with it.
    client.session.cookie_jar.clear()
    second = await open_panel(client, accounts, first.admin)
    assert first.csrf != second.csrf
    response = await second.post(f"/admin/users/{user.id}/active", {"value": "false"}, csrf=first.csrf)
    assert response.status == 403
    assert (await api_user(client, first.admin, user.id))["is_active"] is True


async def audit_row(panel: Panel, action: str, label: str) -> str:
    return row_with(await panel.page("/admin/audit"), action, label)


async def test_deactivate_and_activate(panel: Panel) -> None:
    user = await panel.accounts.user()
    location, kind, text = await panel.act(f"/admin/users/{user.id}/active", {"value": "false"})
    assert (location, kind, text) == (f"/admin/users/{user.id}", "success", "Account deactivated.")
    assert (await api_user(panel.client, panel.admin, user.id))["is_active"] is False
    assert (await panel.client.get(f"{API}/users/me", headers=user.headers)).status == 401
    page = await panel.page(location)
    assert '<dd id="status">deactivated</dd>' in page
    assert ">Activate</button>" in page
    row = await audit_row(panel, "user.updated", user.email)
    assert panel.admin.email in row
    assert row.endswith("is_active: false")

    _, kind, text = await panel.act(f"/admin/users/{user.id}/active", {"value": "true"})
    assert (kind, text) == ("success", "Account activated.")
    assert (await api_user(panel.client, panel.admin, user.id))["is_active"] is True
    assert '<dd id="status">active</dd>' in await panel.page(location)
    await panel.accounts.login(user.email)
    assert len([row for row in rows_of(await panel.page("/admin/audit")) if "user.updated" in row]) == 2
    bad = await panel.post(f"/admin/users/{user.id}/active", {"value": "maybe"})
    assert bad.status == 400


async def test_grant_and_remove_admin(panel: Panel) -> None:
    user = await panel.accounts.user()
    _, kind, text = await panel.act(f"/admin/users/{user.id}/admin", {"value": "true"})
    assert (kind, text) == ("success", "Admin rights granted.")
    assert (await api_user(panel.client, panel.admin, user.id))["is_admin"] is True
    assert '<dd id="role">admin</dd>' in await panel.page(f"/admin/users/{user.id}")
    # The new admin can use admin-only API routes at once.
    assert (await panel.client.get(f"{API}/users", headers=user.headers)).status == 200
    assert panel.admin.email in await audit_row(panel, "is_admin: true", user.email)

    _, kind, text = await panel.act(f"/admin/users/{user.id}/admin", {"value": "false"})
    assert (kind, text) == ("success", "Admin rights removed.")
    assert (await api_user(panel.client, panel.admin, user.id))["is_admin"] is False
    assert (await panel.client.get(f"{API}/users", headers=user.headers)).status == 403
    assert panel.admin.email in await audit_row(panel, "is_admin: false", user.email)


async def test_last_admin_cannot_deactivate_or_demote_themselves(panel: Panel) -> None:
    me = f"/admin/users/{panel.admin.id}"
    for path, value in ((f"{me}/active", "false"), (f"{me}/admin", "false")):
        location, kind, text = await panel.act(path, {"value": value})
        assert (location, kind, text) == (me, "error", "This would leave no active administrator.")
    state = await api_user(panel.client, panel.admin, panel.admin.id)
    assert (state["is_active"], state["is_admin"]) == (True, True)
    assert not [row for row in rows_of(await panel.page("/admin/audit")) if "user.updated" in row]
    # With a second active admin, an admin may step down.
    other = await panel.accounts.user(admin=True)
    _, kind, _ = await panel.act(f"/admin/users/{other.id}/admin", {"value": "false"})
    assert kind == "success"
    _, kind, text = await panel.act(f"{me}/admin", {"value": "false"})
    assert (kind, text) == ("error", "This would leave no active administrator.")
    # With another active admin, stepping down works, and the panel is then closed to them.
    await panel.accounts.user(admin=True)
    response = await panel.post(f"{me}/admin", {"value": "false"})
    assert response.status == 303
    assert (await api_user(panel.client, panel.admin, panel.admin.id))["is_admin"] is False
    page = await panel.client.get(response.headers["Location"], allow_redirects=False)
    assert page.status == 303
    assert page.headers["Location"].startswith("/admin/login")


async def test_revoke_sessions(panel: Panel) -> None:
    user = await panel.accounts.user()
    await panel.accounts.login(user.email)
    page = await panel.page(f"/admin/users/{user.id}")
    assert "<dt>Open sessions</dt><dd>2</dd>" in page
    _, kind, text = await panel.act(f"/admin/users/{user.id}/revoke")
    assert (kind, text) == ("success", "Every session of this user was ended.")
    assert (await panel.client.get(f"{API}/users/me", headers=user.headers)).status == 401
    refresh = await panel.client.post(f"{API}/auth/refresh", json={"refresh_token": user.refresh_token})
    assert refresh.status == 401
    assert "<dt>Open sessions</dt><dd>0</dd>" in await panel.page(f"/admin/users/{user.id}")
    assert panel.admin.email in await audit_row(panel, "user.sessions_revoked", user.email)
    # The admin's own session is untouched.
    assert (await panel.client.get("/admin/", allow_redirects=False)).status == 200


async def test_notify_user_from_their_page(panel: Panel) -> None:
    user = await panel.accounts.user()
    other = await panel.accounts.user()
    _, kind, text = await panel.act(f"/admin/users/{user.id}/notify", {"title": "Your order", "body": "has shipped"})
    assert (kind, text) == ("success", "Notification sent.")
    [notification] = await inbox(panel.client, user)
    assert (notification["title"], notification["body"], notification["broadcast"]) == (
        "Your order",
        "has shipped",
        False,
    )
    assert await inbox(panel.client, other) == []
    assert panel.admin.email in await audit_row(panel, "notification.sent", "Your order")
    for blank in ("", "    "):
        _, kind, text = await panel.act(f"/admin/users/{user.id}/notify", {"title": blank, "body": "x"})
        assert (kind, text) == ("error", "Enter a title of 1 to 200 characters, not only spaces.")
    assert len(await inbox(panel.client, user)) == 1


# Users page


async def test_users_search_and_filters(panel: Panel) -> None:
    alice = await panel.accounts.user(email="alice.search@example.com", username="zed_alice")
    bob = await panel.accounts.user(email="bob.search@example.com", username="alice_bob")
    carol = await panel.accounts.user(email="carol@example.com", username="carol")
    await panel.act(f"/admin/users/{carol.id}/active", {"value": "false"})

    def emails(page: str) -> set[str]:
        return set(re.findall(r'<a href="/admin/users/[0-9a-f]{24}">([^<]+)</a>', page))

    assert emails(await panel.page("/admin/users")) == {panel.admin.email, alice.email, bob.email, carol.email}
    # Email prefix, username prefix, case-insensitively; never the middle of a word.
    assert emails(await panel.page("/admin/users?q=alice")) == {alice.email, bob.email}
    assert emails(await panel.page("/admin/users?q=ALICE.S")) == {alice.email}
    assert emails(await panel.page("/admin/users?q=zed_")) == {alice.email}
    assert emails(await panel.page("/admin/users?q=search")) == set()
    assert emails(await panel.page("/admin/users?q=.*")) == set()
    assert emails(await panel.page("/admin/users?active=no")) == {carol.email}
    assert emails(await panel.page("/admin/users?active=yes&admin=no")) == {alice.email, bob.email}
    assert emails(await panel.page("/admin/users?admin=yes")) == {panel.admin.email}
    empty = await panel.page("/admin/users?q=nobody")
    assert "No users match." in empty
    assert '<a href="/admin/users">Clear the filters</a>' in empty
    # The form keeps what was asked for.
    page = await panel.page("/admin/users?q=alice&active=yes")
    assert 'name="q" value="alice"' in page
    assert '<option value="yes" selected>yes</option>' in page
    assert ">alice_bob</td>" in await panel.page("/admin/users?q=alice")
    # A malformed cursor goes back to the first page instead of failing.
    bad = await panel.client.get("/admin/users?before=nope", allow_redirects=False)
    assert bad.status == 303
    assert bad.headers["Location"] == "/admin/users"


async def test_users_pagination(panel: Panel) -> None:
    made = [await panel.accounts.register(email=f"page{i:02d}@example.com") for i in range(27)]
    first = await panel.page("/admin/users")
    assert len(rows_of(first)) == 25
    assert "« Newest" not in first
    link = older_link(first)
    assert link is not None and link.startswith("/admin/users?before=")
    second = await panel.page(link)
    shown = [row.split()[0] for row in rows_of(first) + rows_of(second)]
    # Newest first, each user exactly once.
    assert shown == [user["email"] for user in reversed(made)] + [panel.admin.email]
    assert older_link(second) is None
    assert '<a href="/admin/users">« Newest</a>' in second
    # The filter is kept on the next page.
    filtered = await panel.page("/admin/users?q=page&active=yes")
    link = older_link(filtered)
    assert link is not None
    assert "q=page" in link and "active=yes" in link
    second = await panel.page(link)
    assert [row.split()[0] for row in rows_of(second)] == [made[1]["email"], made[0]["email"]]
    assert '<a href="/admin/users?q=page&amp;active=yes">« Newest</a>' in second


# Notifications page


async def test_preview_escapes_and_sends_nothing(panel: Panel) -> None:
    user = await panel.accounts.user()
    response = await panel.post(
        "/admin/notifications",
        {
            "action": "preview",
            "audience": "users",
            "recipients": user.email,
            "title": "<b>Bold</b> & <script>alert(2)</script>",
            "body": "<img src=x onerror=alert(3)>",
        },
    )
    assert response.status == 200
    page = await response.text()
    assert "<script>" not in page
    assert "<img src=x" not in page
    assert "<b>Bold</b>" not in page
    assert "&lt;b&gt;Bold&lt;/b&gt; &amp; &lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in page
    assert "Preview: to 1 user " in text_of(page)
    # The form keeps its values for the real send.
    assert f">{user.email}</textarea>" in page
    assert await inbox(panel.client, user) == []
    assert "Nothing sent yet." in await panel.page("/admin/notifications")
    broadcast = await panel.post(
        "/admin/notifications", {"action": "preview", "audience": "broadcast", "title": "All", "body": ""}
    )
    assert "Preview: to everyone" in text_of(await broadcast.text())
    assert await inbox(panel.client, user) == []


async def test_send_to_chosen_users_by_email_or_username(panel: Panel) -> None:
    one = await panel.accounts.user()
    two = await panel.accounts.user()
    three = await panel.accounts.user()
    location, kind, text = await panel.act(
        "/admin/notifications",
        {
            "action": "send",
            "audience": "users",
            "recipients": f"{one.email.upper()},\n {two.username} , {one.username}",
            "title": "Maintenance",
            "body": "Tonight at 22:00",
        },
    )
    assert (location, kind, text) == ("/admin/notifications", "success", "Notification sent to 2 users.")
    assert await titles(panel.client, one) == ["Maintenance"]
    assert await titles(panel.client, two) == ["Maintenance"]
    assert await titles(panel.client, three) == []
    assert panel.admin.email in await audit_row(panel, "notification.sent", "Maintenance")


async def test_broadcast(panel: Panel) -> None:
    one = await panel.accounts.user()
    _, kind, text = await panel.act(
        "/admin/notifications",
        {"action": "send", "audience": "broadcast", "recipients": "ignored", "title": "Hello all", "body": ""},
    )
    assert (kind, text) == ("success", "Notification sent to everyone.")
    [notification] = await inbox(panel.client, one)
    assert (notification["title"], notification["broadcast"]) == ("Hello all", True)
    row = row_with(await panel.page("/admin/notifications"), "Hello all")
    assert row.endswith(f"Hello all {panel.admin.email} everyone 0")
    read = await panel.client.post(f"{API}/notifications/{notification['id']}/read", headers=one.headers)
    assert read.status == 204
    row = row_with(await panel.page("/admin/notifications"), "Hello all")
    assert row.endswith(f"Hello all {panel.admin.email} everyone 1")


# Internal names that a person must never read in the panel's messages.
INTERNAL_NAMES = ("user_ids", "recipients:", "emails", "usernames", "_schema", "title:", "body:", "password:")


def assert_speaks_the_panels_language(message: str) -> None:
    for name in INTERNAL_NAMES:
        assert name not in message, (name, message)


async def test_unknown_or_missing_recipients_are_an_error(panel: Panel) -> None:
    user = await panel.accounts.user()
    long_body = "x" * 5001
    for recipients, title, body, message, invalid in (
        (
            f"{user.email}, nobody@example.com, ghost",
            "T",
            "B",
            "No user found for: nobody@example.com, ghost.",
            ["recipients"],
        ),
        ("", "T", "B", "Enter at least one user (up to 1000).", ["recipients"]),
        (" ,\n ", "T", "B", "Enter at least one user (up to 1000).", ["recipients"]),
        (
            "ghost",
            "  ",
            long_body,
            "No user found for: ghost. Enter a title of 1 to 200 characters, not only spaces. "
            "Keep the message to 5000 characters or fewer.",
            ["recipients", "title", "body"],
        ),
    ):
        response = await panel.post(
            "/admin/notifications",
            {"action": "send", "audience": "users", "recipients": recipients, "title": title, "body": body},
        )
        assert response.status == 422
        page = await response.text()
        assert flash_of(page) == ("error", message)
        assert_speaks_the_panels_language(message)
        # The boxes in error are marked for assistive technology, and only those.
        marked = re.findall(r'name="(\w+)"[^>]*aria-invalid="true"', page)
        assert marked == invalid, page
    for blank in ("", "   "):
        missing_title = await panel.post(
            "/admin/notifications", {"action": "send", "audience": "broadcast", "title": blank, "body": "B"}
        )
        assert missing_title.status == 422
        page = await missing_title.text()
        assert flash_of(page) == ("error", "Enter a title of 1 to 200 characters, not only spaces.")
    assert await inbox(panel.client, user) == []
    assert "Nothing sent yet." in await panel.page("/admin/notifications")


async def test_sent_log_shows_sender_and_read_counts(panel: Panel) -> None:
    one = await panel.accounts.user()
    two = await panel.accounts.user()
    await panel.act(
        "/admin/notifications",
        {"action": "send", "audience": "users", "recipients": f"{one.email}\n{two.email}", "title": "Read me"},
    )
    # An admin's change to an account tells its user, but is not a send: it is not in the Sent list.
    await panel.act(f"/admin/users/{one.id}/admin", {"value": "true"})
    assert "You are now an administrator" in [item["title"] for item in await inbox(panel.client, one)]
    page = await panel.page("/admin/notifications")
    assert row_with(page, "Read me").endswith(f"Read me {panel.admin.email} 2 users 0 / 2")
    assert "You are now an administrator" not in page
    [notification] = [item for item in await inbox(panel.client, one) if item["title"] == "Read me"]
    response = await panel.client.post(f"{API}/notifications/{notification['id']}/read", headers=one.headers)
    assert response.status == 204
    assert row_with(await panel.page("/admin/notifications"), "Read me").endswith("2 users 1 / 2")


async def test_sent_and_audit_logs_are_paginated(panel: Panel) -> None:
    user = await panel.accounts.user()
    for i in range(26):
        response = await panel.client.post(
            f"{API}/notifications",
            json={"title": f"n{i:02d}", "body": "", "user_ids": [user.id]},
            headers=panel.admin.headers,
        )
        assert response.status == 201
    first = await panel.page("/admin/notifications")
    assert len(rows_of(first)) == 25
    link = older_link(first)
    assert link is not None
    second = await panel.page(link)
    assert [row.split()[3] for row in rows_of(second)] == ["n00"]
    assert older_link(second) is None
    # Audit: two registrations and 26 sends.
    first = await panel.page("/admin/audit")
    assert len(rows_of(first)) == 25
    link = older_link(first)
    assert link is not None
    older = rows_of(await panel.page(link))
    assert [row.split()[3:5] for row in older] == [
        [panel.admin.email, "notification.sent"],
        ["system", "user.registered"],
        ["system", "user.registered"],
    ]


# Logging out, and what the cookie is not


async def test_logout_ends_the_session(panel: Panel) -> None:
    cookie = jar_cookie(panel.client, SESSION_COOKIE)
    assert cookie
    location, kind, text = await panel.act("/admin/logout")
    assert (location, kind, text) == ("/admin/login", "success", "You are logged out.")
    assert jar_cookie(panel.client, SESSION_COOKIE) is None
    assert (await panel.client.get("/admin/", allow_redirects=False)).status == 303
    # The old cookie, replayed, no longer works.
    replay = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    page = await panel.client.get("/admin/users", headers=replay, allow_redirects=False)
    assert page.status == 303
    action = await panel.client.post(
        "/admin/logout", data={"csrf_token": panel.csrf}, headers=replay, allow_redirects=False
    )
    assert action.status == 401


async def test_panel_cookie_is_not_an_access_token(panel: Panel) -> None:
    cookie = jar_cookie(panel.client, SESSION_COOKIE)
    assert cookie
    for path in (f"{API}/users/me", f"{API}/users"):
        response = await panel.client.get(path, headers={"Authorization": f"Bearer {cookie}"})
        assert response.status == 401, path
    ws = await panel.client.ws_connect(f"{API}/ws")
    await ws.send_json({"type": "auth", "token": cookie})
    message = await ws.receive(timeout=10)
    assert message.type is WSMsgType.CLOSE, message
    assert message.data == 4401
    assert ws.closed


async def test_access_token_is_not_a_panel_cookie(panel: Panel) -> None:
    panel.client.session.cookie_jar.clear()
    forged = {"Cookie": f"{SESSION_COOKIE}={panel.admin.access_token}"}
    page = await panel.client.get("/admin/", headers=forged, allow_redirects=False)
    assert page.status == 303
    assert page.headers["Location"].startswith("/admin/login")
    user = await panel.accounts.user()
    action = await panel.client.post(
        f"/admin/users/{user.id}/active",
        data={"csrf_token": panel.csrf, "value": "false"},
        headers=forged,
        allow_redirects=False,
    )
    assert action.status == 401
    assert (await api_user(panel.client, panel.admin, user.id))["is_active"] is True


# Escaping


async def test_user_content_is_escaped_everywhere(panel: Panel) -> None:
    user = await panel.accounts.user(full_name=XSS_NAME, email="xss@example.com", username="xss_user")
    await panel.act(f"/admin/users/{user.id}/notify", {"title": XSS_NAME, "body": '"><img src=x onerror=alert(1)>'})
    await panel.act(
        "/admin/notifications",
        {"action": "send", "audience": "broadcast", "title": "<b onmouseover=alert(1)>hi</b>", "body": XSS_NAME},
    )
    await panel.act(f"/admin/users/{user.id}/active", {"value": "false"})
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    pages = {
        path: await panel.page(path)
        for path in (
            "/admin/",
            "/admin/users",
            "/admin/users?q=xss",
            f"/admin/users/{user.id}",
            f"/admin/users/{user.id}/delete",
            "/admin/notifications",
            "/admin/audit",
            f"/admin/audit?target={XSS_NAME}",
            f"/admin/audit?actor={XSS_NAME}&target={XSS_NAME}",
        )
    }
    preview = await panel.post(
        "/admin/notifications",
        {"action": "preview", "audience": "users", "recipients": XSS_NAME, "title": XSS_NAME, "body": XSS_NAME},
    )
    assert preview.status == 422  # an unknown recipient, echoed back escaped
    pages["preview"] = await preview.text()
    login = await panel.client.get("/admin/login", params={"next": '/admin/"><script>alert(1)</script>'})
    pages["login"] = await login.text()
    for path, page in pages.items():
        assert "<script>" not in page, path
        assert "<img" not in page, path
        assert "<b " not in page, path
    for path in (
        "/admin/users",
        f"/admin/users/{user.id}",
        f"/admin/users/{user.id}/delete",
        "/admin/notifications",
        "/admin/audit",
        f"/admin/audit?target={XSS_NAME}",
        f"/admin/audit?actor={XSS_NAME}&target={XSS_NAME}",
        "preview",
    ):
        assert escaped in pages[path], path
    assert f"<h1>{escaped}</h1>" in pages[f"/admin/users/{user.id}"]
    assert "&lt;b onmouseover=alert(1)&gt;hi&lt;/b&gt;" in pages["/admin/"]


# Deleting a user


async def test_delete_user_after_a_confirmation_that_names_them(panel: Panel) -> None:
    user = await panel.accounts.user(full_name="Dana Scully")
    await panel.act(f"/admin/users/{user.id}/notify", {"title": "Before", "body": ""})
    page = await panel.page(f"/admin/users/{user.id}")
    assert f'href="/admin/users/{user.id}/delete">Delete user…</a>' in page
    # The user's page only links to the confirmation: nothing is deleted by a GET.
    confirm = await panel.page(f"/admin/users/{user.id}/delete")
    assert f"<h1>Delete {user.email}?</h1>" in confirm
    assert user.username in text_of(confirm)
    assert f'<form method="post" action="/admin/users/{user.id}/delete"' in confirm
    assert csrf_of(confirm) == panel.csrf
    assert f"Delete {user.email}</button>" in confirm
    assert f'<a class="button secondary" href="/admin/users/{user.id}">Cancel</a>' in confirm
    assert (await api_user(panel.client, panel.admin, user.id))["email"] == user.email

    async with panel.client.ws_connect(f"{API}/ws", headers=user.headers) as ws:
        await ready(ws)
        location, kind, text = await panel.act(f"/admin/users/{user.id}/delete")
        assert (location, kind, text) == ("/admin/users", "success", f"{user.email} was deleted.")
        # The same service as the API: the socket closes, the tokens and the account are gone.
        await expect_close(ws, 4403)
    assert (await panel.client.get(f"{API}/users/{user.id}", headers=panel.admin.headers)).status == 404
    assert (await panel.client.get(f"{API}/users/me", headers=user.headers)).status == 401
    assert user.email not in await panel.page("/admin/users")
    assert "There is no such user." in text_of(await panel.page(f"/admin/users/{user.id}", 404))
    assert "There is no such user." in text_of(await panel.page(f"/admin/users/{user.id}/delete", 404))
    assert panel.admin.email in await audit_row(panel, "user.deleted", user.email)
    # A second click on a stale confirmation page.
    location, kind, text = await panel.act(f"/admin/users/{user.id}/delete")
    assert (location, kind, text) == ("/admin/users", "error", "There is no such user any more.")


async def test_the_last_active_admin_cannot_be_deleted(panel: Panel) -> None:
    me = panel.admin
    location, kind, text = await panel.act(f"/admin/users/{me.id}/delete")
    assert (location, kind, text) == (
        f"/admin/users/{me.id}",
        "error",
        f"{me.email} was not deleted. This would leave no active administrator.",
    )
    assert (await api_user(panel.client, me, me.id))["is_admin"] is True
    assert not [row for row in rows_of(await panel.page("/admin/audit")) if "user.deleted" in row]
    # Another admin who is deactivated does not count: still refused. Once they are active, either may go.
    other = await panel.accounts.user(admin=True)
    await panel.act(f"/admin/users/{other.id}/active", {"value": "false"})
    _, kind, _ = await panel.act(f"/admin/users/{me.id}/delete")
    assert kind == "error"
    await panel.act(f"/admin/users/{other.id}/active", {"value": "true"})
    location, kind, text = await panel.act(f"/admin/users/{other.id}/delete")
    assert (location, kind, text) == ("/admin/users", "success", f"{other.email} was deleted.")
    _, kind, text = await panel.act(f"/admin/users/{me.id}/delete")
    assert (kind, text) == ("error", f"{me.email} was not deleted. This would leave no active administrator.")


# Setting a password


async def test_set_a_users_password(panel: Panel) -> None:
    user = await panel.accounts.user()
    await panel.accounts.login(user.email)
    page = await panel.page(f"/admin/users/{user.id}")
    assert f'<form method="post" action="/admin/users/{user.id}/password"' in page
    assert 'name="password" type="password" autocomplete="new-password" required minlength="8"' in page
    for form, message in (
        ({"password": "short", "password_again": "short"}, "Enter a password of 8 to 128 characters."),
        ({"password": "x" * 129, "password_again": "x" * 129}, "Enter a password of 8 to 128 characters."),
        ({}, "Enter a password of 8 to 128 characters."),
        (
            {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD + "!"},
            "The two passwords differ: type the same password in both boxes.",
        ),
    ):
        _, kind, text = await panel.act(f"/admin/users/{user.id}/password", form)
        assert (kind, text) == ("error", message)
        assert_speaks_the_panels_language(text)
    # Nothing changed so far.
    assert (await panel.client.get(f"{API}/users/me", headers=user.headers)).status == 200
    await panel.accounts.login(user.email)

    async with panel.client.ws_connect(f"{API}/ws", headers=user.headers) as ws:
        await ready(ws)
        location, kind, text = await panel.act(
            f"/admin/users/{user.id}/password", {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}
        )
        assert (location, kind) == (f"/admin/users/{user.id}", "success")
        assert text == (
            f"Password set for {user.email}. Their sessions have ended: they sign in again with the new password."
        )
        await expect_close(ws, 4401)
    # Every session ended: tokens, refresh tokens; the old password no longer works, the new one does.
    assert (await panel.client.get(f"{API}/users/me", headers=user.headers)).status == 401
    refresh = await panel.client.post(f"{API}/auth/refresh", json={"refresh_token": user.refresh_token})
    assert refresh.status == 401
    assert "<dt>Open sessions</dt><dd>0</dd>" in await panel.page(f"/admin/users/{user.id}")
    old = await panel.client.post(f"{API}/auth/login", json={"email": user.email, "password": user.password})
    assert old.status == 401
    tokens = await panel.accounts.login(user.email, NEW_PASSWORD)
    # The user is told, by the admin who did it; the log says who, never the password.
    response = await panel.client.get(
        f"{API}/notifications", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    [notice] = [item for item in (await response.json())["items"] if item["title"].startswith("Your password")]
    assert notice["title"] == "Your password was changed; sign in with the new one"
    row = await audit_row(panel, "user.password_set", user.email)
    assert row.endswith(f"{panel.admin.email} user.password_set {user.email} sessions: all ended")
    assert NEW_PASSWORD not in await panel.page("/admin/audit")


# Open sockets


def sockets_of(page: str) -> int:
    found = re.search(r'<dd id="sockets">(\d+)</dd>', page)
    assert found is not None, page
    return int(found.group(1))


async def sockets_become(panel: Panel, user_id: str, expected: int) -> None:
    """Wait (bounded) for the user's page to show `expected` sockets: other processes report on a timer."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while (shown := sockets_of(await panel.page(f"/admin/users/{user_id}"))) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"the page still shows {shown}, not {expected}"
        await asyncio.sleep(0.1)


async def test_user_page_shows_open_sockets_as_the_dashboard_counts_them(panel: Panel, settings: Settings) -> None:
    user = await panel.accounts.user()
    other = await panel.accounts.user()
    page = f"/admin/users/{user.id}"
    assert "<dt>Open sockets</dt>" in await panel.page(page)
    assert sockets_of(await panel.page(page)) == 0
    async with (
        panel.client.ws_connect(f"{API}/ws", headers=user.headers) as one,
        panel.client.ws_connect(f"{API}/ws", headers=user.headers) as two,
        panel.client.ws_connect(f"{API}/ws", headers=other.headers) as theirs,
    ):
        for ws in (one, two, theirs):
            await ready(ws)
        # This process's sockets count at once.
        assert sockets_of(await panel.page(page)) == 2
        assert sockets_of(await panel.page(f"/admin/users/{other.id}")) == 1
        # Another process's figures, as its gauge writes them; a process that stopped reporting is not counted.
        redis = panel.client.app[redis_key]
        now = time.time()
        prefix = settings.redis_prefix
        await redis.hset(f"{prefix}ws:connections", mapping={"fresh": f"5:{now:.0f}", "stale": f"9:{now - 600:.0f}"})
        await redis.hset(f"{prefix}ws:users:fresh", mapping={user.id: 3, "0" * 24: 2})
        await redis.hset(f"{prefix}ws:users:stale", mapping={user.id: 9})
        assert sockets_of(await panel.page(page)) == 5
        assert sockets_of(await panel.page(f"/admin/users/{other.id}")) == 1
        stats = await (await panel.client.get("/admin/dashboard.json")).json()
        assert stats["stats"]["connections"] == 3 + 5
    await sockets_become(panel, user.id, 3)


async def test_open_sockets_are_summed_over_processes(make_client: AppFactory) -> None:
    """Two apps on one database and one Redis prefix: two server processes, as far as the gauge can tell."""
    first, accounts, settings = await make_client(connection_report_interval=1.0)
    second, _, _ = await make_client(
        mongodb_db=settings.mongodb_db, redis_prefix=settings.redis_prefix, connection_report_interval=1.0
    )
    panel = await open_panel(second, Accounts(second))
    user = await accounts.user()
    async with (
        first.ws_connect(f"{API}/ws", headers=user.headers) as one,
        first.ws_connect(f"{API}/ws", headers=user.headers) as two,
    ):
        await ready(one)
        await ready(two)
        await sockets_become(panel, user.id, 2)
        async with second.ws_connect(f"{API}/ws", headers=user.headers) as three:
            await ready(three)
            await sockets_become(panel, user.id, 3)
    await sockets_become(panel, user.id, 0)


# The audit log's filters


async def past_entry(
    when: datetime,
    action: str,
    *,
    actor: Account | None,
    target: Account,
    details: dict[str, Any] | None = None,
) -> None:
    """An entry of the log as if recorded at `when`."""
    await AuditEntry(
        id=PydanticObjectId(ObjectId.from_datetime(when)),
        actor_id=PydanticObjectId(actor.id) if actor else None,
        actor_email=actor.email if actor else None,
        action=action,
        target_id=PydanticObjectId(target.id),
        target_label=target.email,
        details=details or {},
        created_at=when,
    ).insert()


def audit_url(**filters: str) -> str:
    return "/admin/audit?" + urlencode(filters)


async def test_audit_log_filters_and_pages_that_keep_them(panel: Panel) -> None:
    admin = panel.admin
    alice = await panel.accounts.user()
    bob = await panel.accounts.user()
    day = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    for minute in range(30):
        await past_entry(
            day + timedelta(minutes=minute),
            "user.updated",
            actor=admin,
            target=alice,
            details={"changes": {"is_active": minute % 2 == 0, "full_name": f"Alice {minute}"}},
        )
    await past_entry(day - timedelta(days=1), "user.updated", actor=admin, target=alice)
    await past_entry(day + timedelta(days=1), "user.updated", actor=admin, target=alice)
    await past_entry(day + timedelta(minutes=40), "user.updated", actor=admin, target=bob)
    await past_entry(day + timedelta(minutes=41), "user.sessions_revoked", actor=admin, target=alice)
    await past_entry(day + timedelta(minutes=42), "user.updated", actor=None, target=alice)

    chosen = {
        "actor": admin.email.upper(),
        "action": "user.updated",
        "target": alice.username,
        "from": "2026-01-10",
        "to": "2026-01-10",
    }
    first = await panel.page(audit_url(**chosen))
    rows = rows_of(first)
    assert len(rows) == 25
    assert (
        rows[0] == f"2026-01-10 12:29 UTC {admin.email} user.updated {alice.email} is_active: false full_name: Alice 29"
    )
    assert all(row.startswith("2026-01-10 12:") and f"{admin.email} user.updated {alice.email}" in row for row in rows)
    # Details are lines of text, not JSON.
    assert '<span class="line">is_active: false</span> <span class="line">full_name: Alice 29</span>' in first
    assert "{" not in " ".join(rows)
    # The form shows what was asked for.
    assert f'name="actor" value="{html.escape(chosen["actor"])}"' in first
    assert f'name="target" value="{alice.username}"' in first
    assert '<option value="user.updated" selected>' in first
    assert 'name="from" value="2026-01-10"' in first and 'name="to" value="2026-01-10"' in first
    assert "« Newest" not in first
    # The next page keeps every filter.
    link = older_link(first)
    assert link is not None
    assert {key: value for key, value in URL(link).query.items() if key != "before"} == chosen
    second = await panel.page(link)
    assert [row.split()[1] for row in rows_of(second)] == ["12:04", "12:03", "12:02", "12:01", "12:00"]
    assert older_link(second) is None
    newest = re.search(r'<a href="([^"]+)">« Newest</a>', second)
    assert newest is not None
    assert dict(URL(html.unescape(newest.group(1))).query) == chosen

    def targets_and_actions(page: str) -> list[tuple[str, str]]:
        return [(row.split()[4], row.split()[5]) for row in rows_of(page)]

    # Each filter alone, and a user named by id, email or username.
    by_alice_id = rows_of(await panel.page(audit_url(target=alice.id, action="user.updated", **{"from": "2026-01-11"})))
    assert len(by_alice_id) == 1 and by_alice_id[0].startswith("2026-01-11 12:00 UTC")
    assert len(rows_of(await panel.page(audit_url(target=alice.email, to="2026-01-09")))) == 1
    about_bob = await panel.page(audit_url(target=bob.email.upper()))
    assert targets_and_actions(about_bob) == [("user.registered", bob.email), ("user.updated", bob.email)]
    by_system = rows_of(await panel.page(audit_url(actor="System")))
    assert by_system and all(row.split()[3] == "system" for row in by_system)
    assert len(by_system) == 3 + 1  # three sign-ups and the entry made by no admin
    revoked = rows_of(await panel.page(audit_url(actor=admin.username, action="user.sessions_revoked")))
    assert len(revoked) == 1
    # A send's title; an admin deleted since, by the email recorded; nothing found.
    await panel.act(f"/admin/users/{bob.id}/notify", {"title": "Quarterly news", "body": ""})
    sent = rows_of(await panel.page(audit_url(target="Quarterly news")))
    assert len(sent) == 1 and sent[0].endswith(f"{admin.email} notification.sent Quarterly news recipients: 1")
    gone = await panel.accounts.user(admin=True)
    response = await panel.client.patch(f"{API}/users/{bob.id}", json={"bio": "hi"}, headers=gone.headers)
    assert response.status == 200
    await panel.act(f"/admin/users/{gone.id}/delete")
    by_gone = rows_of(await panel.page(audit_url(actor=gone.email)))
    assert len(by_gone) == 1 and f"{gone.email} user.updated {bob.email} bio: hi" in by_gone[0]
    about_gone = await panel.page(audit_url(target=gone.email))
    assert [action for action, _ in targets_and_actions(about_gone)] == ["user.deleted", "user.registered"]
    empty = await panel.page(audit_url(actor="nobody@example.com"))
    assert rows_of(empty) == []
    assert 'No entries match. <a href="/admin/audit">Clear the filters</a>.' in empty


async def test_audit_filters_that_cannot_be_read_are_explained(panel: Panel) -> None:
    for query, message in (
        ({"from": "2026-02-30"}, "From: enter a date as year-month-day, for example 2026-12-31."),
        ({"to": "yesterday"}, "To: enter a date as year-month-day, for example 2026-12-31."),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "To is before From: choose a To date on or after the From date."),
        ({"action": "user.exploded"}, "Action: choose one from the list."),
    ):
        page = await panel.page(audit_url(**query), status=422)
        assert flash_of(page) == ("error", message)
        assert rows_of(page) == []
        for field, value in query.items():
            if field != "action":
                assert f'name="{field}" value="{value}"' in page
    # A malformed cursor goes back to the first page of the same filters.
    response = await panel.client.get(audit_url(actor="system", before="nope"), allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/admin/audit?actor=system"


# Plurals


async def test_counts_take_the_right_noun(panel: Panel) -> None:
    assert "· 1 admin ·" in text_of(await panel.page("/admin/"))
    one = await panel.accounts.user(admin=True)
    assert "· 2 admins ·" in text_of(await panel.page("/admin/"))
    send = {"action": "send", "audience": "users", "recipients": one.email, "title": "Just one"}
    preview = await panel.post("/admin/notifications", {**send, "action": "preview"})
    assert "Preview: to 1 user " in text_of(await preview.text())
    _, _, text = await panel.act("/admin/notifications", send)
    assert text == "Notification sent to 1 user."
    assert row_with(await panel.page("/admin/notifications"), "Just one").endswith("1 user 0 / 1")
    for path in ("/admin/", "/admin/notifications", "/admin/users", "/admin/audit"):
        assert "(s)" not in text_of(await panel.page(path)), path
