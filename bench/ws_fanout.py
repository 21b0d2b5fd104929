"""WebSocket fan-out on one server process: memory per idle socket, CPU per delivery, loss and latency.

    .venv/bin/python bench/ws_fanout.py                  # 1,000 sockets, broadcasts at a fixed rate
    .venv/bin/python bench/ws_fanout.py --idle 10000     # 10,000 idle authenticated sockets, held, then pinged
    options: --server tidings|bare|both (default both) --sockets N --per-user K --rate R --broadcasts B --hold S

For each server (bench/bare_ws.py, the bare aiohttp send loop, and a fresh `tidings serve` process with its own
database and Redis prefix), this script:

1. (tidings) creates an admin with `tidings create-admin` (password on standard input), registers ceil(N / K)
   users through the API and logs everyone in;
2. opens `--warmup` sockets (as many at once as later, so that the MongoDB pool and buffers are grown) and reads
   the server's VmRSS, then opens the other sockets (K per user, each authenticated by an `Authorization: Bearer`
   header and answered with "ready") and reads VmRSS 2 s later ("connected", the issue's method) and again
   `--settle` seconds after the last connect (default 30: past the server's first heartbeat at 25 s, which makes
   aiohttp keep about 3 KiB more per socket, bare or not; "steady"). RSS per idle socket = (reading - before) /
   sockets opened after the warm-up;
3. fan-out mode: sends B broadcasts at R per second through the API (POST /api/v1/notifications with
   broadcast: true as the admin; POST /broadcast on the bare server), each carrying its sequence number and send
   time in `data`; every socket must receive every broadcast exactly once. Reports deliveries/s, lost and
   duplicated deliveries, send-to-receive latency p50/p99 (measured in this process; both ends share the clock)
   and the server's CPU time (utime + stime from /proc/PID/stat) per delivery over the whole phase, API requests
   and database writes included;
   idle mode: holds the sockets for `--hold` seconds (past the server's 25 s heartbeat), then sends a ping on
   every socket and expects every pong, with no socket closed or failed along the way.

Everything goes to 127.0.0.1; the database, the Redis keys and the processes are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    API,
    bench_log_dir,
    cpu_seconds,
    create_admin,
    load_average,
    log,
    login,
    percentile,
    register_many,
    rss_kib,
    script_server,
    tidings_server,
)
from tests.launcher import (
    HOST,
    Isolation,
    ServerProcess,
    raise_nofile,
)

TARGET_CPU_US = 30.0
TARGET_RSS_KIB = 20.0
CONNECT_TIMEOUT = 60.0
DRAIN_TIMEOUT = 15.0


@dataclass
class Stats:
    """What every socket's reader records; shared by all the readers of one run."""

    broadcasts: int
    expected: int = 0
    received: int = 0
    pongs: int = 0
    first_send: float = 0.0
    last_receive: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    closed: dict[str, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    pinged: asyncio.Event = field(default_factory=asyncio.Event)
    sockets: int = 0


class Client:
    """One client socket and the broadcasts it got, by sequence number."""

    __slots__ = ("counts", "task", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, broadcasts: int) -> None:
        self.ws = ws
        self.counts = bytearray(broadcasts)
        self.task: asyncio.Task[None] | None = None

    async def read(self, stats: Stats) -> None:
        counts = self.counts
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            body = json.loads(message.data)
            kind = body.get("type")
            if kind == "notification":
                now = time.time()
                data = body["notification"]["data"]
                seq = data["seq"]
                if counts[seq] < 255:
                    counts[seq] += 1
                stats.latencies.append(now - data["sent"])
                stats.received += 1
                stats.last_receive = now
                if stats.received >= stats.expected:
                    stats.done.set()
            elif kind == "pong":
                stats.pongs += 1
                if stats.pongs >= stats.sockets:
                    stats.pinged.set()
        reason = f"close {self.ws.close_code}" if self.ws.close_code is not None else f"error {self.ws.exception()}"
        stats.closed[reason] = stats.closed.get(reason, 0) + 1


@dataclass
class Target:
    """A running server to measure, and how to reach it."""

    name: str
    server: ServerProcess
    ws_url: str
    broadcast_url: str
    admin_token: str
    tokens: list[str]  # one per socket, in connection order
    isolation: Isolation | None = None


async def start_bare(log_dir: Path, sockets: int) -> Target:
    server = script_server("bare-ws", Path(__file__).with_name("bare_ws.py"), log_dir, "/health/live")
    await server.launch()
    ws_url, broadcast_url = f"ws://{HOST}:{server.port}/ws", f"{server.url}/broadcast"
    return Target("bare aiohttp", server, ws_url, broadcast_url, "unused", ["unused"] * sockets)


async def start_tidings(log_dir: Path, sockets: int, per_user: int) -> Target:
    isolation = Isolation.new("bench", "ws")
    server = tidings_server("tidings-ws", isolation, log_dir, WS_MAX_PER_USER=str(max(per_user, 1)))
    target = Target("tidings", server, "", "", "", [], isolation)
    try:
        await server.launch()
        target.ws_url = f"ws://{HOST}:{server.port}{API}/ws"
        target.broadcast_url = f"{server.url}{API}/notifications"
        admin_email = "admin@bench.example.com"
        await create_admin(server.env, admin_email, "admin")
        async with aiohttp.ClientSession() as session:
            target.admin_token, _ = await login(session, server.url, admin_email)
        users = math.ceil(sockets / per_user)
        started = time.monotonic()
        members = await register_many(server.url, [f"u{i:05d}" for i in range(users)])
        log(f"registered and logged in {users} users in {time.monotonic() - started:.1f}s")
    except BaseException:
        server.stop()
        await isolation.adrop()
        raise
    target.tokens = [members[i // per_user].access_token for i in range(sockets)]
    return target


async def open_sockets(
    session: aiohttp.ClientSession, target: Target, tokens: list[str], stats: Stats, concurrency: int
) -> tuple[list[Client], list[str]]:
    """Open one socket per token, each answered with "ready"; return the clients and the failures."""
    semaphore = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(token: str) -> Client | None:
        async with semaphore:
            try:
                ws = await session.ws_connect(
                    target.ws_url, headers={"Authorization": f"Bearer {token}"}, autoping=True, max_msg_size=0
                )
                ready = await ws.receive(timeout=CONNECT_TIMEOUT)
                if ready.type is not aiohttp.WSMsgType.TEXT or json.loads(ready.data).get("type") != "ready":
                    raise RuntimeError(f"expected ready, got {ready.type} {ready.data!r}")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return None
            client = Client(ws, stats.broadcasts)
            client.task = asyncio.create_task(client.read(stats))
            return client

    results = await asyncio.gather(*(one(token) for token in tokens))
    return [client for client in results if client is not None], failures


async def settled_rss(pid: int, seconds: float = 2.0) -> int:
    await asyncio.sleep(seconds)
    return rss_kib(pid)


async def broadcast_phase(
    session: aiohttp.ClientSession, target: Target, clients: list[Client], stats: Stats, rate: float
) -> dict[str, Any]:
    stats.expected = stats.broadcasts * len(clients)
    headers = {"Authorization": f"Bearer {target.admin_token}"}
    statuses: dict[int, int] = {}
    answer_ms: list[float] = []

    async def send(seq: int) -> None:
        body: dict[str, Any] = {"title": "bench", "body": f"broadcast {seq}", "data": {"seq": seq, "sent": time.time()}}
        if target.name == "tidings":
            body["broadcast"] = True
        sent = time.monotonic()
        async with session.post(target.broadcast_url, json=body, headers=headers) as response:
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
        answer_ms.append((time.monotonic() - sent) * 1000)

    cpu_before = cpu_seconds(target.server.pid)
    client_before = time.process_time()
    stats.first_send = time.time()
    started = time.monotonic()
    sends = []
    for seq in range(stats.broadcasts):
        delay = started + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sends.append(asyncio.create_task(send(seq)))
    await asyncio.wait_for(asyncio.gather(*sends), timeout=60)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stats.done.wait(), timeout=DRAIN_TIMEOUT)
    cpu_used = cpu_seconds(target.server.pid) - cpu_before
    client_used = time.process_time() - client_before
    lost = duplicated = 0
    for client in clients:
        for count in client.counts:
            if count == 0:
                lost += 1
            elif count > 1:
                duplicated += count - 1
    unique = stats.received - duplicated
    span = max(stats.last_receive - stats.first_send, 1e-9)
    latencies_ms = [value * 1000 for value in stats.latencies]
    return {
        "deliveries": stats.received,
        "deliveries_per_s": stats.received / span,
        "lost": lost,
        "duplicated": duplicated,
        "p50_ms": percentile(latencies_ms, 0.50),
        "p99_ms": percentile(latencies_ms, 0.99),
        "max_ms": max(latencies_ms, default=float("nan")),
        "cpu_us_per_delivery": cpu_used / max(unique, 1) * 1e6,
        "server_cpu_share": cpu_used / span,
        "client_cpu_share": client_used / span,
        "statuses": statuses,
        "answer_p50_ms": percentile(answer_ms, 0.50),
        "answer_p99_ms": percentile(answer_ms, 0.99),
    }


async def idle_phase(clients: list[Client], stats: Stats, hold: float) -> dict[str, Any]:
    log(f"holding {len(clients)} sockets for {hold:.0f}s")
    await asyncio.sleep(hold)
    open_before_ping = sum(1 for client in clients if not client.ws.closed)
    stats.sockets = open_before_ping
    for client in clients:
        if not client.ws.closed:
            await client.ws.send_str('{"type": "ping"}')
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stats.pinged.wait(), timeout=60)
    return {"open_after_hold": open_before_ping, "pongs": stats.pongs}


async def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    pid = target.server.pid
    stats = Stats(broadcasts=0 if args.idle else args.broadcasts)
    sockets = args.idle or args.sockets
    # The warm-up opens as many sockets at once as the measured part does, so that what grows with concurrent
    # connects (MongoDB connection pool, buffers) is in the baseline and not charged to idle sockets.
    warmup = min(max(args.warmup, args.concurrency), sockets // 2)
    result: dict[str, Any] = {"server": target.name, "sockets": sockets}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        clients, failures = await open_sockets(session, target, target.tokens[:warmup], stats, args.concurrency)
        rss_start = await settled_rss(pid)
        started = time.monotonic()
        more, more_failures = await open_sockets(session, target, target.tokens[warmup:], stats, args.concurrency)
        connect_seconds = time.monotonic() - started
        clients += more
        failures += more_failures
        rss_end = await settled_rss(pid)
        # Again once every socket had its first server heartbeat (25 s): what an idle socket holds for good.
        rss_steady = await settled_rss(pid, max(0.0, args.settle - 2.0))
        target.server.check_alive()
        opened = len(more)
        result.update(
            {
                "connected": len(clients),
                "connect_failures": len(failures),
                "connect_seconds": connect_seconds,
                "rss_before_kib": rss_start,
                "rss_after_kib": rss_end,
                "rss_steady_kib": rss_steady,
                "rss_per_socket_kib": (rss_end - rss_start) / max(opened, 1),
                "rss_steady_per_socket_kib": (rss_steady - rss_start) / max(opened, 1),
            }
        )
        if failures:
            result["first_failures"] = sorted(set(failures))[:5]
        log(
            f"{target.name}: {len(clients)} sockets open ({len(failures)} failed) in {connect_seconds:.1f}s; "
            f"RSS {rss_start} -> {rss_end} KiB"
        )
        if args.idle:
            result.update(await idle_phase(clients, stats, args.hold))
        else:
            result.update(await broadcast_phase(session, target, clients, stats, args.rate))
        result["closed_by_server"] = dict(stats.closed)
        for client in clients:
            await client.ws.close()
        tasks = [client.task for client in clients if client.task is not None]
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> bool:
    load = load_average()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    ok = True
    for result in results:
        tidings = result["server"] == "tidings"
        print(f"\n{result['server']} ({result['sockets']} sockets, {args.per_user if tidings else '-'} per user)")
        print(
            f"  connected {result['connected']}, failed {result['connect_failures']}, "
            f"in {result['connect_seconds']:.1f}s"
        )
        if "first_failures" in result:
            print(f"  failures: {result['first_failures']}")
        rss = result["rss_per_socket_kib"]
        readings = f"{result['rss_before_kib']} -> {result['rss_after_kib']} KiB"
        verdict = f"  target <= {TARGET_RSS_KIB:.0f}: {'met' if rss <= TARGET_RSS_KIB else 'MISSED'}" if tidings else ""
        print(f"  RSS per idle socket, connected: {rss:.1f} KiB ({readings}){verdict}")
        print(
            f"  RSS per idle socket, steady ({args.settle:.0f} s, after a heartbeat): "
            f"{result['rss_steady_per_socket_kib']:.1f} KiB (-> {result['rss_steady_kib']} KiB)"
        )
        errors = result["connect_failures"] + sum(result["closed_by_server"].values())
        if args.idle:
            print(f"  still open after {args.hold:.0f}s: {result['open_after_hold']}, pongs: {result['pongs']}")
            errors += result["connected"] - result["pongs"]
        else:
            cpu = result["cpu_us_per_delivery"]
            print(
                f"  {args.broadcasts} broadcasts at {args.rate:g}/s: {result['deliveries']} deliveries, "
                f"{result['deliveries_per_s']:.0f}/s, lost {result['lost']}, duplicated {result['duplicated']}, "
                f"API answers {result['statuses']}"
            )
            print(
                f"  latency send->receive p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                f"max {result['max_ms']:.1f} ms; API answer p50 {result['answer_p50_ms']:.1f} ms, "
                f"p99 {result['answer_p99_ms']:.1f} ms"
            )
            busy = f"server {result['server_cpu_share']:.0%}, bench client {result['client_cpu_share']:.0%} of a core"
            met = "met" if cpu <= TARGET_CPU_US else "MISSED"
            verdict = f"  target <= {TARGET_CPU_US:.0f}: {met}" if tidings else ""
            print(f"  server CPU per delivery: {cpu:.1f} us (busy during the phase: {busy}){verdict}")
            errors += result["lost"] + result["duplicated"]
        if result["closed_by_server"]:
            print(f"  sockets closed before the end: {result['closed_by_server']}")
        print(f"  errors: {errors}")
        ok = ok and errors == 0
    return ok


async def run(args: argparse.Namespace) -> int:
    sockets = args.idle or args.sockets
    limit = raise_nofile(sockets + 2048)
    if limit < sockets + 512:
        raise SystemExit(f"the open-file limit ({limit}) is too low for {sockets} sockets")
    log_dir = bench_log_dir()
    log(f"logs in {log_dir}")
    names = ["bare", "tidings"] if args.server == "both" else [args.server]
    results: list[dict[str, Any]] = []
    for name in names:
        target: Target | None = None
        try:
            if name == "bare":
                target = await start_bare(log_dir, sockets)
            else:
                target = await start_tidings(log_dir, sockets, args.per_user)
            results.append(await measure(target, args))
        finally:
            if target is not None:
                target.server.stop()
                if target.isolation is not None:
                    await target.isolation.adrop()
    log("stopped the servers, dropped the database and deleted the Redis keys")
    return 0 if report(results, args) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["tidings", "bare", "both"], default="both")
    parser.add_argument("--sockets", type=int, default=1000, help="sockets in fan-out mode")
    parser.add_argument("--idle", type=int, default=0, help="idle mode with this many sockets")
    parser.add_argument("--per-user", type=int, default=0, help="sockets per user (default: 1, or 10 with --idle)")
    parser.add_argument("--rate", type=float, default=10.0, help="broadcasts per second")
    parser.add_argument("--broadcasts", type=int, default=100)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to hold idle sockets")
    parser.add_argument(
        "--warmup", type=int, default=50, help="sockets opened before the first RSS reading (at least --concurrency)"
    )
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds after the last connect before reading RSS (> heartbeat)"
    )
    parser.add_argument("--concurrency", type=int, default=50, help="sockets being opened at once")
    args = parser.parse_args()
    if args.per_user <= 0:
        args.per_user = 10 if args.idle else 1
    sys.exit(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
