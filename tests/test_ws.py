"""The WebSocket protocol in one process: authentication, origin, messages, resume, forced closes, limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, WSServerHandshakeError
from aiohttp.test_utils import TestClient
from pymongo.errors import AutoReconnect

from tests.conftest import REDIS_URL, Account, Accounts, AppFactory
from tests.helpers import TcpProxy
from tests.realtime import (
    API,
    TIMEOUT,
    expect_close,
    ids,
    next_json,
    next_of,
    notifications_until,
    pong,
    ready,
    send,
    send_to,
    unread,
)
from tidings.server.keys import hub_key, metrics_key, settings_key
from tidings.server.realtime import hub as hub_module
from tidings.server.services.notifications import NotificationService

WS = f"{API}/ws"
# A shutdown must not wait for a peer that stopped reading; CLOSE_TIMEOUT is patched to 1 s below.
CLOSE_BOUND = 6.0


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a client sends, the server never fails with an unhandled error."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()} {r.exc_info}" for r in errors]


async def connect(client: TestClient[Any, Any], user: Account) -> ClientWebSocketResponse:
    ws = await client.ws_connect(WS, headers=user.headers)
    message = await ready(ws)
    assert message["user_id"] == user.id
    return ws


class RawSocket:
    """A WebSocket client written by hand, so a test can stop reading or never answer a close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, client: TestClient[Any, Any], token: str, *, slow_link: bool = False) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if slow_link:
            # Tiny buffers and segments, as on a poor link: without them loopback buffers megabytes in the kernel.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (client.server.host, client.server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {WS} HTTP/1.1\r\nHost: {client.server.host}:{client.server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked, unfragmented): (opcode, payload)."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def json(self) -> dict[str, Any]:
        opcode, payload = await asyncio.wait_for(self.frame(), TIMEOUT)
        assert opcode == 0x1, (opcode, payload)
        message: dict[str, Any] = json.loads(payload)
        return message

    def close(self) -> None:
        self.writer.close()


# Authentication


