"""Fault drills on real processes: Redis or FerretDB killed, stopped or restarted under live WebSocket clients.

Each drill starts its own `tidings serve` processes (tests/launcher.py) and its own redis-server and/or FerretDB on
free ports, so it may kill them; the project's shared services are never touched. The clients behave as
docs/websocket.md tells them to: on a close with a reconnect code they come back after a short jittered backoff
and resume from the newest id they hold, and they count every notification id they receive, so a loss or a
duplicate shows. Each drill writes what it measured to test-output/drills/<name>.json and prints it
(docs/reliability.md quotes them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from bson import ObjectId
from pymongo import AsyncMongoClient

from tests.conftest import PASSWORD, Account
from tests.launcher import (
    HOST,
    MONGODB_URL,
    REDIS_URL,
    FerretDBProcess,
    Isolation,
    RedisProcess,
    ServerProcess,
    http_status,
    raise_nofile,
    server_env,
    wait_ready,
)

pytestmark = pytest.mark.drill

API = "/api/v1"
JWT_SECRET = "drill-test-secret-" + "d" * 40
OUTPUT = Path(__file__).resolve().parents[1] / "test-output" / "drills"
# Every wait below ends as soon as its event happens; these only bound it on a busy machine.
HANDSHAKE_TIMEOUT = 30.0  # upgrade and "ready"; pymongo gives up on an absent MongoDB after 5 s
DELIVERY_TIMEOUT = 30.0  # a subscription that backed off comes back within about 5-8 s of Redis
REQUEST_TIMEOUT = 30.0
ONE_REQUEST = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
# The client's backoff between attempts: full jitter, from BACKOFF_BASE doubling up to BACKOFF_CAP seconds.
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
MAX_ATTEMPTS = 200  # per client: a client that cannot get back in this many attempts gives up (and fails the drill)


# Figures


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank, as bench/common.py computes it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def secs(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


@contextlib.contextmanager
def recorded(name: str) -> Iterator[dict[str, Any]]:
    """The drill fills the dict; it is written to test-output/drills/<name>.json and printed, pass or fail."""
    figures: dict[str, Any] = {"drill": name, "load_average": [round(x, 2) for x in os.getloadavg()]}
    started = time.monotonic()
    outcome = "failed"
    try:
        yield figures
        outcome = "passed"
    finally:
        figures["outcome"] = outcome
        figures["duration_s"] = secs(time.monotonic() - started)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        text = json.dumps(figures, indent=2, sort_keys=False, default=str)
        (OUTPUT / f"{name}.json").write_text(text + "\n")
        print(f"drill {name}: {text}")


# Processes


class Drill:
    """One drill's processes and data: services of its own, server processes; all stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.services: list[RedisProcess | FerretDBProcess] = []
        self.servers: list[ServerProcess] = []
        self.isolations: list[Isolation] = []

    async def __aenter__(self) -> Drill:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for server in self.servers:
            server.terminate()  # all at once, then wait for each
        for server in self.servers:
            await asyncio.to_thread(server.stop)
        for server in self.servers:  # captured by pytest, shown when the drill failed
            print(f"----- {server.name} log (tail) -----\n{server.tail(lines=40)}")
        for isolation in self.isolations:
            with contextlib.suppress(Exception):  # a service a failed drill left stopped has nothing to drop
                await asyncio.wait_for(isolation.adrop(), 15)
        for service in self.services:
            await asyncio.to_thread(service.close)

    async def redis(self) -> RedisProcess:
        if not RedisProcess.installed():
            pytest.skip("redis-server is not installed")
        service = RedisProcess(self.dir, name=f"redis-{len(self.services)}")
        self.services.append(service)
        await asyncio.to_thread(service.start)
        return service

    async def ferretdb(self) -> FerretDBProcess:
        if not FerretDBProcess.installed():
            pytest.skip("FerretDB is not built (scripts/install-system.sh)")
        service = FerretDBProcess(self.dir, self.dir / "ferretdb-data", name=f"ferretdb-{len(self.services)}")
        self.services.append(service)
        await asyncio.to_thread(service.start)
        return service

    def isolation(self, label: str, *, mongodb_url: str = MONGODB_URL, redis_url: str = REDIS_URL) -> Isolation:
        isolation = Isolation.new("drill", label, mongodb_url=mongodb_url, redis_url=redis_url)
        self.isolations.append(isolation)
        return isolation

    async def start_servers(self, isolation: Isolation, *names: str, **extra: str) -> list[ServerProcess]:
        """Servers on one data set, started together; INFO logs, so a failed drill shows what they did."""
        env = {**server_env(isolation, jwt_secret=JWT_SECRET, log_level="INFO"), **extra}
        servers = [ServerProcess(name, env, self.dir) for name in names]
        self.servers.extend(servers)
        for server in servers:
            server.start()
        await asyncio.to_thread(wait_ready, *servers)
        return servers


