"""The reconnect storm: every socket of one server process comes back at once after a restart, and resumes.

    .venv/bin/python bench/storm.py                                  # 1,000 users x 10 sockets = 10,000 sockets
    .venv/bin/python bench/storm.py --users 100 --per-user 10        # 1,000 sockets
    .venv/bin/python bench/storm.py --services own --client-processes 2 --json out.json --profile
    options: --server tidings|bare|both (both) --services shared|own (shared) --backend postgresql|sqlite
             --missed N (5) --broadcasts N (2)
             --timeout S (300) --connect-concurrency N (0: all at once) --handshake-timeout S (0: none)
             --retries N (3) --open-concurrency N (200) --in-band-auth --keep
             --server-env NAME=VALUE (repeatable: a setting for the tidings server, e.g. REPLAY_CONCURRENCY=8)

Issue 9's target: 10,000 sockets (1,000 users with 10 each) reconnecting with `resume` after a server restart are all
"ready" and caught up within 20 s on one process, with 0 lost.

What it does, against a database and Redis prefix of its own (tests/launcher.py's Isolation), on the project's
FerretDB and Redis (MONGODB_URL, REDIS_URL) or, with `--services own`, on a FerretDB and a redis-server started for
the run (tests/launcher.py's FerretDBProcess and RedisProcess), whose CPU is then the run's alone; `--backend` is that
FerretDB's storage: PostgreSQL (a database of its own in the project's cluster; the default, as for the tests) or
SQLite (files; FerretDB then pushes only `_id` filters down and scans the collection for any other):

1. (--server both or bare) the baseline: bench/bare_ws.py, a bare aiohttp server that answers "ready" at once, gets
   the same storm of fresh connects (no resume, no database), to show what the machine and the client can do;
2. starts one `tidings serve` process (bench/common.py's tidings_server: cheap password hashing, login rate limits
   lifted; here also WS_MAX_PER_USER >= --per-user and ACCESS_TOKEN_TTL=3600, so that no token expires mid-run),
   seeds the admin and `--users` users with direct inserts (bench/scale.py's Seeder: one argon2id hash computed
   once) and logs every user in once over HTTP;
3. opens `--per-user` sockets per user (Authorization header, or with --in-band-auth an "auth" first message),
   `--open-concurrency` at a time, each answered with "ready"; sends one broadcast and then one notification to
   every user through the API, and waits until every socket has both: each socket's newest id is where it resumes;
4. stops the server with SIGTERM, as a deploy would (every socket gets 1001), starts it again on the same port, and
   before anyone reconnects sends, as the admin through the API, `--missed` notifications to every user (POST
   /api/v1/notifications with up to 1,000 user_ids a request) with `--broadcasts` broadcasts among them: stored,
   delivered to nobody;
5. the storm: every socket reconnects at the same instant (`--connect-concurrency` bounds how many are between
   connect and "ready" at once; 0: all at once), authenticates, waits for "ready", sends
   {"type": "resume", "after": <its newest id>} and must then receive exactly the notifications it missed: those of
   its user (and the broadcasts) stored after that id, as the database holds them, each once and in order. A
   socket that fails (HTTP 5xx, a connection error, a close with 1001, 1006, 1011 or 4000-4099) reconnects and
   resumes after the newest id it has, as docs/websocket.md tells clients to, up to `--retries` times, with full
   jitter backoff (0.5 s doubling, at most 5 s); `--handshake-timeout S` also gives up on (and retries) an attempt
   whose TCP connect and HTTP upgrade take longer, as a client with a connect timeout would. After the last socket
   is caught up (or `--timeout`), the sockets stay open 1 s more, so that late duplicates are counted too;
6. prints a Markdown table: when the last socket was "ready" and caught up, per-socket p50 / p99 / max of both,
   failed attempts by reason (HTTP status, close code, error), lost, duplicated, out of order, "ready"s whose unread
   count is wrong, and the CPU seconds the server, FerretDB (and its PostgreSQL, when it has that backend), Redis
   and the client processes used during the storm (utime + stime from /proc/PID/stat; FerretDB and Redis are found
   by their ports; shared ones' figures include whatever else runs against them meanwhile), the load average and
   the server's log lines of WARNING and above after the restart; `--json` writes it all, per socket too.

The client: `--client-processes` processes (default 1; multiprocessing, spawned) each hold their share of the
sockets on one uvloop event loop, with aiohttp's connector limit lifted; this process only orchestrates. The client
competes with the server, FerretDB and Redis for the machine's cores, so its CPU is reported too.
`--profile` samples the restarted server with py-spy (.venv/bin/py-spy, `pip install py-spy`; `--nonblocking`, so the
server is not stopped for each sample) from just before the storm until the last socket is done and prints the
functions with the most samples (cumulative and own).

Everything goes to 127.0.0.1; the database, the Redis keys and the processes are removed at the end, also after a
failure, Ctrl-C or SIGTERM (`--keep` keeps the data).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvloop
from argon2 import PasswordHasher, Type
from bson import ObjectId
from pymongo import AsyncMongoClient

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    API,
    PASSWORD,
    bench_log_dir,
    cpu_seconds,
    load_average,
    log,
    login,
    percentile,
    pid_listening_on,
    run_interruptible,
    script_server,
    tidings_server,
)
from bench.scale import Seeder, ferretdb_version, fmt_load, machine
from tests.launcher import (
    FERRETDB_BACKEND,
    HOST,
    MONGODB_URL,
    REDIS_URL,
    FerretDBProcess,
    Isolation,
    RedisProcess,
    ServerProcess,
    raise_nofile,
)
from tidings.documents import Notification, User
from tidings.server.settings import Settings

Doc = dict[str, Any]

TARGET_SECONDS = 20.0
SEND_BATCH = 1000  # recipients per POST /notifications: the API's limit
BEFORE = 2  # notifications each socket gets live before the restart: a broadcast, then one of its own
LIVE_TIMEOUT = 120.0
CLOSE_TIMEOUT = 60.0
GRACE = 1.0  # the sockets stay open this long after the last one is done, to count late duplicates
BACKOFF_BASE = 0.5
BACKOFF_CAP = 5.0
TOKEN_TTL = 3600  # the run may take longer than the default 15 minutes; an expired token would close sockets (4001)
TOP_FUNCTIONS = 15
LOGIN_TRIES = 5


# The client: a fleet of sockets in one process, driven over a pipe by the orchestrating process


async def receive_message(conn: Connection) -> dict[str, Any]:
    """The next message on a multiprocessing pipe, without blocking the event loop while none has come."""
    loop = asyncio.get_running_loop()
    while not conn.poll():
        readable: asyncio.Future[None] = loop.create_future()

        def wake(future: asyncio.Future[None] = readable) -> None:
            if not future.done():
                future.set_result(None)

        loop.add_reader(conn.fileno(), wake)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
            # The event loop made the descriptor non-blocking; recv and send of a large message need it blocking.
            os.set_blocking(conn.fileno(), True)
    message: dict[str, Any] = conn.recv()
    return message


class Refused(Exception):
    """The server ended an attempt before "ready": a close code, or another first message."""


def describe(exc: BaseException) -> str:
    """A failed attempt, in few enough words to count by: "HTTP 503", "close 4000", "timeout", an error's name."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"HTTP {exc.status}"
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
    return type(exc).__name__


