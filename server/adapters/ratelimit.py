"""Fixed-window counters for rate limits: in Redis (shared by all processes) or in memory (one process)."""

from __future__ import annotations

import time

import redis.asyncio as aioredis


class RateLimiter:
    """Counts events per key in windows of `window` seconds."""

    async def hit(self, key: str, window: int) -> tuple[int, int]:
        """Count one event; return (events in this window, seconds until the window resets)."""
        raise NotImplementedError

    async def peek(self, key: str) -> tuple[int, int]:
        """Return (events in this window, seconds until it resets) without counting."""
        raise NotImplementedError

    async def reset(self, key: str) -> None:
        raise NotImplementedError


class RedisRateLimiter(RateLimiter):
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}ratelimit:"

    async def hit(self, key: str, window: int) -> tuple[int, int]:
        name = self._prefix + key
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, window, nx=True)
            pipe.ttl(name)
            count, _, ttl = await pipe.execute()
        return int(count), max(int(ttl), 1)

    async def peek(self, key: str) -> tuple[int, int]:
        name = self._prefix + key
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(name)
            pipe.ttl(name)
            count, ttl = await pipe.execute()
        return int(count or 0), max(int(ttl), 1)

    async def reset(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)


class MemoryRateLimiter(RateLimiter):
    """For a single process without Redis; holds at most `max_keys` windows."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._windows: dict[str, tuple[int, float]] = {}
        self._max_keys = max_keys

    def _current(self, key: str, now: float) -> tuple[int, float] | None:
        entry = self._windows.get(key)
        if entry is not None and entry[1] <= now:
            del self._windows[key]
            return None
        return entry

    async def hit(self, key: str, window: int) -> tuple[int, int]:
        now = time.monotonic()
        entry = self._current(key, now)
        if entry is None:
            if len(self._windows) >= self._max_keys:
                self._windows = {k: v for k, v in self._windows.items() if v[1] > now}
                if len(self._windows) >= self._max_keys:
                    del self._windows[next(iter(self._windows))]
            entry = (0, now + window)
        entry = (entry[0] + 1, entry[1])
        self._windows[key] = entry
        return entry[0], max(int(entry[1] - now + 0.999), 1)

    async def peek(self, key: str) -> tuple[int, int]:
        now = time.monotonic()
        entry = self._current(key, now)
        if entry is None:
            return 0, 0
        return entry[0], max(int(entry[1] - now + 0.999), 1)

    async def reset(self, key: str) -> None:
        self._windows.pop(key, None)
