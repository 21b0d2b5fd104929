"""Two real server processes on one database and one Redis: fan-out, resume, revocation and a Redis outage."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from bson import ObjectId
from pymongo import AsyncMongoClient

from tests.conftest import MONGODB_URL, PASSWORD, REDIS_URL, Account
from tests.launcher import Isolation, ServerProcess, free_port, server_env, wait_ready
from tests.realtime import API, TIMEOUT, expect_close, next_of, notifications_until, pong, ready

JWT_SECRET = "multiprocess-test-secret-" + "s" * 40
ORIGIN = "http://tidings.test"
# After Redis returns, a subscription that has backed off for a while comes back within about 5-8 s.
RECOVERY_TIMEOUT = 30.0


class Cluster:
    """Servers A and B on their own database and Redis prefix."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.isolation = Isolation.new("test", "mp", redis_url=redis_url)
        # INFO: the tail of a server's log is printed when a test fails.
        env = server_env(self.isolation, jwt_secret=JWT_SECRET, origins=ORIGIN, log_level="INFO")
        self.a = ServerProcess("A", env, log_dir)
        self.b = ServerProcess("B", env, log_dir)

    @property
    def db(self) -> str:
        return self.isolation.db

    @property
    def servers(self) -> tuple[ServerProcess, ServerProcess]:
        return self.a, self.b

    def start(self) -> None:
        for server in self.servers:
            server.start()
        wait_ready(*self.servers)

    def marks(self) -> dict[str, int]:
        return {server.name: server.log_size() for server in self.servers}

    def print_logs(self, since: dict[str, int]) -> None:
        """Captured by pytest and shown only when the test failed."""
        for server in self.servers:
            print(f"----- server {server.name} log (tail) -----\n{server.tail(since.get(server.name, 0))}")

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()  # both at once, then wait for each
        for server in self.servers:
            server.stop()
        self.isolation.drop()


