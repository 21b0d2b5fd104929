"""Per-user routing: a process receives only its own users' notifications (plus broadcasts and control messages),
holds a user's channel exactly while it holds a socket of that user, and closes the window between a socket's
registration and its channel's subscription."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestClient

from tests.conftest import REDIS_URL, Account, Accounts, AppFactory
from tests.launcher import Isolation, ServerProcess, server_env, wait_ready
from tests.realtime import API, next_of, notifications_until, pong, ready
from tests.test_multiprocess import JWT_SECRET, ORIGIN, Api
from tidings.server.adapters import broker as broker_module
from tidings.server.adapters.broker import RedisBroker
from tidings.server.adapters.codecs import USER_TOPIC
from tidings.server.keys import broker_key, hub_key

REPORT_INTERVAL = 0.3
SOCKETS = 90
WITHIN = 30.0


class Trio:
    """Servers A, B and C on one database and one Redis prefix, reporting their routing often."""

    def __init__(self, log_dir: Path, redis_url: str = REDIS_URL) -> None:
        self.isolation = Isolation.new("test", "routing", redis_url=redis_url)
        env = server_env(
            self.isolation,
            jwt_secret=JWT_SECRET,
            origins=ORIGIN,
            log_level="INFO",
            CONNECTION_REPORT_INTERVAL=str(REPORT_INTERVAL),
        )
        self.servers = [ServerProcess(name, env, log_dir) for name in "ABC"]

    @property
    def db(self) -> str:
        return self.isolation.db

    def start(self) -> None:
        for server in self.servers:
            server.start()
        wait_ready(*self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()
        for server in self.servers:
            server.stop()
        self.isolation.drop()

    def routing(self) -> dict[int, dict[str, Any]]:
        """Each live process's last routing report, by pid."""
        assert self.isolation.redis_url
        with contextlib.closing(redis.Redis.from_url(self.isolation.redis_url, socket_timeout=2)) as client:
            entries = client.hgetall(f"{self.isolation.prefix}ws:routing")
        reports = [json.loads(value) for value in entries.values()]
        return {report["pid"]: report for report in reports}


@contextlib.contextmanager
def running_trio(log_dir: Path) -> Iterator[Trio]:
    trio = Trio(log_dir)
    try:
        trio.start()
        yield trio
    finally:
        for server in trio.servers:
            print(f"----- server {server.name} log (tail) -----\n{server.tail()}")
        trio.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def reports_when(trio: Trio, done: Any, what: str) -> dict[int, dict[str, Any]]:
    """Poll the routing reports (written every REPORT_INTERVAL) until `done(reports)`."""
    deadline = time.monotonic() + WITHIN
    while True:
        reports = await asyncio.to_thread(trio.routing)
        if done(reports):
            return reports
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: reports are {reports}")
        await asyncio.sleep(REPORT_INTERVAL / 3)  # the reports are written on a timer: nothing to await