def log_entries(
    server: ServerProcess, since: int, levels: Iterable[str] = ("WARNING", "ERROR", "CRITICAL")
) -> list[str]:
    """The messages the server logged at these levels since byte `since` of its log."""
    wanted, found = set(levels), []
    with server.log.open("rb") as log:
        log.seek(since)
        for line in log.read().decode(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                found.append(line)  # not ours: a traceback or a crash
                continue
            if isinstance(entry, dict) and entry.get("level") in wanted:
                found.append(f"{entry.get('level')} {entry.get('logger')}: {entry.get('message')}")
    return found


async def wait_until(check: Callable[[], bool], within: float, what: str, interval: float = 0.05) -> float:
    """Poll a blocking check in a thread until it holds (a process gives no signal); the seconds it took."""
    started = time.monotonic()

    def poll() -> bool:
        deadline = started + within
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(interval)
        return check()

    if not await asyncio.to_thread(poll):
        raise AssertionError(f"{what}: not within {within:.0f} s")
    return time.monotonic() - started


def subscribers(service: RedisProcess, isolation: Isolation, topic: str = "notify") -> int:
    """How many processes hold the broker's subscription (PUBSUB NUMSUB on the drill's own Redis)."""
    try:
        with contextlib.closing(service.client()) as client:
            [(_, count)] = client.pubsub_numsub(f"{isolation.prefix}{topic}")
            return int(count)
    except redis.RedisError:
        return 0


def redis_clients(service: RedisProcess) -> int:
    """Connections to the drill's Redis (every process's pool and subscription), not counting this one."""
    with contextlib.closing(service.client()) as client:
        return len(client.client_list()) - 1


def ready_now(server: ServerProcess) -> bool:
    return http_status(server.port, "/health/ready", timeout=5) == 200


# The REST API


@dataclass
class Sent:
    """One POST /api/v1/notifications: through which server, when, what came back, and for whom."""

    via: str
    started: float
    status: int
    ids: list[str]
    recipients: tuple[str, ...] | None  # user ids, in the order the server makes their notifications; None: broadcast
    elapsed: float = 0.0

    def id_for(self, user_id: str) -> str | None:
        """The id of this send's notification to the user (a broadcast has one for all), if it was acknowledged."""
        if self.status != 201:
            return None
        if self.recipients is None:
            return self.ids[0]
        # resolve_recipients: "each once, in the order named"; one notification each, in that order.
        return dict(zip(self.recipients, self.ids, strict=True)).get(user_id)


class Api:
    def __init__(self, session: aiohttp.ClientSession, isolation: Isolation) -> None:
        self.session = session
        self.isolation = isolation

    async def register(self, server: ServerProcess, label: str, *, admin: bool = False) -> Account:
        unique = uuid.uuid4().hex[:8]
        email, username = f"{label}-{unique}@example.com", f"{label}_{unique}"
        body = {"email": email, "username": username, "password": PASSWORD}
        async with self.session.post(f"{server.url}{API}/auth/register", json=body, timeout=ONE_REQUEST) as response:
            assert response.status == 201, await response.text()
            user_id = (await response.json())["id"]
        if admin:  # the first admin comes from the CLI in real life; here, straight from the database
            await self.make_admin(user_id)
        return await self.login(server, user_id, email, username)

    async def make_admin(self, user_id: str) -> None:
        mongo: AsyncMongoClient[Any] = AsyncMongoClient(self.isolation.mongodb_url)
        try:
            users = mongo[self.isolation.db].users
            await users.update_one({"_id": ObjectId(user_id)}, {"$set": {"is_admin": True}})
        finally:
            await mongo.close()

    async def login(self, server: ServerProcess, user_id: str, email: str, username: str) -> Account:
        body = {"email": email, "password": PASSWORD}
        async with self.session.post(f"{server.url}{API}/auth/login", json=body, timeout=ONE_REQUEST) as response:
            assert response.status == 200, await response.text()
            tokens = await response.json()
        return Account(user_id, email, username, PASSWORD, tokens["access_token"], tokens["refresh_token"])

    async def send(self, server: ServerProcess, admin: Account, **fields: Any) -> Sent:
        body = {"title": "drill", "body": "drill", **fields}
        recipients = None if fields.get("broadcast") else tuple(dict.fromkeys(fields.get("user_ids", ())))
        started = time.monotonic()
        try:
            async with self.session.post(
                f"{server.url}{API}/notifications",
                json=body,
                headers=admin.headers,
                timeout=ONE_REQUEST,
            ) as response:
                status = response.status
                ids = [n["id"] for n in (await response.json())["notifications"]] if status == 201 else []
        except (aiohttp.ClientError, TimeoutError):
            status, ids = 0, []  # no answer: not acknowledged
        return Sent(server.name, started, status, ids, recipients, time.monotonic() - started)


async def timed(call: Callable[[], Any]) -> tuple[int, float, dict[str, Any], dict[str, str]]:
    """Status, seconds, JSON body (or {}) and headers of one request made by `call` (an aiohttp request context)."""
    started = time.monotonic()
    async with asyncio.timeout(REQUEST_TIMEOUT), call() as response:
        text = await response.text()
        try:
            body = json.loads(text) if text else {}
        except json.JSONDecodeError:
            body = {"text": text[:200]}
        return response.status, time.monotonic() - started, body, dict(response.headers)


def ws_session(limit: int = 0) -> aiohttp.ClientSession:
    """For WebSockets: no connection limit (an open socket holds its connection), no total timeout (each wait is
    bounded where it happens)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    )


# The client


def reconnects(code: int) -> bool:
    """docs/websocket.md: 1001 (going away), an abnormal drop (1006) and 4000-4099 mean reconnect and resume."""
    return code in (1001, 1006) or 4000 <= code <= 4099


class Client:
    """A WebSocket client that behaves as documented, and counts every notification id it receives.

    `start` connects; "ready"; `resume` with the newest id held (after a reconnect); then reads. A close with a
    reconnect code (or a dropped connection, or a 5xx on the upgrade) is followed by a jittered backoff and a new
    attempt; any other close ends it (`fatal`). `gate` limits how many clients of a crowd connect at once.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        server: ServerProcess,
        account: Account,
        name: str,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.session = session
        self.server = server
        self.account = account
        self.name = name
        self.gate = gate
        self.counts: Counter[str] = Counter()
        self.arrivals: dict[str, float] = {}  # id -> when it first came (time.monotonic())
        self.newest: str | None = None
        self.readies = 0
        self.resumes = 0
        self.attempts = 0
        self.pongs = 0
        self.closes: Counter[int] = Counter()  # every end of a connection or attempt, by close code
        self.errors: list[dict[str, Any]] = []
        self.fatal: int | None = None
        self.connected = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._changed = asyncio.Condition()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"client {self.name}")

    async def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
        if self._task is not None:
            with contextlib.suppress(TimeoutError):  # then wait_for cancelled it
                await asyncio.wait_for(self._task, 5)

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.counts.values() if count > 1)

    async def until(self, predicate: Callable[[], bool], within: float) -> bool:
        """Wait until the predicate holds (checked on every message and state change) or the client gave up."""
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(lambda: predicate() or self.fatal is not None)
        except TimeoutError:
            return False
        return predicate()

    async def until_connected(self, within: float) -> bool:
        return await self.until(lambda: self.connected, within)

    async def has(self, ids: Iterable[str], within: float) -> bool:
        wanted = set(ids)
        return await self.until(lambda: wanted <= self.arrivals.keys(), within)

    async def ping(self, within: float) -> float | None:
        """The round trip of an application-level ping, or None when the socket is not open or no pong came."""
        ws, before = self._ws, self.pongs
        if ws is None or not self.connected:
            return None
        started = time.monotonic()
        try:
            await ws.send_json({"type": "ping"})
        except (aiohttp.ClientError, ConnectionError):
            return None
        if not await self.until(lambda: self.pongs > before, within):
            return None
        return time.monotonic() - started

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _run(self) -> None:
        failures = 0
        for _ in range(MAX_ATTEMPTS):
            code, was_ready = await self._attempt()
            if self._stopping:
                return
            self.closes[code] += 1
            if not reconnects(code):
                self.fatal = code
                await self._changed_now()
                return
            failures = 0 if was_ready else failures + 1
            await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**failures)))  # the backoff
        self.fatal = -1  # gave up
        await self._changed_now()

    async def _attempt(self) -> tuple[int, bool]:
        """One connection, until it ends: its close code (1006 for a drop or a failed upgrade; 4000 + the
        status for a 4xx upgrade), and whether it got as far as "ready"."""
        self.attempts += 1
        try:
            ws = await self._connect()
        except aiohttp.WSServerHandshakeError as exc:
            return (1006 if exc.status >= 500 else 4000 + exc.status), False
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 1006, False
        was_ready = False
        try:
            first = await ws.receive(timeout=HANDSHAKE_TIMEOUT)
            if first.type is aiohttp.WSMsgType.TEXT and json.loads(first.data).get("type") == "ready":
                was_ready = True
                self.readies += 1
                self._ws, self.connected = ws, True
                await self._changed_now()
                if self.newest is not None:
                    await ws.send_json({"type": "resume", "after": self.newest})
                    self.resumes += 1
                async for msg in ws:
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        self._take(json.loads(msg.data))
                        await self._changed_now()
                    elif msg.type is aiohttp.WSMsgType.ERROR:
                        break
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            pass
        finally:
            self._ws, self.connected = None, False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
            await self._changed_now()
        return ws.close_code or 1006, was_ready

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        gate: contextlib.AbstractAsyncContextManager[Any] = self.gate or contextlib.nullcontext()
        async with gate, asyncio.timeout(HANDSHAKE_TIMEOUT):
            return await self.session.ws_connect(
                f"{self.server.url}{API}/ws",
                headers=self.account.headers,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                max_msg_size=1 << 20,
            )

    def _take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "notification":
            notification_id = event["notification"]["id"]
            self.counts[notification_id] += 1
            self.arrivals.setdefault(notification_id, time.monotonic())
            if self.newest is None or notification_id > self.newest:
                self.newest = notification_id
        elif kind == "pong":
            self.pongs += 1
        elif kind == "error":
            self.errors.append(event)


