"""Numbers handed out in increasing order across processes: Redis INCR, or a counter in the process without Redis.

A Redis key can go missing (Redis restarted without persistence, a new deployment, a flushed database). INCR would
then quietly start again at 1, so `next` only counts on a key that exists and says when it does not; the caller
restarts the sequence from what it keeps in MongoDB (`start_after`), without a scan.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

# INCR only an existing key: a missing one answers nil, so that no process mistakes a fresh 1 for the next number.
_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCR', KEYS[1])
end
return false
"""


class NumberingUnavailable(Exception):
    """The counter could not be reached (Redis down); the caller falls back to what MongoDB says."""


class Numbering:
    """An increasing counter shared by every process of a deployment."""

    async def next(self) -> int | None:
        """The next number, or None when the counter does not exist (start it with `start_after`)."""
        raise NotImplementedError

    async def start_after(self, value: int) -> None:
        """Make the next number `value + 1`, unless another process started the counter first."""
        raise NotImplementedError


class RedisNumbering(Numbering):
    def __init__(self, redis: aioredis.Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._incr = redis.register_script(_INCR_EXISTING)

    async def next(self) -> int | None:
        try:
            result = await self._incr(keys=[self._key])
        except (RedisError, OSError) as exc:
            raise NumberingUnavailable(str(exc)) from exc
        return None if result is None else int(cast(int, result))

    async def start_after(self, value: int) -> None:
        try:
            await self._redis.set(self._key, value, nx=True)
        except (RedisError, OSError) as exc:
            raise NumberingUnavailable(str(exc)) from exc


class MemoryNumbering(Numbering):
    """For a single process without Redis: starts missing, like a Redis key after a restart."""

    def __init__(self) -> None:
        self._value: int | None = None

    async def next(self) -> int | None:
        if self._value is None:
            return None
        self._value += 1
        return self._value

    async def start_after(self, value: int) -> None:
        if self._value is None:
            self._value = value
