"""Figures for the admin dashboard."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from beanie import SortDirection
from bson import ObjectId

from tidings.documents import AuditEntry, Notification, User


async def dashboard_stats(live_connections: int) -> dict[str, Any]:
    """Counts of users and notifications; `live_connections` comes from the real-time gauge."""
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # ObjectIds start with their creation time, so "since T" is a range on the _id index.
    week_ago = ObjectId.from_datetime(now - timedelta(days=7))
    users, active, admins, new_this_week, sent_today, sent_total = await asyncio.gather(
        User.find({}).count(),
        User.find({"is_active": True}).count(),
        User.find({"is_admin": True}).count(),
        User.find({"_id": {"$gte": week_ago}}).count(),
        Notification.find({"_id": {"$gte": ObjectId.from_datetime(midnight)}}).count(),
        Notification.find({}).count(),
    )
    return {
        "users": {"total": users, "active": active, "admins": admins, "new_this_week": new_this_week},
        "notifications": {"today": sent_today, "total": sent_total},
        "connections": live_connections,
    }


async def recent_events(limit: int = 10) -> list[AuditEntry]:
    return await AuditEntry.find({}).sort([("_id", SortDirection.DESCENDING)]).limit(limit).to_list()
