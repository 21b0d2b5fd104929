"""Identical reads made at about the same time share one: what turns a reconnect storm into one read per user.

A caller joins a read only while that read is still waiting for a slot, never once it has started, so every
caller's result reflects the database after the caller asked (what a socket counts or replays is never older than
its registration). When the process is idle a read starts at once, so sharing costs no latency; under load reads
queue for the `slots`, and the queue is where callers for the same key find each other.

With an `epoch`, a caller may also join a read that has started, as long as the epoch is what it was when that read
started (and not None): for a reader whose results are trusted until something says they changed, like a cache that
an invalidation bumps the epoch of (server/services/authenticator.py). Such a caller gets what the cache would have
given it had the read finished a moment earlier.

Slots are served by rank, then in order of arrival: a reader whose reads finish what a client already started (a
replay asked for after "ready") ranks before one whose reads start something new (a "ready"), so that under a storm
each socket is done soon after it started, instead of every socket waiting for the last one's start.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class Slots:
    """A semaphore whose waiters are served by rank (lowest first), then first come, first served."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("at least one slot")
        self._free = count
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for _, _, waiter in self._waiters)

    async def acquire(self, rank: int = 0) -> None:
        if self._free > 0:
            self._free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (rank, next(self._arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # the slot came just as the waiter gave up: hand it on
            raise

    def release(self) -> None:
        """Hand the slot to the first waiter by rank, or free it."""
        while self._waiters:
            _, _, granted = heapq.heappop(self._waiters)
            if not granted.done():  # a waiter that gave up left a cancelled future
                granted.set_result(None)
                return
        self._free += 1


class Coalescer(Generic[Key, Value]):
    def __init__(
        self,
        read: Callable[[Key], Awaitable[Value]],
        slots: Slots,
        *,
        rank: int = 0,
        epoch: Callable[[], Hashable | None] | None = None,
    ) -> None:
        self._read = read
        self._slots = slots
        self._rank = rank
        self._epoch = epoch
        self._waiting: dict[Key, asyncio.Future[Value]] = {}
        # With an epoch: the read in flight per key, and the epoch it started in.
        self._started: dict[Key, tuple[Hashable, asyncio.Future[Value]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def get(self, key: Key) -> Value:
        shared = self._waiting.get(key)
        if shared is None:
            shared = self._joinable(key)
        if shared is None:
            shared = self._waiting[key] = asyncio.get_running_loop().create_future()
            task = asyncio.get_running_loop().create_task(self._run(key, shared))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # shield: one caller going away (its socket closed) must not cancel the read the others wait for.
        return await asyncio.shield(shared)

    def _joinable(self, key: Key) -> asyncio.Future[Value] | None:
        """The read of `key` in flight, if nothing changed since it started (only with an epoch)."""
        started = self._started.get(key) if self._epoch is not None else None
        if started is None:
            return None
        epoch = self._epoch() if self._epoch is not None else None
        return started[1] if epoch is not None and epoch == started[0] else None

    async def _run(self, key: Key, shared: asyncio.Future[Value]) -> None:
        try:
            await self._slots.acquire(self._rank)
            try:
                if self._waiting.get(key) is shared:
                    del self._waiting[key]  # started: later callers make a read of their own (or join it, below)
                epoch = self._epoch() if self._epoch is not None else None
                if epoch is not None:
                    self._started[key] = (epoch, shared)
                value = await self._read(key)
            finally:
                self._slots.release()
        except BaseException as exc:
            if self._waiting.get(key) is shared:
                del self._waiting[key]
            if isinstance(exc, Exception):
                shared.set_exception(exc)
                shared.exception()  # retrieved: nobody may be waiting any more
                return
            shared.cancel()
            raise
        finally:
            started = self._started.get(key)
            if started is not None and started[1] is shared:
                del self._started[key]
        shared.set_result(value)

    async def close(self) -> None:
        """Cancel the reads in flight (their callers get CancelledError)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
