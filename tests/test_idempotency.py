"""Idempotent sends (`Idempotency-Key`) and batch sends: in one process, then on two real processes, and through a
Redis outage on a Redis of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId
from pymongo.errors import PyMongoError

from tests.conftest import Account, Accounts
from tests.helpers import error_of
from tests.launcher import RedisProcess
from tests.realtime import API, next_of, pong, ready
from tests.test_api_keys import ORIGIN, Pair, bearer, register, running_pair
from tidings.documents import Dispatch, IdempotencyRecord, Notification
from tidings.server.adapters.errors import IdempotencyKeyInUse
from tidings.server.keys import idempotency_key
from tidings.server.services.idempotency import record_id

# A subscription that backed off during an outage comes back within about 5-8 s of Redis.
RECOVERY_TIMEOUT = 30.0


async def post(
    client: TestClient[Any, Any], who: Account, body: dict[str, Any], key: str | None, path: str = "/notifications"
) -> tuple[int, dict[str, Any], bool]:
    headers = {**who.headers, **({"Idempotency-Key": key} if key is not None else {})}
    response = await client.post(f"{API}{path}", json=body, headers=headers)
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    return response.status, await response.json(), replayed


async def nothing_more(ws: ClientWebSocketResponse) -> None:
    """The next message is the pong: nothing else was queued for the socket."""
    await pong(ws)


async def test_a_retry_replays_the_first_answer_and_sends_once(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    body = {"title": "Order shipped", "body": "On its way", "user_ids": [user.id]}
    async with client.ws_connect(f"{API}/ws", headers=user.headers) as ws:
        await ready(ws)
        first = await post(client, admin, body, "order-42-shipped")
        assert first[0] == 201 and not first[2]
        assert (await next_of(ws, "notification"))["notification"] == first[1]["notifications"][0]
        # The same body in another key order and spacing is the same request.
        again = await post(client, admin, dict(reversed(list(body.items()))), "order-42-shipped")
        assert again == (201, first[1], True)
        await nothing_more(ws)
    assert len(await Dispatch.find_all().to_list()) == 1
    assert len(await Notification.find({"recipient_id": PydanticObjectId(user.id)}).to_list()) == 1

    # Another body with the same key is refused; a new key sends again.
    response = await client.post(
        f"{API}/notifications",
        json={**body, "title": "Other"},
        headers={**admin.headers, "Idempotency-Key": "order-42-shipped"},
    )
    await error_of(response, 422, "idempotency_key_reused")
    assert (await post(client, admin, body, "order-43-shipped"))[0] == 201
    assert len(await Dispatch.find_all().to_list()) == 2


async def test_keys_are_scoped_per_caller_and_checked(client: TestClient[Any, Any], accounts: Accounts) -> None:
    first, second, user = await accounts.user(admin=True), await accounts.user(admin=True), await accounts.user()
    body = {"title": "t", "body": "b", "user_ids": [user.id]}
    a, b = await post(client, first, body, "same"), await post(client, second, body, "same")
    assert a[0] == b[0] == 201 and not a[2] and not b[2]
    assert a[1]["notifications"][0]["id"] != b[1]["notifications"][0]["id"]
    for bad in ("x" * 256, "tab\there", "caf\u00e9".encode().decode("latin-1")):
        response = await client.post(
            f"{API}/notifications", json=body, headers={**first.headers, "Idempotency-Key": bad}
        )
        error = await error_of(response, 422, "validation_error")
        assert "Idempotency-Key" in error["details"]
    assert len(await Dispatch.find_all().to_list()) == 2


async def test_a_client_error_is_replayed_too(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    body = {"title": "t", "body": "b", "emails": ["nobody@example.com"]}
    status, answer, replayed = await post(client, admin, body, "k1")
    assert status == 422 and answer["error"]["code"] == "validation_error" and not replayed
    assert await post(client, admin, body, "k1") == (422, answer, True)


async def test_concurrent_requests_with_one_key_send_once(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    body = {"title": "t", "body": "b", "user_ids": [user.id]}
    async with client.ws_connect(f"{API}/ws", headers=user.headers) as ws:
        await ready(ws)
        answers = await asyncio.gather(*(post(client, admin, body, "burst") for _ in range(5)))
        assert {status for status, _, _ in answers} == {201}
        assert sum(not replayed for _, _, replayed in answers) == 1
        assert len({answer["notifications"][0]["id"] for _, answer, _ in answers}) == 1
        await next_of(ws, "notification")
        await nothing_more(ws)
    assert len(await Dispatch.find_all().to_list()) == 1


async def test_work_that_failed_half_way_is_never_done_again(client: TestClient[Any, Any]) -> None:
    """MongoDB failing in the middle of a send: the outcome is unknown, so a retry is refused, not done again."""
    idempotency, done = client.app[idempotency_key], []

    async def failing() -> tuple[int, dict[str, Any]]:
        done.append("first")
        raise PyMongoError("connection lost mid-send")

    async def work() -> tuple[int, dict[str, Any]]:
        done.append("again")
        return 201, {}

    with pytest.raises(PyMongoError):
        await idempotency.run("user:1", "k", "f", failing)
    with pytest.raises(IdempotencyKeyInUse) as refused:
        await idempotency.run("user:1", "k", "f", work)
    assert "unknown" in refused.value.message and done == ["first"]
    # Another caller's same key is theirs.
    assert (await idempotency.run("user:2", "k", "f", work)).status == 201


async def test_an_expired_record_is_replaced_and_swept(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    body = {"title": "t", "body": "b", "user_ids": [user.id]}
    assert (await post(client, admin, body, "old"))[0] == 201
    record = await IdempotencyRecord.get(record_id(f"user:{admin.id}", "old"))
    assert record is not None and record.state == "done"
    past = datetime.now(UTC) - timedelta(seconds=1)
    await record.set({IdempotencyRecord.expires_at: past})
    # Past its TTL the key is free again: a new send, not a replay.
    status, _, replayed = await post(client, admin, body, "old")
    assert status == 201 and not replayed
    assert len(await Dispatch.find_all().to_list()) == 2

    await post(client, admin, body, "to-sweep")
    swept = await IdempotencyRecord.get(record_id(f"user:{admin.id}", "to-sweep"))
    assert swept is not None
    await swept.set({IdempotencyRecord.expires_at: past})
    assert await client.app[idempotency_key].sweep() == 1
    assert await IdempotencyRecord.get(record_id(f"user:{admin.id}", "to-sweep")) is None
    assert await IdempotencyRecord.get(record_id(f"user:{admin.id}", "old")) is not None


async def test_a_batch_answers_each_item_and_a_bad_one_fails_alone(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, alice, bob = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    items: list[Any] = [
        {"title": "one", "body": "b", "user_ids": [alice.id]},
        {"title": "", "body": "b", "user_ids": [alice.id]},  # invalid: empty title
        {"title": "three", "body": "b", "emails": ["nobody@example.com"]},  # unknown recipient
        {"title": "four", "body": "b", "user_ids": [alice.id, bob.id]},
        {"title": "five", "body": "b", "broadcast": True},
        "not an object",
    ]
    async with client.ws_connect(f"{API}/ws", headers=bob.headers) as ws:
        await ready(ws)
        status, answer, replayed = await post(
            client, admin, {"notifications": items}, "batch-1", "/notifications/batch"
        )
        assert status == 200 and not replayed
        results = answer["results"]
        assert [r["status"] for r in results] == [201, 422, 422, 201, 201, 422]
        assert results[1]["error"]["code"] == "validation_error" and "title" in results[1]["error"]["details"]
        assert results[2]["error"]["code"] == "validation_error"
        assert [n["title"] for n in results[3]["notifications"]] == ["four", "four"]
        assert results[4]["broadcast"] is True
        received = {(await next_of(ws, "notification"))["notification"]["title"] for _ in range(2)}
        assert received == {"four", "five"}
        # The whole batch replays under its key, and sends nothing more.
        assert await post(client, admin, {"notifications": items}, "batch-1", "/notifications/batch") == (
            200,
            answer,
            True,
        )
        await nothing_more(ws)
    assert len(await Dispatch.find_all().to_list()) == 3

    bad: list[dict[str, Any]] = [{"notifications": []}, {"notifications": [items[0]] * 101}, {"notifications": "x"}]
    for wrong in bad:
        response = await client.post(f"{API}/notifications/batch", json=wrong, headers=admin.headers)
        await error_of(response, 422, "validation_error")


# On two real processes


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("idempotency")) as pair:
        yield pair


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def send_via(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any], key: str
) -> tuple[int, dict[str, Any], bool]:
    async with session.post(
        f"{url}{API}/notifications", json=body, headers={**headers, "Idempotency-Key": key}
    ) as response:
        return response.status, await response.json(), response.headers.get("Idempotent-Replayed") == "true"


@contextlib.asynccontextmanager
async def socket(session: aiohttp.ClientSession, url: str, user: Account) -> AsyncIterator[ClientWebSocketResponse]:
    async with session.ws_connect(f"{url}{API}/ws", headers={**user.headers, "Origin": ORIGIN}) as ws:
        await ready(ws)
        yield ws


async def make_key(session: aiohttp.ClientSession, url: str, admin: Account) -> str:
    body = {"name": f"backend-{uuid.uuid4().hex[:6]}", "scopes": ["notifications:send"]}
    async with session.post(f"{url}{API}/api-keys", json=body, headers=admin.headers) as response:
        assert response.status == 201, await response.text()
        key: str = (await response.json())["key"]
        return key


async def test_a_replay_through_the_other_process_delivers_once(pair: Pair, session: aiohttp.ClientSession) -> None:
    admin, user = await register(session, pair.a, pair, admin=True), await register(session, pair.b, pair)
    key = bearer(await make_key(session, pair.a.url, admin))
    body = {"title": "Invoice paid", "body": "b", "user_ids": [user.id]}
    async with socket(session, pair.a.url, user) as on_a, socket(session, pair.b.url, user) as on_b:
        first = await send_via(session, pair.a.url, key, body, "invoice-7")
        again = await send_via(session, pair.b.url, key, body, "invoice-7")
        assert first[0] == 201 and again == (201, first[1], True)
        reused = await send_via(session, pair.b.url, key, {**body, "body": "other"}, "invoice-7")
        assert reused[0] == 422 and reused[1]["error"]["code"] == "idempotency_key_reused"
        for ws in (on_a, on_b):
            assert (await next_of(ws, "notification"))["notification"]["id"] == first[1]["notifications"][0]["id"]
            await nothing_more(ws)


async def test_concurrent_requests_on_two_processes_deliver_once(pair: Pair, session: aiohttp.ClientSession) -> None:
    admin, user = await register(session, pair.a, pair, admin=True), await register(session, pair.b, pair)
    key = bearer(await make_key(session, pair.b.url, admin))
    body = {"title": "Race", "body": "b", "user_ids": [user.id]}
    async with socket(session, pair.a.url, user) as ws:
        answers = await asyncio.gather(
            *(send_via(session, server.url, key, body, "race-1") for server in (pair.a, pair.b, pair.a, pair.b))
        )
        sent = [answer for answer in answers if answer[0] == 201]
        # Each either waited for the first and replayed it, or was told the first was still running.
        assert all(answer[0] == 201 or answer[1]["error"]["code"] == "idempotency_key_in_use" for answer in answers)
        assert sum(not replayed for _, _, replayed in sent) == 1
        assert len({answer["notifications"][0]["id"] for _, answer, _ in sent}) == 1
        await next_of(ws, "notification")
        await nothing_more(ws)


async def test_a_batch_with_a_bad_item_through_the_other_process(pair: Pair, session: aiohttp.ClientSession) -> None:
    admin, user = await register(session, pair.a, pair, admin=True), await register(session, pair.a, pair)
    key = bearer(await make_key(session, pair.a.url, admin))
    items = [
        {"title": "first", "body": "b", "user_ids": [user.id]},
        {"title": "bad", "body": "b", "user_ids": [user.id], "colour": "red"},  # an unknown field
        {"title": "third", "body": "b", "user_ids": [user.id]},
    ]
    async with socket(session, pair.a.url, user) as ws:
        async with session.post(
            f"{pair.b.url}{API}/notifications/batch", json={"notifications": items}, headers=key
        ) as response:
            assert response.status == 200, await response.text()
            results = (await response.json())["results"]
        assert [r["status"] for r in results] == [201, 422, 201]
        assert "colour" in results[1]["error"]["details"]
        got = [(await next_of(ws, "notification"))["notification"] for _ in range(2)]
        assert sorted(n["title"] for n in got) == ["first", "third"]
        assert all(n["sender"]["type"] == "key" for n in got)
        await nothing_more(ws)


async def test_a_retry_during_a_redis_outage_delivers_once_after_recovery(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    if not RedisProcess.installed():
        pytest.skip("redis-server is not installed")
    redis = RedisProcess(tmp_path, name="redis-idempotency")
    redis.start()
    try:
        with running_pair(tmp_path, redis.url) as pair:
            admin, user = await register(session, pair.a, pair, admin=True), await register(session, pair.b, pair)
            key = bearer(await make_key(session, pair.a.url, admin))
            body = {"title": "During the outage", "body": "b", "user_ids": [user.id]}
            async with socket(session, pair.a.url, user) as on_a, socket(session, pair.b.url, user) as on_b:
                redis.kill()
                first = await send_via(session, pair.a.url, key, body, "outage-1")
                assert first[0] == 201, first
                # The client did not hear the answer and retries, through the other process: a replay.
                again = await send_via(session, pair.b.url, key, body, "outage-1")
                assert again == (201, first[1], True)
                redis.start()
                sent_id = first[1]["notifications"][0]["id"]
                for ws in (on_a, on_b):
                    message = await next_of(ws, "notification", RECOVERY_TIMEOUT)
                    assert message["notification"]["id"] == sent_id
                    await nothing_more(ws)
    finally:
        redis.kill()