@contextlib.contextmanager
def running_cluster(redis_url: str, log_dir: Path) -> Iterator[Cluster]:
    cluster = Cluster(redis_url, log_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One pair for the module (a cold start costs seconds); each test makes its own users."""
    with running_cluster(REDIS_URL, tmp_path_factory.mktemp("servers")) as cluster:
        yield cluster


@pytest.fixture
def servers(cluster: Cluster) -> Iterator[Cluster]:
    marks = cluster.marks()
    yield cluster
    cluster.print_logs(marks)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


class Api:
    """The REST API and WebSocket of one server process."""

    def __init__(self, session: aiohttp.ClientSession, cluster: Cluster, server: ServerProcess) -> None:
        self.session = session
        self.cluster = cluster
        self.url = server.url

    async def user(self, *, admin: bool = False) -> Account:
        unique = uuid.uuid4().hex[:10]
        email, username = f"mp-{unique}@example.com", f"mp_{unique}"
        body = {"email": email, "username": username, "password": PASSWORD}
        async with self.session.post(f"{self.url}{API}/auth/register", json=body) as response:
            assert response.status == 201, await response.text()
            user_id = (await response.json())["id"]
        if admin:  # the first admin comes from the CLI in real life; here, straight from the database
            mongo: AsyncMongoClient[Any] = AsyncMongoClient(MONGODB_URL)
            try:
                await mongo[self.cluster.db].users.update_one({"_id": ObjectId(user_id)}, {"$set": {"is_admin": True}})
            finally:
                await mongo.close()
        async with self.session.post(f"{self.url}{API}/auth/login", json={"email": email, "password": PASSWORD}) as r:
            assert r.status == 200, await r.text()
            tokens = await r.json()
        return Account(user_id, email, username, PASSWORD, tokens["access_token"], tokens["refresh_token"])

    async def send(self, admin: Account, **fields: Any) -> list[dict[str, Any]]:
        body = {"title": "Hello", "body": "World", **fields}
        async with self.session.post(f"{self.url}{API}/notifications", json=body, headers=admin.headers) as response:
            assert response.status == 201, await response.text()
            sent: list[dict[str, Any]] = (await response.json())["notifications"]
            return sent

    async def send_to(self, admin: Account, user: Account, **fields: Any) -> dict[str, Any]:
        [notification] = await self.send(admin, user_ids=[user.id], **fields)
        return notification

    async def me(self, user: Account) -> int:
        async with self.session.get(f"{self.url}{API}/users/me", headers=user.headers) as response:
            return response.status

    @contextlib.asynccontextmanager
    async def ws(self, user: Account) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        async with self.session.ws_connect(f"{self.url}{API}/ws", headers={**user.headers, "Origin": ORIGIN}) as ws:
            assert (await ready(ws))["user_id"] == user.id
            yield ws


def apis(session: aiohttp.ClientSession, cluster: Cluster) -> tuple[Api, Api]:
    return Api(session, cluster, cluster.a), Api(session, cluster, cluster.b)


async def test_a_socket_on_a_gets_what_is_sent_through_b(servers: Cluster, session: aiohttp.ClientSession) -> None:
    a, b = apis(session, servers)
    admin, user, other = await b.user(admin=True), await a.user(), await a.user()
    async with a.ws(user) as on_a, b.ws(user) as on_b, a.ws(other) as others:
        sent = await b.send_to(admin, user)
        assert (await next_of(on_a, "notification"))["notification"] == sent
        assert (await next_of(on_b, "notification"))["notification"] == sent
        back = await a.send_to(admin, user)  # and the other way round
        assert (await next_of(on_b, "notification"))["notification"] == back
        assert (await next_of(on_a, "notification"))["notification"] == back
        mark = await b.send_to(admin, other)  # the bystander got none of the above
        assert (await next_of(others, "notification"))["notification"] == mark
        for ws in (on_a, on_b, others):
            await pong(ws)


async def test_a_broadcast_reaches_sockets_on_both(servers: Cluster, session: aiohttp.ClientSession) -> None:
    a, b = apis(session, servers)
    admin, alice, bob = await a.user(admin=True), await a.user(), await b.user()
    async with a.ws(alice) as alice_a, b.ws(alice) as alice_b, b.ws(bob) as bob_b:
        [broadcast] = await a.send(admin, broadcast=True)
        [second] = await b.send(admin, broadcast=True)
        for ws in (alice_a, alice_b, bob_b):
            assert await notifications_until(ws, second["id"]) == [broadcast, second]
            await pong(ws)


async def test_ids_are_ordered_by_creation_across_processes(servers: Cluster, session: aiohttp.ClientSession) -> None:
    """Resume and catch-up rely on it: "after X" must mean "created after X", whichever process created it."""
    a, b = apis(session, servers)
    admin, user = await a.user(admin=True), await a.user()
    created = [await api.send_to(admin, user) for api in (a, b, a, b, a, b)]
    assert [n["id"] for n in created] == sorted(n["id"] for n in created)


async def test_resume_after_a_disconnect_gets_exactly_the_missed_ones(
    servers: Cluster, session: aiohttp.ClientSession
) -> None:
    a, b = apis(session, servers)
    admin, user = await a.user(admin=True), await b.user()
    async with a.ws(user) as ws:
        seen = await b.send_to(admin, user)
        assert (await next_of(ws, "notification"))["notification"] == seen
    missed = [await api.send_to(admin, user, title=f"missed {i}") for i, api in enumerate((a, b, a, b))]
    async with b.ws(user) as ws:
        await ws.send_json({"type": "resume", "after": seen["id"]})
        assert await notifications_until(ws, missed[-1]["id"]) == missed
        live = await a.send_to(admin, user)
        assert (await next_of(ws, "notification"))["notification"] == live
        await pong(ws)


async def test_deactivation_through_b_closes_sockets_on_both(servers: Cluster, session: aiohttp.ClientSession) -> None:
    a, b = apis(session, servers)
    admin, user, bystander = await b.user(admin=True), await a.user(), await a.user()
    async with a.ws(user) as on_a, b.ws(user) as on_b, a.ws(bystander) as others:
        async with session.patch(
            f"{b.url}{API}/users/{user.id}", json={"is_active": False}, headers=admin.headers
        ) as response:
            assert response.status == 200, await response.text()
        await expect_close(on_a, 4403, skip={"notification"})
        await expect_close(on_b, 4403, skip={"notification"})
        await pong(others)


# Redis stopped and restarted


class RedisServer:
    """A redis-server of our own, on its own port, so a test can kill it and bring it back."""

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = log_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + TIMEOUT
        while True:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=self.port, socket_connect_timeout=1)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            assert self.process.poll() is None, f"redis-server exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def outage_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, RedisServer]]:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    try:
        with running_cluster(redis_server.url, tmp_path) as cluster:
            marks = cluster.marks()
            yield cluster, redis_server
            cluster.print_logs(marks)
    finally:
        redis_server.kill()


async def received_exactly(name: str, ws: aiohttp.ClientWebSocketResponse, expected: list[str]) -> None:
    """Notifications arrive until each expected id came once; a duplicate or a stranger fails at once."""
    got: list[str] = []
    try:
        async with asyncio.timeout(RECOVERY_TIMEOUT):
            while set(got) != set(expected):
                notification_id = (await next_of(ws, "notification", RECOVERY_TIMEOUT))["notification"]["id"]
                assert notification_id in expected, f"{name}: unexpected {notification_id}"
                assert notification_id not in got, f"{name}: duplicate {notification_id}"
                got.append(notification_id)
    except TimeoutError:
        raise AssertionError(f"{name}: got {got} of {expected} in {RECOVERY_TIMEOUT} s") from None


async def test_a_redis_outage_loses_nothing_that_was_acknowledged(
    outage_cluster: tuple[Cluster, RedisServer], session: aiohttp.ClientSession
) -> None:
    cluster, redis_server = outage_cluster
    a, b = apis(session, cluster)
    admin, alice, bob = await a.user(admin=True), await a.user(), await b.user()
    async with a.ws(alice) as alice_a, b.ws(alice) as alice_b, b.ws(bob) as bob_b, a.ws(bob) as bob_a:
        before = await b.send_to(admin, alice)
        for ws in (alice_a, alice_b):
            assert (await next_of(ws, "notification"))["notification"] == before

        redis_server.kill()
        # Persisted first: every send is acknowledged while Redis is down, through either process.
        sent = await asyncio.gather(
            a.send(admin, user_ids=[alice.id], title="to alice via A"),
            b.send(admin, user_ids=[bob.id], title="to bob via B"),
            b.send(admin, broadcast=True, title="broadcast via B"),
            a.send(admin, user_ids=[alice.id, bob.id], title="to both via A"),
        )
        for api in (a, b):  # REST keeps serving
            assert await api.me(alice) == 200
        redis_server.start()

        to_alice = [sent[0][0]["id"], sent[2][0]["id"], sent[3][0]["id"]]
        to_bob = [sent[1][0]["id"], sent[2][0]["id"], sent[3][1]["id"]]
        # Each process catches its sockets up from MongoDB when its subscription is back: the client does nothing.
        await asyncio.gather(
            received_exactly("alice on A", alice_a, to_alice),
            received_exactly("alice on B", alice_b, to_alice),
            received_exactly("bob on B", bob_b, to_bob),
            received_exactly("bob on A", bob_a, to_bob),
        )
        # Live again, and nothing more was coming: the next message on every socket is the next notification.
        [after] = await b.send(admin, broadcast=True, title="after")
        for ws in (alice_a, alice_b, bob_b, bob_a):
            assert (await next_of(ws, "notification"))["notification"]["id"] == after["id"]
            await pong(ws)