async def start_clients(clients: Sequence[Client], within: float) -> float:
    """Start every client and wait until all are connected; the seconds it took."""
    started = time.monotonic()
    for client in clients:
        client.start()
    results = await asyncio.gather(*(client.until_connected(within) for client in clients))
    not_connected = [client.name for client, ok in zip(clients, results, strict=True) if not ok]
    assert not not_connected, f"{len(not_connected)} clients never connected, e.g. {not_connected[:5]}"
    return time.monotonic() - started


async def stop_clients(clients: Sequence[Client]) -> None:
    await asyncio.gather(*(client.stop() for client in clients))


@dataclass
class Ledger:
    """What each client should have received (every acknowledged send to its user), against what it did."""

    clients: Sequence[Client]
    expected: dict[Client, set[str]] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    sends: list[Sent] = field(default_factory=list)

    def add(self, sent: Sent) -> None:
        self.sends.append(sent)
        self.acknowledged.update(sent.ids)
        for client in self.clients:
            notification_id = sent.id_for(client.account.id)
            if notification_id is not None:
                self.expected.setdefault(client, set()).add(notification_id)

    def expected_of(self, client: Client) -> set[str]:
        return self.expected.get(client, set())

    def missing(self, client: Client) -> set[str]:
        return self.expected_of(client) - client.arrivals.keys()

    async def all_delivered(self, within: float) -> bool:
        results = await asyncio.gather(*(client.has(self.expected_of(client), within) for client in self.clients))
        return all(results)

    def statuses(self) -> dict[str, int]:
        return {str(status): count for status, count in sorted(Counter(s.status for s in self.sends).items())}

    def tally(self) -> dict[str, int]:
        """Deliveries expected, lost and duplicated; and deliveries of someone else's notification."""
        return {
            "sends": len(self.sends),
            "sends_not_201": sum(1 for sent in self.sends if sent.status != 201),
            "expected_deliveries": sum(len(self.expected_of(client)) for client in self.clients),
            "lost": sum(len(self.missing(client)) for client in self.clients),
            "duplicated": sum(client.duplicates for client in self.clients),
            "misdelivered": sum(
                1
                for client in self.clients
                for nid in client.counts
                if nid in self.acknowledged and nid not in self.expected_of(client)
            ),
        }


def close_codes(clients: Iterable[Client]) -> dict[str, int]:
    total: Counter[int] = Counter()
    for client in clients:
        total.update(client.closes)
    return {str(code): count for code, count in sorted(total.items())}


async def open_socket(
    session: aiohttp.ClientSession, server: ServerProcess, account: Account
) -> tuple[str, aiohttp.ClientWebSocketResponse | None, float]:
    """One attempt, no retry: "ready" (and the open socket), "http <status>", "close <code>" or "failed <error>";
    and the seconds it took."""
    started = time.monotonic()
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            ws = await session.ws_connect(f"{server.url}{API}/ws", headers=account.headers)
            msg = await ws.receive()
    except aiohttp.WSServerHandshakeError as exc:
        return f"http {exc.status}", None, time.monotonic() - started
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if ws is not None:
            await ws.close()
        return f"failed {type(exc).__name__}", None, time.monotonic() - started
    elapsed = time.monotonic() - started
    if msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "ready":
        return "ready", ws, elapsed
    await ws.close()
    if msg.type is aiohttp.WSMsgType.CLOSE:
        return f"close {msg.data}", None, elapsed
    return f"other {msg.type.name}", None, elapsed


async def close_all(sockets: Iterable[aiohttp.ClientWebSocketResponse | None]) -> None:
    await asyncio.gather(*(asyncio.wait_for(ws.close(), 5) for ws in sockets if ws is not None), return_exceptions=True)


class Stream:
    """A steady stream of sends through the servers in turn, one started every `pace` seconds whatever the ones
    before take (a slow send does not slow the stream), until stopped: every fifth a broadcast, the others to one to
    three random users. Every send goes into the ledger when it is answered."""

    MAX_SENDS = 2000

    def __init__(
        self,
        api: Api,
        servers: Sequence[ServerProcess],
        admin: Account,
        users: Sequence[Account],
        ledger: Ledger,
        pace: float = 0.1,
    ) -> None:
        self.api, self.servers, self.admin, self.users, self.ledger = api, servers, admin, users, ledger
        self.pace = pace
        self.answered = 0
        self.started = 0
        self._progress = asyncio.Condition()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream")

    async def _run(self) -> None:
        for i in range(self.MAX_SENDS):
            if self._stopping:
                return
            task = asyncio.create_task(self._send(i), name=f"send {i}")
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
            self.started += 1
            await asyncio.sleep(self.pace)  # the stream's pace, not a wait for anything

    async def _send(self, i: int) -> None:
        server = self.servers[i % len(self.servers)]
        if i % 5 == 4:
            sent = await self.api.send(server, self.admin, broadcast=True, title=f"broadcast {i}")
        else:
            chosen = random.sample(self.users, random.randint(1, 3))
            sent = await self.api.send(server, self.admin, user_ids=[u.id for u in chosen], title=f"send {i}")
        self.ledger.add(sent)
        self.answered += 1
        async with self._progress:
            self._progress.notify_all()

    async def reach(self, answered: int, within: float) -> None:
        """Until this many sends were answered."""
        async with asyncio.timeout(within), self._progress:
            await self._progress.wait_for(lambda: self.answered >= answered)

    async def stop(self) -> None:
        """Start no more; wait for the sends in flight (each bounded by REQUEST_TIMEOUT)."""
        self._stopping = True
        if self._task is not None:
            await asyncio.wait_for(self._task, REQUEST_TIMEOUT)
        if self._sends:
            await asyncio.wait(list(self._sends), timeout=REQUEST_TIMEOUT + 5)