def retryable(reason: str) -> bool:
    """Whether docs/websocket.md tells a client to reconnect after this: 5xx, 1001/1006/1011, 4000-4099, a dropped
    connection. Not after a timeout (the run's deadline), 4xx or 4400-4499."""
    kind, _, code = reason.partition(" ")
    if reason == "timeout":
        return False
    if kind == "HTTP":
        return code.isdigit() and int(code) >= 500
    if kind == "close":
        if not code.isdigit():
            return True
        number = int(code)
        return number in (1001, 1006, 1011, 1012, 1013) or 4000 <= number < 4100
    return True


@dataclass
class StormState:
    """One socket's storm: what it must get, what it got, and when."""

    pending: set[str]
    newest: str
    expected: int
    got: set[str] = field(default_factory=set)
    previous: str = ""
    ready_at: float = math.nan
    caught_at: float = math.nan
    unread: int | None = None
    attempts: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    status: str = ""

    @property
    def caught(self) -> bool:
        return not math.isnan(self.caught_at)


@dataclass
class Sock:
    index: int
    user: int
    token: str
    ws: aiohttp.ClientWebSocketResponse | None = None
    reader: asyncio.Task[None] | None = None
    last_id: str = ""  # the newest notification id it got before the restart
    live: int = 0  # notifications it got before the restart
    unread_before: int | None = None
    ended: str = ""  # how its connection before the restart ended
    storm: StormState | None = None


@dataclass(frozen=True)
class Plan:
    url: str
    start_at: float  # time.monotonic(), the same clock in every process on Linux
    deadline: float
    visible: dict[int, list[str]]  # per user, every notification it can see, ascending
    unread: dict[int, int] | None  # per user, what "ready" must say; None: not checked (bare)
    resume: bool
    concurrency: int
    retries: int
    handshake_timeout: float


