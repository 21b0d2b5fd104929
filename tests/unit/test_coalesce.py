"""server/adapters/coalesce.py: sockets of one user share a read only while it waits for a slot."""

from __future__ import annotations

import asyncio

import pytest

from tidings.server.adapters.coalesce import Coalescer, Slots

pytestmark = pytest.mark.unit


class Reads:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.fail = False

    async def read(self, key: str) -> str:
        self.calls.append(key)
        number = len(self.calls)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("database down")
        return f"{key}:{number}"


async def test_callers_waiting_for_a_slot_share_one_read() -> None:
    reads, slots = Reads(), Slots(1)
    coalescer = Coalescer(reads.read, slots)
    await slots.acquire()  # busy: reads queue
    waiting = [asyncio.create_task(coalescer.get("u1")) for _ in range(10)]
    other = asyncio.create_task(coalescer.get("u2"))
    await asyncio.sleep(0.01)
    assert coalescer.waiting == 2
    slots.release()
    reads.release.set()
    assert await asyncio.gather(*waiting) == ["u1:1"] * 10
    assert await other == "u2:2"
    assert reads.calls == ["u1", "u2"]


async def test_a_caller_never_joins_a_read_that_has_started() -> None:
    reads = Reads()
    coalescer = Coalescer(reads.read, Slots(4))
    first = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)  # the read is running
    second = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    reads.release.set()
    assert (await first, await second) == ("u1:1", "u1:2")
    assert reads.calls == ["u1", "u1"]


async def test_a_failed_read_fails_its_callers_and_the_next_caller_reads_again() -> None:
    reads = Reads()
    reads.fail = True
    coalescer = Coalescer(reads.read, Slots(1))
    callers = [asyncio.create_task(coalescer.get("u1")) for _ in range(3)]
    await asyncio.sleep(0.01)
    reads.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in results)
    reads.fail = False
    assert await coalescer.get("u1") == "u1:2"
    assert coalescer.waiting == 0


async def test_a_caller_that_goes_away_does_not_cancel_the_others() -> None:
    reads, slots = Reads(), Slots(1)
    coalescer = Coalescer(reads.read, slots)
    await slots.acquire()
    leaving = asyncio.create_task(coalescer.get("u1"))
    staying = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    slots.release()
    reads.release.set()
    assert await staying == "u1:1"
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_close_cancels_the_reads_in_flight() -> None:
    reads = Reads()
    coalescer = Coalescer(reads.read, Slots(1))
    caller = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    await coalescer.close()
    with pytest.raises(asyncio.CancelledError):
        await caller


class Epoch:
    """What a cache's generation does: bumped by every invalidation; None while nothing could say so."""

    def __init__(self) -> None:
        self.value: int | None = 0

    def __call__(self) -> int | None:
        return self.value


async def test_with_an_epoch_a_caller_joins_a_started_read_while_the_epoch_holds() -> None:
    reads, epoch = Reads(), Epoch()
    coalescer = Coalescer(reads.read, Slots(4), epoch=epoch)
    first = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)  # the read is running
    second = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    reads.release.set()
    assert (await first, await second) == ("u1:1", "u1:1")
    assert reads.calls == ["u1"]


async def test_after_the_epoch_changed_a_caller_reads_again_and_later_ones_join_the_newer_read() -> None:
    reads, epoch = Reads(), Epoch()
    coalescer = Coalescer(reads.read, Slots(4), epoch=epoch)
    old = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    epoch.value = 1  # an invalidation
    new = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    newer = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    reads.release.set()
    assert (await old, await new, await newer) == ("u1:1", "u1:2", "u1:2")
    assert reads.calls == ["u1", "u1"]
    # Once both are done, nothing is in flight: the next caller reads.
    assert await coalescer.get("u1") == "u1:3"


async def test_a_read_started_without_an_epoch_is_never_joined() -> None:
    reads, epoch = Reads(), Epoch()
    epoch.value = None
    coalescer = Coalescer(reads.read, Slots(4), epoch=epoch)
    first = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    reads.release.set()
    assert (await first, await second) == ("u1:1", "u1:2")


async def test_with_an_epoch_a_failed_read_is_not_joined_afterwards() -> None:
    reads, epoch = Reads(), Epoch()
    reads.fail = True
    coalescer = Coalescer(reads.read, Slots(4), epoch=epoch)
    first = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    joined = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    reads.release.set()
    for caller in (first, joined):
        with pytest.raises(RuntimeError):
            await caller
    reads.fail = False
    assert await coalescer.get("u1") == "u1:2"


async def test_slots_serve_the_lowest_rank_first_then_in_order_of_arrival() -> None:
    slots, served = Slots(1), []
    await slots.acquire()

    async def take(name: str, rank: int) -> None:
        await slots.acquire(rank)
        served.append(name)
        slots.release()

    waiters = [asyncio.create_task(take(name, rank)) for name, rank in [("a1", 1), ("b0", 0), ("c1", 1), ("d0", 0)]]
    await asyncio.sleep(0.01)
    assert slots.waiting == 4 and served == []
    slots.release()
    await asyncio.gather(*waiters)
    assert served == ["b0", "d0", "a1", "c1"]


async def test_a_waiter_that_gives_up_passes_its_turn_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    gives_up = asyncio.create_task(slots.acquire(0))
    stays = asyncio.create_task(slots.acquire(1))
    await asyncio.sleep(0.01)
    gives_up.cancel()
    slots.release()
    await asyncio.wait_for(stays, 1)
    assert slots.waiting == 0
    slots.release()
    await asyncio.wait_for(slots.acquire(), 1)  # the slot came back: nothing leaked


async def test_a_slot_granted_to_a_waiter_cancelled_at_that_moment_is_handed_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.01)
    slots.release()  # granted to `first`, which has not run yet
    first.cancel()  # and is cancelled before it does
    await asyncio.wait_for(second, 1)
    with pytest.raises(asyncio.CancelledError):
        await first
    slots.release()
    await asyncio.wait_for(slots.acquire(), 1)


async def test_coalescers_sharing_slots_serve_the_lower_rank_first() -> None:
    reads, slots = Reads(), Slots(1)
    starting = Coalescer(reads.read, slots, rank=1)
    finishing = Coalescer(reads.read, slots, rank=0)
    await slots.acquire()
    new = asyncio.create_task(starting.get("ready"))
    await asyncio.sleep(0.01)
    old = asyncio.create_task(finishing.get("replay"))
    await asyncio.sleep(0.01)
    slots.release()
    reads.release.set()
    assert (await old, await new) == ("replay:1", "ready:2")


def test_slots_need_at_least_one() -> None:
    with pytest.raises(ValueError):
        Slots(0)