def first_arrival(clients: Iterable[Client], ids: set[str]) -> float | None:
    times = [client.arrivals[nid] for client in clients for nid in ids if nid in client.arrivals]
    return min(times) if times else None


def last_arrival(clients: Iterable[Client], ids: set[str]) -> float | None:
    times = [client.arrivals[nid] for client in clients for nid in ids if nid in client.arrivals]
    return max(times) if times else None


# Drill 1: Redis SIGKILLed and restarted during a steady stream of sends


USERS_1 = 20
OUTAGE_1 = 3.0  # seconds Redis stays dead


async def test_redis_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with recorded("redis_kill_mid_stream") as figures:
        async with Drill(tmp_path) as drill, ws_session() as session:
            redis_service = await drill.redis()
            isolation = drill.isolation("redis_kill", redis_url=redis_service.url)
            a, b = await drill.start_servers(isolation, "A", "B")
            api = Api(session, isolation)
            admin = await api.register(a, "admin", admin=True)
            users = await asyncio.gather(*(api.register((a, b)[i % 2], f"u{i}") for i in range(USERS_1)))
            clients = [Client(session, s, user, f"u{i}@{s.name}") for i, user in enumerate(users) for s in (a, b)]
            ledger = Ledger(clients)
            stream = Stream(api, (a, b), admin, users, ledger)
            figures.update(users=USERS_1, sockets=len(clients), outage_s=OUTAGE_1)
            try:
                figures["open_s"] = secs(await start_clients(clients, HANDSHAKE_TIMEOUT))
                stream.start()
                await stream.reach(10, DELIVERY_TIMEOUT)

                killed = time.monotonic()
                await asyncio.to_thread(redis_service.kill)
                await asyncio.sleep(OUTAGE_1)  # the outage: the stream goes on meanwhile
                await asyncio.to_thread(redis_service.start)
                back = time.monotonic()
                subscribed = await wait_until(
                    lambda: subscribers(redis_service, isolation) == 2, DELIVERY_TIMEOUT, "both subscriptions back"
                )
                await stream.reach(stream.started + 10, DELIVERY_TIMEOUT)  # live for a while
                await stream.stop()

                delivered = await ledger.all_delivered(DELIVERY_TIMEOUT)
                # A last broadcast through each: nothing more was coming, and the next thing is live.
                for server in (a, b):
                    ledger.add(await api.send(server, admin, broadcast=True, title=f"last via {server.name}"))
                delivered = await ledger.all_delivered(DELIVERY_TIMEOUT) and delivered
            finally:
                await stream.stop()
                await stop_clients(clients)

            during = [s for s in ledger.sends if killed <= s.started < back]
            recovery: dict[str, float | None] = {}
            for server, other in ((a, b), (b, a)):
                after_via_other = {
                    nid for s in ledger.sends if s.started >= back and s.via == other.name for nid in s.ids
                }
                first = first_arrival((c for c in clients if c.server is server), after_via_other)
                recovery[server.name] = secs(None if first is None else first - back)
            outage_ids = {nid for s in during for nid in s.ids}
            caught_up = last_arrival(clients, outage_ids)
            figures.update(
                ledger.tally(),
                send_statuses=ledger.statuses(),
                sends_during_outage=len(during),
                sends_during_outage_not_201=sum(1 for s in during if s.status != 201),
                send_latency_during_outage_max_ms=ms(max((s.elapsed for s in during), default=None)),
                send_latency_p50_ms=ms(percentile([s.elapsed for s in ledger.sends], 0.5)),
                subscriptions_back_s=secs(subscribed),
                recovery_s=recovery,
                recovery_definition="from Redis answering again to the first delivery, on a socket of that process, "
                "of a notification sent through the other process after the restart",
                outage_sends_caught_up_s=secs(None if caught_up is None else caught_up - back),
                close_codes=close_codes(clients),
                resumes=sum(c.resumes for c in clients),
                error_frames=sum(len(c.errors) for c in clients),
                fatal=[c.name for c in clients if c.fatal is not None],
            )
            tally = ledger.tally()
            assert not figures["fatal"], figures["fatal"]
            assert tally["sends_not_201"] == 0, ledger.statuses()
            assert delivered and tally["lost"] == 0, {
                c.name: sorted(ledger.missing(c)) for c in clients if ledger.missing(c)
            }
            assert tally["duplicated"] == 0, {c.name: c.duplicates for c in clients if c.duplicates}
            assert tally["misdelivered"] == 0
            assert all(value is not None for value in recovery.values()), recovery


# Drill 2: stale connections after a Redis restart

HEALTH_CHECK_INTERVAL = 2.0  # REDIS_HEALTH_CHECK_INTERVAL: a pooled connection idle longer is pinged before reuse