class Fleet:
    """This process's share of the sockets; answers one command at a time from the orchestrator."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.socks: list[Sock] = []
        self.session: aiohttp.ClientSession | None = None
        self.url = ""
        self.in_band = False
        self.unfinished = 0
        self.all_finished = asyncio.Event()
        self.live_target = 0
        self.live_missing = 0
        self.all_live = asyncio.Event()

    async def serve(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.session = session
            try:
                while True:
                    message = await receive_message(self.conn)
                    op = message["op"]
                    if op == "exit":
                        break
                    if op == "setup":
                        reply = self.op_setup(message)
                    elif op == "open":
                        reply = await self.op_open(message)
                    elif op == "await_live":
                        reply = await self.op_await_live(message)
                    elif op == "await_closed":
                        reply = await self.op_await_closed(message)
                    elif op == "storm":
                        reply = await self.op_storm(message)
                    else:
                        raise ValueError(f"unknown command {op!r}")
                    self.conn.send(reply)
            finally:
                await self.close_all()

    def op_setup(self, message: dict[str, Any]) -> dict[str, Any]:
        self.url = message["url"]
        self.in_band = message["in_band"]
        self.socks = [Sock(index, user, token) for index, user, token in message["sockets"]]
        return {"op": "setup", "sockets": len(self.socks)}

    async def handshake(
        self, sock: Sock, url: str, handshake_timeout: float = 0.0
    ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        """Connect, authenticate and wait for "ready"; the socket and the ready message.

        `handshake_timeout` (0: none) bounds the TCP connect and the HTTP upgrade, not the wait for "ready".
        """
        assert self.session is not None
        headers = {} if self.in_band or not sock.token else {"Authorization": f"Bearer {sock.token}"}
        try:
            async with asyncio.timeout(handshake_timeout or None):
                ws = await self.session.ws_connect(
                    url, headers=headers, autoping=True, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
                )
        except TimeoutError:  # only this block's: the caller's deadline would surface as its own TimeoutError
            raise Refused("handshake timeout") from None
        try:
            if self.in_band and sock.token:
                await ws.send_str(json.dumps({"type": "auth", "token": sock.token}))
            first = await ws.receive()
            if first.type is not aiohttp.WSMsgType.TEXT:
                raise Refused(f"close {ws.close_code}")
            body: dict[str, Any] = json.loads(first.data)
            if body.get("type") != "ready":
                raise Refused(f"{body.get('type')} {body.get('code', '')}".strip())
        except BaseException:
            await ws.close()
            raise
        return ws, body

    # Before the restart

    async def op_open(self, message: dict[str, Any]) -> dict[str, Any]:
        slots = asyncio.Semaphore(message["concurrency"] or len(self.socks) or 1)
        failures: Counter[str] = Counter()
        started = time.monotonic()

        async def one(sock: Sock) -> None:
            try:
                async with slots, asyncio.timeout(message["timeout"]):
                    ws, ready = await self.handshake(sock, self.url)
            except (aiohttp.ClientError, OSError, TimeoutError, Refused) as exc:
                failures[describe(exc)] += 1
                return
            sock.ws, sock.unread_before = ws, ready.get("unread")
            sock.reader = asyncio.create_task(self.read_live(sock, ws))

        await asyncio.gather(*(one(sock) for sock in self.socks))
        opened = sum(1 for sock in self.socks if sock.ws is not None)
        unread = Counter(sock.unread_before for sock in self.socks if sock.ws is not None)
        return {
            "op": "open",
            "opened": opened,
            "failures": dict(failures),
            "seconds": time.monotonic() - started,
            "unread": {str(key): value for key, value in unread.items()},
        }

    async def read_live(self, sock: Sock, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            body = json.loads(msg.data)
            if body.get("type") == "notification":
                notification_id = body["notification"]["id"]
                sock.live += 1
                sock.last_id = max(sock.last_id, notification_id)
                if sock.live == self.live_target:
                    self.live_missing -= 1
                    if self.live_missing <= 0:
                        self.all_live.set()
        sock.ended = f"close {ws.close_code}" if ws.close_code is not None else f"error {ws.exception()}"

    async def op_await_live(self, message: dict[str, Any]) -> dict[str, Any]:
        """Until every open socket got `count` notifications (or the timeout); then where each one stands."""
        count = message["count"]
        open_socks = [sock for sock in self.socks if sock.ws is not None]
        self.live_target, self.all_live = count, asyncio.Event()
        self.live_missing = sum(1 for sock in open_socks if sock.live < count)
        if self.live_missing <= 0:
            self.all_live.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_live.wait(), message["timeout"])
        return {
            "op": "await_live",
            "complete": sum(1 for sock in open_socks if sock.live == count),
            "positions": [(sock.index, sock.user, sock.last_id, sock.live) for sock in open_socks],
        }

    async def op_await_closed(self, message: dict[str, Any]) -> dict[str, Any]:
        """Until the server closed every socket (shutdown); how each one ended."""
        readers = [sock.reader for sock in self.socks if sock.reader is not None]
        if readers:
            await asyncio.wait(readers, timeout=message["timeout"])
        ended: Counter[str] = Counter()
        for sock in self.socks:
            if sock.reader is None:
                continue
            if sock.reader.done():
                ended[sock.ended] += 1
            else:
                ended["still open"] += 1
                sock.reader.cancel()
                if sock.ws is not None:
                    await sock.ws.close()
            sock.ws = sock.reader = None
        return {"op": "await_closed", "ended": dict(ended)}

    # The storm

    async def op_storm(self, message: dict[str, Any]) -> dict[str, Any]:
        plan = Plan(
            url=message["url"],
            start_at=message["start_at"],
            deadline=message["deadline"],
            visible={int(user): ids for user, ids in message["visible"].items()},
            unread=None if message["unread"] is None else {int(u): n for u, n in message["unread"].items()},
            resume=message["resume"],
            concurrency=message["concurrency"],
            retries=message["retries"],
            handshake_timeout=message["handshake_timeout"],
        )
        eligible = set(message["eligible"]) if message["eligible"] is not None else None
        socks = [sock for sock in self.socks if eligible is None or sock.index in eligible]
        for sock in socks:
            expected = [nid for nid in plan.visible.get(sock.user, ()) if nid > sock.last_id]
            sock.storm = StormState(pending=set(expected), newest=sock.last_id, expected=len(expected))
        self.unfinished = len(socks)
        self.all_finished = asyncio.Event()
        if not socks:
            self.all_finished.set()
        slots = asyncio.Semaphore(plan.concurrency or len(socks) or 1)
        messages: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        await asyncio.sleep(max(0.0, plan.start_at - time.monotonic()))
        cpu_start = time.process_time()
        tasks = [asyncio.create_task(self.storm_one(sock, plan, slots, failures, messages)) for sock in socks]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_finished.wait(), timeout=max(0.0, plan.deadline - time.monotonic()) + 2)
        done_at = time.monotonic()
        cpu = time.process_time() - cpu_start
        self.conn.send({"op": "done", "at": done_at})
        await asyncio.sleep(GRACE)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.close_all()
        states = [sock.storm for sock in socks if sock.storm is not None]
        unread_wrong = 0
        if plan.unread is not None:
            for sock in socks:
                state = sock.storm
                if state is not None and state.unread is not None and state.unread != plan.unread.get(sock.user):
                    unread_wrong += 1
        return {
            "op": "storm",
            "sockets": len(states),
            "ready_at": [state.ready_at for state in states],
            "caught_at": [state.caught_at for state in states],
            # Not finished by the deadline (+2 s): still in an attempt or closing one; a timeout all the same.
            "statuses": dict(Counter(state.status or "timeout" for state in states)),
            "failures": dict(failures),
            "messages": dict(messages),
            "attempts": sum(state.attempts for state in states),
            "retried": sum(1 for state in states if state.attempts > 1),
            "expected": sum(state.expected for state in states),
            # Lost: skipped, as a newer notification arrived (a replay is in order); late: none newer came yet.
            "lost": sum(sum(1 for nid in state.pending if nid < state.newest) for state in states),
            "late_ready": sum(
                sum(1 for nid in state.pending if nid > state.newest)
                for state in states
                if not math.isnan(state.ready_at)
            ),
            "late_never_ready": sum(len(state.pending) for state in states if math.isnan(state.ready_at)),
            "duplicated": sum(state.duplicated for state in states),
            "out_of_order": sum(state.out_of_order for state in states),
            "unexpected": sum(state.unexpected for state in states),
            "unread_wrong": unread_wrong,
            "client_cpu": cpu,
        }

    def finish(self, state: StormState, status: str) -> None:
        if state.status:
            return
        state.status = status
        self.unfinished -= 1
        if self.unfinished <= 0:
            self.all_finished.set()

    async def storm_one(
        self, sock: Sock, plan: Plan, slots: asyncio.Semaphore, failures: Counter[str], messages: Counter[str]
    ) -> None:
        state = sock.storm
        assert state is not None
        while True:
            left = plan.deadline - time.monotonic()
            if left <= 0:
                self.finish(state, "timeout" if math.isnan(state.ready_at) else "not caught up by the deadline")
                return
            state.attempts += 1
            try:
                async with asyncio.timeout(left), slots:
                    ws, ready = await self.handshake(sock, plan.url, plan.handshake_timeout)
            except (aiohttp.ClientError, OSError, TimeoutError, Refused) as exc:
                reason = describe(exc)
            else:
                sock.ws = ws
                if math.isnan(state.ready_at):
                    state.ready_at = time.monotonic() - plan.start_at
                    state.unread = ready.get("unread")
                reason = await self.catch_up(sock, state, ws, plan, messages)
            failures[reason] += 1
            if state.caught:
                return  # closed by the server after catching up: counted above, nothing missing
            if state.attempts > plan.retries or not retryable(reason):
                self.finish(state, reason)
                return
            backoff = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (state.attempts - 1)))
            if time.monotonic() + backoff >= plan.deadline:
                self.finish(state, reason)
                return
            await asyncio.sleep(backoff)

    async def catch_up(
        self, sock: Sock, state: StormState, ws: aiohttp.ClientWebSocketResponse, plan: Plan, messages: Counter[str]
    ) -> str:
        """Resume, then read until the socket ends (the worker cancels this once everyone is done); how it ended."""
        try:
            if plan.resume and state.newest:
                await ws.send_str(json.dumps({"type": "resume", "after": state.newest}))
            if not state.pending and not state.caught:
                state.caught_at = time.monotonic() - plan.start_at
                self.finish(state, "caught up")
            while True:
                timeout = None if state.caught else plan.deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    return "timeout"
                msg = await ws.receive(timeout=timeout)
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                body = json.loads(msg.data)
                kind = body.get("type")
                if kind != "notification":
                    messages[f"{kind} {body.get('code', '')}".strip()] += 1
                    continue
                notification_id: str = body["notification"]["id"]
                if notification_id in state.got or notification_id <= sock.last_id:
                    state.duplicated += 1
                elif notification_id in state.pending:
                    state.pending.discard(notification_id)
                    state.got.add(notification_id)
                else:
                    state.unexpected += 1
                    state.got.add(notification_id)
                if notification_id <= state.previous:
                    state.out_of_order += 1
                state.previous = max(state.previous, notification_id)
                state.newest = max(state.newest, notification_id)
                if not state.pending and not state.caught:
                    state.caught_at = time.monotonic() - plan.start_at
                    self.finish(state, "caught up")
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return describe(exc)
        return f"close {ws.close_code}" if ws.close_code is not None else f"error {type(ws.exception()).__name__}"

    async def close_all(self) -> None:
        open_ws = [sock.ws for sock in self.socks if sock.ws is not None and not sock.ws.closed]
        for sock in self.socks:
            if sock.reader is not None:
                sock.reader.cancel()
            sock.ws = sock.reader = None
        if open_ws:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in open_ws), return_exceptions=True), 30)


def worker_main(conn: Connection) -> None:
    """A client process: Ctrl-C is for the orchestrator, which ends this process itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(Fleet(conn).serve())


class Worker:
    """A client process and its pipe, from the orchestrator's side."""

    def __init__(self, context: Any, number: int) -> None:
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=worker_main, args=(child,), name=f"storm-client-{number}", daemon=True
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def call(self, message: dict[str, Any], within: float) -> dict[str, Any]:
        self.conn.send(message)
        return await self.receive(within)

    async def receive(self, within: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(within):
                return await receive_message(self.conn)
        except EOFError:
            raise RuntimeError(f"client process {self.process.name} died (exit code {self.process.exitcode})") from None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send({"op": "exit"})
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


async def call_all(
    workers: Sequence[Worker], messages: Sequence[dict[str, Any]], within: float
) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(w.call(m, within) for w, m in zip(workers, messages, strict=True))))


# /proc figures of the backing services


def process_cpu(pid: int | None) -> float:
    if pid is None:
        return math.nan
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return math.nan


