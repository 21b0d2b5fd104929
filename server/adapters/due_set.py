"""Members with a due time (a Redis sorted set, or memory without Redis): add, and take those that are due."""

from __future__ import annotations

import redis.asyncio as aioredis

# Takes at most `limit` due members and removes them, in one step.
_TAKE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


class DueSet:
    async def add(self, members: dict[str, float]) -> None:
        """Each member is due at its time, or earlier if it already was."""
        raise NotImplementedError

    async def take_due(self, now: float, limit: int) -> list[str]:
        """Remove and return up to `limit` members due at `now`, earliest first."""
        raise NotImplementedError


class RedisDueSet(DueSet):
    def __init__(self, redis: aioredis.Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._take = redis.register_script(_TAKE)

    async def add(self, members: dict[str, float]) -> None:
        if members:
            await self._redis.zadd(self._key, members, lt=True)

    async def take_due(self, now: float, limit: int) -> list[str]:
        taken = await self._take(keys=[self._key], args=[now, limit])
        return [member.decode() if isinstance(member, bytes) else str(member) for member in taken or []]


class MemoryDueSet(DueSet):
    def __init__(self) -> None:
        self._due: dict[str, float] = {}

    async def add(self, members: dict[str, float]) -> None:
        for member, due in members.items():
            self._due[member] = min(due, self._due.get(member, due))

    async def take_due(self, now: float, limit: int) -> list[str]:
        due = sorted((when, member) for member, when in self._due.items() if when <= now)[:limit]
        for _, member in due:
            del self._due[member]
        return [member for _, member in due]
