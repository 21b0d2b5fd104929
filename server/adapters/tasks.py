"""The app's own background tasks: ending them reliably, and work queued for one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# Reads or writes of one piece of work that run at once, so that one caller cannot take the whole MongoDB pool.
CONCURRENCY = 16


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait until they end, cancelling again any task that swallowed its cancellation.

    On Python 3.11, asyncio.wait_for (which redis-py uses to send commands) can swallow a cancellation that
    lands just as the command completes (CPython gh-86296, fixed in 3.12): the task runs on, and a plain
    `await task` would hang the shutdown (or `tidings create-admin`) forever.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    await asyncio.gather(*tasks, return_exceptions=True)


async def gather_bounded(awaitables: Iterable[Awaitable[T]], limit: int = CONCURRENCY) -> list[T]:
    """Await all, at most `limit` at a time; the results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[T]) -> T:
        async with semaphore:
            return await awaitable

    return list(await asyncio.gather(*(one(awaitable) for awaitable in awaitables)))


K = TypeVar("K", bound=Hashable)


class KeyedWork(Generic[K]):
    """Keys waiting for a piece of background work, each at most once, at most `capacity` of them.

    `request` never blocks: past the capacity a key is left out, for work that is asked again whenever it is seen
    to be needed. `run` is the worker loop (owned by the app, cancelled on cleanup); `join` waits until everything
    requested so far is done.
    """

    def __init__(self, work: Callable[[K], Awaitable[object]], capacity: int, name: str) -> None:
        self._work = work
        self._queue: asyncio.Queue[K] = asyncio.Queue(capacity)
        self._waiting: set[K] = set()
        self._name = name

    def request(self, key: K) -> None:
        if key in self._waiting:
            return
        try:
            self._queue.put_nowait(key)
        except asyncio.QueueFull:
            log.warning("%s: %d keys waiting already; %s is left for later", self._name, self._queue.qsize(), key)
            return
        self._waiting.add(key)

    async def run(self) -> None:
        while True:
            key = await self._queue.get()
            self._waiting.discard(key)
            try:
                await self._work(key)
            except Exception:
                log.exception("%s failed for %s", self._name, key)
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        await self._queue.join()