async def test_after_a_redis_restart_the_first_publish_login_and_lock_succeed(tmp_path: Path) -> None:
    """Redis restarts while nothing happens; once both subscriptions are back, a send, a login and a PATCH through
    A, at once (so that they take several of A's pooled connections, all from before the restart), succeed and the
    send reaches B live. Twice: at once after readiness (no connection is pinged before reuse), and after an idle
    spell longer than REDIS_HEALTH_CHECK_INTERVAL (each is)."""
    with recorded("redis_restart_stale_connections") as figures:
        async with Drill(tmp_path) as drill, ws_session() as session:
            redis_service = await drill.redis()
            isolation = drill.isolation("redis_restart", redis_url=redis_service.url)
            a, b = await drill.start_servers(
                isolation, "A", "B", REDIS_HEALTH_CHECK_INTERVAL=str(HEALTH_CHECK_INTERVAL)
            )
            api = Api(session, isolation)
            admin = await api.register(a, "admin", admin=True)
            alice, target = await api.register(a, "alice"), await api.register(a, "target")
            clients = [Client(session, b, alice, "alice@B"), Client(session, b, target, "target@B")]
            alice_on_b, target_on_b = clients

            async def probe(label: str) -> dict[str, Any]:
                """A send to alice, alice's login and a PATCH of target (its lock), through A, all at once."""
                before = len(target_on_b.arrivals)
                login = {"email": alice.email, "password": PASSWORD}
                sent, (login_status, login_s, _, _), (patch_status, patch_s, _, _) = await asyncio.gather(
                    api.send(a, admin, user_ids=[alice.id], title=f"{label} send"),
                    timed(lambda: session.post(f"{a.url}{API}/auth/login", json=login)),
                    timed(
                        lambda: session.patch(
                            f"{a.url}{API}/users/{target.id}", json={"full_name": label}, headers=admin.headers
                        )
                    ),
                )
                result: dict[str, Any] = {
                    "send": {"status": sent.status, "ms": ms(sent.elapsed)},
                    "login": {"status": login_status, "ms": ms(login_s)},
                    "patch": {"status": patch_status, "ms": ms(patch_s)},
                    "send_on_B_ms": None,
                }
                if sent.status == 201 and await alice_on_b.has(sent.ids, DELIVERY_TIMEOUT):
                    result["send_on_B_ms"] = ms(alice_on_b.arrivals[sent.ids[0]] - sent.started)
                # The PATCH tells its user ("account_changed"), through the broker too.
                result["patch_notice_on_B"] = await target_on_b.until(
                    lambda: len(target_on_b.arrivals) > before, DELIVERY_TIMEOUT
                )
                return result

            async def restart(stop: Callable[[], None]) -> float:
                """Stop Redis, start it again on its port, wait until A and B are ready and both subscribed again;
                the moment Redis answered again."""
                await asyncio.to_thread(stop)
                await asyncio.to_thread(redis_service.start)
                back = time.monotonic()
                await asyncio.gather(
                    wait_until(lambda: ready_now(a), DELIVERY_TIMEOUT, "A ready", interval=0.2),
                    wait_until(lambda: ready_now(b), DELIVERY_TIMEOUT, "B ready", interval=0.2),
                    wait_until(lambda: subscribers(redis_service, isolation) == 2, DELIVERY_TIMEOUT, "subscribed"),
                )
                return back

            rounds: dict[str, dict[str, Any]] = {}
            try:
                await start_clients(clients, HANDSHAKE_TIMEOUT)
                # Warm A's pool: several connections at once, each stale after the restart.
                warm = await asyncio.gather(*(probe(f"warm {i}") for i in range(4)))
                figures["warm_up"] = warm[0]
                figures["redis_clients_before_restart"] = redis_clients(redis_service)

                for label, stop, idle in (
                    ("prompt_after_sigterm", redis_service.stop, 0.0),
                    ("idle_after_sigkill", redis_service.kill, HEALTH_CHECK_INTERVAL + 1.0),
                ):
                    back = await restart(stop)
                    ready_after = time.monotonic() - back
                    # The idle spell is the scenario: pooled connections left unused for longer than the interval.
                    await asyncio.sleep(max(0.0, back + idle - time.monotonic()))
                    mark = a.log_size()
                    rounds[label] = {
                        "ready_and_subscribed_s": secs(ready_after),
                        "idle_before_probe_s": secs(time.monotonic() - back),
                        **await probe(label),
                        "A_warnings": log_entries(a, mark),
                    }
                figures["rounds"] = rounds
                figures["close_codes"] = close_codes(clients)
            finally:
                await stop_clients(clients)

            for label, result in rounds.items():
                statuses = {name: result[name]["status"] for name in ("send", "login", "patch")}
                assert statuses == {"send": 201, "login": 200, "patch": 200}, (label, result)
                assert result["send_on_B_ms"] is not None and result["send_on_B_ms"] < 5000, (label, result)
                assert result["patch_notice_on_B"], (label, result)
                assert not result["A_warnings"], (label, result["A_warnings"])
            assert all(c.fatal is None for c in clients)


# Drill 3: FerretDB stopped for 20 s under open sockets


FERRETDB_OUTAGE = 20.0
MAX_PER_USER_3 = 3


async def api_call(
    session: aiohttp.ClientSession, method: str, url: str, account: Account | None = None, **kwargs: Any
) -> dict[str, Any]:
    """One request's status, time, error code and Retry-After, for the figures."""
    headers = account.headers if account is not None else {}
    try:
        status, elapsed, body, response_headers = await timed(
            lambda: session.request(method, url, headers=headers, timeout=ONE_REQUEST, **kwargs)
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"status": None, "error": type(exc).__name__}
    error = body.get("error")
    answer = {
        "status": status,
        "ms": ms(elapsed),
        "code": error.get("code") if isinstance(error, dict) else None,
        "retry_after": response_headers.get("Retry-After"),
    }
    if "checks" in body:  # /health/ready
        answer["checks"] = body["checks"]
    return answer


MONGO_BOUND = ("list_notifications", "unread_count", "send", "login")


async def mongo_bound_calls(
    session: aiohttp.ClientSession, server: ServerProcess, admin: Account, user: Account
) -> dict[str, dict[str, Any]]:
    """At once, calls that need MongoDB: the user's notifications and unread count, a send to the user, a login."""
    answers = await asyncio.gather(
        api_call(session, "GET", f"{server.url}{API}/notifications", user),
        api_call(session, "GET", f"{server.url}{API}/notifications/unread-count", user),
        api_call(
            session,
            "POST",
            f"{server.url}{API}/notifications",
            admin,
            json={"title": "t", "body": "b", "user_ids": [user.id]},
        ),
        api_call(session, "POST", f"{server.url}{API}/auth/login", json={"email": user.email, "password": PASSWORD}),
    )
    return dict(zip(MONGO_BOUND, answers, strict=True))


