"""The panel's Sent log at scale: `dispatch_page` over 10,000 dispatches with 200,000 reads folded into counters.

    .venv/bin/python bench/read_counts.py [--dispatches 10000] [--tallies 200000] [--reps 20] [--spread-days 100]

Seeds a scratch database (dropped afterwards, with its Redis keys): dispatches numbered by the log (3% broadcasts),
sent over `--spread-days` (their ids and the log's page marks are made on that timeline; 0: all at once, a burst),
then read tallies (75% direct reads, 15% broadcast receipts, 10% read-alls) folded a slot of 5,000 at a time, as the
background fold would. Prints the median and worst of `reps` runs of the first page and of a deep page (limit 20),
with the counters alone and with 2,000 tallies not yet folded, checking every count against the truth; and the cost
of recording a read (one tally insert). MONGODB_URL and REDIS_URL say where FerretDB and Redis are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from beanie import PydanticObjectId
from bson import ObjectId
from pymongo import AsyncMongoClient

from bench.common import log
from tests.launcher import MONGODB_URL, REDIS_URL, Isolation
from tidings.documents import Dispatch, FoldState, ReadTally
from tidings.documents.ids import new_id
from tidings.documents.read_count import FOLD_STATE_ID
from tidings.server.adapters.db import init_database
from tidings.server.adapters.leases import Leases
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.numbering import RedisNumbering
from tidings.server.services import dispatch_log as dispatch_log_module
from tidings.server.services.dispatch_log import DispatchLog, dispatch_page
from tidings.server.services.read_counts import ReadCounts

SLOT = 5000  # tallies per folded slot: about 5 s of 1,000 reads a second
BODY = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 5


def milliseconds(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms (n={len(samples)})"


async def timed(reps: int, action: Callable[[], Awaitable[Any]]) -> list[float]:
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - started)
    return samples


class Truth:
    """The exact read count of every dispatch, kept beside the tallies."""

    def __init__(self) -> None:
        self.direct: Counter[Any] = Counter()
        self.coverage = Counter[int]()

    def count(self, dispatch: Dispatch) -> int:
        covered = self.coverage[dispatch.broadcast_seq] if dispatch.broadcast_seq is not None else 0
        return self.direct[dispatch.id] + covered


async def open_slot() -> int:
    state = await FoldState.get(FOLD_STATE_ID)
    return state.open_slot if state else 0


async def seed_tallies(
    rng: random.Random, direct: list[Dispatch], broadcasts: list[Dispatch], count: int, truth: Truth
) -> tuple[list[ReadTally], list[tuple[int, int]]]:
    tallies: list[ReadTally] = []
    ranges: list[tuple[int, int]] = []
    slot = await open_slot()
    for _ in range(count):
        kind = rng.random()
        if kind < 0.75 or not broadcasts:
            target = rng.choice(direct)
            tallies.append(ReadTally(dispatch_id=target.id, log_page=target.log_page, n=1, fold_slot=slot))
            truth.direct[target.id] += 1
        elif kind < 0.9:
            target = rng.choice(broadcasts)
            tallies.append(ReadTally(dispatch_id=target.id, log_page=target.log_page, n=1, fold_slot=slot))
            truth.direct[target.id] += 1
        else:
            first = rng.randrange(len(broadcasts))
            ranges.append((first, len(broadcasts)))
            for seq in range(first, len(broadcasts)):
                truth.coverage[seq] += 1
    return tallies, ranges


async def write_tallies(counts: ReadCounts, tallies: list[ReadTally], ranges: list[tuple[int, int]]) -> None:
    for start in range(0, len(tallies), 1000):
        await ReadTally.insert_many(tallies[start : start + 1000])
    await asyncio.gather(*(counts.coverage(first, end) for first, end in ranges))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dispatches", type=int, default=10_000)
    parser.add_argument("--tallies", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--spread-days", type=float, default=100.0)
    args = parser.parse_args()
    rng = random.Random(9)
    isolation = Isolation.new("bench", "readcounts")
    client: AsyncMongoClient[Any] = AsyncMongoClient(MONGODB_URL, tz_aware=True, timeoutMS=300_000)
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        await init_database(client[isolation.db])
        locks, leases = Locks(redis, isolation.prefix, 10.0), Leases(redis, isolation.prefix)
        dispatch_log = DispatchLog(RedisNumbering(redis, f"{isolation.prefix}dispatch_log:number"), locks, leases)
        counts = ReadCounts(leases, grace=10.0)  # as the app: reads the counters, records reads
        folder = ReadCounts(leases, grace=0.0, slot_seconds=0.0, cache_seconds=0.0, step_timeout=300.0)

        started = time.perf_counter()
        made: list[Dispatch] = []
        broadcast_every = 33  # 3%
        # The send's clock: ids (and the log's page marks, made by new_id) on the timeline of --spread-days.
        first = datetime.now(UTC) - timedelta(days=args.spread_days)
        step = timedelta(days=args.spread_days) / max(args.dispatches, 1)
        clock = {"now": first}

        def timeline_id() -> PydanticObjectId:
            return PydanticObjectId(ObjectId.from_datetime(clock["now"]).binary[:4] + os.urandom(8))

        if args.spread_days:
            dispatch_log_module.new_id = timeline_id  # type: ignore[attr-defined]
        for number in range(args.dispatches):
            clock["now"] = first + step * number
            broadcast = number % broadcast_every == 0
            dispatch = Dispatch(
                id=timeline_id() if args.spread_days else new_id(),
                sender_email="admin@example.com",
                title=f"Weekly update #{number}",
                body=BODY,
                broadcast=broadcast,
                recipient_count=1 if broadcast else rng.randrange(1, 200),
                broadcast_seq=number // broadcast_every if broadcast else None,
            )
            await dispatch_log.assign(dispatch)
            made.append(dispatch)
        for start in range(0, len(made), 500):
            await Dispatch.insert_many(made[start : start + 500])
        direct = [d for d in made if not d.broadcast]
        broadcasts = [d for d in made if d.broadcast]
        log(f"{len(made)} dispatches ({len(broadcasts)} broadcasts) in {time.perf_counter() - started:.1f}s")

        truth = Truth()
        fold_times = []
        started = time.perf_counter()
        await folder.fold()  # makes the state, opens a slot
        for done in range(0, args.tallies, SLOT):
            tallies, ranges = await seed_tallies(rng, direct, broadcasts, min(SLOT, args.tallies - done), truth)
            await write_tallies(folder, tallies, ranges)
            began = time.perf_counter()
            await folder.fold()  # closes the slot
            await folder.fold()  # folds it
            fold_times.append(time.perf_counter() - began)
        log(f"{args.tallies} tallies written and folded in {time.perf_counter() - started:.1f}s")
        log(f"fold of one slot of {SLOT} tallies: {milliseconds(fold_times)}")
        await asyncio.sleep(2)  # let the indexer see every collection

        ordered = sorted(made, key=lambda d: str(d.id), reverse=True)
        deep = ordered[len(ordered) // 2].id

        async def check(before: Any) -> None:
            stats, _ = await dispatch_page(dispatch_log, counts, before=before, limit=20)
            expected = [d for d in ordered if before is None or str(d.id) < before][:20]
            assert [s.dispatch.id for s in stats] == [d.id for d in expected]
            assert [s.read_count for s in stats] == [truth.count(d) for d in expected], "counts differ"

        for label in ("counters only", "with 2,000 tallies not folded yet"):
            if label != "counters only":
                tallies, ranges = await seed_tallies(rng, direct, broadcasts, 2000, truth)
                # Most unfolded reads are of recent sends: put half of them on the newest page.
                for tally in tallies[:1000]:
                    newest = rng.choice(ordered[:20])
                    assert newest.id is not None
                    truth.direct[tally.dispatch_id] -= 1
                    tally.dispatch_id, tally.log_page = newest.id, newest.log_page
                    truth.direct[newest.id] += 1
                await write_tallies(counts, tallies, ranges)
            for name, before in (("first page", None), ("deep page", str(deep))):
                await check(before)

                async def page(before: str | None = before) -> None:
                    await dispatch_page(dispatch_log, counts, before=before, limit=20)

                samples = await timed(args.reps, page)
                log(f"dispatch_page, {name}, {label}: {milliseconds(samples)}")
            newest_only = await timed(args.reps, lambda: dispatch_log.newest(before=None, limit=20))
            log(f"  of which DispatchLog.newest, first page: {milliseconds(newest_only)}")

        target = direct[0].id
        assert target is not None
        samples = await timed(50, lambda: counts.direct_read({target: 1}))
        log(f"record a read (one tally insert): {milliseconds(samples)}")
        samples = await timed(50, lambda: counts.coverage(0, len(broadcasts)))
        log(f"record a read-all's coverage (one tally insert): {milliseconds(samples)}")
    finally:
        await client.close()
        await redis.aclose()
        await isolation.adrop()
        log(f"dropped {isolation.db}")


if __name__ == "__main__":
    asyncio.run(main())