def backends_cpu(postmaster: int | None, database: str) -> float:
    """CPU of the PostgreSQL backends (children of `postmaster`) connected to `database`: their title is
    "postgres: USER DATABASE HOST(PORT) STATE". A backend that exits meanwhile takes its figure with it (FerretDB
    keeps its connections pooled, so few do)."""
    if postmaster is None:
        return math.nan
    total = 0
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            stat = (process / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[1] != str(postmaster):  # the parent's pid
                continue
            title = (process / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split()
        except (OSError, ValueError, IndexError):
            continue
        if len(title) > 2 and title[0] == "postgres:" and title[2] == database:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Services:
    ferretdb: int | None
    ferretdb_backend: str
    postgresql: int | None
    postgresql_database: str
    redis: int | None

    @classmethod
    def find(cls, mongodb_url: str, redis_url: str) -> Services:
        ferretdb = pid_listening_on(urlsplit(mongodb_url).port or 27017)
        backend, postgresql, database = "SQLite", None, ""
        if ferretdb is not None:
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{ferretdb}/cmdline").read_bytes().decode(errors="replace").split("\0")
                if "postgresql" in argv:
                    backend = "PostgreSQL"
                    url = urlsplit(next((arg for arg in argv if arg.startswith("postgres://")), ""))
                    postgresql, database = pid_listening_on(url.port or 5432), url.path.lstrip("/")
        redis = pid_listening_on(urlsplit(redis_url).port or 6379)
        return cls(ferretdb, backend, postgresql, database, redis)

    def cpu(self) -> dict[str, float]:
        figures = {"ferretdb": process_cpu(self.ferretdb), "redis": process_cpu(self.redis)}
        if self.postgresql is not None:
            figures["postgresql"] = backends_cpu(self.postgresql, self.postgresql_database)
        return figures


# The profile


class Profiler:
    """py-spy sampling a running process, until stopped; raw (collapsed stacks) output."""

    def __init__(self, pid: int, output: Path, rate: int) -> None:
        executable = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if executable is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.output = output
        # --nonblocking: py-spy reads the stacks without stopping the server for each sample (stopping it made a
        # profiled storm a quarter slower); a sample may rarely be torn, which the aggregate figures absorb.
        argv = [executable, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking", "--format", "raw"]
        argv += ["-o", str(output)]
        self.log = output.with_suffix(".log")
        with self.log.open("wb") as log_file:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short_frame(frame: str) -> str:
    """`function (path:line)` as `function (file after site-packages/ or the project)`, without the line."""
    found = FRAME.match(frame.strip())
    if found is None:
        return frame.strip()
    path = found.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{found.group('function')} ({path})"


def read_profile(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    profile = top_functions(path.read_text(errors="replace"))
    profile["file"] = str(path)
    return profile


def top_functions(raw: str, limit: int = TOP_FUNCTIONS) -> dict[str, Any]:
    """Cumulative (the function anywhere on the stack) and own (on top) samples per function."""
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    samples: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [short_frame(frame) for frame in stack.split(";") if frame.strip()]
        if frames:
            samples.append((frames, int(count_text)))
    # py-spy --nonblocking reads a stack while it changes: a sample that does not start where (nearly) all of them
    # do, at the process's entry point, was torn; it is left out.
    roots: Counter[str] = Counter()
    for frames, count in samples:
        roots[frames[0]] += count
    root = roots.most_common(1)[0][0] if roots else ""
    torn = sum(count for frames, count in samples if frames[0] != root)
    for frames, count in samples:
        if frames[0] != root:
            continue
        total += count
        for name in set(frames):
            cumulative[name] += count
        own[frames[-1]] += count
    # The process's skeleton (the module, main, the event loop's run) is on every stack: not worth a row.
    skeleton = [name for name, count in cumulative.most_common() if count >= 0.995 * total]
    ranked = [(name, count) for name, count in cumulative.most_common() if name not in skeleton]
    return {
        "samples": total,
        "torn": torn,
        "skeleton": skeleton,
        "cumulative": ranked[:limit],
        "own": [(name, count) for name, count in own.most_common(limit)],
    }


# Orchestration


@dataclass
class Figures:
    """One server's storm, as the report and the JSON show it."""

    name: str
    sockets: int
    storm: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    wall: float = math.nan
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    before: dict[str, Any] = field(default_factory=dict)  # tidings only: what happened up to the storm
    profile: dict[str, Any] | None = None
    server_log: dict[str, int] = field(default_factory=dict)  # tidings: WARNING and above, after the restart
    # The server's listen backlog (ss's Send-Q of its listening socket) and the machine's TCP listen-queue counters
    # (TcpExt ListenOverflows, ListenDrops) gained during the storm.
    listen: dict[str, int | None] = field(default_factory=dict)


def listen_backlog_of(port: int) -> int | None:
    """The backlog of whatever listens on 127.0.0.1:port (ss's Send-Q for a listening socket), None without ss."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    found = subprocess.run(
        [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(found[2]) if len(found) > 2 and found[2].isdigit() else None


def count_or_unknown(figures: dict[str, int | None], name: str) -> str:
    value = figures.get(name)
    return "?" if value is None else f"{value:,}"


def listen_counters() -> dict[str, int]:
    """The machine's TcpExt ListenOverflows (a full accept queue) and ListenDrops, from /proc/net/netstat."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {name: int(table.get(name, 0)) for name in ("ListenOverflows", "ListenDrops")}
    return {}


def log_summary(path: Path) -> dict[str, int]:
    """The server's log lines of WARNING and above (JSON lines), counted by level, logger and message start."""
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError), path.open(errors="replace") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                found["(not JSON) " + line.strip()[:80]] += 1
                continue
            if isinstance(entry, dict) and entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                message = str(entry.get("message", "")).splitlines()[0][:80] if entry.get("message") else ""
                found[f"{entry['level']} {entry.get('logger', '')}: {message}"] += 1
    return dict(found)


def split_sockets(sockets: list[tuple[int, int, str]], parts: int) -> list[list[tuple[int, int, str]]]:
    """Contiguous slices, so that a user's sockets stay in one process where they can."""
    size = math.ceil(len(sockets) / parts)
    return [sockets[start : start + size] for start in range(0, len(sockets), size)] or [[]]


def merge(replies: Iterable[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"ready_at": [], "caught_at": []}
    for reply in replies:
        for key, value in reply.items():
            if key == "op":
                continue
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                counter: Counter[str] = Counter(merged.get(key, {}))
                counter.update(value)
                merged[key] = dict(counter)
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


async def run_storm(
    figures: Figures,
    workers: Sequence[Worker],
    plans: Sequence[dict[str, Any]],
    server: ServerProcess,
    services: Services,
    args: argparse.Namespace,
    profiler_output: Path | None = None,
) -> None:
    """Every worker starts its sockets at the same instant; CPU is read from then until the last socket is done."""
    profiler = Profiler(server.pid, profiler_output, args.profile_rate) if profiler_output is not None else None
    try:
        if profiler is not None:
            await asyncio.sleep(2.0)  # py-spy attaches
            profiler.process.poll()
            if profiler.process.returncode is not None:
                raise RuntimeError(f"py-spy ended at once:\n{profiler.log.read_text(errors='replace')}")
        figures.load_before = load_average()
        start_at = time.monotonic() + 1.0
        deadline = start_at + args.timeout
        for worker, plan in zip(workers, plans, strict=True):
            worker.conn.send({**plan, "op": "storm", "start_at": start_at, "deadline": deadline})
        figures.listen = {"backlog": listen_backlog_of(server.port)}
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        server_cpu, service_cpu, listen_before = process_cpu(server.pid), services.cpu(), listen_counters()
        client_cpu = sum(process_cpu(worker.pid) for worker in workers)
        log(f"{figures.name}: the storm of {figures.sockets:,} sockets started")
        done = await asyncio.gather(*(worker.receive(args.timeout + 60) for worker in workers))
        figures.wall = max(message["at"] for message in done) - start_at
        figures.cpu = {
            "server": process_cpu(server.pid) - server_cpu,
            **{name: value - service_cpu[name] for name, value in services.cpu().items()},
            "client": sum(process_cpu(worker.pid) for worker in workers) - client_cpu,
        }
        figures.listen.update({name: value - listen_before[name] for name, value in listen_counters().items()})
        figures.load_after = load_average()
    finally:
        if profiler is not None:
            profiler.stop()
    replies = await asyncio.gather(*(worker.receive(120) for worker in workers))
    figures.storm = merge(replies)
    if profiler is not None and profiler_output is not None:
        figures.profile = await asyncio.to_thread(read_profile, profiler_output)


async def bare_baseline(args: argparse.Namespace, context: Any, log_dir: Path, services: Services) -> Figures:
    sockets = args.users * args.per_user
    figures = Figures("bare aiohttp", sockets)
    server = script_server("bare-ws", Path(__file__).with_name("bare_ws.py"), log_dir, "/health/live")
    workers: list[Worker] = []
    try:
        await server.launch()
        url = f"ws://{HOST}:{server.port}/ws"
        slices = split_sockets([(index, 0, "") for index in range(sockets)], args.client_processes)
        workers = [Worker(context, number) for number in range(len(slices))]
        await call_all(workers, [{"op": "setup", "url": url, "in_band": False, "sockets": s} for s in slices], 60)
        plan = {
            "url": url,
            "visible": {},
            "unread": None,
            "resume": False,
            "concurrency": args.connect_concurrency,
            "retries": args.retries,
            "handshake_timeout": args.handshake_timeout,
            "eligible": None,
        }
        await run_storm(figures, workers, [plan] * len(workers), server, services, args)
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
    return figures


async def seed_users(
    db: Any, env: dict[str, str], users: int, isolation: Isolation
) -> tuple[ObjectId, list[tuple[ObjectId, str]]]:
    """The admin and the users, straight into the database, with one real argon2id hash of PASSWORD."""
    settings = Settings.from_env(env)
    hasher = PasswordHasher(
        time_cost=settings.password_time_cost,
        memory_cost=settings.password_memory_kib,
        parallelism=settings.password_parallelism,
        type=Type.ID,
    )
    seeder = Seeder(db, random.Random(9), hasher.hash(PASSWORD), SEND_BATCH, isolation)
    admin = seeder.user_doc("admin@bench.example.com", "admin", full_name="Bench Admin", is_admin=True)
    await seeder.writer.add(User.Settings.name, admin)
    accounts: list[tuple[ObjectId, str]] = []
    for i in range(users):
        doc = seeder.user_doc(f"storm{i:05d}@bench.example.com", f"storm{i:05d}", full_name=None)
        accounts.append((doc["_id"], doc["email"]))
        await seeder.writer.add(User.Settings.name, doc)
    await seeder.writer.flush()
    return admin["_id"], accounts


async def log_in_all(base: str, emails: Sequence[str], concurrency: int = 16) -> list[str]:
    slots = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(email: str) -> str:
            async with slots:
                for attempt in range(LOGIN_TRIES):
                    try:
                        access, _ = await login(session, base, email)
                        return access
                    except RuntimeError as exc:  # a 503 while the database is busy: set-up, not measured
                        if " 503 " not in str(exc) or attempt == LOGIN_TRIES - 1:
                            raise
                        await asyncio.sleep(1.0 + attempt)
                raise AssertionError("unreachable")

        return list(await asyncio.gather(*(one(email) for email in emails)))


class Sender:
    """The admin's sends through the API: what was acknowledged, by id."""

    def __init__(self, base: str, token: str, user_ids: Sequence[ObjectId]) -> None:
        self.url = f"{base}{API}/notifications"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.user_ids = [str(oid) for oid in user_ids]
        self.ids: list[str] = []
        self.requests = 0
        self.answer_ms: list[float] = []

    async def post(self, session: aiohttp.ClientSession, body: dict[str, Any], expected: int) -> None:
        started = time.perf_counter()
        async with session.post(self.url, json=body, headers=self.headers) as response:
            answer = await response.json()
            if response.status != 201:
                raise RuntimeError(f"POST /notifications: {response.status} {answer}")
        self.answer_ms.append((time.perf_counter() - started) * 1000)
        self.requests += 1
        sent = [item["id"] for item in answer["notifications"]]
        if len(sent) != expected:
            raise RuntimeError(f"POST /notifications stored {len(sent)} notifications, not {expected}")
        self.ids += sent

    async def broadcast(self, session: aiohttp.ClientSession, label: str) -> None:
        body = {"title": f"storm {label}", "body": "Everyone, from the storm benchmark.", "broadcast": True}
        await self.post(session, {**body, "data": {"phase": label}}, 1)

    async def everyone(self, session: aiohttp.ClientSession, label: str) -> None:
        """One notification to every user, SEND_BATCH recipients a request."""
        for start in range(0, len(self.user_ids), SEND_BATCH):
            batch = self.user_ids[start : start + SEND_BATCH]
            body = {"title": f"storm {label}", "body": "For you, from the storm benchmark.", "user_ids": batch}
            await self.post(session, {**body, "data": {"phase": label}}, len(batch))


def schedule(missed: int, broadcasts: int) -> list[str]:
    """The missed sends in order: "t" a notification to everyone, "b" a broadcast, the broadcasts spread among."""
    at = [round((j + 1) * missed / (broadcasts + 1)) for j in range(broadcasts)]
    order: list[str] = []
    for k in range(missed + 1):
        order += ["b"] * at.count(k)
        if k < missed:
            order.append("t")
    return order


async def visible_ids(db: Any, ids: Sequence[str], users: Sequence[ObjectId]) -> dict[int, list[str]]:
    """Per user (by index), the acknowledged notifications it can see, as the database holds them, ascending."""
    index = {str(oid): i for i, oid in enumerate(users)}
    found = db[Notification.Settings.name].find(
        {"_id": {"$in": [ObjectId(nid) for nid in ids]}}, {"_id": 1, "recipient_id": 1}
    )
    targeted: dict[int, list[str]] = {i: [] for i in range(len(users))}
    broadcasts: list[str] = []
    stored = 0
    async for doc in found:
        stored += 1
        recipient = doc.get("recipient_id")
        if recipient is None:
            broadcasts.append(str(doc["_id"]))
        else:
            targeted[index[str(recipient)]].append(str(doc["_id"]))
    if stored != len(ids):
        raise RuntimeError(f"the database holds {stored} of the {len(ids)} notifications the API acknowledged")
    visible: dict[int, list[str]] = {}
    for i, oid in enumerate(users):
        # A broadcast reaches the users who existed when it was sent: ids are ordered by creation.
        visible[i] = sorted(targeted[i] + [nid for nid in broadcasts if nid > str(oid)])
    return visible


async def tidings_storm(
    args: argparse.Namespace, context: Any, log_dir: Path, services: Services, urls: tuple[str, str]
) -> Figures:
    sockets = args.users * args.per_user
    figures = Figures("tidings", sockets)
    isolation = Isolation.new("bench", "storm", mongodb_url=urls[0], redis_url=urls[1])
    extra = {
        "WS_MAX_PER_USER": str(max(args.per_user, Settings.ws_max_per_user)),
        "ACCESS_TOKEN_TTL": str(TOKEN_TTL),
        **dict(args.server_env),
    }
    # The JSON access log on, as a user has it (--server-env ACCESS_LOG=0 turns it off).
    server = tidings_server("tidings-storm", isolation, log_dir, access_log=True, **extra)
    figures.before["server_env"] = extra
    mongo: AsyncMongoClient[Doc] = AsyncMongoClient(isolation.mongodb_url, tz_aware=True)
    workers: list[Worker] = []
    log(f"tidings: database {isolation.db}, Redis prefix {isolation.prefix}")
    try:
        await server.launch()
        db = mongo[isolation.db]
        started = time.monotonic()
        admin_id, accounts = await seed_users(db, server.env, args.users, isolation)
        user_ids = [oid for oid, _ in accounts]
        tokens = await log_in_all(server.url, [email for _, email in accounts])
        async with aiohttp.ClientSession() as session:
            admin_token, _ = await login(session, server.url, "admin@bench.example.com")
        figures.before["seed_and_login_seconds"] = time.monotonic() - started
        log(f"tidings: seeded and logged in {args.users:,} users in {figures.before['seed_and_login_seconds']:.1f} s")
        info = await db.client.admin.command("buildInfo")
        figures.before["ferretdb"] = ferretdb_version(info, services.ferretdb)

        # Before the restart: every socket open and live, each with its newest id.
        url = f"ws://{HOST}:{server.port}{API}/ws"
        everyone = [(index, index // args.per_user, tokens[index // args.per_user]) for index in range(sockets)]
        slices = split_sockets(everyone, args.client_processes)
        workers = [Worker(context, number) for number in range(len(slices))]
        await call_all(
            workers, [{"op": "setup", "url": url, "in_band": args.in_band_auth, "sockets": s} for s in slices], 60
        )
        opened = merge(
            await call_all(
                workers,
                [{"op": "open", "concurrency": args.open_concurrency, "timeout": args.timeout}] * len(workers),
                args.timeout * 4 + 60,
            )
        )
        figures.before["open"] = opened
        log(f"tidings: {opened['opened']:,} sockets open in {opened['seconds']:.1f} s, failures {opened['failures']}")
        sender = Sender(server.url, admin_token, user_ids)
        async with aiohttp.ClientSession() as session:
            await sender.broadcast(session, "before")
            await sender.everyone(session, "before")
        live = merge(
            await call_all(
                workers, [{"op": "await_live", "count": BEFORE, "timeout": LIVE_TIMEOUT}] * len(workers), 300
            )
        )
        visible = await visible_ids(db, sender.ids, user_ids)
        positions = live["positions"]
        wrong_position = sum(1 for _, user, last_id, _ in positions if last_id != visible[user][-1])
        figures.before["live"] = {"sockets": len(positions), "complete": live["complete"], "wrong": wrong_position}
        log(f"tidings: {live['complete']:,} of {len(positions):,} sockets got the {BEFORE} notifications live")

        # The restart: SIGTERM (every socket gets 1001), the same port again.
        stop_started = time.monotonic()
        await asyncio.to_thread(server.stop)
        figures.before["stop_seconds"] = time.monotonic() - stop_started
        figures.before["stop_status"] = server.process.returncode if server.process is not None else None
        closed = merge(await call_all(workers, [{"op": "await_closed", "timeout": CLOSE_TIMEOUT}] * len(workers), 120))
        figures.before["closed"] = closed["ended"]
        server.log.rename(server.log.with_suffix(".before-restart.log"))
        start_started = time.monotonic()
        await server.launch()
        figures.before["start_seconds"] = time.monotonic() - start_started
        log(
            f"tidings: stopped in {figures.before['stop_seconds']:.1f} s (sockets {closed['ended']}), "
            f"started again in {figures.before['start_seconds']:.1f} s"
        )

        # Missed while nobody is connected: stored, delivered to no one.
        before_count, before_requests = len(sender.ids), sender.requests
        sender.answer_ms = []
        send_started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            for step, kind in enumerate(schedule(args.missed, args.broadcasts)):
                if kind == "b":
                    await sender.broadcast(session, f"missed {step}")
                else:
                    await sender.everyone(session, f"missed {step}")
        figures.before["missed"] = {
            "notifications": len(sender.ids) - before_count,
            "requests": sender.requests - before_requests,
            "seconds": time.monotonic() - send_started,
            "answer_p50_ms": percentile(sender.answer_ms, 0.5),
            "answer_max_ms": max(sender.answer_ms, default=math.nan),
        }
        visible = await visible_ids(db, sender.ids, user_ids)
        log(f"tidings: sent {figures.before['missed']['notifications']:,} notifications while nobody was connected")
        eligible = [index for index, _, last_id, _ in positions if last_id]
        plan = {
            "url": url,
            "visible": {str(user): ids for user, ids in visible.items()},
            "unread": {str(user): len(ids) for user, ids in visible.items()},
            "resume": True,
            "concurrency": args.connect_concurrency,
            "retries": args.retries,
            "handshake_timeout": args.handshake_timeout,
            "eligible": eligible,
        }
        figures.sockets = len(eligible)
        profile = log_dir / "storm-profile.txt" if args.profile else None
        await run_storm(figures, workers, [plan] * len(workers), server, services, args, profile)
        figures.server_log = await asyncio.to_thread(log_summary, server.log)
        figures.before["admin_id"] = str(admin_id)
        figures.before["database"] = isolation.db
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
        if args.keep:
            log(f"kept database {isolation.db} and Redis prefix {isolation.prefix} (--keep)")
        else:
            isolation.drop()  # not awaited: a second Ctrl-C cannot cut it short
            log("stopped the server, dropped the database and deleted the Redis keys")
        await mongo.close()
    return figures


# Report


def seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.2f} s"


def spread_cell(values: Sequence[float]) -> str:
    done = [value for value in values if not math.isnan(value)]
    if not done:
        return "-"
    return f"{percentile(done, 0.5):,.2f} / {percentile(done, 0.99):,.2f} / {max(done):,.2f} s"


def all_by(values: Sequence[float]) -> str:
    done = [value for value in values if not math.isnan(value)]
    missing = len(values) - len(done)
    if not values:
        return "-"
    if missing:
        return f"not all: {missing:,} never (the last of the others at {max(done, default=math.nan):,.2f} s)"
    return f"**{max(done):,.2f} s**"


def within(values: Sequence[float], limit: float) -> str:
    return f"{sum(1 for value in values if value <= limit):,} of {len(values):,}"


def counts_cell(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n:,}" for reason, n in sorted(counts.items(), key=lambda item: -item[1])) or "0"


def cpu_cell(figures: Figures, name: str) -> str:
    value = figures.cpu.get(name, math.nan)
    if math.isnan(value) or figures.wall <= 0:
        return "-"
    return f"{value:,.1f} s ({value / figures.wall:.0%} of a core)"


def report(meta: dict[str, Any], results: list[Figures]) -> str:
    tidings = next((r for r in results if r.name == "tidings"), None)
    lines = [
        f"## Reconnect storm: {meta['sockets']:,} sockets ({meta['users']:,} users x {meta['per_user']}) "
        "on one server process",
        "",
        f"- {meta['date']}; {meta['machine']}",
        f"- Python {meta['python']}; FerretDB {meta['ferretdb']} ({meta['backend']} backend) and Redis on 127.0.0.1, "
        f"{meta['services']}",
        f"- server: one `tidings serve` process (uvloop); {meta['server']}",
        f"- client: {meta['client_processes']} process(es) of uvloop + aiohttp (connector limit lifted); "
        f"connects {meta['connect']}; authentication by {meta['auth']}; up to {meta['retries']} retries a socket "
        f"(full jitter backoff from {BACKOFF_BASE:g} s, at most {BACKOFF_CAP:g} s); "
        + (
            f"an attempt's TCP connect and upgrade time out after {meta['handshake_timeout']:g} s; "
            if meta["handshake_timeout"]
            else "no timeout on an attempt's connect and upgrade; "
        )
        + f"deadline {meta['timeout']:g} s",
    ]
    if tidings is not None:
        before = tidings.before
        opened, live, missed = before.get("open", {}), before.get("live", {}), before.get("missed", {})
        if opened:
            lines.append(
                f"- before the restart: {opened['opened']:,} sockets opened in {opened['seconds']:.1f} s "
                f"({meta['open_concurrency']} at a time; failures: {counts_cell(opened['failures'])}); "
                f"{live.get('complete', 0):,} of them got the {BEFORE} notifications live (a broadcast, then one "
                f"to every user), {live.get('wrong', 0):,} with a newest id other than the database's"
            )
        if "closed" in before:
            lines.append(
                f"- the restart: SIGTERM, stopped in {before['stop_seconds']:.1f} s (exit status "
                f"{before['stop_status']}; the sockets ended: {counts_cell(before['closed'])}), started again on "
                f"the same port in {before['start_seconds']:.1f} s"
            )
        if missed:
            lines.append(
                f"- missed while nobody was connected: {meta['missed']} notifications to every user and "
                f"{meta['broadcasts']} broadcasts, {missed['notifications']:,} stored, {missed['requests']} POST "
                f"/api/v1/notifications (up to {SEND_BATCH:,} user_ids each) in {missed['seconds']:.1f} s"
            )
    lines += ["", "| | " + " | ".join(r.name for r in results) + " |", "| --- |" + " --- |" * len(results)]

    def row(label: str, cells: Iterable[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("sockets in the storm", (f"{r.sockets:,}" for r in results))
    row(
        "replayed per socket (expected)",
        (f"{r.storm.get('expected', 0) / max(r.sockets, 1):g}" if r.name == "tidings" else "-" for r in results),
    )
    row("every socket ready after", (all_by(r.storm.get("ready_at", [])) for r in results))
    row("ready p50 / p99 / max", (spread_cell(r.storm.get("ready_at", [])) for r in results))
    row("every socket caught up after", (all_by(r.storm.get("caught_at", [])) for r in results))
    row("caught up p50 / p99 / max", (spread_cell(r.storm.get("caught_at", [])) for r in results))
    row(f"ready within {TARGET_SECONDS:g} s", (within(r.storm.get("ready_at", []), TARGET_SECONDS) for r in results))
    row(
        f"caught up within {TARGET_SECONDS:g} s",
        (within(r.storm.get("caught_at", []), TARGET_SECONDS) for r in results),
    )
    row("how the sockets ended", (counts_cell(r.storm.get("statuses", {})) for r in results))
    row("attempts ended by (count)", (counts_cell(r.storm.get("failures", {})) for r in results))
    row(
        "attempts / sockets that retried",
        (f"{r.storm.get('attempts', 0):,} / {r.storm.get('retried', 0):,}" for r in results),
    )
    row(
        "not delivered by the deadline: to sockets that were ready / that never were",
        (f"{r.storm.get('late_ready', 0):,} / {r.storm.get('late_never_ready', 0):,}" for r in results),
    )
    row(
        "lost (skipped: a newer one arrived) / duplicated / out of order / unexpected",
        (
            f"{r.storm.get('lost', 0):,} / {r.storm.get('duplicated', 0):,} / {r.storm.get('out_of_order', 0):,} / "
            f"{r.storm.get('unexpected', 0):,}"
            for r in results
        ),
    )
    row("other messages received", (counts_cell(r.storm.get("messages", {})) or "0" for r in results))
    row(
        '"ready" with a wrong unread count',
        (f"{r.storm.get('unread_wrong', 0):,}" if r.name == "tidings" else "-" for r in results),
    )
    row(
        "server log after the restart: WARNING and above",
        (counts_cell(r.server_log) if r.name == "tidings" else "-" for r in results),
    )
    row("storm wall time (until the last socket was done)", (seconds(r.wall) for r in results))
    row("server's listen backlog (ss Send-Q)", (count_or_unknown(r.listen, "backlog") for r in results))
    row(
        "accept queue overflows / listen drops during the storm (whole machine)",
        (
            f"{count_or_unknown(r.listen, 'ListenOverflows')} / {count_or_unknown(r.listen, 'ListenDrops')}"
            for r in results
        ),
    )
    labels = {
        "server": "server",
        "ferretdb": "FerretDB",
        "postgresql": "PostgreSQL (the backends of its database)",
        "redis": "Redis",
        "client": "client (all its processes)",
    }
    for name, label in labels.items():
        if any(name in r.cpu for r in results):
            row(f"CPU during the storm: {label}", (cpu_cell(r, name) for r in results))
    row("load average before / after", (f"{fmt_load(r.load_before)} / {fmt_load(r.load_after)}" for r in results))
    if tidings is not None and tidings.storm:
        caught = tidings.storm.get("caught_at", [])
        met = (
            bool(caught)
            and all(not math.isnan(v) and v <= TARGET_SECONDS for v in caught)
            and tidings.storm.get("lost", 1) == 0
            and tidings.storm.get("late_ready", 1) + tidings.storm.get("late_never_ready", 1) == 0
        )
        lines += [
            "",
            f"Target (issue 9): every socket ready and caught up within {TARGET_SECONDS:g} s, 0 lost: "
            f"**{'met' if met else 'MISSED'}**.",
        ]
        if tidings.profile is not None:
            profile = tidings.profile
            total = max(profile["samples"], 1)
            lines += [
                "",
                f"Where the server's CPU went during the storm: py-spy, {meta['profile_rate']} samples/s of the "
                f"server's busy threads, {profile['samples']:,} samples (and {profile.get('torn', 0):,} torn ones left "
                f"out; {profile['file']}). Cumulative: the "
                "function anywhere on the stack; leaving out those on every stack: "
                + ", ".join(f"`{name}`" for name in profile.get("skeleton", []))
                + ".",
                "",
                "| # | function (file) | cumulative | own |",
                "| --- | --- | --- | --- |",
            ]
            own = dict(profile["own"])
            for rank, (name, count) in enumerate(profile["cumulative"], 1):
                own_cell = f"{own[name] / total:.1%}" if name in own else ""
                lines.append(f"| {rank} | `{name}` | {count / total:.1%} | {own_cell} |")
            lines += ["", "Most own samples (on top of the stack):", "", "| function (file) | own |", "| --- | --- |"]
            for name, count in profile["own"]:
                lines.append(f"| `{name}` | {count / total:.1%} |")
    return "\n".join(lines)


def server_description(args: argparse.Namespace) -> str:
    defaults = Settings()
    given = dict(args.server_env)
    shown = {
        "REPLAY_CONCURRENCY": str(defaults.replay_concurrency),
        "MONGODB_TIMEOUT": f"{defaults.mongodb_timeout:g} s",
        "LISTEN_BACKLOG": str(defaults.listen_backlog),
        **given,
    }
    return (
        f"WS_MAX_PER_USER={max(args.per_user, defaults.ws_max_per_user)}, ACCESS_TOKEN_TTL={TOKEN_TTL} (default "
        f"{defaults.access_token_ttl}), cheap password hashing and login rate limits lifted (set-up only); "
        + ", ".join(f"{name}={value}" for name, value in shown.items())
        + (" (--server-env)" if given else "")
        + ("" if "ACCESS_LOG" in given else ", ACCESS_LOG=1 (the JSON access log, as by default)")
        + " and every other setting at its default"
    )


def server_setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.isupper():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def results_json(meta: dict[str, Any], results: list[Figures]) -> dict[str, Any]:
    def clean(values: Sequence[float]) -> list[float | None]:
        return [None if math.isnan(value) else round(value, 4) for value in values]

    out = []
    for r in results:
        storm = dict(r.storm)
        ready, caught = storm.pop("ready_at", []), storm.pop("caught_at", [])
        done_ready = [v for v in ready if not math.isnan(v)]
        done_caught = [v for v in caught if not math.isnan(v)]
        out.append(
            {
                "server": r.name,
                "sockets": r.sockets,
                "all_ready_s": max(done_ready) if done_ready and len(done_ready) == len(ready) else None,
                "all_caught_up_s": max(done_caught) if done_caught and len(done_caught) == len(caught) else None,
                "ready_s": {
                    "p50": percentile(done_ready, 0.5) if done_ready else None,
                    "p99": percentile(done_ready, 0.99) if done_ready else None,
                    "max": max(done_ready, default=None),
                    "within_target": sum(1 for v in done_ready if v <= TARGET_SECONDS),
                },
                "caught_up_s": {
                    "p50": percentile(done_caught, 0.5) if done_caught else None,
                    "p99": percentile(done_caught, 0.99) if done_caught else None,
                    "max": max(done_caught, default=None),
                    "within_target": sum(1 for v in done_caught if v <= TARGET_SECONDS),
                },
                **storm,
                "wall_s": r.wall,
                "cpu_s": {name: None if math.isnan(value) else value for name, value in r.cpu.items()},
                "load_before": r.load_before,
                "load_after": r.load_after,
                "before": r.before,
                "profile": r.profile,
                "server_log": r.server_log,
                "listen": r.listen,
                "per_socket": {"ready_s": clean(ready), "caught_up_s": clean(caught)},
            }
        )
    return {"meta": meta, "results": out}


# The run


async def run(args: argparse.Namespace) -> int:
    return await run_interruptible(lambda: run_all(args))


def stop_services(services: Sequence[FerretDBProcess | RedisProcess]) -> None:
    for service in services:
        if isinstance(service, FerretDBProcess):
            service.close()  # also drops its PostgreSQL database
        else:
            service.stop()


async def run_all(args: argparse.Namespace) -> int:
    sockets = args.users * args.per_user
    per_process = math.ceil(sockets / args.client_processes)
    limit = raise_nofile(sockets + 2048)  # the server's; the client processes inherit it too
    if limit < sockets + 512 or limit < per_process + 512:
        raise SystemExit(f"the open-file limit ({limit}) is too low for {sockets:,} sockets")
    log_dir = bench_log_dir()
    log(f"logs in {log_dir}")
    context = multiprocessing.get_context("spawn")
    own: list[FerretDBProcess | RedisProcess] = []
    urls = (MONGODB_URL, REDIS_URL)
    if args.services == "own":
        ferretdb = FerretDBProcess(log_dir, log_dir / "ferretdb-data", name="storm-ferretdb", backend=args.backend)
        redis = RedisProcess(log_dir, name="storm-redis")
        own += [ferretdb, redis]
        try:
            for service in own:
                await asyncio.to_thread(service.start)
        except BaseException:
            stop_services(own)
            raise
        urls = (ferretdb.url, redis.url)
        log(f"own services: FerretDB ({args.backend}) at {ferretdb.url}, Redis at {redis.url}")
    services = Services.find(*urls)
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "ferretdb": "?",
        "backend": services.ferretdb_backend,
        "services": (
            (
                "of this run's own"
                + (" (its database in the project's PostgreSQL cluster)" if services.postgresql else "")
            )
            if args.services == "own"
            else "shared (the project's)"
        ),
        "server": server_description(args),
        "users": args.users,
        "per_user": args.per_user,
        "sockets": sockets,
        "missed": args.missed,
        "broadcasts": args.broadcasts,
        "client_processes": args.client_processes,
        "connect": "all at once" if args.connect_concurrency == 0 else f"{args.connect_concurrency} at a time",
        "open_concurrency": args.open_concurrency,
        "auth": "a first message {type: auth}" if args.in_band_auth else "an Authorization header",
        "retries": args.retries,
        "handshake_timeout": args.handshake_timeout,
        "timeout": args.timeout,
        "profile_rate": args.profile_rate,
        "pids": {"ferretdb": services.ferretdb, "postgresql": services.postgresql, "redis": services.redis},
        "log_dir": str(log_dir),
    }
    results: list[Figures] = []
    complete = False
    try:
        if args.server in ("bare", "both"):
            log(f"bare aiohttp: a storm of {sockets:,} fresh connects")
            results.append(await bare_baseline(args, context, log_dir, services))
        if args.server in ("tidings", "both"):
            tidings = await tidings_storm(args, context, log_dir, services, urls)
            meta["ferretdb"] = tidings.before.get("ferretdb", "?")
            results.append(tidings)
        complete = True
    finally:
        if results:
            print(report(meta, results) + ("" if complete else "\n\n(incomplete: the run ended early)"))
            if args.json:
                document = json.dumps(results_json(meta, results), indent=2) + "\n"
                await asyncio.to_thread(Path(args.json).write_text, document)
                log(f"wrote {args.json}")
        stop_services(own)
    ok = all(
        r.storm.get("lost", 1) == 0
        and r.storm.get("duplicated", 1) == 0
        and r.storm.get("out_of_order", 1) == 0
        and r.storm.get("statuses", {}).get("caught up", 0) == r.sockets
        for r in results
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=10, help="sockets per user")
    parser.add_argument("--missed", type=int, default=5, help="notifications to every user while it is away")
    parser.add_argument("--broadcasts", type=int, default=2, help="broadcasts among the missed notifications")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the storm may take (and each open)")
    parser.add_argument(
        "--connect-concurrency", type=int, default=0, help="sockets between connect and ready at once (0: all)"
    )
    parser.add_argument(
        "--open-concurrency", type=int, default=200, help="sockets being opened at once before the restart"
    )
    parser.add_argument("--retries", type=int, default=3, help="reconnects a socket may make after a failed attempt")
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=0.0,
        help="seconds an attempt's TCP connect and HTTP upgrade may take before the client retries (0: no limit)",
    )
    parser.add_argument("--client-processes", type=int, default=1, help="processes that hold the client sockets")
    parser.add_argument("--in-band-auth", action="store_true", help='authenticate with a first {"type": "auth"}')
    parser.add_argument(
        "--server", choices=["tidings", "bare", "both"], default="both", help="both: the bare aiohttp baseline first"
    )
    parser.add_argument(
        "--services",
        choices=["shared", "own"],
        default="shared",
        help="shared: MONGODB_URL and REDIS_URL (the project's); own: a FerretDB and a redis-server of this run's "
        "own, so that their CPU is this run's alone",
    )
    parser.add_argument(
        "--backend",
        choices=["postgresql", "sqlite"],
        default=FERRETDB_BACKEND,
        help="with --services own: FerretDB's storage (default FERRETDB_BACKEND, else postgresql: a database of the "
        "run's own in the project's PostgreSQL cluster, which scripts/services.sh runs)",
    )
    parser.add_argument("--profile", action="store_true", help="sample the server with py-spy during the storm")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the database and the Redis keys")
    parser.add_argument(
        "--server-env",
        type=server_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the tidings server (repeatable), e.g. REPLAY_CONCURRENCY=8",
    )
    args = parser.parse_args()
    if args.users < 1 or args.per_user < 1 or args.client_processes < 1 or args.missed < 0 or args.broadcasts < 0:
        parser.error("--users, --per-user and --client-processes must be at least 1, --missed and --broadcasts >= 0")
    if args.missed + args.broadcasts == 0:
        parser.error("nothing to miss: --missed or --broadcasts must be at least 1")
    sys.exit(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
