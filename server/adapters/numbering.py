"""Numbers handed out in increasing order across processes: Redis INCR, or a counter in the process without Redis.

A Redis key can go missing (Redis restarted without persistence, a new deployment, a flushed database). INCR would
then quietly start again at 1, so `next` only counts on a key that exists and says when it does not; the caller
restarts the sequence from what it keeps in MongoDB (`start_after`), without a scan.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
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


# Each key is one user's hash {n: the last number given, last: the id it went to}. An id not newer than `last` is
# replaced by the smallest id above it, so each user's ids follow their numbers (24 lowercase hex digits compare
# as the ids do). A missing key answers false: the caller restarts it (`start_after`).
_ASSIGN = """
local function above(hex)
  local digits = '0123456789abcdef'
  local out = {}
  for c in hex:gmatch('.') do out[#out + 1] = c end
  local i = #out
  while i > 0 do
    local v = digits:find(out[i], 1, true)
    if v < 16 then
      out[i] = digits:sub(v + 1, v + 1)
      break
    end
    out[i] = '0'
    i = i - 1
  end
  return table.concat(out)
end
local result = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then
    result[i] = false
  else
    local id = ARGV[i + 1]
    local last = redis.call('HGET', key, 'last')
    if last and id <= last then
      id = above(last)
    end
    local n = redis.call('HINCRBY', key, 'n', 1)
    redis.call('HSET', key, 'last', id)
    redis.call('EXPIRE', key, ARGV[1])
    result[i] = {n, id}
  end
end
return result
"""

# A user's counter lives this long after its last use; a lost or expired one restarts on a fresh page.
INBOX_COUNTER_TTL = 30 * 24 * 3600
MEMORY_INBOX_COUNTERS = 100_000


def id_above(hex_id: str) -> str:
    """The smallest id (24 lowercase hex digits) above `hex_id`: the Lua script's `above`, for the process's own
    counters."""
    return f"{int(hex_id, 16) + 1:024x}"


class InboxNumbering:
    """Per-user numbers for inbox pages (services/inbox_pages.py): each user's numbers in the order of their ids."""

    async def assign(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str] | None]:
        """For each (user, id): its number and the id to store it under (`id`, or the smallest id above the last
        one numbered for that user), or None when the user's counter does not exist (start it with
        `start_after`)."""
        raise NotImplementedError

    async def current(self, user: str) -> int | None:
        """The last number given to `user`, or None when the counter does not exist."""
        raise NotImplementedError

    async def newest(self, user: str) -> str | None:
        """The id the last number went to, or None when the counter does not exist or has numbered nothing."""
        raise NotImplementedError

    async def start_after(self, user: str, value: int) -> None:
        """Make the user's next number `value + 1`, unless another process started the counter first."""
        raise NotImplementedError


class RedisInboxNumbering(InboxNumbering):
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}inbox:"
        self._assign = redis.register_script(_ASSIGN)
        self._newest_wanted: list[tuple[str, asyncio.Future[str | None]]] = []
        self._newest_reads: set[asyncio.Task[None]] = set()
        # A Redis Cluster (settings.redis_cluster): script keys must share a slot.
        self._cluster: RedisCluster | None = redis if isinstance(cast(Any, redis), RedisCluster) else None  # type: ignore[assignment]

    async def assign(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str] | None]:
        if not pairs:
            return []
        if self._cluster is not None:
            # One script call per slot: a script's keys must share one on a Redis Cluster.
            slots: dict[int, list[int]] = {}
            for index, (user, _) in enumerate(pairs):
                slots.setdefault(self._cluster.keyslot(self._prefix + user), []).append(index)
            numbered: list[tuple[int, str] | None] = [None] * len(pairs)
            for indexes in slots.values():
                for index, item in zip(indexes, await self._assign_some([pairs[i] for i in indexes]), strict=True):
                    numbered[index] = item
            return numbered
        return await self._assign_some(pairs)

    async def _assign_some(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str] | None]:
        try:
            result = await self._assign(
                keys=[self._prefix + user for user, _ in pairs], args=[INBOX_COUNTER_TTL, *(oid for _, oid in pairs)]
            )
        except (RedisError, OSError) as exc:
            raise NumberingUnavailable(str(exc)) from exc
        return [None if item is None else (int(item[0]), _text(item[1])) for item in cast(list[Any], result)]

    async def current(self, user: str) -> int | None:
        try:
            value = await self._redis.hget(self._prefix + user, "n")
        except (RedisError, OSError) as exc:
            raise NumberingUnavailable(str(exc)) from exc
        return None if value is None else int(value)

    async def newest(self, user: str) -> str | None:
        """Asked for many users at once (a reconnect storm asks once per socket), the reads made in one pass of the
        event loop go out together, in one pipeline: a command apiece through redis-py cost the storm 12% of the
        server's CPU. Each read still starts after it was asked for."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._newest_wanted.append((user, future))
        if len(self._newest_wanted) == 1:
            asyncio.get_running_loop().call_soon(self._read_newest)
        return await asyncio.shield(future)

    def _read_newest(self) -> None:
        wanted, self._newest_wanted = self._newest_wanted, []
        task = asyncio.get_running_loop().create_task(self._read_newest_of(wanted))
        self._newest_reads.add(task)
        task.add_done_callback(self._newest_reads.discard)

    async def _read_newest_of(self, wanted: list[tuple[str, asyncio.Future[str | None]]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user, _ in wanted:
                    pipe.hget(self._prefix + user, "last")
                values = await pipe.execute()
        except (RedisError, OSError) as exc:
            for _, future in wanted:
                if not future.done():
                    future.set_exception(NumberingUnavailable(str(exc)))
                    future.exception()  # retrieved: its caller may be gone
            return
        for (_, future), value in zip(wanted, values, strict=True):
            if not future.done():
                future.set_result(None if value is None else _text(value))

    async def start_after(self, user: str, value: int) -> None:
        key = self._prefix + user
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, "n", value)
                pipe.expire(key, INBOX_COUNTER_TTL)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise NumberingUnavailable(str(exc)) from exc


class MemoryInboxNumbering(InboxNumbering):
    """For a single process without Redis; the least recently used counters are dropped past a bound (they restart
    on a fresh page, like an expired Redis key)."""

    def __init__(self, capacity: int = MEMORY_INBOX_COUNTERS) -> None:
        self._capacity = capacity
        self._counters: OrderedDict[str, tuple[int, str]] = OrderedDict()

    async def assign(self, pairs: list[tuple[str, str]]) -> list[tuple[int, str] | None]:
        result: list[tuple[int, str] | None] = []
        for user, oid in pairs:
            counter = self._counters.get(user)
            if counter is None:
                result.append(None)
                continue
            number, last = counter
            if last and oid <= last:
                oid = id_above(last)
            self._counters[user] = (number + 1, oid)
            self._counters.move_to_end(user)
            result.append((number + 1, oid))
        return result

    async def current(self, user: str) -> int | None:
        counter = self._counters.get(user)
        return None if counter is None else counter[0]

    async def newest(self, user: str) -> str | None:
        counter = self._counters.get(user)
        return counter[1] or None if counter is not None else None

    async def start_after(self, user: str, value: int) -> None:
        if user not in self._counters:
            self._counters[user] = (value, "")
            while len(self._counters) > self._capacity:
                self._counters.popitem(last=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
