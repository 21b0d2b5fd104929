"""100 single sends against one batch of 100, from a backend with an API key, on one `tidings serve` process.

    .venv/bin/python bench/batch.py [--items 100] [--rounds 5] [--concurrency 1]

Starts one server on a scratch database (dropped afterwards, with its Redis keys), makes `--items` recipients and an
API key (notifications:send), then, `--rounds` times each: POSTs `--items` single notifications (one recipient each,
`--concurrency` at a time), and one POST /api/v1/notifications/batch of `--items` such items. Prints, per way, the
wall time of the whole round (p50, p99 over rounds), the latency of each request (p50, p99), and the server's CPU
seconds per round. MONGODB_URL and REDIS_URL say where FerretDB and Redis are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):  # run as a script: the repository root on the path, for bench.* and tests.*
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import API, bench_log_dir, cpu_seconds, load_average, log, register_many, tidings_server
from tests.launcher import Isolation, run_cli


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank, as bench/common.py and the drills compute it."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 0.5) * 1000, 1), "p99_ms": round(percentile(values, 0.99) * 1000, 1)}


async def timed(call: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def run(items: int, rounds: int, concurrency: int) -> dict[str, Any]:
    isolation = Isolation.new("bench", "batch")
    server = tidings_server("batch", isolation, bench_log_dir())
    try:
        await server.launch()
        base = server.url
        users = await register_many(base, [f"batch_{i}_{isolation.prefix.split(':')[2][:6]}" for i in range(items)])
        # A limit above what the rounds send in a minute: the cost of sending is measured, not the 429.
        made = await run_cli(
            server.env, "create-api-key", "--name", "bench", "--scope", "notifications:send", "--rate-limit", "100000"
        )
        if made.code != 0:
            raise RuntimeError(f"create-api-key failed: {made.stderr}")
        headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
        bodies = [{"title": f"Item {i}", "body": "bench", "user_ids": [user.id]} for i, user in enumerate(users)]
        single_rounds, single_requests, single_cpu = [], [], []
        batch_rounds, batch_cpu = [], []
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
            gate = asyncio.Semaphore(concurrency)

            async def single(body: dict[str, Any]) -> None:
                async with gate:
                    started = time.perf_counter()
                    async with session.post(f"{base}{API}/notifications", json=body, headers=headers) as response:
                        await response.read()
                        if response.status != 201:
                            raise RuntimeError(f"single send: {response.status}")
                    single_requests.append(time.perf_counter() - started)

            async def singles() -> None:
                await asyncio.gather(*(single(body) for body in bodies))

            async def batch() -> None:
                async with session.post(
                    f"{base}{API}/notifications/batch", json={"notifications": bodies}, headers=headers
                ) as response:
                    answer = await response.json()
                    if response.status != 200 or any(r["status"] != 201 for r in answer["results"]):
                        raise RuntimeError(f"batch: {response.status} {str(answer)[:300]}")

            await singles()  # warm-up: connections, caches, first pages
            await batch()
            for _ in range(rounds):
                before = cpu_seconds(server.pid)
                single_rounds.append(await timed(singles))
                single_cpu.append(cpu_seconds(server.pid) - before)
                before = cpu_seconds(server.pid)
                batch_rounds.append(await timed(batch))
                batch_cpu.append(cpu_seconds(server.pid) - before)
        return {
            "items": items,
            "rounds": rounds,
            "concurrency": concurrency,
            "load_average": [round(x, 2) for x in load_average()],
            f"{items}_single_sends": {
                "round": summary(single_rounds),
                "request": summary(single_requests),
                "server_cpu_s_per_round": round(sum(single_cpu) / rounds, 2),
            },
            f"one_batch_of_{items}": {
                "round": summary(batch_rounds),
                "server_cpu_s_per_round": round(sum(batch_cpu) / rounds, 2),
            },
        }
    finally:
        await asyncio.to_thread(server.stop)
        await isolation.adrop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1, help="single sends in flight at once")
    args = parser.parse_args()
    log(f"bench/batch.py: {args.items} items, {args.rounds} rounds, concurrency {args.concurrency}")
    print(json.dumps(asyncio.run(run(args.items, args.rounds, args.concurrency)), indent=2))


if __name__ == "__main__":
    main()
