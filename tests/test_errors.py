"""One JSON error shape for every failure, request ids, body limits and what is not JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import Account, Accounts, AppFactory, drop_test_data, make_settings
from tests.helpers import API, error_of
from tidings.server.app import create_app
from tidings.server.settings import Settings

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
async def admin(accounts: Accounts) -> Account:
    return await accounts.user(admin=True)


def body_endpoints(admin: Account) -> list[tuple[str, str, dict[str, str]]]:
    """Every endpoint that reads a JSON body, with the headers that get a caller that far."""
    return [
        ("POST", f"{API}/auth/register", {}),
        ("POST", f"{API}/auth/login", {}),
        ("POST", f"{API}/auth/refresh", {}),
        ("POST", f"{API}/auth/logout", admin.headers),
        ("PATCH", f"{API}/users/me", admin.headers),
        ("PATCH", f"{API}/users/{admin.id}", admin.headers),
    ]


@pytest.mark.parametrize(
    "path", ["/nope", f"{API}/nope", f"{API}/users/me/extra", "/api/v2/users/me", f"{API}/auth/register/"]
)
async def test_unknown_path_is_a_json_404(client: TestClient[Any, Any], path: str) -> None:
    error = await error_of(await client.get(path), 404, "not_found")
    assert "details" not in error


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", f"{API}/auth/register", {"POST"}),
        ("DELETE", f"{API}/auth/login", {"POST"}),
        ("PUT", f"{API}/auth/logout-all", {"POST"}),
        ("PUT", f"{API}/users/{'a' * 24}", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("POST", f"{API}/users", {"GET", "HEAD"}),
        ("POST", "/health/live", {"GET", "HEAD"}),
    ],
)
async def test_wrong_method_is_a_json_405(
    client: TestClient[Any, Any], method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path)
    await error_of(response, 405, "method_not_allowed")
    assert {item.strip() for item in response.headers["Allow"].split(",")} == allowed


async def test_oversized_bodies_are_413_everywhere(
    client: TestClient[Any, Any], admin: Account, settings: Settings
) -> None:
    oversized = json.dumps({"bio": "x" * settings.max_body_bytes}).encode()
    for method, path, headers in body_endpoints(admin):
        response = await client.request(
            method, path, data=oversized, headers={**headers, "Content-Type": "application/json"}
        )
        error = await error_of(response, 413, "payload_too_large")
        assert "details" not in error, path
    # Just under the limit is read (and then judged by the schema).
    fits = json.dumps({"bio": "x" * (settings.max_body_bytes - 20)}).encode()
    response = await client.post(f"{API}/auth/register", data=fits, headers={"Content-Type": "application/json"})
    await error_of(response, 422, "validation_error")


async def test_oversized_chunked_body_is_413(client: TestClient[Any, Any], settings: Settings) -> None:
    """Without a Content-Length the limit still holds."""

    async def chunks() -> Any:
        for _ in range(settings.max_body_bytes // 1024 + 2):
            yield b"x" * 1024

    response = await client.post(f"{API}/auth/login", data=chunks(), headers={"Content-Type": "application/json"})
    await error_of(response, 413, "payload_too_large")


@pytest.mark.parametrize("body", [b"{", b'{"email": }', b"{'email': 'x'}", b"\xff\xfe\x00", b"[1, 2", b"nul"])
async def test_malformed_json_is_400(client: TestClient[Any, Any], admin: Account, body: bytes) -> None:
    for method, path, headers in body_endpoints(admin):
        response = await client.request(
            method, path, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        error = await error_of(response, 400, "bad_request")
        assert "JSON" in error["message"], path


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json"]
)
async def test_a_body_that_is_not_json_is_400(client: TestClient[Any, Any], admin: Account, content_type: str) -> None:
    for method, path, headers in body_endpoints(admin):
        body = b'{"email": "a@example.com", "password": "x"}'
        response = await client.request(method, path, data=body, headers={**headers, "Content-Type": content_type})
        error = await error_of(response, 400, "bad_request")
        assert "Content-Type: application/json" in error["message"], path


async def test_json_content_type_variants_are_json(client: TestClient[Any, Any]) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        response = await client.post(
            f"{API}/auth/login", data=b'{"email": "a@example.com"}', headers={"Content-Type": content_type}
        )
        error = await error_of(response, 422, "validation_error")
        assert error["details"] == {"password": ["Missing data for required field."]}


@pytest.mark.parametrize("body", [b"[]", b"null", b'"text"', b"42", b"true", b'[{"email": "a@example.com"}]'])
async def test_json_that_is_not_an_object_is_422(client: TestClient[Any, Any], admin: Account, body: bytes) -> None:
    for method, path, headers in body_endpoints(admin):
        response = await client.request(
            method, path, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        error = await error_of(response, 422, "validation_error")
        assert error["details"] == {"_schema": ["Invalid input type."]}, path


async def test_an_empty_body_is_a_schema_error(client: TestClient[Any, Any]) -> None:
    response = await client.post(f"{API}/auth/login", data=b"", headers={"Content-Type": "application/json"})
    error = await error_of(response, 422, "validation_error")
    assert set(error["details"]) == {"email", "password"}
    response = await client.post(f"{API}/auth/login")
    error = await error_of(response, 422, "validation_error")
    assert set(error["details"]) == {"email", "password"}


async def test_unknown_fields_are_named(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        f"{API}/auth/login", json={"email": "a@example.com", "password": "x", "extra": 1, "$where": "1"}
    )
    error = await error_of(response, 422, "validation_error")
    assert error["details"] == {"extra": ["Unknown field."], "$where": ["Unknown field."]}
    assert error["message"] == "The request does not match the schema."


async def test_every_response_has_a_request_id(client: TestClient[Any, Any], admin: Account) -> None:
    responses = [
        await client.get("/health/live"),
        await client.get(f"{API}/users/me", headers=admin.headers),
        await client.get("/nope"),
        await client.put(f"{API}/users/me"),
        await client.get(f"{API}/users/me"),
        await client.post(f"{API}/auth/login", json={}),
        await client.post(f"{API}/auth/login", data=b"{", headers={"Content-Type": "application/json"}),
        await client.get("/api/docs/openapi.json"),
    ]
    ids = [response.headers["X-Request-ID"] for response in responses]
    assert all(HEX_ID.fullmatch(request_id) for request_id in ids), ids
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("request_id", ["abc-123", "A.b_C-9", "x" * 64, "0123456789abcdef0123456789abcdef"])
async def test_a_sane_incoming_request_id_is_kept(client: TestClient[Any, Any], request_id: str) -> None:
    for path in ("/health/live", "/nope", f"{API}/users/me"):
        response = await client.get(path, headers={"X-Request-ID": request_id})
        await response.read()
        assert response.headers["X-Request-ID"] == request_id


@pytest.mark.parametrize("request_id", ["", "x" * 65, "has space", "semi;colon", "<script>", "ü", "a/b", "a\tb"])
async def test_an_unsafe_incoming_request_id_is_replaced(client: TestClient[Any, Any], request_id: str) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": request_id})
    await response.read()
    assert HEX_ID.fullmatch(response.headers["X-Request-ID"])


async def test_concurrent_requests_keep_their_own_ids(client: TestClient[Any, Any], admin: Account) -> None:
    async def call(index: int) -> tuple[str, str]:
        request_id = f"req-{index}"
        path = f"{API}/users/me" if index % 2 else "/nope"
        response = await client.get(path, headers={"X-Request-ID": request_id, **admin.headers})
        await response.read()
        return request_id, response.headers["X-Request-ID"]

    for sent, received in await asyncio.gather(*(call(index) for index in range(20))):
        assert sent == received


async def test_api_responses_carry_the_security_headers(client: TestClient[Any, Any]) -> None:
    for response in (await client.get("/health/live"), await client.get("/nope")):
        await response.read()
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


async def test_errors_never_leak_internals(client: TestClient[Any, Any]) -> None:
    bodies = [
        await (await client.post(f"{API}/auth/login", data=b"{", headers={"Content-Type": "application/json"})).text(),
        await (await client.post(f"{API}/auth/refresh", json={"refresh_token": "a.b.c"})).text(),
        await (await client.get(f"{API}/users/me", headers={"Authorization": "Bearer a.b.c"})).text(),
    ]
    for text in bodies:
        assert "Traceback" not in text
        assert "jwt" not in text.lower()
        assert "Exception" not in text


async def test_a_small_body_limit_applies(make_client: AppFactory) -> None:
    client, _, _ = await make_client(max_body_bytes=200)
    body = {"email": "a@example.com", "username": "someone", "password": "p" * 100, "full_name": "n" * 90}
    await error_of(await client.post(f"{API}/auth/register", json=body), 413, "payload_too_large")
    body["full_name"] = "short"
    response = await client.post(f"{API}/auth/register", json=body)
    assert response.status == 201, await response.text()


def notification_endpoint(admin: Account) -> tuple[str, str, dict[str, str]]:
    return ("POST", f"{API}/notifications", admin.headers)


@pytest.mark.parametrize(
    "body",
    [
        # A lone surrogate: valid JSON escapes, but not Unicode text, so no UTF-8 encoder (BSON's) can store it.
        b'{"email": "a\\udc00@example.com", "password": "x", "title": "\\udc00", "body": "b"}',
        b'{"email": "a@example.com", "password": "\\ud800", "full_name": "\\udfff", "title": "t", "body": "b"}',
        # Not JSON at all, though Python's parser takes them.
        b'{"title": "t", "body": "b", "broadcast": true, "data": {"x": NaN}}',
        b'{"title": "t", "body": "b", "broadcast": true, "data": {"x": -Infinity}}',
        # JSON, but beyond what a float holds: it would be stored as infinity.
        b'{"title": "t", "body": "b", "broadcast": true, "data": {"x": 1e309}}',
        # Past Python's integer-string limit (ValueError inside the parser).
        b'{"title": "t", "body": "b", "broadcast": true, "data": {"x": ' + b"9" * 5000 + b"}}",
    ],
)
async def test_json_no_store_can_hold_is_400_and_stores_nothing(
    client: TestClient[Any, Any], admin: Account, body: bytes
) -> None:
    for method, path, headers in [*body_endpoints(admin), notification_endpoint(admin)]:
        response = await client.request(
            method, path, data=body, headers={**headers, "Content-Type": "application/json"}
        )
        error = await error_of(response, 400, "bad_request")
        assert "JSON" in error["message"], (path, error)
    inbox = await client.get(f"{API}/notifications", headers=admin.headers)
    assert (await inbox.json())["items"] == []


async def test_a_surrogate_in_a_bearer_token_is_401(client: TestClient[Any, Any]) -> None:
    """aiohttp decodes header bytes that are not UTF-8 into lone surrogates; the JWT check must refuse them."""
    response = await client.get(f"{API}/users/me", headers={"Authorization": "Bearer \udcff\udcfe.x.y"})
    await error_of(response, 401, "invalid_token")


@pytest.mark.parametrize("charset", ["x-bogus-42", "utf-99"])
async def test_an_unknown_charset_is_400(client: TestClient[Any, Any], admin: Account, charset: str) -> None:
    for method, path, headers in [*body_endpoints(admin), notification_endpoint(admin)]:
        response = await client.request(
            method,
            path,
            data=b'{"title": "t"}',
            headers={**headers, "Content-Type": f"application/json; charset={charset}"},
        )
        await error_of(response, 400, "bad_request")


async def test_a_client_that_goes_away_mid_body_is_not_a_server_error(caplog: pytest.LogCaptureFixture) -> None:
    """A client that times out and drops its connection mid-body: logged as such, never as an unhandled error.

    Served as `tidings serve` serves (aiohttp's test server would cancel the handler instead).
    """
    caplog.set_level(logging.INFO)
    settings = make_settings()
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        went_away = asyncio.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "went away" in record.getMessage():
                    went_away.set()

        watch = Watch()
        logging.getLogger().addHandler(watch)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"email": '
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(went_away.wait(), 10)
        finally:
            logging.getLogger().removeHandler(watch)
    finally:
        await runner.cleanup()
        await drop_test_data(settings)
    errors = [f"{record.name}: {record.getMessage()}" for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []
