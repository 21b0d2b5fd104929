"""The real deployment: `gunicorn -c gunicorn.conf.py` with two workers, as docs/operations.md deploys it.

Which worker serves a connection is found from /proc (the worker process that holds the socket), so each check
knows it reached both workers rather than hoping so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import PASSWORD, drop_test_data, make_settings
from tests.helpers import metric_samples
from tests.launcher import HOST, ServerProcess, free_port, settings_env
from tests.live_server import LiveServer
from tests.realtime import TIMEOUT

REPO = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")
API = "/api/v1"
WORKERS = 2

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="finds each connection's worker in /proc")


# Which worker holds a connection


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    return inodes


def _connection_inode(server_port: int, client_port: int) -> int | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                    return int(fields[9])
    return None


def worker_serving(master: int, server_port: int, client_port: int) -> int | None:
    inode = _connection_inode(server_port, client_port)
    if inode is None:
        return None
    for worker in children_of(master):
        if inode in _socket_inodes(worker):
            return worker
    return None


# The deployment


@dataclass
class Deployment(LiveServer):
    """A LiveServer whose process is gunicorn's master, with its workers."""

    @property
    def master(self) -> int:
        return self.process.pid

    def workers(self) -> set[int]:
        return children_of(self.master)

    def worker_of(self, sockname: tuple[Any, ...]) -> int:
        worker = self.worker_if_any(sockname, TIMEOUT)
        assert worker is not None, "no worker holds the connection"
        return worker

    def worker_if_any(self, sockname: tuple[Any, ...], within: float) -> int | None:
        """The worker holding the connection; None if none does within `within` (it closed, its worker exited)."""
        deadline = time.monotonic() + within
        while (worker := worker_serving(self.master, self.process.port, sockname[1])) is None:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
        return worker

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.process.log.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"level": "UNPARSED", "message": line})
        return lines


@contextlib.asynccontextmanager
async def gunicorn(log_dir: Path, **extra: str) -> AsyncIterator[Deployment]:
    settings = make_settings()
    port = free_port()
    env = settings_env(
        settings,
        origins=f"http://{HOST}:{port}",
        log_level="INFO",
        TIDINGS_PORT=str(port),
        WEB_CONCURRENCY=str(WORKERS),
        SHUTDOWN_TIMEOUT="5",
        LOGIN_ATTEMPTS_PER_ADDRESS="100000",
        **extra,
    )
    argv = [str(GUNICORN), "-c", "gunicorn.conf.py"]
    process = ServerProcess(f"gunicorn-{port}", env, log_dir, argv=argv, port=port, cwd=REPO)
    await process.launch()
    deployment = Deployment(settings, process)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(deployment.workers()) < WORKERS:
            assert time.monotonic() < deadline, process.tail()
            await asyncio.sleep(0.05)
        yield deployment
    finally:
        process.stop()
        await drop_test_data(settings)


