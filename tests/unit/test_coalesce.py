"""server/adapters/coalesce.py: sockets of one user share a read only while it waits for a slot."""

from __future__ import annotations

import asyncio

import pytest

from tidings.server.adapters.coalesce import Coalescer

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
    reads, slots = Reads(), asyncio.Semaphore(1)
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
    coalescer = Coalescer(reads.read, asyncio.Semaphore(4))
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
    coalescer = Coalescer(reads.read, asyncio.Semaphore(1))
    callers = [asyncio.create_task(coalescer.get("u1")) for _ in range(3)]
    await asyncio.sleep(0.01)
    reads.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in results)
    reads.fail = False
    assert await coalescer.get("u1") == "u1:2"
    assert coalescer.waiting == 0


async def test_a_caller_that_goes_away_does_not_cancel_the_others() -> None:
    reads, slots = Reads(), asyncio.Semaphore(1)
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
    coalescer = Coalescer(reads.read, asyncio.Semaphore(1))
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
    coalescer = Coalescer(reads.read, asyncio.Semaphore(4), epoch=epoch)
    first = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)  # the read is running
    second = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    reads.release.set()
    assert (await first, await second) == ("u1:1", "u1:1")
    assert reads.calls == ["u1"]


async def test_after_the_epoch_changed_a_caller_reads_again_and_later_ones_join_the_newer_read() -> None:
    reads, epoch = Reads(), Epoch()
    coalescer = Coalescer(reads.read, asyncio.Semaphore(4), epoch=epoch)
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
    coalescer = Coalescer(reads.read, asyncio.Semaphore(4), epoch=epoch)
    first = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(coalescer.get("u1"))
    await asyncio.sleep(0.01)
    reads.release.set()
    assert (await first, await second) == ("u1:1", "u1:2")


async def test_with_an_epoch_a_failed_read_is_not_joined_afterwards() -> None:
    reads, epoch = Reads(), Epoch()
    reads.fail = True
    coalescer = Coalescer(reads.read, asyncio.Semaphore(4), epoch=epoch)
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