async def test_a_ferretdb_outage_answers_503_keeps_sockets_and_leaks_no_slot(tmp_path: Path) -> None:
    """FerretDB (the drill's own) stopped for 20 s under a socket: readiness and MongoDB-bound API calls answer 503
    with Retry-After, the open socket keeps answering pings, sockets tried meanwhile fail without keeping a slot,
    and everything works again without a restart of the server."""
    with recorded("ferretdb_outage") as figures:
        async with Drill(tmp_path) as drill, ws_session() as session:
            ferretdb = await drill.ferretdb()
            isolation = drill.isolation("ferretdb_outage", mongodb_url=ferretdb.url)  # the shared Redis, untouched
            [a] = await drill.start_servers(isolation, "A", WS_MAX_PER_USER=str(MAX_PER_USER_3))
            api = Api(session, isolation)
            admin = await api.register(a, "admin", admin=True)
            user = await api.register(a, "user")
            holder = Client(session, a, user, "holder@A")
            sockets: list[aiohttp.ClientWebSocketResponse | None] = []
            figures.update(outage_s=FERRETDB_OUTAGE, ws_max_per_user=MAX_PER_USER_3)
            login = {"email": user.email, "password": PASSWORD}

            async def during() -> dict[str, Any]:
                """Everything at once: readiness, the MongoDB-bound calls, a ping, and every slot tried."""
                at = time.monotonic() - stopped
                ready, calls, pong, *attempts = await asyncio.gather(
                    api_call(session, "GET", f"{a.url}/health/ready"),
                    mongo_bound_calls(session, a, admin, user),
                    holder.ping(HANDSHAKE_TIMEOUT),
                    *(open_socket(session, a, user) for _ in range(MAX_PER_USER_3)),
                )
                sockets.extend(ws for _, ws, _ in attempts)  # closed at the end, should one have opened
                return {
                    "at_s": secs(at),
                    "health_ready": ready,
                    **calls,
                    "holder_ping_ms": ms(pong),
                    "holder_connected": holder.connected,
                    "socket_attempts": [{"outcome": outcome, "ms": ms(elapsed)} for outcome, _, elapsed in attempts],
                }

            try:
                await start_clients([holder], HANDSHAKE_TIMEOUT)
                first = await api.send(a, admin, user_ids=[user.id])
                assert await holder.has(first.ids, DELIVERY_TIMEOUT)

                stopped = time.monotonic()
                await asyncio.to_thread(ferretdb.stop)  # SIGTERM: gone, its port closed
                figures["ferretdb_stop_s"] = secs(time.monotonic() - stopped)  # it lets its clients finish first
                early = await during()
                late_at = stopped + FERRETDB_OUTAGE - 8  # pymongo has given up on the server by then
                await asyncio.sleep(max(0.0, late_at - time.monotonic()))  # the outage goes on
                late = await during()
                await asyncio.sleep(max(0.0, stopped + FERRETDB_OUTAGE - time.monotonic()))
                figures["during"] = {"early": early, "late": late}

                await asyncio.to_thread(ferretdb.start)
                back = time.monotonic()
                figures["ferretdb_down_s"] = secs(back - stopped)
                figures["ready_again_s"] = secs(
                    await wait_until(lambda: ready_now(a), DELIVERY_TIMEOUT, "A ready again", interval=0.1)
                )
                after = await api.send(a, admin, user_ids=[user.id], title="after")
                figures["send_after"] = {"status": after.status, "ms": ms(after.elapsed)}
                if after.status == 201 and await holder.has(after.ids, DELIVERY_TIMEOUT):
                    figures["send_after_delivered_ms"] = ms(holder.arrivals[after.ids[0]] - after.started)
                figures["list_after"] = await api_call(session, "GET", f"{a.url}{API}/notifications", user)
                figures["login_after"] = await api_call(session, "POST", f"{a.url}{API}/auth/login", json=login)

                # Every slot but the holder's is free: the rest open at once, and one more is refused.
                assert await holder.until(lambda: holder.connected, HANDSHAKE_TIMEOUT)
                reopened = await asyncio.gather(*(open_socket(session, a, user) for _ in range(MAX_PER_USER_3 - 1)))
                sockets.extend(ws for _, ws, _ in reopened)
                over, extra, _ = await open_socket(session, a, user)
                sockets.append(extra)
                figures["slots_after"] = {"reopened": [o for o, _, _ in reopened], "one_more": over}
                figures["holder"] = {
                    "close_codes": {str(k): v for k, v in holder.closes.items()},
                    "readies": holder.readies,
                    "fatal": holder.fatal,
                    "lost": sorted({*first.ids, *after.ids} - holder.arrivals.keys()),
                    "duplicated": holder.duplicates,
                }
            finally:
                await close_all(sockets)
                await stop_clients([holder])

            for label, probe in figures["during"].items():
                assert probe["health_ready"]["status"] == 503, (label, probe)
                for call in MONGO_BOUND:
                    answer = probe[call]
                    assert answer["status"] == 503 and answer["code"] == "service_unavailable", (label, call, answer)
                    assert answer["retry_after"] and int(answer["retry_after"]) > 0, (label, call, answer)
                # The open socket answers, or was closed with a reconnect code and is back (reconnecting).
                assert probe["holder_ping_ms"] is not None or holder.fatal is None, (label, probe)
                for attempt in probe["socket_attempts"]:
                    outcome = attempt["outcome"]
                    refused = outcome.startswith("http 5") or outcome == f"close {4429}"
                    assert refused or (outcome.startswith("close ") and reconnects(int(outcome[6:]))), (label, attempt)
            assert figures["send_after"]["status"] == 201, figures["send_after"]
            assert figures.get("send_after_delivered_ms") is not None
            assert figures["list_after"]["status"] == 200 and figures["login_after"]["status"] == 200
            assert figures["slots_after"] == {"reopened": ["ready"] * (MAX_PER_USER_3 - 1), "one_more": "close 4429"}
            assert holder.fatal is None and not figures["holder"]["lost"] and holder.duplicates == 0


# Drill 4: a catch-up storm after a Redis blip, 1,000 sockets on one process


STORM_USERS = 100
STORM_SOCKETS_PER_USER = 10
STORM_CONNECTING_AT_ONCE = 50
API_P99_LIMIT = 1.0
CATCH_UP_TIMEOUT = 90.0  # about 20-30 s on a busy 2-core machine: the server paces replays (REPLAY_CONCURRENCY)


class ApiLoad:
    """A few workers, each making one request after another for random users (GET /users/me and GET
    /notifications/unread-count in turn), recording every latency, until stopped."""

    MAX_REQUESTS = 100_000

    def __init__(self, server: ServerProcess, users: Sequence[Account], workers: int = 4) -> None:
        self.server, self.users, self.workers = server, users, workers
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._stopping = False
        self.latencies, self.statuses = [], Counter()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.workers),
            timeout=ONE_REQUEST,
        )
        self._tasks = [asyncio.create_task(self._work(i), name=f"api load {i}") for i in range(self.workers)]

    async def _work(self, worker: int) -> None:
        assert self._session is not None
        paths = (f"{API}/users/me", f"{API}/notifications/unread-count")
        for i in range(self.MAX_REQUESTS):
            if self._stopping:
                return
            user = random.choice(self.users)
            started = time.monotonic()
            try:
                async with self._session.get(f"{self.server.url}{paths[(i + worker) % 2]}", headers=user.headers) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.latencies.append(time.monotonic() - started)
            self.statuses[status] += 1

    async def stop(self) -> dict[str, Any]:
        """Stop, and the figures: requests, statuses, p50, p99 and max in milliseconds."""
        self._stopping = True
        await asyncio.wait_for(asyncio.gather(*self._tasks), REQUEST_TIMEOUT + 5)
        if self._session is not None:
            await self._session.close()
        return {
            "requests": len(self.latencies),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "p50_ms": ms(percentile(self.latencies, 0.5)),
            "p99_ms": ms(percentile(self.latencies, 0.99)),
            "max_ms": ms(max(self.latencies, default=0.0)),
        }