class RawHttp:
    """One keep-alive HTTP/1.1 connection whose client port is known, so the worker serving it is known too."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, worker: int) -> None:
        self.reader, self.writer, self.worker = reader, writer, worker

    @classmethod
    async def open(cls, deployment: Deployment) -> RawHttp:
        reader, writer = await asyncio.open_connection(HOST, deployment.process.port)
        worker = await asyncio.to_thread(deployment.worker_of, writer.get_extra_info("sockname"))
        return cls(reader, writer, worker)

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(payload)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def one_per_worker(deployment: Deployment) -> list[RawHttp]:
    """Keep-alive connections until each worker holds one; the others are closed."""
    held: dict[int, RawHttp] = {}
    for _ in range(100):
        connection = await RawHttp.open(deployment)
        if connection.worker in held:
            await connection.close()
        else:
            held[connection.worker] = connection
        if len(held) == WORKERS:
            return list(held.values())
    pytest.fail(f"100 connections reached only workers {sorted(held)}")


async def account(http: RawHttp, deployment: Deployment, *, admin: bool = False) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    user = {"email": f"g-{tag}@example.com", "username": f"g_{tag}", "password": PASSWORD}
    status, body = await http.request("POST", f"{API}/auth/register", user)
    assert status == 201, body
    user_id = json.loads(body)["id"]
    if admin:
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[Any] = AsyncMongoClient(deployment.settings.mongodb_url)
        try:
            users = client[deployment.settings.mongodb_db]["users"]
            await users.update_one({"email": user["email"]}, {"$set": {"is_admin": True}})
        finally:
            await client.close()
    status, body = await http.request("POST", f"{API}/auth/login", {"email": user["email"], "password": PASSWORD})
    assert status == 200, body
    return {"id": user_id, "email": user["email"], "token": json.loads(body)["access_token"]}


def bearer(user: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['token']}"}


async def open_sockets_on_both(
    deployment: Deployment, session: aiohttp.ClientSession, user: dict[str, str], count: int
) -> dict[int, list[aiohttp.ClientWebSocketResponse]]:
    """At least `count` sockets of `user`, on both workers (a user may hold 10)."""
    by_worker: dict[int, list[aiohttp.ClientWebSocketResponse]] = {}
    opened = 0
    while opened < count or len(by_worker) < WORKERS:
        assert opened < 10, "ten sockets all landed on one worker"
        ws = await session.ws_connect(f"{deployment.url}{API}/ws", headers=bearer(user))
        assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "ready"
        worker = await asyncio.to_thread(deployment.worker_of, ws.get_extra_info("sockname"))
        by_worker.setdefault(worker, []).append(ws)
        opened += 1
    return by_worker


async def next_notification(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        message = await ws.receive_json(timeout=TIMEOUT)
        if message["type"] == "notification":
            notification: dict[str, Any] = message["notification"]
            return notification


# Fan-out, shared limits, summed metrics


async def test_two_workers_share_fan_out_login_limits_and_metrics(tmp_path: Path) -> None:
    async with gunicorn(tmp_path, LOGIN_FAILURES_PER_ADDRESS="3") as deployment:
        first, second = await one_per_worker(deployment)
        try:
            admin, user = await account(first, deployment, admin=True), await account(first, deployment)
            async with aiohttp.ClientSession() as session:
                # Sockets on both workers; a notification sent through either reaches all of them.
                by_worker = await open_sockets_on_both(deployment, session, user, 4)
                sockets = [ws for group in by_worker.values() for ws in group]
                for via in (first, second):
                    status, body = await via.request(
                        "POST",
                        f"{API}/notifications",
                        {"title": "t", "body": "b", "user_ids": [user["id"]]},
                        bearer(admin),
                    )
                    assert status == 201, body
                    [sent] = json.loads(body)["notifications"]
                    for ws in sockets:
                        assert (await next_notification(ws))["id"] == sent["id"]

                # The open-socket gauge sums the workers.
                status, body = await first.request("GET", "/metrics")
                assert status == 200
                assert metric_samples(body.decode())[("tidings_websocket_connections", frozenset())] == len(sockets)
                for ws in sockets:
                    await ws.close()

            # Login failures through either worker count together: 2 + 1 reach the limit of 3.
            wrong = {"email": user["email"], "password": "wrong password"}
            for via in (first, second, first):
                assert (await via.request("POST", f"{API}/auth/login", wrong))[0] == 401
            status, body = await second.request(
                "POST", f"{API}/auth/login", {"email": admin["email"], "password": PASSWORD}
            )
            assert status == 429, body
            assert b"failed logins from this address" in body

            # /metrics answers the sum over both workers, whichever answers.
            for via, count in ((first, 3), (second, 4)):
                for _ in range(count):
                    assert (await via.request("GET", "/health/live"))[0] == 200
            live = (
                "tidings_http_requests_total",
                frozenset({"method": "GET", "route": "/health/live", "status": "200"}.items()),
            )
            for via in (first, second):
                status, body = await via.request("GET", "/metrics")
                assert status == 200
                values = metric_samples(body.decode())
                assert values[live] == 7
                bad = ("tidings_login_attempts_total", frozenset({"result": "bad_credentials"}.items()))
                limited = ("tidings_login_attempts_total", frozenset({"result": "rate_limited"}.items()))
                assert (values[bad], values[limited]) == (3, 1)
        finally:
            await first.close()
            await second.close()


# Reload and stop


@dataclass
class Follower:
    """A client that keeps one socket open and, on any close, reconnects and resumes, as docs/websocket.md says:

    - it resumes after `resume_after`, the newest id before which it has everything. Notifications sent live between
      "ready" and the resume arrive before the replay's older ones, so that point moves on only once the replay is
      over, which the answer to a ping sent right after the resume tells;
    - it drops duplicates by id (a notification it got live before a reconnect is replayed again after it).
    """

    deployment: Deployment
    session: aiohttp.ClientSession
    user: dict[str, str]
    received: list[str] = field(default_factory=list)
    duplicates: int = 0
    resume_after: str | None = None
    closes: list[int | None] = field(default_factory=list)
    workers: set[int] = field(default_factory=set)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    failure: Exception | None = None

    async def run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:
            self.failure = exc
            raise

    async def _follow(self) -> None:
        seen: set[str] = set()
        while True:
            try:
                ws = await self.session.ws_connect(f"{self.deployment.url}{API}/ws", headers=bearer(self.user))
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.05)  # between workers during a reload
                continue
            try:
                first = await ws.receive(timeout=TIMEOUT)
                if first.type != aiohttp.WSMsgType.TEXT:
                    # Upgraded by a worker that was stopping: closed (1001) before "ready". Connect again.
                    self.closes.append(ws.close_code)
                    continue
                message = json.loads(first.data)
                assert message["type"] == "ready", message
                synced = self.resume_after is None
                if not synced:
                    await ws.send_json({"type": "resume", "after": self.resume_after})
                    await ws.send_json({"type": "ping"})
                # A socket an old worker upgraded may be gone already (that worker closing): it reconnects below.
                worker = await asyncio.to_thread(self.deployment.worker_if_any, ws.get_extra_info("sockname"), 1.0)
                if worker is not None:
                    self.workers.add(worker)
                self.connected.set()
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    if data["type"] == "pong":
                        synced = True
                    elif data["type"] == "notification":
                        notification_id = data["notification"]["id"]
                        if notification_id in seen:
                            self.duplicates += 1
                            continue
                        seen.add(notification_id)
                        self.received.append(notification_id)
                    if synced and self.received:
                        self.resume_after = max(self.received)
                self.closes.append(ws.close_code)
            finally:
                await ws.close()


async def send_with_retry(session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]) -> str:
    """A send that survives its connection being closed before an answer: retried with the same Idempotency-Key, so
    it is stored once whatever happened to the first attempt (docs/publishing.md)."""
    headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    for _ in range(3):
        try:
            async with session.post(url, json=body, headers=headers) as response:
                assert response.status == 201, await response.text()
                sent: str = (await response.json())["notifications"][0]["id"]
                return sent
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            continue
    pytest.fail("a send failed three times")


async def test_sighup_reloads_under_load_with_nothing_lost(tmp_path: Path) -> None:
    async with gunicorn(tmp_path) as deployment:
        setup, other = await one_per_worker(deployment)
        await other.close()
        admin, user = await account(setup, deployment, admin=True), await account(setup, deployment)
        await setup.close()
        old_workers = deployment.workers()
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request: each may meet the reload
        async with aiohttp.ClientSession(connector=connector) as session:
            followers = [Follower(deployment, session, user) for _ in range(4)]
            tasks = [asyncio.create_task(follower.run()) for follower in followers]
            try:
                await asyncio.wait_for(asyncio.gather(*(f.connected.wait() for f in followers)), TIMEOUT)
                stop = asyncio.Event()
                answers: list[int] = []
                retried = 0

                async def read_steadily() -> None:
                    nonlocal retried
                    while not stop.is_set():
                        try:
                            async with session.get(f"{deployment.url}{API}/users/me", headers=bearer(user)) as response:
                                answers.append(response.status)
                        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                            # Closed before any answer (a connection accepted as its worker stopped): safe to
                            # retry for a GET, as any HTTP client or proxy does; counted, and bounded below.
                            retried += 1

                readers = [asyncio.create_task(read_steadily()) for _ in range(2)]
                sent: list[str] = []
                url = f"{deployment.url}{API}/notifications"
                body = {"title": "t", "body": "b", "user_ids": [user["id"]]}
                for index in range(60):
                    if index == 20:
                        os.kill(deployment.master, signal.SIGHUP)
                    sent.append(await send_with_retry(session, url, body, bearer(admin)))
                    await asyncio.sleep(0.05)
                deadline = time.monotonic() + TIMEOUT
                while deployment.workers() & old_workers or len(deployment.workers()) < WORKERS:
                    assert time.monotonic() < deadline, "the old workers did not give way to new ones"
                    await asyncio.sleep(0.05)
                sent.append(await send_with_retry(session, url, body, bearer(admin)))
                stop.set()
                await asyncio.gather(*readers)

                deadline = time.monotonic() + TIMEOUT
                while any(len(f.received) < len(sent) for f in followers):
                    assert time.monotonic() < deadline, [
                        (len(f.received), f.closes, f.workers, old_workers, repr(f.failure)) for f in followers
                    ]
                    await asyncio.sleep(0.05)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        assert answers and set(answers) == {200}, sorted(set(answers))
        assert retried <= 4, f"{retried} reads were closed before an answer"
        for follower in followers:
            # Every notification, once: nothing lost. (Those sent live during a replay come before its older ones.)
            assert sorted(follower.received) == sorted(sent), (
                sorted(set(sent) - set(follower.received)),
                follower.closes,
            )
            assert 1001 in follower.closes  # its socket was closed by the reload, and it resumed
            assert follower.workers - old_workers  # and it reconnected to a new worker


async def test_sigterm_closes_every_socket_with_1001_and_exits_cleanly(tmp_path: Path) -> None:
    async with gunicorn(tmp_path) as deployment:
        setup, other = await one_per_worker(deployment)
        await other.close()
        user = await account(setup, deployment)
        await setup.close()
        async with aiohttp.ClientSession() as session:
            by_worker = await open_sockets_on_both(deployment, session, user, 8)
            sockets = [ws for group in by_worker.values() for ws in group]
            started = time.monotonic()
            os.kill(deployment.master, signal.SIGTERM)
            for ws in sockets:
                message = await ws.receive(timeout=TIMEOUT)
                assert message.type == aiohttp.WSMsgType.CLOSE, message
                assert message.data == 1001
                await ws.close()
        assert deployment.process.process is not None
        code = await asyncio.to_thread(deployment.process.process.wait, 30)
        took = time.monotonic() - started
    assert code == 0
    assert took < 30  # gunicorn.conf.py's graceful_timeout
    problems = [line for line in deployment.log_lines() if line.get("level") not in ("DEBUG", "INFO")]
    assert not problems, problems
    messages = [line.get("message", "") for line in deployment.log_lines()]
    assert any("Shutting down: Master" in message for message in messages), messages[-10:]
