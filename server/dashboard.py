"""Figures for the admin dashboard, including live WebSocket connections summed over every server process."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from beanie import SortDirection
from bson import ObjectId
from redis.exceptions import RedisError

from documents import AuditEntry, Notification, User
from server.hub import Hub

REPORT_SECONDS = 5.0
STALE_SECONDS = 3 * REPORT_SECONDS


class ConnectionGauge:
    """Each process writes its socket count into one Redis hash every few seconds; readers sum fresh entries."""

    def __init__(self, hub: Hub, redis: aioredis.Redis | None, prefix: str) -> None:
        self._hub = hub
        self._redis = redis
        self._key = f"{prefix}ws:connections"
        self._field = uuid.uuid4().hex

    async def report_forever(self) -> None:
        if self._redis is None:
            return
        try:
            while True:
                # Redis down: the dashboard shows this process's own count; reports resume with Redis.
                with contextlib.suppress(RedisError, OSError):
                    await self._redis.hset(self._key, self._field, f"{self._hub.connections()}:{time.time():.0f}")
                await asyncio.sleep(REPORT_SECONDS)
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
            if now - float(stamp) < STALE_SECONDS:
                total += int(count)
        return total


async def dashboard_stats(gauge: ConnectionGauge) -> dict[str, Any]:
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # ObjectIds start with their creation time, so "since T" is a range on the _id index.
    week_ago = ObjectId.from_datetime(now - timedelta(days=7))
    users, active, admins, new_this_week, sent_today, sent_total, live = await asyncio.gather(
        User.find({}).count(),
        User.find({"is_active": True}).count(),
        User.find({"is_admin": True}).count(),
        User.find({"_id": {"$gte": week_ago}}).count(),
        Notification.find({"_id": {"$gte": ObjectId.from_datetime(midnight)}}).count(),
        Notification.find({}).count(),
        gauge.total(),
    )
    return {
        "users": {"total": users, "active": active, "admins": admins, "new_this_week": new_this_week},
        "notifications": {"today": sent_today, "total": sent_total},
        "connections": live,
    }


async def recent_events(limit: int = 10) -> list[AuditEntry]:
    return await AuditEntry.find({}).sort([("_id", SortDirection.DESCENDING)]).limit(limit).to_list()
