"""A NUL (U+0000) anywhere a client sends text is invalid input: 422 naming the field (a panel page for the panel,
an error message on a WebSocket), never a 5xx, and nothing reaches MongoDB. FerretDB on PostgreSQL cannot store a
NUL, so one that got through would answer 503 (handlers/nul.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from tests.conftest import Account, Accounts, drop_test_data, make_settings
from tests.helpers import error_of
from tests.realtime import expect_close, next_of, pong, ready, send_to, unread
from tests.test_admin_panel import Panel, flash_of, login_form, open_panel, text_of
from tidings.documents import AuditEntry, Dispatch, Notification, Session, User
from tidings.handlers.admin.cookies import SESSION_COOKIE
from tidings.server.app import create_app
from tidings.server.runner import TidingsRunner

Client = TestClient[Any, Any]
API = "/api/v1"
WS = f"{API}/ws"
NUL = "\x00"
BAD = ["Must not contain the NUL character."]
NUL_SENTENCE = "Must not contain the NUL character."
NO_ID = "0" * 24


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No request here may reach a backing service and fail there (503's warning), or fail any other way."""
    yield
    failures = [r for r in caplog.get_records("call") if r.levelno >= logging.WARNING and r.name.startswith("tidings")]
    assert not failures, [f"{r.name}: {r.getMessage()}" for r in failures]


async def stored() -> dict[str, list[dict[str, Any]]]:
    """What the requests here could have written: every document of these collections."""
    snapshot: dict[str, list[dict[str, Any]]] = {}
    for model in (User, Session, Notification, Dispatch, AuditEntry):
        collection = model.get_pymongo_collection()
        snapshot[collection.name] = await collection.find({}).sort("_id").to_list()
    return snapshot


async def refused(response: ClientResponse, details: dict[str, Any]) -> None:
    error = await error_of(response, 422, "validation_error")
    assert error["details"] == details, error


# The API: JSON bodies


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        ({"email": f"ada{NUL}@example.com"}, {"email": BAD}),
        ({"username": f"ada{NUL}"}, {"username": BAD}),
        ({"password": f"correct horse {NUL}battery"}, {"password": BAD}),
        ({"full_name": f"Ada {NUL}Lovelace"}, {"full_name": BAD}),
        ({f"full{NUL}name": "Ada"}, {f"full{NUL}name": {"key": BAD}}),
    ],
)
async def test_register_with_a_nul_is_refused_and_stores_nothing(
    client: Client, fields: dict[str, Any], details: dict[str, Any]
) -> None:
    before = await stored()
    body = {"email": "ada@example.com", "username": "ada", "password": "correct horse battery", **fields}
    await refused(await client.post(f"{API}/auth/register", json=body), details)
    assert await stored() == before


async def test_login_with_a_nul_is_refused(client: Client, accounts: Accounts) -> None:
    user = await accounts.user()
    before = await stored()
    # What the fuzzer found: {"email": "\u0000"} answered 503.
    await refused(await client.post(f"{API}/auth/login", json={"email": NUL, "password": "x"}), {"email": BAD})
    body = {"email": user.email, "password": user.password + NUL}
    await refused(await client.post(f"{API}/auth/login", json=body), {"password": BAD})
    body = {"refresh_token": user.refresh_token + NUL}
    await refused(await client.post(f"{API}/auth/refresh", json=body), {"refresh_token": BAD})
    assert await stored() == before


async def test_a_raw_nul_in_a_body_is_not_json(client: Client) -> None:
    """JSON has no raw control characters in strings: a raw NUL is malformed JSON, like a raw tab."""
    data = '{"email": "\x00", "password": "x"}'
    response = await client.post(f"{API}/auth/login", data=data, headers={"Content-Type": "application/json"})
    await error_of(response, 400, "bad_request")


async def test_profile_update_with_a_nul_changes_nothing(client: Client, accounts: Accounts) -> None:
    user = await accounts.user(full_name="Ada")
    before = await stored()
    for fields, details in [
        ({"full_name": f"A{NUL}"}, {"full_name": BAD}),
        ({"bio": f"line{NUL}", "full_name": "Fine"}, {"bio": BAD}),
        ({"password": f"new password {NUL}", "current_password": user.password}, {"password": BAD}),
        ({"email": "new@example.com", "current_password": NUL}, {"current_password": BAD}),
    ]:
        await refused(await client.patch(f"{API}/users/me", json=fields, headers=user.headers), details)
    assert await stored() == before
    me = await client.get(f"{API}/users/me", headers=user.headers)
    assert (await me.json())["full_name"] == "Ada"


