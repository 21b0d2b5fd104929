"""Redis behind Sentinel: two server processes follow a failover under load with no restart, and every notification
that got 201 reaches every socket meant for it exactly once.

The topology (a primary, a replica, three sentinels) is the test's own (tests/redis_topologies.py), started and
stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from tests.launcher import Isolation, ServerProcess, server_env, wait_ready
from tests.realtime import API
from tests.redis_topologies import MASTER_NAME, SentinelTopology
from tests.test_multiprocess import JWT_SECRET, ORIGIN, Api

pytestmark = pytest.mark.skipif(not SentinelTopology.installed(), reason="redis-server/redis-sentinel not installed")

USERS = 4
SEND_EVERY = 0.02
AFTER_FAILOVER = 30  # sends that must succeed after the switch
DELIVERY_TIMEOUT = 60.0


class Recorder:
    """Every notification id one socket receives, in order, read by a task of its own."""

    def __init__(self, name: str, user_id: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.name, self.user_id, self.ws = name, user_id, ws
        self.ids: list[str] = []
        self.closed: int | None = None
        self.pongs = 0
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def round_trip(self) -> int:
        """A ping answered: the socket is alive; the notifications received before the pong."""
        pongs = self.pongs
        await self.ws.send_json({"type": "ping"})
        while self.pongs == pongs:
            assert self.closed is None, f"{self.name} closed with {self.closed}"
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10.0)
        return len(self.ids)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = msg.json()
                if data.get("type") == "notification":
                    self.ids.append(data["notification"]["id"])
                    self.changed.set()
                elif data.get("type") == "pong":
                    self.pongs += 1
                    self.changed.set()
        self.closed = self.ws.close_code
        self.changed.set()


async def send(session: aiohttp.ClientSession, url: str, admin_headers: dict[str, str], user_id: str) -> str | None:
    """One targeted send; its id on 201, None on anything else (a 503 while Redis fails over)."""
    body = {"title": "t", "body": "b", "user_ids": [user_id]}
    try:
        async with session.post(f"{url}{API}/notifications", json=body, headers=admin_headers) as response:
            if response.status != 201:
                return None
            [notification] = (await response.json())["notifications"]
            return str(notification["id"])
    except (aiohttp.ClientError, TimeoutError):
        return None


async def test_a_failover_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with SentinelTopology(tmp_path / "redis") as topology:
        isolation = Isolation.new("test", "sentinel", redis_url=topology.primary.url)
        env = server_env(
            isolation,
            jwt_secret=JWT_SECRET,
            origins=ORIGIN,
            log_level="INFO",
            REDIS_SENTINELS=topology.sentinel_addresses,
            REDIS_SENTINEL_MASTER=MASTER_NAME,
            REDIS_HEALTH_CHECK_INTERVAL="1",
        )
        servers = [ServerProcess(name, env, tmp_path) for name in "AB"]
        for server in servers:
            server.start()
        try:
            await asyncio.to_thread(wait_ready, *servers)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                holder = SimpleNamespace(db=isolation.db)
                apis = [Api(session, holder, server) for server in servers]  # type: ignore[arg-type]
                admin = await apis[0].user(admin=True)
                users = [await apis[i % 2].user() for i in range(USERS)]
                async with contextlib.AsyncExitStack() as stack:
                    recorders = [
                        Recorder(
                            f"{user.username} on {server.name}", user.id, await stack.enter_async_context(api.ws(user))
                        )
                        for user in users
                        for api, server in zip(apis, servers, strict=True)
                    ]
                    expected: dict[str, list[str]] = {user.id: [] for user in users}
                    failed, sent_after = 0, 0
                    killed_at: float | None = None
                    first_after: float | None = None
                    promoted_in: float | None = None
                    longest_gap, last_ok = 0.0, time.monotonic()
                    number = 0
                    while sent_after < AFTER_FAILOVER:
                        user = users[number % USERS]
                        api = apis[number % 2]
                        number += 1
                        notification_id = await send(session, api.url, admin.headers, user.id)
                        now = time.monotonic()
                        if notification_id is None:
                            failed += 1
                        else:
                            expected[user.id].append(notification_id)
                            longest_gap, last_ok = max(longest_gap, now - last_ok), now
                            if killed_at is not None:
                                sent_after += 1
                                if first_after is None:
                                    first_after = now - killed_at
                        if killed_at is None and number == 25:
                            topology.kill_primary()
                            killed_at = time.monotonic()
                            promotion = asyncio.create_task(asyncio.to_thread(topology.wait_for_promotion))
                        await asyncio.sleep(SEND_EVERY)
                    promoted_in = await promotion
                    # Logins (rate limits) work through both processes on the new primary.
                    for api in apis:
                        await api.user()

                    deadline = time.monotonic() + DELIVERY_TIMEOUT
                    for recorder in recorders:
                        want = expected[recorder.user_id]
                        while not set(want) <= set(recorder.ids):
                            assert recorder.closed is None, f"{recorder.name} closed with {recorder.closed}"
                            remaining = deadline - time.monotonic()
                            assert remaining > 0, f"{recorder.name}: missing {sorted(set(want) - set(recorder.ids))}"
                            recorder.changed.clear()
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(recorder.changed.wait(), remaining)
                    for recorder in recorders:
                        await recorder.round_trip()
                        duplicates = [i for i, count in Counter(recorder.ids).items() if count > 1]
                        assert not duplicates, f"{recorder.name}: duplicates {duplicates}"
                        strangers = set(recorder.ids) - set(expected[recorder.user_id])
                        # A send that failed may still have been stored (a 503 after the insert): it may arrive.
                        assert len(strangers) <= failed, f"{recorder.name}: {strangers}"
                    total = sum(len(ids) for ids in expected.values())
                    print(
                        f"sentinel failover: {total} notifications acknowledged, {failed} sends refused during the "
                        f"switch; promotion after {promoted_in:.1f} s, first 201 after the kill at "
                        f"{first_after or 0:.1f} s, longest gap between 201s {longest_gap:.1f} s; "
                        f"{len(recorders)} sockets, 0 lost, 0 duplicated, no socket closed"
                    )
                    for recorder in recorders:
                        recorder.task.cancel()
        finally:
            for server in servers:
                print(f"----- server {server.name} log (tail) -----\n{server.tail()}")
                server.stop()
            isolation.drop()
