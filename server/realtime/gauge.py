"""Live WebSocket connections summed over every server process, through one Redis hash."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tidings.server.realtime.hub import Hub


class ConnectionGauge:
    """Each process writes its socket count into one Redis hash every `interval` seconds; readers sum the entries
    fresher than three intervals (a process that died stops counting)."""

    def __init__(self, hub: Hub, redis: aioredis.Redis | None, prefix: str, interval: float) -> None:
        self._hub = hub
        self._redis = redis
        self._key = f"{prefix}ws:connections"
        self._field = uuid.uuid4().hex
        self._interval = interval

    async def report_forever(self) -> None:
        if self._redis is None:
            return
        try:
            while True:
                # Redis down: the dashboard shows this process's own count; reports resume with Redis.
                with contextlib.suppress(RedisError, OSError):
                    await self._redis.hset(self._key, self._field, f"{self._hub.connections()}:{time.time():.0f}")
                await asyncio.sleep(self._interval)
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._redis.hdel(self._key, self._field), 1.0)

    async def total(self) -> int:
        """Sockets open across all processes; this process's own count is always current."""
        if self._redis is None:
            return self._hub.connections()
        try:
            entries = await self._redis.hgetall(self._key)
        except (RedisError, OSError):
            return self._hub.connections()
        now, total = time.time(), self._hub.connections()
        for field, value in entries.items():
            if field in (self._field, self._field.encode()):
                continue
            count, _, stamp = (value.decode() if isinstance(value, bytes) else value).partition(":")
            if now - float(stamp) < 3 * self._interval:
                total += int(count)
        return total