async def test_admin_user_update_with_a_nul_changes_nothing(client: Client, accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    before = await stored()
    response = await client.patch(f"{API}/users/{user.id}", json={"bio": NUL}, headers=admin.headers)
    await refused(response, {"bio": BAD})
    assert await stored() == before


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        ({"title": f"Hello{NUL}"}, {"title": BAD}),
        ({"body": f"{NUL}World"}, {"body": BAD}),
        ({"data": {"url": f"/x{NUL}"}}, {"data": {"url": BAD}}),
        ({"data": {"a": {"b": [1, {"c": f"deep{NUL}"}]}}}, {"data": {"a": {"b": {"1": {"c": BAD}}}}}),
        ({"data": {f"k{NUL}": "v"}}, {"data": {f"k{NUL}": {"key": BAD}}}),
        ({"data": {"a": [{f"{NUL}": 1}]}}, {"data": {"a": {"0": {NUL: {"key": BAD}}}}}),
        ({"usernames": ["ada", f"b{NUL}b"], "user_ids": []}, {"usernames": {"1": BAD}}),
    ],
)
async def test_send_with_a_nul_is_refused_and_sends_nothing(
    client: Client, accounts: Accounts, fields: dict[str, Any], details: dict[str, Any]
) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    before = await stored()
    body = {"title": "Hello", "body": "World", "user_ids": [user.id], **fields}
    await refused(await client.post(f"{API}/notifications", json=body, headers=admin.headers), details)
    assert await stored() == before
    assert await unread(client, user) == 0


