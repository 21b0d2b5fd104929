"""Per-document write locks, because FerretDB applies an update as read-modify-write.

MongoDB applies every single-document update atomically. FerretDB 1.24 on SQLite reads, changes and writes
back the whole document, so two concurrent updates of one document can lose one of them (docs/performance.md
has the measurement). Writes that must never be lost, such as a deactivation, a token-version bump or a
session's revocation, hold their document's lock: across processes in Redis, within a process always.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import LockError, RedisError

log = logging.getLogger(__name__)


class Locks:
    def __init__(self, redis: aioredis.Redis | None, prefix: str, timeout: float) -> None:
        self._redis = redis
        self._timeout = timeout
        self._prefix = f"{prefix}lock:"
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock named `key` (for example "user:<id>") while the block runs; not reentrant."""
        lock, users = self._local.get(key, (asyncio.Lock(), 0))
        self._local[key] = (lock, users + 1)
        try:
            async with lock, self._shared(key):
                yield
        finally:
            lock, users = self._local[key]
            if users == 1:
                del self._local[key]
            else:
                self._local[key] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def _shared(self, key: str) -> AsyncIterator[None]:
        if self._redis is None:
            yield
            return
        lock = self._redis.lock(self._prefix + key, timeout=self._timeout, blocking_timeout=self._timeout)
        try:
            acquired = bool(await lock.acquire())
        except RedisError as exc:
            # Redis down: writes go on (REST keeps serving), serialised within this process only.
            log.warning("write lock %s unavailable: %s", key, exc)
            acquired = False
        try:
            yield
        finally:
            if acquired:
                with contextlib.suppress(LockError, RedisError):
                    await lock.release()