async def test_header_auth_is_ready_with_the_unread_count(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    await send_to(client, admin, user)
    await send(client, admin, broadcast=True)
    async with client.ws_connect(WS, headers=user.headers) as ws:
        assert await next_json(ws) == {"type": "ready", "user_id": user.id, "unread": 2}
        await pong(ws)


async def test_bad_header_token_is_refused_before_the_upgrade(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    for token in ("garbage", user.refresh_token, user.access_token[:-2]):
        with pytest.raises(WSServerHandshakeError) as refused:
            await client.ws_connect(WS, headers={"Authorization": f"Bearer {token}"})
        assert refused.value.status == 401


async def test_in_band_auth_is_ready_with_the_unread_count(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    await send_to(client, admin, user)
    async with client.ws_connect(WS) as ws:
        await ws.send_json({"type": "auth", "token": user.access_token})
        assert await next_json(ws) == {"type": "ready", "user_id": user.id, "unread": 1}
        sent = await send_to(client, admin, user)
        assert await next_json(ws) == {"type": "notification", "notification": sent}


async def test_in_band_auth_failures_close_with_4401(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    first_messages: list[Any] = [
        {"type": "auth", "token": "garbage"},
        {"type": "auth", "token": user.refresh_token},  # a refresh token is not an access token
        {"type": "auth"},
        {"type": "auth", "token": 42},
        {"type": "ping"},  # anything but auth first
        "not json",
    ]
    for first in first_messages:
        async with client.ws_connect(WS) as ws:
            if isinstance(first, str):
                await ws.send_str(first)
            else:
                await ws.send_json(first)
            await expect_close(ws, 4401)


async def test_no_auth_in_time_closes_with_4408(make_client: AppFactory) -> None:
    client, _, _ = await make_client(ws_auth_timeout=0.5)
    async with client.ws_connect(WS) as ws:
        await expect_close(ws, 4408)


async def test_origin_is_checked_before_the_upgrade(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    for origin in ("https://evil.example", "null", "http://127.0.0.1:8080.evil.example"):
        with pytest.raises(WSServerHandshakeError) as refused:
            await client.ws_connect(WS, headers={**user.headers, "Origin": origin})
        assert refused.value.status == 403
    allowed = client.app[settings_key].allowed_origins[0]
    for headers in ({**user.headers, "Origin": allowed}, user.headers):
        async with client.ws_connect(WS, headers=headers) as ws:
            await ready(ws)
    # In-band auth is checked the same way: the Origin decides before any token is seen.
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect(WS, headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403


# Messages


async def test_ping_pong(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        for _ in range(3):
            await ws.send_json({"type": "ping"})
            assert await next_json(ws) == {"type": "pong"}


async def test_invalid_messages_get_errors_and_too_many_close_with_4400(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    user = await accounts.user()
    invalid: list[tuple[str | bytes, str]] = [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('"text"', "invalid_json"),
        ("{}", "unknown_type"),
        ('{"type": "subscribe"}', "unknown_type"),
        (b"\x00\x01", "unsupported"),
        ('{"type": "resume"}', "invalid_message"),
        ('{"type": "resume", "after": "nope"}', "invalid_message"),
        ('{"type": "read"}', "invalid_message"),
        ('{"type": "read", "id": 5}', "invalid_message"),
    ]
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        for data, code in invalid:
            await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
            error = await next_of(ws, "error")
            assert error["code"] == code, (data, error)
            assert isinstance(error["message"], str) and error["message"]
        await pong(ws)  # ten mistakes are tolerated
        await ws.send_str("one too many")
        await expect_close(ws, 4400)


async def test_oversized_frames_close_with_1009(make_client: AppFactory) -> None:
    client, accounts, settings = await make_client(ws_max_frame_bytes=2048)
    user = await accounts.user()
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        envelope = len(json.dumps({"type": "ping", "pad": ""}))
        at_the_limit = json.dumps({"type": "ping", "pad": "x" * (settings.ws_max_frame_bytes - envelope)})
        assert len(at_the_limit) == settings.ws_max_frame_bytes
        await ws.send_str(at_the_limit)
        await next_of(ws, "pong")
        await ws.send_str(json.dumps({"type": "ping", "pad": "x" * (settings.ws_max_frame_bytes - 100)}))
        await next_of(ws, "pong")
        one_more = json.dumps({"type": "ping", "pad": "x" * (settings.ws_max_frame_bytes + 1 - envelope)})
        await ws.send_str(one_more)
        await expect_close(ws, 1009)
    async with client.ws_connect(WS) as ws:  # before authentication too
        await ws.send_str(json.dumps({"type": "auth", "token": "x" * settings.ws_max_frame_bytes}))
        await expect_close(ws, 1009)


async def test_hostile_first_messages_close_with_documented_codes(client: TestClient[Any, Any]) -> None:
    """Never an HTTP error written into the socket (which a client sees as 1002): a deeply nested first message
    or a token that is not text is a bad first message."""
    for first in ("[" * 3000 + "]" * 3000, '{"type": "auth", "token": "\\udc00"}', '{"type": "auth", "token": "NaN"}'):
        async with client.ws_connect(WS) as ws:
            await ws.send_str(first)
            await expect_close(ws, 4401)
    async with client.ws_connect(WS) as ws:
        await ws.send_str('{"type": "auth", "token": "' + "\\udc00" * 100 + '"}')
        await expect_close(ws, 4401)


async def test_database_errors_on_an_open_socket_keep_it_open(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `read` during a MongoDB outage answers service_unavailable and the socket stays open; a resume that
    cannot read MongoDB closes with 4003 (reconnect and resume), never with an HTTP response in the socket."""
    admin, user = await accounts.user(admin=True), await accounts.user()
    sent = await send_to(client, admin, user)

    async def outage(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection refused")

    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        monkeypatch.setattr(NotificationService, "mark_read", outage)
        for _ in range(15):  # more than the ten client mistakes tolerated: an outage is not the client's fault
            await ws.send_json({"type": "read", "id": sent["id"]})
            error = await next_of(ws, "error")
            assert error["code"] == "service_unavailable", error
        monkeypatch.undo()
        await ws.send_json({"type": "read", "id": sent["id"]})
        assert (await next_of(ws, "read"))["id"] == sent["id"]
        monkeypatch.setattr(NotificationService, "after", outage)
        await ws.send_json({"type": "resume", "after": sent["id"]})
        await expect_close(ws, 4003)


async def test_failed_opens_give_their_slot_back(make_client: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An open that fails between registration and "ready" (here MongoDB is down when the unread count is read)
    must not keep its slot: many such failures, and the user can still open every socket allowed."""
    client, accounts, settings = await make_client(ws_max_per_user=3)
    user = await accounts.user()

    async def outage(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(NotificationService, "unread_count", outage)
        for _ in range(settings.ws_max_per_user * 3):
            async with client.ws_connect(WS, headers=user.headers) as ws:
                await expect_close(ws, 4000)
    sockets = [await connect(client, user) for _ in range(settings.ws_max_per_user)]
    for ws in sockets:
        await pong(ws)
        await ws.close()


async def test_read_over_the_socket(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, alice, bob = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    for_bob = await send_to(client, admin, bob)
    async with client.ws_connect(WS, headers=alice.headers) as ws:
        await ready(ws)
        sent = await send_to(client, admin, alice)
        assert (await next_of(ws, "notification"))["notification"]["id"] == sent["id"]
        await ws.send_json({"type": "read", "id": sent["id"]})
        assert await next_json(ws) == {"type": "read", "id": sent["id"]}
        assert await unread(client, alice) == 0
        await ws.send_json({"type": "read", "id": sent["id"]})  # again: harmless
        assert await next_json(ws) == {"type": "read", "id": sent["id"]}
        await ws.send_json({"type": "read", "id": for_bob["id"]})
        assert (await next_of(ws, "error"))["code"] == "not_found"
    assert await unread(client, bob) == 1


# Resume


async def test_resume_replays_exactly_the_missed_ones_then_goes_live(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, user, other = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        seen = await send_to(client, admin, user, title="seen")
        assert (await next_of(ws, "notification"))["notification"] == seen
    # While disconnected: two direct ones, a broadcast, and one for someone else.
    missed = [await send_to(client, admin, user, title="missed 1")]
    missed += await send(client, admin, broadcast=True, title="missed broadcast")
    await send_to(client, admin, other, title="not for this user")
    missed.append(await send_to(client, admin, user, title="missed 2"))
    response = await client.post(f"{API}/notifications/{missed[0]['id']}/read", headers=user.headers)
    assert response.status == 204
    missed[0] = {**missed[0], "read": True}  # the replay carries the current read state

    async with client.ws_connect(WS, headers=user.headers) as ws:
        assert (await ready(ws))["unread"] == 3  # seen, missed broadcast, missed 2
        await ws.send_json({"type": "resume", "after": seen["id"]})
        replayed = await notifications_until(ws, missed[-1]["id"])
        assert replayed == missed  # exactly the missed ones, oldest first
        live = await send_to(client, admin, user, title="live")
        assert (await next_of(ws, "notification"))["notification"] == live
        await pong(ws)  # and nothing else: no duplicate
        # Resuming from the newest id replays nothing.
        await ws.send_json({"type": "resume", "after": live["id"]})
        await pong(ws)


async def test_resume_skips_what_the_socket_already_got_live(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user = await accounts.user(admin=True), await accounts.user()
    last_seen = await send_to(client, admin, user, title="seen on an earlier connection")
    missed = await send_to(client, admin, user, title="missed")
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        # A notification arrives between "ready" and the client's resume ...
        early = await send_to(client, admin, user, title="live before the resume")
        assert (await next_of(ws, "notification"))["notification"] == early
        await ws.send_json({"type": "resume", "after": last_seen["id"]})
        # ... so the replay brings only what the socket has not had.
        assert ids(await notifications_until(ws, missed["id"])) == [missed["id"]]
        sentinel = await send_to(client, admin, user, title="sentinel")
        assert ids(await notifications_until(ws, sentinel["id"])) == [sentinel["id"]]


async def test_resume_while_notifications_keep_coming_has_no_gap_and_no_duplicate(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "REPLAY_BATCH", 2)  # several round trips to MongoDB, so live ones interleave
    admin, user = await accounts.user(admin=True), await accounts.user()
    start = await send_to(client, admin, user, title="start")
    missed = [await send_to(client, admin, user, title=f"missed {i}") for i in range(9)]
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        await ws.send_json({"type": "resume", "after": start["id"]})
        concurrent = await asyncio.gather(*(send_to(client, admin, user, title=f"live {i}") for i in range(6)))
        expected = set(ids(missed)) | set(ids(list(concurrent)))
        received: list[str] = []
        while set(received) != expected:
            message = await next_of(ws, "notification")
            received.append(message["notification"]["id"])
            assert received.count(received[-1]) == 1, f"duplicate {received[-1]}"
            assert received[-1] in expected, f"unexpected {received[-1]}"
        replayed = [i for i in received if i in ids(missed)]
        assert replayed == ids(missed)  # oldest first
        sentinel = await send_to(client, admin, user, title="sentinel")
        assert ids(await notifications_until(ws, sentinel["id"])) == [sentinel["id"]]


async def test_a_replayed_notification_whose_live_frame_comes_late_is_not_sent_twice(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each notification is stored before it is published, so a replay can read one whose live frame is still on
    its way. Here every publish waits until the replay has gone live, and every replay read is slowed down so that
    the live sends are stored while it runs: the race happens every time."""
    monkeypatch.setattr(hub_module, "REPLAY_BATCH", 2)
    replay_done = asyncio.Event()
    original_after, original_publish = NotificationService.after, NotificationService.publish

    async def slow_after(self: NotificationService, *args: Any) -> list[dict[str, Any]]:
        await asyncio.sleep(0.05)
        found = await original_after(self, *args)
        if len(found) < hub_module.REPLAY_BATCH:
            replay_done.set()  # this read ends the replay
        return found

    async def late_publish(self: NotificationService, notifications: list[Any]) -> None:
        await replay_done.wait()
        await asyncio.sleep(0.05)  # past go_live
        await original_publish(self, notifications)

    admin, user = await accounts.user(admin=True), await accounts.user()
    start = await send_to(client, admin, user, title="start")
    missed = [await send_to(client, admin, user, title=f"missed {i}") for i in range(5)]
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        monkeypatch.setattr(NotificationService, "after", slow_after)
        monkeypatch.setattr(NotificationService, "publish", late_publish)
        await ws.send_json({"type": "resume", "after": start["id"]})
        concurrent = await asyncio.gather(*(send_to(client, admin, user, title=f"live {i}") for i in range(4)))
        expected = set(ids(missed)) | set(ids(list(concurrent)))
        monkeypatch.undo()
        sentinel = await send_to(client, admin, user, title="sentinel")
        received = ids(await notifications_until(ws, sentinel["id"]))
        assert len(received) == len(set(received)), f"duplicates: {received}"
        assert set(received) == expected | {sentinel["id"]}


async def test_catch_up_after_a_broker_outage_starts_where_the_outage_began(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """White-box: drives the hub's broker callbacks in the order a real outage produced them (see test_multiprocess).

    Two notifications are stored while the broker is down; when the subscription returns, the delayed publish of
    the second one (redis-py retries for seconds) arrives before the catch-up task has run.
    """
    admin, user = await accounts.user(admin=True), await accounts.user()
    hub = client.app[hub_key]
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        with monkeypatch.context() as outage:

            async def unpublished(self: NotificationService, notifications: list[Any]) -> None:
                return None

            outage.setattr(NotificationService, "publish", unpublished)
            hub._on_broker_disconnect()  # the subscription is lost ...
            first = await send_to(client, admin, user, title="stored during the outage")
            second = await send_to(client, admin, user, title="published late")
        hub._on_broker_connect()  # ... and back: the catch-up is scheduled ...
        hub._on_notify(json.dumps([[user.id, second]]).encode())  # ... and the late publish comes first
        assert await notifications_until(ws, second["id"]) == [first, second]
        sentinel = await send_to(client, admin, user, title="sentinel")
        assert await notifications_until(ws, sentinel["id"]) == [sentinel]


# Delivery


async def test_other_users_notifications_are_never_delivered(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, alice, bob = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    async with client.ws_connect(WS, headers=alice.headers) as a, client.ws_connect(WS, headers=bob.headers) as b:
        await ready(a)
        await ready(b)
        for_alice = await send_to(client, admin, alice)
        [broadcast] = await send(client, admin, broadcast=True)
        for_bob = await send_to(client, admin, bob)
        for_both = await send(client, admin, user_ids=[alice.id, bob.id])  # one document each
        got_a = [(await next_of(a, "notification"))["notification"] for _ in range(3)]
        got_b = [(await next_of(b, "notification"))["notification"] for _ in range(3)]
        assert got_a[:2] == [for_alice, broadcast]
        assert got_b[:2] == [broadcast, for_bob]
        assert got_a[2] in for_both and got_b[2] in for_both and got_a[2] != got_b[2]
        await pong(a)
        await pong(b)


async def test_in_process_broker_without_redis(make_client: AppFactory) -> None:
    client, accounts, settings = await make_client(redis_url=None)
    assert settings.redis_url is None
    admin, user = await accounts.user(admin=True), await accounts.user()
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        sent = await send_to(client, admin, user)
        [broadcast] = await send(client, admin, broadcast=True)
        assert await notifications_until(ws, broadcast["id"]) == [sent, broadcast]
        # Revocations travel through the same broker.
        response = await client.post(f"{API}/auth/logout-all", headers=user.headers)
        assert response.status == 204
        await expect_close(ws, 4401)


async def test_slow_client_is_dropped_and_others_keep_receiving(make_client: AppFactory) -> None:
    # Above asyncio's 64 KiB high-water mark, where a close that waits for the buffer to drain never ends.
    client, accounts, _ = await make_client(ws_send_buffer_bytes=96 * 1024)
    hub = client.app[hub_key]
    admin, user = await accounts.user(admin=True), await accounts.user()
    slow = await RawSocket.connect(client, user.access_token, slow_link=True)
    try:
        assert (await slow.json())["type"] == "ready"
        # From here on the slow client reads nothing, while a healthy tab of the same user keeps up.
        async with client.ws_connect(WS, headers=user.headers) as healthy:
            await ready(healthy)
            big = {"title": "t" * 200, "body": "b" * 5000, "data": {"pad": "x" * 4000}}
            sent: list[str] = []
            for _ in range(48):  # about 450 KB: well beyond the kernel buffers on the way and the 96 KiB allowed
                sent.append((await send_to(client, admin, user, **big))["id"])
                assert (await next_of(healthy, "notification"))["notification"]["id"] == sent[-1]
            # The server lets go of the slow socket (handler, buffer, file descriptor) though its peer never reads.
            deadline = time.monotonic() + TIMEOUT
            while hub.socket_count() > 1:
                assert time.monotonic() < deadline, "the server kept a socket whose peer stopped reading"
                await asyncio.sleep(0.05)
            await pong(healthy)
        # What reached the slow client is a gapless prefix, ended by 4002 or by the dropped connection.
        got: list[str] = []
        close_code = None
        try:
            while True:
                opcode, payload = await asyncio.wait_for(slow.frame(), TIMEOUT)
                if opcode == 0x8:
                    close_code = struct.unpack("!H", payload[:2])[0]
                    break
                got.append(json.loads(payload)["notification"]["id"])
        except (ConnectionResetError, asyncio.IncompleteReadError):
            pass
        assert got == sent[: len(got)]
        assert len(got) < len(sent)
        assert close_code in (None, 4002)
        assert client.app[metrics_key].registry.get_sample_value("tidings_websocket_slow_client_closes_total") == 1
    finally:
        slow.close()


# Forced closes


async def test_in_band_refresh_extends_the_connection(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(access_token_ttl=3)
    user = await accounts.user()
    claims = jwt.decode(user.access_token, options={"verify_signature": False})
    async with client.ws_connect(WS, headers=user.headers) as kept, client.ws_connect(WS, headers=user.headers) as left:
        await ready(kept)
        await ready(left)
        # Tokens count whole seconds and the server checks expiry once a second: refreshing two seconds after
        # the original was issued (one before it expires) makes the new token outlive it by two, so the check
        # that closes one socket cannot close the other.
        await asyncio.sleep(max(0.0, claims["iat"] + 2 - time.time()))
        response = await client.post(f"{API}/auth/refresh", json={"refresh_token": user.refresh_token})
        assert response.status == 200, await response.text()
        fresh = (await response.json())["access_token"]
        fresh_exp = jwt.decode(fresh, options={"verify_signature": False})["exp"]
        assert fresh_exp >= claims["exp"] + 2
        await kept.send_json({"type": "auth", "token": fresh})
        auth_ok = await next_of(kept, "auth_ok")
        assert 1 <= auth_ok["expires_in"] <= 3

        await expect_close(left, 4001)  # the socket that did not refresh ends when its token does
        assert time.time() >= claims["exp"]
        await pong(kept)  # the refreshed one is still open past the original expiry
        await expect_close(kept, 4001)  # until its new token expires too
        assert time.time() >= fresh_exp


async def test_in_band_auth_for_another_user_closes_with_4403(client: TestClient[Any, Any], accounts: Accounts) -> None:
    alice, bob = await accounts.user(), await accounts.user()
    async with client.ws_connect(WS, headers=alice.headers) as ws:
        await ready(ws)
        await ws.send_json({"type": "auth", "token": bob.access_token})
        await expect_close(ws, 4403)
    async with client.ws_connect(WS, headers=alice.headers) as ws:
        await ready(ws)
        await ws.send_json({"type": "auth", "token": "garbage"})
        await expect_close(ws, 4401)


async def test_connection_limit_per_user(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(ws_max_per_user=2)
    alice, bob = await accounts.user(), await accounts.user()
    first, second = await connect(client, alice), await connect(client, alice)
    async with client.ws_connect(WS, headers=alice.headers) as third:
        await expect_close(third, 4429)
    others = await connect(client, bob)  # the limit is per user
    await pong(first)
    await pong(second)
    await first.close()
    # The freed place can be taken again; the server forgets the socket right after the close handshake.
    deadline = time.monotonic() + TIMEOUT
    while True:
        again = await client.ws_connect(WS, headers=alice.headers)
        message = await again.receive(timeout=TIMEOUT)
        if message.type is WSMsgType.TEXT:
            assert json.loads(message.data)["type"] == "ready"
            break
        assert message.type is WSMsgType.CLOSE and message.data == 4429, message
        assert time.monotonic() < deadline
    for ws in (second, others, again):
        await ws.close()


async def test_logout_closes_that_sessions_sockets(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    other_session = await accounts.login(user.email)
    other = Account(
        user.id, user.email, user.username, user.password, other_session["access_token"], other_session["refresh_token"]
    )
    async with (
        client.ws_connect(WS, headers=user.headers) as mine,
        client.ws_connect(WS, headers=other.headers) as theirs,
    ):
        await ready(mine)
        await ready(theirs)
        response = await client.post(
            f"{API}/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers
        )
        assert response.status == 204, await response.text()
        await expect_close(mine, 4401)
        await pong(theirs)  # another session of the same user is untouched
        response = await client.post(f"{API}/auth/logout-all", headers=other.headers)
        assert response.status == 204, await response.text()
        await expect_close(theirs, 4401)


async def test_deactivation_closes_with_4403(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, user, bystander = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    async with (
        client.ws_connect(WS, headers=user.headers) as first,
        client.ws_connect(WS, headers=user.headers) as second,
        client.ws_connect(WS, headers=bystander.headers) as third,
    ):
        for ws in (first, second, third):
            await ready(ws)
        response = await client.patch(f"{API}/users/{user.id}", json={"is_active": False}, headers=admin.headers)
        assert response.status == 200, await response.text()
        for ws in (first, second):
            await expect_close(ws, 4403, skip={"notification"})  # the "account changed" one may come first
        await pong(third)
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect(WS, headers=user.headers)
    assert refused.value.status == 401


async def test_password_change_closes_with_4401(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        response = await client.patch(
            f"{API}/users/me",
            json={"password": "a whole new password", "current_password": user.password},
            headers=user.headers,
        )
        assert response.status == 200, await response.text()
        await expect_close(ws, 4401)


async def test_shutdown_closes_every_socket_with_1001(make_client: AppFactory) -> None:
    client, accounts, settings = await make_client(ws_close_timeout=1.0)
    admin, user = await accounts.user(admin=True), await accounts.user()
    authenticated = await connect(client, user)
    unauthenticated = await client.ws_connect(WS)
    # A peer that stopped reading with a backlog under ws_send_buffer_bytes: aiohttp's close() would wait for
    # its buffer to drain, forever, and hold up the whole shutdown.
    stuck = await RawSocket.connect(client, user.access_token, slow_link=True)
    try:
        assert (await stuck.json())["type"] == "ready"
        big = {"title": "t" * 200, "body": "b" * 5000, "data": {"pad": "x" * 4000}}
        for _ in range(40):  # about 370 KB: beyond the kernel buffers, well under the 1 MiB send buffer
            sent = await send_to(client, admin, user, **big)
            assert (await next_of(authenticated, "notification"))["notification"]["id"] == sent["id"]
        assert settings.ws_send_buffer_bytes >= 1024 * 1024
        closes = [asyncio.create_task(ws.receive(timeout=TIMEOUT)) for ws in (authenticated, unauthenticated)]
        async with asyncio.timeout(CLOSE_BOUND):
            await client.server.close()
        for task in closes:
            message = await task
            assert message.type is WSMsgType.CLOSE and message.data == 1001, message
        # The stuck peer was let go: reading now finds its backlog (or part of it) and then the end.
        with contextlib.suppress(ConnectionResetError, asyncio.IncompleteReadError):
            while (await asyncio.wait_for(stuck.frame(), TIMEOUT))[0] != 0x8:
                pass
    finally:
        stuck.close()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    """Redis behind a proxy the test can cut; requested before make_client, so it outlives the app's teardown."""
    parts = urlsplit(REDIS_URL)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_revocations_close_local_sockets_while_redis_is_down(
    redis_proxy: TcpProxy, make_client: AppFactory
) -> None:
    """With Redis unreachable, a deactivation and a logout still close this process's sockets at once."""
    client, accounts, _ = await make_client(redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0")
    admin, user, other = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    async with (
        client.ws_connect(WS, headers=user.headers) as deactivated,
        client.ws_connect(WS, headers=other.headers) as logged_out,
    ):
        await ready(deactivated)
        await ready(logged_out)
        await redis_proxy.stop()  # Redis is gone for this app
        response = await client.patch(f"{API}/users/{user.id}", json={"is_active": False}, headers=admin.headers)
        assert response.status == 200, await response.text()
        await expect_close(deactivated, 4403, skip={"notification"})
        response = await client.post(
            f"{API}/auth/logout", json={"refresh_token": other.refresh_token}, headers=other.headers
        )
        assert response.status == 204, await response.text()
        await expect_close(logged_out, 4401)
    await redis_proxy.start()  # back on the same port, for the app's own teardown


async def test_a_socket_that_never_resumes_stops_tracking_what_it_was_sent(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """White-box: the ids kept to deduplicate an early resume are bounded, so a long-lived socket does not grow."""
    monkeypatch.setattr(hub_module, "MAX_TRACKED", 3)
    admin, user = await accounts.user(admin=True), await accounts.user()
    hub = client.app[hub_key]
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        sent = [await send_to(client, admin, user, title=f"n{i}") for i in range(5)]
        assert await notifications_until(ws, sent[-1]["id"]) == sent
        [conn] = [conn for conns in hub._by_user.values() for conn in conns]
        assert conn.delivered is None


async def test_a_flood_of_messages_is_refused_past_the_per_socket_limit(make_client: AppFactory) -> None:
    """A client that sends 300 `read`s at once gets the burst served and the rest refused at once, instead of
    holding the server to them one by one; the socket stays open, and tokens come back with time."""
    client, accounts, settings = await make_client(ws_messages_per_second=5, ws_message_burst=10)
    admin, user = await accounts.user(admin=True), await accounts.user()
    sent = await send_to(client, admin, user)
    async with client.ws_connect(WS, headers=user.headers) as ws:
        await ready(ws)
        for _ in range(300):
            await ws.send_json({"type": "read", "id": sent["id"]})
        answers = [await ws.receive_json(timeout=TIMEOUT) for _ in range(300)]
        served = [answer for answer in answers if answer["type"] == "read"]
        refused = [answer for answer in answers if answer.get("code") == "rate_limited"]
        assert len(served) + len(refused) == 300, answers
        assert settings.ws_message_burst <= len(served) < 40, len(served)
        await asyncio.sleep(1.0 / settings.ws_messages_per_second * 2)  # tokens come back with time
        await pong(ws)
