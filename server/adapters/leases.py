"""Leases: work that one process at a time may do (a fold, a backfill), skipped by the others rather than waited for.

Unlike `locks.py`, which lets a write go on when Redis is down or the lock cannot be had in time, a lease that
cannot be had means "not now": the work is skipped and tried again later. A lease expires after `ttl` seconds,
so a process that dies holding one does not block the work for ever; the holder renews it before each write, and
stops (LeaseLost) when it is no longer its own. Without Redis there is one process, and the lease is local.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The lease expired or was taken over: its holder must stop writing."""


class Lease:
    """A held lease; `renew` before each write restarts its time to live."""

    def __init__(self, key: str, lock: Lock | None) -> None:
        self.key = key
        self._lock = lock

    async def renew(self) -> None:
        if self._lock is None:
            return
        try:
            await self._lock.reacquire()
        except (LockError, RedisError, OSError) as exc:
            raise LeaseLost(f"lease {self.key} lost: {exc}") from exc


class Leases:
    def __init__(self, redis: aioredis.Redis | None, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}lease:"
        self._held: set[str] = set()

    @contextlib.asynccontextmanager
    async def try_hold(self, key: str, ttl: float) -> AsyncIterator[Lease | None]:
        """Yield the lease named `key` for `ttl` seconds (renewable), or None when another holder has it or it
        cannot be had (Redis down): the caller then skips its work."""
        if key in self._held:
            yield None
            return
        self._held.add(key)
        try:
            if self._redis is None:
                yield Lease(key, None)
                return
            lock = self._redis.lock(self._prefix + key, timeout=ttl, blocking=False, thread_local=False)
            try:
                acquired = bool(await lock.acquire(blocking=False))
            except (RedisError, OSError) as exc:
                log.warning("lease %s unavailable: %s", key, exc)
                acquired = False
            if not acquired:
                yield None
                return
            try:
                yield Lease(key, lock)
            finally:
                with contextlib.suppress(LockError, RedisError, OSError):
                    await lock.release()
        finally:
            self._held.discard(key)
