"""Live WebSocket connections summed over every server process, through Redis: the total, and one user's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tidings.server.realtime.hub import Hub


class ConnectionGauge:
    """Each process writes its socket count into one Redis hash every `interval` seconds, and its sockets per user
    into a hash of its own (which expires when it stops writing); readers sum the entries fresher than three
    intervals (a process that died stops counting).

    Beside them, into "<prefix>ws:routing", what its broker holds and has received by kind of channel (its pid, the
    user channels it holds, the messages of each kind): routing at work, for operators and the routing test."""

    def __init__(self, hub: Hub, redis: aioredis.Redis | None, prefix: str, interval: float) -> None:
        self._hub = hub
        self._redis = redis
        self._key = f"{prefix}ws:connections"
        self._field = uuid.uuid4().hex
        # "<prefix>ws:users:<process>": user id -> that process's sockets of the user.
        self._users_prefix = f"{prefix}ws:users:"
        self._routing_key = f"{prefix}ws:routing"
        self._interval = interval
        self._reported_users: dict[str, int] | None = None

    async def report_forever(self) -> None:
        if self._redis is None:
            return
        try:
            while True:
                # Redis down: the dashboard shows this process's own count; reports resume with Redis.
                with contextlib.suppress(RedisError, OSError):
                    await self._redis.hset(self._key, self._field, f"{self._hub.connections()}:{time.time():.0f}")
                    await self._report_users(self._redis)
                    routing = {"pid": os.getpid(), "at": round(time.time()), **self._hub.routing()}
                    await self._redis.hset(self._routing_key, self._field, json.dumps(routing))
                await asyncio.sleep(self._interval)
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._redis.hdel(self._key, self._field), 1.0)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._redis.delete(self._users_prefix + self._field), 1.0)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self._redis.hdel(self._routing_key, self._field), 1.0)

    async def _report_users(self, redis: aioredis.Redis) -> None:
        """This process's sockets per user, rewritten whole when they changed (or the hash expired), else only
        kept from expiring."""
        users = self._hub.connections_by_user()
        key = self._users_prefix + self._field
        ttl = max(1, round(3 * self._interval))
        if users == self._reported_users and (not users or await redis.expire(key, ttl)):
            return
        self._reported_users = None
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if users:
                pipe.hset(key, mapping={user_id: count for user_id, count in users.items()})
                pipe.expire(key, ttl)
            await pipe.execute()
        self._reported_users = users

    async def total(self) -> int:
        """Sockets open across all processes; this process's own count is always current."""
        return self._hub.connections() + sum((await self._others()).values())

    async def user_total(self, user_id: str) -> int:
        """One user's sockets open across all processes; this process's own count is always current."""
        local = self._hub.connections_of(user_id)
        if self._redis is None:
            return local
        others = await self._others()
        if not others:
            return local
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for field in others:
                    pipe.hget(self._users_prefix + field, user_id)
                counts = await pipe.execute()
        except (RedisError, OSError):
            return local
        return local + sum(int(count) for count in counts if count is not None)

    async def _others(self) -> dict[str, int]:
        """The other live processes' socket counts, by process; none when Redis is down or absent."""
        if self._redis is None:
            return {}
        try:
            entries = await self._redis.hgetall(self._key)
        except (RedisError, OSError):
            return {}
        now, counts = time.time(), {}
        for raw_field, raw_value in entries.items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
            if field == self._field:
                continue
            count, _, stamp = (raw_value.decode() if isinstance(raw_value, bytes) else raw_value).partition(":")
            if now - float(stamp) < 3 * self._interval:
                counts[field] = int(count)
        return counts