async def test_a_catch_up_storm_of_1000_sockets_delivers_everything_and_the_api_keeps_answering(
    tmp_path: Path,
) -> None:
    """1,000 sockets (100 users x 10) on A; Redis killed; notifications sent through B meanwhile (stored, not
    delivered); Redis back: A catches every socket up from MongoDB, while a stream of API requests to A keeps a
    p99 under a second."""
    with recorded("catch_up_storm") as figures:
        figures["nofile"] = raise_nofile(8192)
        async with Drill(tmp_path) as drill, ws_session() as session:
            redis_service = await drill.redis()
            isolation = drill.isolation("storm", redis_url=redis_service.url)
            a, b = await drill.start_servers(
                isolation,
                "A",
                "B",
                WS_MAX_PER_USER=str(STORM_SOCKETS_PER_USER),
                LOGIN_ATTEMPTS_PER_ADDRESS="100000",  # a hundred logins from one address
            )
            api = Api(session, isolation)
            started = time.monotonic()
            admin = await api.register(b, "admin", admin=True)
            gate = asyncio.Semaphore(10)

            async def account(i: int) -> Account:
                async with gate:
                    return await api.register(b, f"s{i}")

            users = await asyncio.gather(*(account(i) for i in range(STORM_USERS)))
            figures["accounts_s"] = secs(time.monotonic() - started)
            connecting = asyncio.Semaphore(STORM_CONNECTING_AT_ONCE)
            clients = [
                Client(session, a, user, f"s{i}.{k}@A", gate=connecting)
                for i, user in enumerate(users)
                for k in range(STORM_SOCKETS_PER_USER)
            ]
            ledger = Ledger(clients)
            load = ApiLoad(a, users)
            figures.update(users=STORM_USERS, sockets=len(clients))
            try:
                figures["open_s"] = secs(await start_clients(clients, 120))
                # Live first: a broadcast reaches all 1,000 (and gives each client an id to resume from).
                first = await api.send(b, admin, broadcast=True, title="before")
                ledger.add(first)
                assert await ledger.all_delivered(DELIVERY_TIMEOUT), "the first broadcast did not reach every socket"
                figures["live_broadcast_to_all_before_ms"] = ms(
                    (last_arrival(clients, set(first.ids)) or first.started) - first.started
                )
                load.start()
                await asyncio.sleep(1.5)  # a baseline of the API's latency, before anything happens
                figures["api_baseline"] = await load.stop()

                killed = time.monotonic()
                await asyncio.to_thread(redis_service.kill)
                direct = [users[i : i + 25] for i in range(0, STORM_USERS, 25)]
                during = await asyncio.gather(
                    *(api.send(b, admin, broadcast=True, title=f"broadcast {i}") for i in range(3)),
                    *(api.send(b, admin, user_ids=[u.id for u in group], title="direct") for group in direct),
                )
                for sent in during:
                    ledger.add(sent)
                figures["sends_during_outage"] = dict(Counter(str(sent.status) for sent in during))
                figures["outage_s"] = secs(time.monotonic() - killed)

                load.start()
                await asyncio.to_thread(redis_service.start)
                back = time.monotonic()
                subscribed = asyncio.create_task(
                    wait_until(lambda: subscribers(redis_service, isolation) == 2, DELIVERY_TIMEOUT, "subscribed")
                )
                delivered = await ledger.all_delivered(CATCH_UP_TIMEOUT)
                caught_up = time.monotonic()
                await asyncio.sleep(max(0.0, back + 3.0 - time.monotonic()))  # at least 3 s of requests
                figures["api_during_catch_up"] = await load.stop()
                figures["subscriptions_back_s"] = secs(await subscribed)

                # Live again: one more broadcast reaches every socket, once.
                last = await api.send(b, admin, broadcast=True, title="after")
                ledger.add(last)
                delivered = await ledger.all_delivered(DELIVERY_TIMEOUT) and delivered
                if last.ids:
                    figures["live_broadcast_to_all_after_ms"] = ms(
                        (last_arrival(clients, set(last.ids)) or last.started) - last.started
                    )
            finally:
                await stop_clients(clients)

            outage_ids = {nid for sent in during for nid in sent.ids}
            per_socket = [(last_arrival([c], ledger.expected_of(c) & outage_ids) or back) - back for c in clients]
            figures.update(
                ledger.tally(),
                catch_up_s={
                    "all": secs(caught_up - back),
                    "socket_p50": secs(percentile(per_socket, 0.5)),
                    "socket_max": secs(max(per_socket)),
                },
                catch_up_definition="from Redis answering again to the last missed notification on each socket",
                close_codes=close_codes(clients),
                reconnects=sum(c.readies for c in clients) - len(clients),
                resumes=sum(c.resumes for c in clients),
                error_frames=sum(len(c.errors) for c in clients),
                fatal=[c.name for c in clients if c.fatal is not None][:10],
            )
            tally = ledger.tally()
            assert tally["sends_not_201"] == 0, ledger.statuses()
            assert not figures["fatal"], figures["fatal"]
            assert delivered and tally["lost"] == 0, sum(1 for c in clients if ledger.missing(c))
            assert tally["duplicated"] == 0 and tally["misdelivered"] == 0, tally
            api_figures = figures["api_during_catch_up"]
            assert set(api_figures["statuses"]) == {"200"}, api_figures
            assert api_figures["p99_ms"] < API_P99_LIMIT * 1000, api_figures


# Drill 5: clients that drop right after the upgrade


DROPS = 50
DROPS_AT_ONCE = 5
MAX_PER_USER_5 = 3
GAUGE_INTERVAL = 0.2  # CONNECTION_REPORT_INTERVAL: how often the process writes its socket count into Redis


