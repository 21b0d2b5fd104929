"""Per-user routing against the global channel: what each receiving process spends on targeted sends.

    .venv/bin/python bench/routing.py                      # 4 receivers, both routings, briefly
    options: --processes P --users-per-process U --posts N --per-post K --rate R --routing user global

For each routing (REDIS_ROUTING=user, the default, and global, one channel every process holds), this script starts a
redis-server of its own (so that INFO commandstats counts only this run), P receiving `tidings serve` processes and
one sending process on a fresh database, registers P x U users, and opens one socket per user on its receiver (user
i on process i mod P). Then it measures each receiver's CPU time (utime + stime from /proc) while idle for the same
duration, sends N posts of K targeted notifications each (K distinct random recipients) through the sender at R posts
per second, waits until every socket got every notification meant for it (0 lost, 0 duplicated), and reports per
receiver: the CPU spent above idle, the messages its broker received by kind (the gauge's routing report), and per
run: Redis commands per notification (PUBLISH, SUBSCRIBE...), the receivers' RSS growth per socket, and CPU per
delivered notification summed over the receivers.

Everything goes to 127.0.0.1; the database, the processes and the Redis are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    API,
    bench_log_dir,
    cpu_seconds,
    create_admin,
    log,
    login,
    register_many,
    rss_kib,
    run_interruptible,
    tidings_server,
)
from tests.launcher import Isolation, RedisProcess, ServerProcess, wait_ready

REPORT_INTERVAL = 0.5


async def read_until_done(ws: aiohttp.ClientWebSocketResponse, expected: int, got: Counter[str]) -> None:
    while sum(got.values()) < expected:
        msg = await ws.receive(timeout=60)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"socket ended: {msg.type}")
        data = json.loads(msg.data)
        if data.get("type") == "notification":
            got[data["notification"]["id"]] += 1


def routing_reports(redis_url: str, prefix: str) -> dict[int, dict[str, Any]]:
    with contextlib.closing(redis.Redis.from_url(redis_url, socket_timeout=2)) as client:
        entries = client.hgetall(f"{prefix}ws:routing")
    return {report["pid"]: report for report in (json.loads(value) for value in entries.values())}


def command_stats(redis_url: str) -> dict[str, int]:
    with contextlib.closing(redis.Redis.from_url(redis_url, socket_timeout=2)) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def one_run(args: argparse.Namespace, routing: str, log_dir: Path) -> dict[str, Any]:
    redis_server = RedisProcess(log_dir, name=f"redis-{routing}")
    await asyncio.to_thread(redis_server.start)
    isolation = Isolation.new("bench", f"routing_{routing}", redis_url=redis_server.url)
    interval = str(REPORT_INTERVAL)

    def make_server(name: str) -> ServerProcess:
        return tidings_server(
            name, isolation, log_dir, REDIS_ROUTING=routing, CONNECTION_REPORT_INTERVAL=interval, RUN_WORKER="false"
        )

    receivers = [make_server(f"{routing}-r{i}") for i in range(args.processes)]
    sender = make_server(f"{routing}-sender")
    servers: list[ServerProcess] = [*receivers, sender]
    try:
        for server in servers:
            server.start()
        await asyncio.to_thread(wait_ready, *servers)
        await create_admin(sender.env, "admin@bench.example.com", "admin")
        accounts = await register_many(
            sender.url, [f"r{routing[0]}{i}" for i in range(args.processes * args.users_per_process)]
        )
        rss_before = [rss_kib(r.pid) for r in receivers]
        connector = aiohttp.TCPConnector(limit=0)  # a socket each: no pool limit
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            admin_token, _ = await login(session, sender.url, "admin@bench.example.com")
            headers = {"Authorization": f"Bearer {admin_token}"}
            sockets = []
            for index, account in enumerate(accounts):
                server = receivers[index % args.processes]
                ws = await session.ws_connect(
                    f"{server.url}{API}/ws", headers={"Authorization": f"Bearer {account.access_token}"}
                )
                ready = json.loads((await ws.receive(timeout=30)).data)
                assert ready["type"] == "ready", ready
                sockets.append(ws)
            await asyncio.sleep(2 * REPORT_INTERVAL)
            rss_after = [rss_kib(r.pid) for r in receivers]

            duration = args.posts / args.rate
            idle_before = [cpu_seconds(r.pid) for r in receivers]
            await asyncio.sleep(duration)
            idle = [cpu_seconds(r.pid) - before for r, before in zip(receivers, idle_before, strict=True)]

            rng = random.Random(15)
            plans = [rng.sample(range(len(accounts)), args.per_post) for _ in range(args.posts)]
            expected = Counter(i for plan in plans for i in plan)
            got: list[Counter[str]] = [Counter() for _ in accounts]
            readers = [asyncio.create_task(read_until_done(ws, expected[i], got[i])) for i, ws in enumerate(sockets)]
            stats_before = await asyncio.to_thread(command_stats, redis_server.url)
            reports_before = await asyncio.to_thread(routing_reports, redis_server.url, isolation.prefix)
            cpu_before = [cpu_seconds(r.pid) for r in receivers]
            assert redis_server.process is not None
            redis_cpu_before, sender_cpu_before = cpu_seconds(redis_server.process.pid), cpu_seconds(sender.pid)
            started = time.monotonic()
            for number, plan in enumerate(plans):
                await asyncio.sleep(max(0.0, started + number / args.rate - time.monotonic()))
                body = {"title": f"n{number}", "body": "b", "user_ids": [accounts[i].id for i in plan]}
                async with session.post(f"{sender.url}{API}/notifications", json=body, headers=headers) as response:
                    if response.status != 201:
                        raise RuntimeError(f"send: {response.status} {await response.text()}")
            await asyncio.wait_for(asyncio.gather(*readers), 120)
            cpu = [cpu_seconds(r.pid) - before for r, before in zip(receivers, cpu_before, strict=True)]
            redis_cpu = cpu_seconds(redis_server.process.pid) - redis_cpu_before
            sender_cpu = cpu_seconds(sender.pid) - sender_cpu_before
            elapsed = time.monotonic() - started
            await asyncio.sleep(2 * REPORT_INTERVAL)
            stats_after = await asyncio.to_thread(command_stats, redis_server.url)
            reports_after = await asyncio.to_thread(routing_reports, redis_server.url, isolation.prefix)
            for ws in sockets:
                await ws.close()

        notifications = args.posts * args.per_post
        lost = sum(max(0, expected[i] - sum(c.values())) for i, c in enumerate(got))
        duplicated = sum(sum(n - 1 for n in c.values() if n > 1) for c in got)
        commands = {
            name: stats_after.get(name, 0) - stats_before.get(name, 0)
            for name in ("publish", "spublish", "subscribe", "unsubscribe", "evalsha", "eval", "hset", "incr")
        }
        per_receiver = []
        for index, receiver in enumerate(receivers):
            after = reports_after.get(receiver.pid, {}).get("received", {})
            before = reports_before.get(receiver.pid, {}).get("received", {})
            per_receiver.append(
                {
                    "process": receiver.name,
                    "cpu_s": round(cpu[index], 3),
                    "idle_cpu_s": round(idle[index], 3),
                    "cpu_above_idle_s": round(cpu[index] - idle[index] * elapsed / duration, 3),
                    "received": {k: after.get(k, 0) - before.get(k, 0) for k in after},
                    "rss_per_socket_kib": round((rss_after[index] - rss_before[index]) / args.users_per_process, 1),
                }
            )
        delivered = notifications  # one socket per user
        above_idle = sum(p["cpu_above_idle_s"] for p in per_receiver)
        return {
            "routing": routing,
            "processes": args.processes,
            "sockets": len(accounts),
            "notifications": notifications,
            "elapsed_s": round(elapsed, 2),
            "lost": lost,
            "duplicated": duplicated,
            "receivers_cpu_above_idle_s": round(above_idle, 3),
            "cpu_per_delivery_us": round(above_idle / delivered * 1e6, 1),
            "sender_cpu_per_notification_us": round(sender_cpu / notifications * 1e6, 1),
            "redis_cpu_per_notification_us": round(redis_cpu / notifications * 1e6, 1),
            "redis_commands_per_notification": {k: round(v / notifications, 3) for k, v in commands.items() if v},
            "per_receiver": per_receiver,
        }
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.stop()
        await isolation.adrop()
        redis_server.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--users-per-process", type=int, default=50)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--per-post", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20.0, help="posts per second")
    parser.add_argument("--routing", nargs="+", default=["user", "global"], choices=["user", "global"])
    args = parser.parse_args()
    log_dir = bench_log_dir()
    log(f"logs in {log_dir}")
    for routing in args.routing:
        log(f"routing={routing}: {args.processes} receivers, {args.processes * args.users_per_process} sockets")
        result = await one_run(args, routing, log_dir)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(run_interruptible(main)))
