"""API keys: made by admins, used by an application's backends, with scopes, a rate limit and revocation.

The first tests run the app in-process; the rest run two real `tidings serve` processes on one database and one
Redis (tests/launcher.py), where a key made or revoked through one is used through the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from bson import ObjectId
from pymongo import AsyncMongoClient

from tests.conftest import MONGODB_URL, PASSWORD, REDIS_URL, Account, Accounts, AppFactory
from tests.helpers import error_of
from tests.launcher import Isolation, ServerProcess, run_cli, server_env, wait_ready
from tests.realtime import API, expect_close, next_of, ready
from tidings.documents import ApiKey, ApiKeyUsage, AuditEntry, Dispatch
from tidings.documents.ids import parse_object_id
from tidings.server.services.api_keys import hash_key

KEY_FORMAT = re.compile(r"^tdg_[A-Za-z0-9_-]{43}$")  # 32 random bytes in URL-safe base64, unpadded


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def make_key(client: TestClient[Any, Any], admin: Account, *scopes: str, **fields: Any) -> dict[str, Any]:
    body = {"name": f"backend-{uuid.uuid4().hex[:6]}", "scopes": list(scopes), **fields}
    response = await client.post(f"{API}/api-keys", json=body, headers=admin.headers)
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


# In one process


async def test_an_admin_creates_a_key_shown_once_and_listed_without_its_secret(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin = await accounts.user(admin=True)
    created = await make_key(client, admin, "notifications:send", expires_in=3600, rate_limit_per_minute=50)
    assert KEY_FORMAT.match(created["key"]), created["key"]
    assert set(created) == {"id", "name", "scopes", "key", "created_at", "expires_at", "rate_limit_per_minute"}
    assert created["scopes"] == ["notifications:send"] and created["rate_limit_per_minute"] == 50
    expires = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(created["created_at"])
    assert expires == timedelta(seconds=3600)

    stored = await ApiKey.get(parse_object_id(created["id"]))
    assert stored is not None
    assert stored.key_hash == hash_key(created["key"]) and created["key"] not in stored.model_dump_json()

    response = await client.get(f"{API}/api-keys", headers=admin.headers)
    assert response.status == 200
    text = await response.text()
    assert created["key"] not in text and stored.key_hash not in text
    [listed] = (json.loads(text))["items"]
    assert listed["id"] == created["id"]
    assert listed["prefix"] == created["key"][4:12]
    assert listed["created_by"] == {"id": admin.id, "email": admin.email}
    assert listed["last_used_at"] is None and listed["revoked_at"] is None
    assert listed["expires_at"] == created["expires_at"]

    # Audited, without the secret.
    [entry] = await AuditEntry.find({"action": "api_key.created"}).to_list()
    assert str(entry.target_id) == created["id"] and entry.actor_email == admin.email
    assert created["key"] not in entry.model_dump_json()


async def test_creating_keys_is_for_admins_with_valid_fields(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    response = await client.post(
        f"{API}/api-keys", json={"name": "x", "scopes": ["notifications:send"]}, headers=user.headers
    )
    await error_of(response, 403, "forbidden")
    for body in (
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["admin"]},
        {"name": " ", "scopes": ["users:read"]},
        {"name": "x", "scopes": ["users:read"], "expires_in": 59},
        {"name": "x", "scopes": ["users:read"], "rate_limit_per_minute": 0},
        {"name": "x", "scopes": ["users:read"], "key": "tdg_mine"},
    ):
        response = await client.post(f"{API}/api-keys", json=body, headers=admin.headers)
        await error_of(response, 422, "validation_error")


async def test_each_scope_allows_its_endpoints_and_nothing_else(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    sender = (await make_key(client, admin, "notifications:send"))["key"]
    reader = (await make_key(client, admin, "users:read"))["key"]

    send = {"title": "Invoice paid", "body": "Thanks", "user_ids": [user.id]}
    response = await client.post(f"{API}/notifications", json=send, headers=bearer(sender))
    assert response.status == 201, await response.text()
    response = await client.post(f"{API}/notifications", json=send, headers=bearer(reader))
    await error_of(response, 403, "insufficient_scope")

    for path in (f"{API}/users", f"{API}/users/{user.id}"):
        response = await client.get(path, headers=bearer(reader))
        assert response.status == 200, await response.text()
        response = await client.get(path, headers=bearer(sender))
        await error_of(response, 403, "insufficient_scope")

    # Everything else, /users/me included: a key is not a user.
    for key in (sender, reader):
        for method, path in (
            ("GET", f"{API}/users/me"),
            ("GET", f"{API}/notifications"),
            ("GET", f"{API}/notifications/unread-count"),
            ("POST", f"{API}/notifications/read-all"),
            ("PATCH", f"{API}/users/{user.id}"),
            ("GET", f"{API}/api-keys"),
            ("POST", f"{API}/api-keys"),
            ("POST", f"{API}/auth/logout-all"),
        ):
            response = await client.request(method, path, headers=bearer(key), json={})
            await error_of(response, 403, "insufficient_scope")


async def test_unknown_revoked_and_expired_keys_answer_401(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    send = {"title": "t", "body": "b", "user_ids": [user.id]}
    unknown = "tdg_" + "A" * 43
    response = await client.post(f"{API}/notifications", json=send, headers=bearer(unknown))
    await error_of(response, 401, "invalid_token")

    created = await make_key(client, admin, "notifications:send")
    assert (await client.post(f"{API}/notifications", json=send, headers=bearer(created["key"]))).status == 201
    response = await client.delete(f"{API}/api-keys/{created['id']}", headers=admin.headers)
    assert response.status == 204
    response = await client.post(f"{API}/notifications", json=send, headers=bearer(created["key"]))
    await error_of(response, 401, "invalid_token")
    [listed] = (await (await client.get(f"{API}/api-keys", headers=admin.headers)).json())["items"]
    assert listed["revoked_at"] is not None
    # Revoking again changes nothing; an unknown id is a 404.
    assert (await client.delete(f"{API}/api-keys/{created['id']}", headers=admin.headers)).status == 204
    assert len(await AuditEntry.find({"action": "api_key.revoked"}).to_list()) == 1
    response = await client.delete(f"{API}/api-keys/{ObjectId()}", headers=admin.headers)
    await error_of(response, 404, "not_found")

    expiring = await make_key(client, admin, "notifications:send", expires_in=60)
    stored = await ApiKey.get(parse_object_id(expiring["id"]))
    assert stored is not None
    await stored.set({ApiKey.expires_at: datetime.now(UTC) - timedelta(seconds=1)})
    response = await client.post(f"{API}/notifications", json=send, headers=bearer(expiring["key"]))
    error = await error_of(response, 401, "invalid_token")
    assert "expired" in error["message"]


async def test_a_key_is_rate_limited_per_minute(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    key = (await make_key(client, admin, "users:read", rate_limit_per_minute=3))["key"]
    other = (await make_key(client, admin, "users:read"))["key"]
    for _ in range(3):
        assert (await client.get(f"{API}/users/{user.id}", headers=bearer(key))).status == 200
    response = await client.get(f"{API}/users/{user.id}", headers=bearer(key))
    await error_of(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    # Per key: another key is not limited by it.
    assert (await client.get(f"{API}/users/{user.id}", headers=bearer(other))).status == 200


async def test_last_used_is_written_once_a_minute(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    created = await make_key(client, admin, "users:read")
    for _ in range(5):
        assert (await client.get(f"{API}/users/{user.id}", headers=bearer(created["key"]))).status == 200
    usage = await ApiKeyUsage.get(parse_object_id(created["id"]))
    assert usage is not None
    first = usage.last_used_at
    [listed] = (await (await client.get(f"{API}/api-keys", headers=admin.headers)).json())["items"]
    assert datetime.fromisoformat(listed["last_used_at"]) == first
    assert (await client.get(f"{API}/users/{user.id}", headers=bearer(created["key"]))).status == 200
    again = await ApiKeyUsage.get(parse_object_id(created["id"]))
    assert again is not None and again.last_used_at == first  # within the minute: not written again


async def test_a_key_sends_as_itself(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    created = await make_key(client, admin, "notifications:send", name="billing")
    async with client.ws_connect(f"{API}/ws", headers=user.headers) as ws:
        await ready(ws)
        send = {"title": "Invoice paid", "body": "Thanks", "user_ids": [user.id]}
        response = await client.post(f"{API}/notifications", json=send, headers=bearer(created["key"]))
        assert response.status == 201, await response.text()
        [sent] = (await response.json())["notifications"]
        key_sender = {"type": "key", "id": created["id"], "name": "billing"}
        assert sent["sender"] == key_sender
        assert (await next_of(ws, "notification"))["notification"]["sender"] == key_sender
    [listed] = (await (await client.get(f"{API}/notifications", headers=user.headers)).json())["items"]
    assert listed["sender"] == key_sender
    [dispatch] = await Dispatch.find_all().to_list()
    assert dispatch.sender == key_sender and dispatch.sender_id is None and dispatch.sender_label == "API key billing"
    [entry] = await AuditEntry.find({"action": "notification.sent"}).to_list()
    assert str(entry.actor_id) == created["id"] and entry.actor_email == "API key billing"
    assert entry.details["sender"] == key_sender

    # An admin's send names the admin.
    response = await client.post(f"{API}/notifications", json=send, headers=admin.headers)
    [by_admin] = (await response.json())["notifications"]
    assert by_admin["sender"] == {"type": "user", "id": admin.id, "name": admin.username}


async def test_the_websocket_refuses_keys_with_4401(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    key = (await make_key(client, admin, "notifications:send", "users:read"))["key"]
    async with client.ws_connect(f"{API}/ws", headers=bearer(key)) as ws:
        assert "API key" in await expect_close(ws, 4401)
    async with client.ws_connect(f"{API}/ws") as ws:
        await ws.send_json({"type": "auth", "token": key})
        assert "API key" in await expect_close(ws, 4401)


async def test_the_panel_never_accepts_a_key(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    key = (await make_key(client, admin, "notifications:send", "users:read"))["key"]
    response = await client.get("/admin/", headers=bearer(key), allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/admin/login")
    client.session.cookie_jar.update_cookies({"tidings_admin": key})
    response = await client.get("/admin/users", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/admin/login")


async def test_a_secret_never_reaches_the_logs(make_client: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, accounts, _ = await make_client(access_log=True)
    admin, user = await accounts.user(admin=True), await accounts.user()
    created = await make_key(client, admin, "users:read", rate_limit_per_minute=1)
    for _ in range(2):
        await client.get(f"{API}/users/{user.id}", headers=bearer(created["key"]))
    await client.delete(f"{API}/api-keys/{created['id']}", headers=admin.headers)
    await client.get(f"{API}/users/{user.id}", headers=bearer(created["key"]))
    logged = "\n".join(record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records)
    assert created["key"] not in logged and created["key"][4:] not in logged


# On two real processes


JWT_SECRET = "api-keys-test-secret-" + "k" * 40
ORIGIN = "http://tidings.test"


class Pair:
    """Servers A and B on one database and Redis prefix, with access logs, so a test can read what they logged."""

    def __init__(self, log_dir: Path, redis_url: str = REDIS_URL) -> None:
        self.isolation = Isolation.new("test", "keys", redis_url=redis_url)
        self.env = server_env(self.isolation, jwt_secret=JWT_SECRET, origins=ORIGIN, log_level="INFO", access_log=True)
        self.a = ServerProcess("A", self.env, log_dir)
        self.b = ServerProcess("B", self.env, log_dir)

    def start(self) -> None:
        for server in (self.a, self.b):
            server.start()
        wait_ready(self.a, self.b)

    def stop(self) -> None:
        for server in (self.a, self.b):
            server.terminate()
        for server in (self.a, self.b):
            server.stop()
        self.isolation.drop()

    def logs(self) -> str:
        return "\n".join(server.log.read_text(errors="replace") for server in (self.a, self.b))

    async def cli(self, *args: str) -> str:
        result = await run_cli(self.env, *args)
        assert result.code == 0, result.stderr
        return result.stdout

    async def set_expiry(self, key_id: str, moment: datetime) -> None:
        mongo: AsyncMongoClient[Any] = AsyncMongoClient(MONGODB_URL)
        try:
            await mongo[self.isolation.db].api_keys.update_one(
                {"_id": ObjectId(key_id)}, {"$set": {"expires_at": moment}}
            )
        finally:
            await mongo.close()


@contextlib.contextmanager
def running_pair(log_dir: Path, redis_url: str = REDIS_URL) -> Iterator[Pair]:
    pair = Pair(log_dir, redis_url)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("keys")) as pair:
        yield pair


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def register(
    session: aiohttp.ClientSession, server: ServerProcess, pair: Pair, *, admin: bool = False
) -> Account:
    unique = uuid.uuid4().hex[:10]
    email, username = f"keys-{unique}@example.com", f"keys_{unique}"
    body = {"email": email, "username": username, "password": PASSWORD}
    async with session.post(f"{server.url}{API}/auth/register", json=body) as response:
        assert response.status == 201, await response.text()
        user_id = (await response.json())["id"]
    if admin:  # the first admin comes from the CLI in real life; here, straight from the database
        mongo: AsyncMongoClient[Any] = AsyncMongoClient(MONGODB_URL)
        try:
            await mongo[pair.isolation.db].users.update_one({"_id": ObjectId(user_id)}, {"$set": {"is_admin": True}})
        finally:
            await mongo.close()
    async with session.post(f"{server.url}{API}/auth/login", json={"email": email, "password": PASSWORD}) as r:
        assert r.status == 200, await r.text()
        tokens = await r.json()
    return Account(user_id, email, username, PASSWORD, tokens["access_token"], tokens["refresh_token"])


async def status_of(session: aiohttp.ClientSession, method: str, url: str, key: str, **kwargs: Any) -> int:
    async with session.request(method, url, headers=bearer(key), **kwargs) as response:
        await response.read()
        return response.status


async def test_across_processes_scopes_revocation_expiry_and_limits(pair: Pair, session: aiohttp.ClientSession) -> None:
    a, b = pair.a, pair.b
    admin, user = await register(session, a, pair, admin=True), await register(session, b, pair)
    # Made by the command line: it prints the key, and nothing else.
    printed = await pair.cli(
        "create-api-key", "--name", "ops", "--scope", "notifications:send", "--scope", "users:read"
    )
    sender = printed.strip()
    assert KEY_FORMAT.match(sender), printed
    async with session.post(
        f"{a.url}{API}/api-keys", json={"name": "reader", "scopes": ["users:read"]}, headers=admin.headers
    ) as response:
        assert response.status == 201
        reader = await response.json()

    send = {"title": "t", "body": "b", "user_ids": [user.id]}
    for server in (a, b):
        assert await status_of(session, "POST", f"{server.url}{API}/notifications", sender, json=send) == 201
        assert await status_of(session, "GET", f"{server.url}{API}/users/{user.id}", sender) == 200
        assert await status_of(session, "GET", f"{server.url}{API}/users", reader["key"]) == 200
        assert await status_of(session, "POST", f"{server.url}{API}/notifications", reader["key"], json=send) == 403
        assert await status_of(session, "GET", f"{server.url}{API}/users/me", sender) == 403

    # Revoked through A: B, which has the key cached, refuses it at its next request.
    assert await status_of(session, "GET", f"{b.url}{API}/users/{user.id}", reader["key"]) == 200
    async with session.delete(f"{a.url}{API}/api-keys/{reader['id']}", headers=admin.headers) as response:
        assert response.status == 204
    assert await status_of(session, "GET", f"{b.url}{API}/users/{user.id}", reader["key"]) == 401
    assert await status_of(session, "GET", f"{a.url}{API}/users/{user.id}", reader["key"]) == 401

    # Expired: made with an expiry, then moved into the past (no test waits a minute).
    expiring = (
        await pair.cli("create-api-key", "--name", "short", "--scope", "users:read", "--expires-in", "60")
    ).strip()
    async with session.get(f"{a.url}{API}/api-keys", headers=admin.headers) as response:
        listed = {item["name"]: item for item in (await response.json())["items"]}
    await pair.set_expiry(listed["short"]["id"], datetime.now(UTC) - timedelta(seconds=1))
    for server in (a, b):
        assert await status_of(session, "GET", f"{server.url}{API}/users", expiring) == 401

    # One limit for the key across both processes.
    limited = (await pair.cli("create-api-key", "--name", "slow", "--scope", "users:read", "--rate-limit", "4")).strip()
    statuses = [
        await status_of(session, "GET", f"{server.url}{API}/users/{user.id}", limited) for server in (a, b, a, b, a, b)
    ]
    assert statuses == [200, 200, 200, 200, 429, 429]

    # The secrets were printed once and are nowhere else: not in the listing, not in either process's log.
    async with session.get(f"{b.url}{API}/api-keys", headers=admin.headers) as response:
        listing = await response.text()
    logs = pair.logs()
    assert "api/v1/users" in logs  # the access log is on: requests made with the keys were logged
    for secret in (sender, reader["key"], expiring, limited):
        assert secret not in listing and secret not in logs
        assert secret[4:20] not in logs


async def test_a_key_is_looked_up_by_an_index(make_client: AppFactory) -> None:
    """What authentication asks (ApiKey by key_hash; the idempotency record by _id) is served by an index, with
    many keys: the key_hash field is in FerretDB's index fields (scripts/ferretdb/indexer.go)."""
    from tests.test_query_plans import backend, uses_index

    _, _, settings = await make_client()
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(settings.mongodb_url)
    try:
        if await backend(mongo) == "sqlite":
            pytest.skip("FerretDB on SQLite pushes down only {_id: value}")
        db = mongo[settings.mongodb_db]
        now = datetime.now(UTC)
        await db.api_keys.insert_many(
            [
                {
                    "name": f"k{i}",
                    "scopes": ["users:read"],
                    "key_hash": hash_key(f"tdg_{i}"),
                    "prefix": "x" * 8,
                    "rate_limit_per_minute": 600,
                    "created_at": now,
                }
                for i in range(2000)
            ]
        )
        wanted = {"key_hash": hash_key("tdg_1234")}
        # FerretDB's launcher adds its index within a pass (every second) of the collection's creation: nothing to
        # await but the plan itself, so it is asked again, for a bounded time.
        for _ in range(60):
            if served := uses_index(await db.command({"explain": {"find": "api_keys", "filter": wanted}})):
                break
            await asyncio.sleep(0.5)
        assert served
        found = await db.api_keys.find_one(wanted)
        assert found is not None and found["name"] == "k1234"
    finally:
        await mongo.close()