async def drop_after_upgrade(server: ServerProcess, account: Account, *, reset: bool) -> int:
    """Open a TCP connection, send the upgrade with the Authorization header, read the response head, and close at
    once: with a FIN, or (`reset`) with an RST (SO_LINGER 0). The response's status."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, server.port), REQUEST_TIMEOUT)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {API}/ws HTTP/1.1\r\nHost: {HOST}:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {account.access_token}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        if reset:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.wait_closed(), 5)


def gauge(isolation: Isolation) -> tuple[int, float] | None:
    """The socket count the (single) server process last wrote into Redis, and when."""
    with contextlib.closing(redis.Redis.from_url(REDIS_URL, socket_timeout=2)) as client:
        entries = client.hgetall(f"{isolation.prefix}ws:connections")
    for value in entries.values():
        count, _, stamp = (value.decode() if isinstance(value, bytes) else str(value)).partition(":")
        return int(count), float(stamp)
    return None


async def test_clients_that_drop_right_after_the_upgrade_leak_no_slot(tmp_path: Path) -> None:
    """50 upgrades (five at a time) closed as soon as the 101 is read, half with a FIN, half with an RST; then the
    process counts no socket of the user, and the user opens WS_MAX_PER_USER sockets at once (one more: 4429)."""
    with recorded("drop_after_upgrade") as figures:
        async with Drill(tmp_path) as drill, ws_session() as session:
            isolation = drill.isolation("drops")  # the shared services, untouched
            [a] = await drill.start_servers(
                isolation, "A", WS_MAX_PER_USER=str(MAX_PER_USER_5), CONNECTION_REPORT_INTERVAL=str(GAUGE_INTERVAL)
            )
            user = await Api(session, isolation).register(a, "dropper")
            statuses: Counter[int] = Counter()
            for start in range(0, DROPS, DROPS_AT_ONCE):
                batch = range(start, start + DROPS_AT_ONCE)
                statuses.update(await asyncio.gather(*(drop_after_upgrade(a, user, reset=i % 2 == 1) for i in batch)))
            dropped = time.time()
            figures.update(
                drops=DROPS, at_once=DROPS_AT_ONCE, ws_max_per_user=MAX_PER_USER_5, upgrade_statuses=dict(statuses)
            )

            # The process's own count of the user's sockets, from a report written after the last drop.
            def settled() -> bool:
                reading = gauge(isolation)
                # Stamps are whole seconds, rounded: one a second past the last drop was written after it.
                return reading is not None and reading[1] >= dropped + 1 and reading[0] == 0

            try:
                figures["slots_free_after_s"] = secs(await wait_until(settled, 10, "no socket counted", interval=0.1))
            except AssertionError:
                figures["slots_free_after_s"] = None
            reading = gauge(isolation)
            figures["sockets_counted_after_drops"] = reading[0] if reading else None

            sockets: list[aiohttp.ClientWebSocketResponse | None] = []
            try:
                opened = await asyncio.gather(*(open_socket(session, a, user) for _ in range(MAX_PER_USER_5)))
                sockets.extend(ws for _, ws, _ in opened)
                over, extra, _ = await open_socket(session, a, user)
                sockets.append(extra)
            finally:
                await close_all(sockets)
            figures["reopened"] = [outcome for outcome, _, _ in opened]
            figures["one_more"] = over
            figures["A_errors"] = log_entries(a, 0, levels=("ERROR", "CRITICAL"))
            # How many drops the server noticed while it was still setting the socket up (writing "ready").
            figures["A_saw_client_gone_during_setup"] = sum(
                "client went away during GET /api/v1/ws" in line for line in log_entries(a, 0, levels=("INFO",))
            )

            assert statuses == {101: DROPS}, statuses
            assert figures["sockets_counted_after_drops"] == 0, figures
            assert figures["reopened"] == ["ready"] * MAX_PER_USER_5, figures["reopened"]
            assert over == "close 4429", over
            assert not figures["A_errors"], figures["A_errors"]


# Drill 3b: FerretDB frozen (SIGSTOP) rather than gone


FROZEN = 10.0  # seconds FerretDB stays frozen at most
ANSWER_WITHIN = 8.0  # pymongo's 5 s server selection timeout, and a margin


class MongoCallsHang(Exception):
    """A MongoDB-bound call did not answer 503 within ANSWER_WITHIN seconds while FerretDB was frozen."""


async def test_a_frozen_ferretdb_answers_503_within_the_selection_timeout(tmp_path: Path) -> None:
    """FerretDB frozen (SIGSTOP: its port open, nothing answered) under a socket: readiness says 503 within its
    probe timeout, the socket keeps answering pings, and MongoDB-bound calls answer 503 with Retry-After within
    seconds, as they do when FerretDB is gone; after SIGCONT everything works without a restart."""
    with recorded("ferretdb_frozen") as figures:
        async with Drill(tmp_path) as drill, ws_session() as session:
            ferretdb = await drill.ferretdb()
            isolation = drill.isolation("ferretdb_frozen", mongodb_url=ferretdb.url)  # the shared Redis, untouched
            [a] = await drill.start_servers(isolation, "A")
            api = Api(session, isolation)
            admin = await api.register(a, "admin", admin=True)
            user = await api.register(a, "user")
            holder = Client(session, a, user, "holder@A")
            figures.update(frozen_at_most_s=FROZEN, answer_within_s=ANSWER_WITHIN)
            try:
                await start_clients([holder], HANDSHAKE_TIMEOUT)
                frozen = time.monotonic()
                await asyncio.to_thread(ferretdb.pause)
                try:
                    probe = asyncio.ensure_future(
                        asyncio.gather(
                            api_call(session, "GET", f"{a.url}/health/ready"),
                            mongo_bound_calls(session, a, admin, user),
                            holder.ping(HANDSHAKE_TIMEOUT),
                        )
                    )
                    # Frozen until every call answered, or FROZEN seconds at most: a hung call ends with SIGCONT.
                    await asyncio.wait({probe}, timeout=FROZEN)
                finally:
                    await asyncio.to_thread(ferretdb.resume)
                figures["frozen_s"] = secs(time.monotonic() - frozen)
                ready, calls, pong = await asyncio.wait_for(probe, REQUEST_TIMEOUT + 5)
                figures["during"] = {"health_ready": ready, **calls, "holder_ping_ms": ms(pong)}

                figures["ready_again_s"] = secs(
                    await wait_until(lambda: ready_now(a), DELIVERY_TIMEOUT, "A ready again", interval=0.1)
                )
                after = await api.send(a, admin, user_ids=[user.id], title="after")
                figures["send_after"] = {"status": after.status, "ms": ms(after.elapsed)}
                # Acknowledged is delivered: the send made while frozen too, if it got its 201.
                expected = (calls["send"]["status"] == 201) + (after.status == 201)
                delivered = await holder.until(lambda: len(holder.arrivals) >= expected, DELIVERY_TIMEOUT)
                figures["holder_received"] = len(holder.arrivals)
                figures["holder"] = {
                    "close_codes": {str(k): v for k, v in holder.closes.items()},
                    "fatal": holder.fatal,
                }
            finally:
                await stop_clients([holder])

            assert ready["status"] == 503, ready
            assert pong is not None, "the open socket did not answer a ping while FerretDB was frozen"
            assert after.status == 201 and delivered, (figures["send_after"], figures["holder_received"])
            assert holder.fatal is None and holder.duplicates == 0
            slow = {
                call: answer
                for call, answer in calls.items()
                if answer["status"] != 503 or answer["ms"] is None or answer["ms"] > ANSWER_WITHIN * 1000
            }
            if slow:
                figures["known_bug"] = "MongoDB-bound calls wait for a hung MongoDB instead of answering 503"
                raise MongoCallsHang(f"frozen for {figures['frozen_s']} s; not 503 within {ANSWER_WITHIN} s: {slow}")
            for call, answer in calls.items():
                assert answer["code"] == "service_unavailable" and answer["retry_after"], (call, answer)