async def test_each_process_receives_only_its_own_users_messages(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    with running_trio(tmp_path) as trio:
        apis = [Api(session, trio, server) for server in trio.servers]  # type: ignore[arg-type]
        admin = await apis[0].user(admin=True)
        # Two users per process, each with sockets on its own process only (one of them with two).
        users = [[await api.user(), await api.user()] for api in apis]
        async with contextlib.AsyncExitStack() as stack:
            sockets: dict[str, list[aiohttp.ClientWebSocketResponse]] = {}
            for api, pair in zip(apis, users, strict=True):
                for user in pair:
                    sockets[user.id] = [await stack.enter_async_context(api.ws(user))]
                sockets[pair[0].id].append(await stack.enter_async_context(api.ws(pair[0])))
            before = await reports_when(trio, lambda r: len(r) == 3, "three processes report")
            received_before = {pid: report["received"] for pid, report in before.items()}

            # Targeted sends through every process: one at a time, and one to a user of each process at once.
            expected: dict[str, list[str]] = {user.id: [] for pair in users for user in pair}
            per_process = [0, 0, 0]
            for round_ in range(3):
                for index, pair in enumerate(users):
                    target = pair[round_ % 2]
                    sent = await apis[(index + round_) % 3].send_to(admin, target, title=f"to {index}/{round_}")
                    expected[target.id].append(sent["id"])
                    per_process[index] += 1
            together = await apis[1].send(admin, user_ids=[pair[1].id for pair in users], title="to one of each")
            for notification, pair in zip(together, users, strict=True):
                expected[pair[1].id].append(notification["id"])
            per_process = [count + 1 for count in per_process]
            broadcasts = [
                (await api.send(admin, broadcast=True, title=f"all via {i}"))[0] for i, api in enumerate(apis)
            ]
            # A control message: a user with no socket anywhere is deactivated (an `auth` invalidation).
            bystander = await apis[2].user()
            async with session.patch(
                f"{apis[2].url}{API}/users/{bystander.id}", json={"is_active": False}, headers=admin.headers
            ) as response:
                assert response.status == 200, await response.text()

            for user_id, user_sockets in sockets.items():
                for ws in user_sockets:
                    got = await notifications_until(ws, broadcasts[-1]["id"])
                    assert sorted(n["id"] for n in got) == sorted(expected[user_id] + [b["id"] for b in broadcasts])

            pids = [server.pid for server in trio.servers]

            def counted(reports: dict[int, dict[str, Any]]) -> bool:
                return all(
                    pid in reports
                    and reports[pid]["received"].get("topic:notify", 0) - received_before[pid].get("topic:notify", 0)
                    >= len(broadcasts)
                    and reports[pid]["received"].get("topic:auth", 0) - received_before[pid].get("topic:auth", 0) >= 1
                    for pid in pids
                )

            after = await reports_when(trio, counted, "every process counted the broadcasts and the control message")
            for index, pid in enumerate(pids):
                routed = after[pid]["received"].get(f"routed:{USER_TOPIC}", 0) - received_before[pid].get(
                    f"routed:{USER_TOPIC}", 0
                )
                print(f"process {trio.servers[index].name} (pid {pid}): {after[pid]}")
                # Exactly its own users' messages: none of the other processes' users' reached it.
                assert routed == per_process[index], (trio.servers[index].name, after[pid])
                assert after[pid]["held"] == 2
                assert after[pid]["received"]["topic:notify"] - received_before[pid].get("topic:notify", 0) == 3
            for user_sockets in sockets.values():
                for ws in user_sockets:
                    await pong(ws)


# One process: channels follow sockets, with no leak after a thousand connects and disconnects


def user_channels(client: TestClient[Any, Any]) -> dict[str, int]:
    """The user channels of the test's prefix that any Redis client subscribes to, and how many subscribers each
    has (PUBSUB CHANNELS, then PUBSUB NUMSUB)."""
    broker = client.app[broker_key]
    assert isinstance(broker, RedisBroker)
    pattern = broker.routed_channel(USER_TOPIC, "*")
    with contextlib.closing(redis.Redis.from_url(REDIS_URL, socket_timeout=2)) as redis_client:
        channels = [c.decode() if isinstance(c, bytes) else c for c in redis_client.pubsub_channels(pattern)]
        if not channels:
            return {}
        return {
            (name.decode() if isinstance(name, bytes) else name): int(count)
            for name, count in redis_client.pubsub_numsub(*channels)
        }


async def wait_for_channels(client: TestClient[Any, Any], expected: dict[str, int], what: str) -> None:
    """Unsubscribes are batched: poll PUBSUB until it shows `expected`."""
    deadline = time.monotonic() + WITHIN
    while (found := await asyncio.to_thread(user_channels, client)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: channels {found}, expected {expected}")
        await asyncio.sleep(0.02)


async def test_a_thousand_connects_and_disconnects_leak_no_channel(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    broker = client.app[broker_key]
    assert isinstance(broker, RedisBroker)
    hub = client.app[hub_key]
    users = [await accounts.user() for _ in range(25)]
    channel = {user.id: broker.routed_channel(USER_TOPIC, user.id) for user in users}
    rng = random.Random(15)
    opened = 0

    async def churn(user: Account, times: int) -> None:
        nonlocal opened
        for _ in range(times):
            ws = await client.ws_connect(f"{API}/ws", headers=user.headers)
            assert (await ready(ws))["user_id"] == user.id
            opened += 1
            if rng.random() < 0.3:
                ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # an abrupt drop: no close frame
            await ws.close()

    # 25 users x 40 = 1,000 sockets opened and closed, 25 at a time, overlapping on each user's channel.
    await asyncio.gather(*(churn(user, 40) for user in users))
    assert opened == 1000
    await wait_for_channels(client, {}, "after the churn")
    assert broker.held() == 0 and hub.connections() == 0

    # Consistent while open: exactly the channels of the users with a socket, one subscriber (this process) each.
    keep = users[:10]
    async with contextlib.AsyncExitStack() as stack:
        for user in keep:
            for _ in range(2):
                ws = await stack.enter_async_context(client.ws_connect(f"{API}/ws", headers=user.headers))
                await ready(ws)
        await wait_for_channels(client, {channel[user.id]: 1 for user in keep}, "ten users with two sockets each")
        assert broker.held() == 10
    await wait_for_channels(client, {}, "after the last close")


async def test_subscribes_and_unsubscribes_are_batched(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """90 users' sockets connecting at once (the test client's connection limit is 100) cost a handful of SUBSCRIBE
    commands, not 90; closing, likewise."""
    commands: list[tuple[str, int]] = []
    write = RedisBroker._write

    async def counting_write(self: RedisBroker, connections: list[Any]) -> None:
        [connection] = connections
        send = connection.send_command

        async def send_command(*args: Any, **kwargs: Any) -> None:
            commands.append((str(args[0]), len(args) - 1))
            await send(*args, **kwargs)

        connection.send_command = send_command
        await write(self, connections)

    monkeypatch.setattr(RedisBroker, "_write", counting_write)
    client, accounts, _ = await make_client(login_attempts_per_address=1000)
    users = [await accounts.user() for _ in range(SOCKETS)]
    commands.clear()
    async with contextlib.AsyncExitStack() as stack:

        async def connect(user: Account) -> None:
            ws = await stack.enter_async_context(client.ws_connect(f"{API}/ws", headers=user.headers))
            await ready(ws)

        await asyncio.gather(*(connect(user) for user in users))
        subscribes = [count for command, count in commands if command == "SUBSCRIBE"]
        assert sum(subscribes) == SOCKETS
        print(f"{SOCKETS} holds at once: {len(subscribes)} SUBSCRIBE commands of {subscribes} channels")
        assert len(subscribes) <= SOCKETS // 5
    deadline = time.monotonic() + WITHIN
    while sum(count for command, count in commands if command == "UNSUBSCRIBE") < SOCKETS:
        assert time.monotonic() < deadline, commands
        await asyncio.sleep(0.02)
    unsubscribes = [count for command, count in commands if command == "UNSUBSCRIBE"]
    print(f"{SOCKETS} releases at once: {len(unsubscribes)} UNSUBSCRIBE commands of {unsubscribes} channels")
    assert len(unsubscribes) <= SOCKETS // 5
    assert broker_module.BATCH_CHANNELS >= SOCKETS


async def test_a_notification_published_before_the_subscription_takes_effect_is_not_lost(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window between a socket's registration and its channel's subscription: a notification sent in it reaches
    the socket (read from MongoDB once the subscription is confirmed), once, before anything sent after."""
    broker = client.app[broker_key]
    assert isinstance(broker, RedisBroker)
    admin, user = await accounts.user(admin=True), await accounts.user()
    registered = asyncio.Event()
    release = asyncio.Event()
    hold = broker.hold

    def slow_hold(topic: str, key: str) -> Any:
        async def later() -> Any:
            registered.set()
            await release.wait()  # a slow SUBSCRIBE: a send happens before it goes out
            return await hold(topic, key)

        return later()

    monkeypatch.setattr(broker, "hold", slow_hold)
    connecting = asyncio.create_task(client.ws_connect(f"{API}/ws", headers=user.headers))
    await registered.wait()
    # Sent while the socket is registered but (as far as it knows) not yet subscribed.
    response = await client.post(
        f"{API}/notifications",
        json={"title": "in the window", "body": "b", "user_ids": [user.id]},
        headers=admin.headers,
    )
    assert response.status == 201
    [in_window] = (await response.json())["notifications"]
    release.set()
    ws = await connecting
    try:
        await ready(ws)
        response = await client.post(
            f"{API}/notifications", json={"title": "after", "body": "b", "user_ids": [user.id]}, headers=admin.headers
        )
        [after] = (await response.json())["notifications"]
        assert (await next_of(ws, "notification"))["notification"]["id"] == in_window["id"]
        assert (await next_of(ws, "notification"))["notification"]["id"] == after["id"]
        await pong(ws)  # and nothing else: no duplicate of either
    finally:
        await ws.close()