async def test_deeply_nested_data_with_a_nul_is_refused(client: Client, accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    depth = 500
    data = '{"a": ' * depth + '"\\u0000"' + "}" * depth
    body = f'{{"title": "t", "body": "b", "user_ids": ["{user.id}"], "data": {data}}}'
    headers = {**admin.headers, "Content-Type": "application/json"}
    response = await client.post(f"{API}/notifications", data=body, headers=headers)
    error = await error_of(response, 422, "validation_error")
    details = error["details"]["data"]
    for _ in range(depth):
        details = details["a"]
    assert details == BAD
    assert await unread(client, user) == 0


# The API: query strings and paths


async def test_query_parameters_with_a_nul_are_refused(client: Client, accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    await send_to(client, admin, user)
    before = await stored()
    cases: list[tuple[str, Account, dict[str, Any]]] = [
        (f"{API}/users?q=%00", admin, {"q": BAD}),
        (f"{API}/users?q=ada%00&limit=5", admin, {"q": BAD}),
        (f"{API}/users?before=%00", admin, {"before": BAD}),
        (f"{API}/users?is_active=true%00", admin, {"is_active": BAD}),
        (f"{API}/users?q%00=ada", admin, {f"q{NUL}": {"key": BAD}}),
        (f"{API}/notifications?before=%00", user, {"before": BAD}),
        (f"{API}/notifications?unread=%00", user, {"unread": BAD}),
        (f"{API}/notifications?limit=1%00", user, {"limit": BAD}),
    ]
    for path, who, details in cases:
        await refused(await client.get(path, headers=who.headers), details)
    assert await stored() == before
    assert await unread(client, user) == 1


async def test_a_nul_in_a_path_is_a_404_or_a_422(client: Client, accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    notification = await send_to(client, admin, user)
    before = await stored()
    await refused(await client.get(f"{API}/users/%00", headers=admin.headers), {"user_id": BAD})
    await refused(await client.get(f"{API}/users/{user.id}%00", headers=admin.headers), {"user_id": BAD})
    await refused(await client.patch(f"{API}/users/%00", json={"bio": "x"}, headers=admin.headers), {"user_id": BAD})
    await refused(await client.delete(f"{API}/users/%00", headers=admin.headers), {"user_id": BAD})
    path = f"{API}/notifications/{notification['id']}%00/read"
    await refused(await client.post(path, headers=user.headers), {"notification_id": BAD})
    for path in [f"{API}/nope%00", "/%00", "/static/%00", f"{API}/users/me%00/x"]:
        await error_of(await client.get(path, headers=user.headers), 404, "not_found")
    assert await stored() == before
    assert await unread(client, user) == 1


async def test_a_request_id_with_a_nul_is_never_echoed(client: Client) -> None:
    """A header cannot hold a raw NUL (aiohttp's parser refuses it, below); an escaped one is just not an id."""
    response = await client.get("/health/live", headers={"X-Request-ID": "abc%00def"})
    assert response.status == 200
    assert len(response.headers["X-Request-ID"]) == 32
    assert "%00" not in response.headers["X-Request-ID"]


@pytest.fixture
async def served_port() -> AsyncIterator[int]:
    """The app on a TCP port through TidingsRunner, as `tidings serve` runs it, for requests written by hand."""
    settings = make_settings()
    runner = TidingsRunner(create_app(settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
        await drop_test_data(settings)


async def raw_exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection after a refusal
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status_line, headers, body


@pytest.mark.parametrize(
    "header", [b"X-Request-ID: abc\x00def", b"User-Agent: tidings\x00test", b"Authorization: Bearer a\x00b"]
)
async def test_a_raw_nul_in_a_header_is_refused_as_bad_http(served_port: int, header: bytes) -> None:
    request = b"GET /health/live HTTP/1.1\r\nHost: tidings.test\r\n" + header + b"\r\n\r\n"
    status_line, headers, body = await raw_exchange(served_port, request)
    assert status_line.split()[1] == "400", status_line
    assert headers["content-type"].startswith("application/json"), headers
    request_id = headers["x-request-id"]
    # A fresh id (32 hex digits), which no form of the one sent ("abc\x00def", "abcdef") can be. A test for "abc" in
    # it failed once in CI: a random id holds "abc" about once in 140.
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), headers
    assert json.loads(body)["error"]["code"] == "bad_request"


async def test_a_raw_nul_in_the_request_line_is_refused_as_bad_http(served_port: int) -> None:
    status_line, headers, _ = await raw_exchange(served_port, b"GET /api/v1/us\x00ers HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_line.split()[1] == "400", status_line
    assert headers["content-type"].startswith("application/json"), headers


# The admin panel


async def refused_page(response: ClientResponse, *sentences: str) -> str:
    """The panel's page for refused input: 422, the fields named, a way back."""
    page = await response.text()
    assert response.status == 422, (response.status, page)
    assert response.content_type == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert NUL not in page
    flash = flash_of(page)
    assert flash is not None and flash[0] == "error", page
    for sentence in sentences:
        assert sentence in flash[1], (sentence, flash)
    return page


async def test_panel_login_with_a_nul_is_refused_without_a_session(client: Client, accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    before = await stored()
    for fields, sentence in [
        ({"email": NUL, "password": "x"}, f"email: {NUL_SENTENCE}"),
        ({"email": admin.email, "password": admin.password + NUL}, f"password: {NUL_SENTENCE}"),
        ({"email": admin.email, "password": admin.password, "next": f"/admin/{NUL}"}, f"next: {NUL_SENTENCE}"),
    ]:
        csrf = await login_form(client)
        response = await client.post("/admin/login", data={"csrf_token": csrf, **fields}, allow_redirects=False)
        page = await refused_page(response, sentence)
        assert 'href="/admin/login"' in page
        assert SESSION_COOKIE not in response.cookies
    response = await client.get("/admin/login?next=/admin/%00", allow_redirects=False)
    await refused_page(response, f"next: {NUL_SENTENCE}")
    assert await stored() == before


@pytest.fixture
async def panel(client: Client, accounts: Accounts) -> Panel:
    return await open_panel(client, accounts)


async def test_panel_user_search_with_a_nul_is_refused(panel: Panel) -> None:
    before = await stored()
    searches = [("q=%00", "q"), ("q=ada%00&active=yes", "q"), ("before=%00", "before"), ("admin=%00", "admin")]
    for query, field in searches:
        response = await panel.client.get(f"/admin/users?{query}", allow_redirects=False)
        page = await refused_page(response, f"{field}: {NUL_SENTENCE}")
        assert 'href="/admin/users"' in page
    for path in ["/admin/notifications?before=%00", "/admin/audit?before=%00"]:
        await refused_page(await panel.client.get(path, allow_redirects=False), f"before: {NUL_SENTENCE}")
    assert await stored() == before


async def test_panel_send_form_with_a_nul_is_refused_and_sends_nothing(panel: Panel) -> None:
    user = await panel.accounts.user()
    before = await stored()
    for action in ("preview", "send"):
        for fields, field in [
            ({"title": f"Hi{NUL}", "body": "b", "recipients": user.email}, "title"),
            ({"title": "Hi", "body": f"{NUL}", "recipients": user.email}, "body"),
            ({"title": "Hi", "body": "b", "recipients": f"{user.email},{NUL}"}, "recipients"),
            ({"title": "Hi", "body": "b", "audience": f"broadcast{NUL}"}, "audience"),
        ]:
            form = {"audience": "users", "action": action, **fields}
            response = await panel.post("/admin/notifications", form)
            page = await refused_page(response, f"{field}: {NUL_SENTENCE}")
            assert 'href="/admin/notifications"' in page
    assert await stored() == before
    assert await unread(panel.client, user) == 0


async def test_panel_user_actions_with_a_nul_are_refused(panel: Panel) -> None:
    user = await panel.accounts.user()
    before = await stored()
    response = await panel.post(f"/admin/users/{user.id}/notify", {"title": f"Hi{NUL}", "body": "there"})
    page = await refused_page(response, f"title: {NUL_SENTENCE}")
    assert f'href="/admin/users/{user.id}"' in page
    response = await panel.post(f"/admin/users/{user.id}/active", {"value": f"false{NUL}"})
    await refused_page(response, f"value: {NUL_SENTENCE}")
    # In the path: refused before any page looks the user up, with a way back that does not hold it.
    response = await panel.post(f"/admin/users/{user.id}%00/revoke")
    page = await refused_page(response, f"user_id: {NUL_SENTENCE}")
    assert 'href="/admin/"' in page
    response = await panel.client.get(f"/admin/users/{user.id}%00", allow_redirects=False)
    await refused_page(response, f"user_id: {NUL_SENTENCE}")
    assert await stored() == before
    assert await unread(panel.client, user) == 0
    assert (await panel.client.get(f"{API}/users/me", headers=user.headers)).status == 200  # still active


async def test_panel_field_names_with_a_nul_are_named_escaped(panel: Panel) -> None:
    # Written by hand: aiohttp's client refuses to send a form field named with a control character.
    form = urlencode({"csrf_token": panel.csrf, f"ti{NUL}tle": "x", "action": "preview"})
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await panel.client.post("/admin/notifications", data=form, headers=headers, allow_redirects=False)
    page = await refused_page(response, f"ti\\u0000tle.key: {NUL_SENTENCE}")
    assert "ti\\u0000tle" in text_of(page)


async def test_panel_without_a_session_still_asks_to_log_in_first(client: Client, accounts: Accounts) -> None:
    """The gate comes first: no page, not even the refusal, without an admin session."""
    user = await accounts.user()
    response = await client.get("/admin/users?q=%00", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/admin/login?next=")
    response = await client.post(f"/admin/users/{user.id}/notify", data={"title": NUL}, allow_redirects=False)
    await error_of(response, 401, "not_authenticated")


# The WebSocket


async def test_ws_in_band_auth_with_a_nul_closes_with_4401(client: Client, accounts: Accounts) -> None:
    user = await accounts.user()
    for message in (
        {"type": "auth", "token": user.access_token + NUL},
        {"type": "auth", "token": NUL},
        {"type": "auth", "token": user.access_token, f"x{NUL}": 1},
    ):
        async with client.ws_connect(WS) as ws:
            await ws.send_json(message)
            await expect_close(ws, 4401)


async def test_ws_messages_with_a_nul_are_errors_and_change_nothing(client: Client, accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    notification = await send_to(client, admin, user)
    before = await stored()
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        for message, field in [
            ({"type": "read", "id": notification["id"] + NUL}, "id"),
            ({"type": "read", "id": NUL}, "id"),
            ({"type": "resume", "after": NUL}, "after"),
            ({"type": "auth", "token": user.access_token + NUL}, "token"),
            ({"type": f"read{NUL}", "id": notification["id"]}, "type"),
            ({"type": "read", "id": notification["id"], "extra": [{"k": NUL}]}, "extra.0.k"),
        ]:
            await ws.send_json(message)
            error = await next_of(ws, "error")
            assert error["code"] == "invalid_message", error
            assert error["message"] == f"{field}: {NUL_SENTENCE}", error
        await pong(ws)  # still open, still authenticated
        await ws.send_json({"type": "read", "id": notification["id"]})
        assert (await next_of(ws, "read"))["id"] == notification["id"]
    after = await stored()
    # The one valid read marked the notification read; the refused ones changed nothing before it.
    assert {name: docs for name, docs in after.items() if name != "notifications"} == {
        name: docs for name, docs in before.items() if name != "notifications"
    }
    assert await unread(client, user) == 0
