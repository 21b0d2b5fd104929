"""A three-primary Redis Cluster under two server processes: fan-out by sharded pub/sub, resume, deactivation and
rate limits, with users whose channels are spread over every shard.

The cluster is the test's own (tests/redis_topologies.py), started and stopped here. Accounts are registered through
server A, so the job queue runs on the cluster too (registering queues a verification mail; its scripts' keys share
one slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import redis

from tests.conftest import Account
from tests.launcher import Isolation, ServerProcess, server_env, wait_ready
from tests.realtime import API, expect_close, next_of, notifications_until, pong
from tests.redis_topologies import ClusterTopology
from tests.test_multiprocess import JWT_SECRET, ORIGIN, Api
from tidings.server.adapters.codecs import USER_TOPIC

pytestmark = pytest.mark.skipif(not ClusterTopology.installed(), reason="redis-server/redis-cli not installed")

ATTEMPTS_PER_ACCOUNT = 3


class ClusterServers:
    def __init__(self, topology: ClusterTopology, log_dir: Path) -> None:
        self.topology = topology
        self.isolation = Isolation.new("test", "cluster", redis_url=topology.url)
        env = server_env(
            self.isolation,
            jwt_secret=JWT_SECRET,
            origins=ORIGIN,
            log_level="INFO",
            REDIS_CLUSTER="1",
            LOGIN_ATTEMPTS_PER_ACCOUNT=str(ATTEMPTS_PER_ACCOUNT),
            LOGIN_ATTEMPTS_PER_ADDRESS="100000",
        )
        self.servers = [ServerProcess(name, env, log_dir) for name in "AB"]

    @property
    def db(self) -> str:
        return self.isolation.db

    def channel(self, user_id: str) -> str:
        return f"{self.isolation.prefix}{USER_TOPIC}:{user_id}"

    def shard_subscribers(self, user_id: str) -> int:
        """PUBSUB SHARDNUMSUB of the user's channel, on the node that owns its slot."""
        channel = self.channel(user_id)
        node = self.topology.node_of(channel)
        with contextlib.closing(node.client()) as client:
            reply: Any = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)  # type: ignore[no-untyped-call]
        return int(reply[1])


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    directory = tmp_path_factory.mktemp("cluster")
    with ClusterTopology(directory / "redis") as topology:
        cluster = ClusterServers(topology, directory)
        for server in cluster.servers:
            server.start()
        try:
            wait_ready(*cluster.servers)
            yield cluster
        finally:
            for server in cluster.servers:
                print(f"----- server {server.name} log (tail) -----\n{server.tail()}")
                server.stop()
            with contextlib.suppress(redis.RedisError):
                cluster.isolation.drop()


def registrar(session: aiohttp.ClientSession, cluster: ClusterServers) -> Api:
    return Api(session, SimpleNamespace(db=cluster.db), cluster.servers[0])  # type: ignore[arg-type]


async def users_on_every_shard(cluster: ClusterServers, api: Api) -> list[Account]:
    """Users until their channels cover every node, at least two per node."""
    users: list[Account] = []
    per_node: dict[int, int] = {}
    while len(per_node) < len(cluster.topology.nodes) or min(per_node.values()) < 2:
        user = await api.user()
        port = cluster.topology.node_of(cluster.channel(user.id)).port
        if per_node.get(port, 0) < 2:
            users.append(user)
            per_node[port] = per_node.get(port, 0) + 1
    return users


async def test_fan_out_resume_and_subscriptions_over_every_shard(servers: ClusterServers) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        a, b = (Api(session, SimpleNamespace(db=servers.db), server) for server in servers.servers)  # type: ignore[arg-type]
        admin = await registrar(session, servers).user(admin=True)
        users = await users_on_every_shard(servers, registrar(session, servers))
        async with contextlib.AsyncExitStack() as stack:
            sockets = {
                user.id: [await stack.enter_async_context(a.ws(user)), await stack.enter_async_context(b.ws(user))]
                for user in users
            }
            # Each user's channel has one subscriber per process, on its own shard.
            assert {servers.shard_subscribers(user.id) for user in users} == {2}
            sent = {user.id: await (a if i % 2 else b).send_to(admin, user) for i, user in enumerate(users)}
            [broadcast] = await b.send(admin, broadcast=True)
            for user in users:
                for ws in sockets[user.id]:
                    assert await notifications_until(ws, broadcast["id"]) == [sent[user.id], broadcast]
                    await pong(ws)

            # Resume: one user's socket on A goes away; what it missed comes back, exactly.
            user = users[0]
            first_a = sockets[user.id][0]
            await first_a.close()
            missed = [await b.send_to(admin, user, title=f"missed {i}") for i in range(3)]
            assert (await next_of(sockets[user.id][1], "notification"))["notification"] == missed[0]
            async with a.ws(user) as again:
                await again.send_json({"type": "resume", "after": broadcast["id"]})
                assert await notifications_until(again, missed[-1]["id"]) == missed
                await pong(again)
        deadline = time.monotonic() + 30
        while {servers.shard_subscribers(user.id) for user in users} != {0}:
            assert time.monotonic() < deadline, "user channels still subscribed after every socket closed"
            await asyncio.sleep(0.05)


async def test_deactivation_closes_sockets_on_both_processes(servers: ClusterServers) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        a, b = (Api(session, SimpleNamespace(db=servers.db), server) for server in servers.servers)  # type: ignore[arg-type]
        admin = await registrar(session, servers).user(admin=True)
        users = await users_on_every_shard(servers, registrar(session, servers))
        async with contextlib.AsyncExitStack() as stack:
            sockets = [
                (await stack.enter_async_context(a.ws(u)), await stack.enter_async_context(b.ws(u))) for u in users
            ]
            for user in users[::2]:
                async with session.patch(
                    f"{b.url}{API}/users/{user.id}", json={"is_active": False}, headers=admin.headers
                ) as response:
                    assert response.status == 200, await response.text()
            for index, pair in enumerate(sockets):
                for ws in pair:
                    if index % 2 == 0:
                        await expect_close(ws, 4403, skip={"notification"})
                    else:
                        await pong(ws)


async def test_login_rate_limits_count_across_processes(servers: ClusterServers) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        a, b = (Api(session, SimpleNamespace(db=servers.db), server) for server in servers.servers)  # type: ignore[arg-type]
        users = await users_on_every_shard(servers, registrar(session, servers))
        for user in users:
            statuses = []
            for attempt in range(ATTEMPTS_PER_ACCOUNT + 1):
                api = (a, b)[attempt % 2]
                body = {"email": user.email, "password": "wrong password, surely"}
                async with session.post(f"{api.url}{API}/auth/login", json=body) as response:
                    statuses.append(response.status)
            assert statuses == [401] * ATTEMPTS_PER_ACCOUNT + [429], (user.email, statuses)
