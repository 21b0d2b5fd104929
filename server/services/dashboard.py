"""Figures for the admin dashboard, each read at a cost that does not grow with the collections.

On FerretDB only top-level equality is pushed down to its backend: a count of everything, or of a range of ids,
decodes every document of the collection (200,000 notifications: 7 s). So totals come from the collection's
statistics (`$collStats` count: PostgreSQL's row estimate under FerretDB, the stored count on MongoDB), exact by a
bounded read while the collection is small; the other figures are equalities on fields that select few documents
(`is_admin`, `is_active: false`, a day's `created_day`). Figures that are estimates are named in `estimated`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from beanie import Document, SortDirection
from pymongo.errors import OperationFailure

from tidings.documents import AuditEntry, Dispatch, Notification, User
from tidings.documents.clock import today_number

# Below this many documents a total is counted exactly, by reading at most this many (a limit without a filter is
# pushed down on FerretDB); above it, the estimate stands.
EXACT_BELOW = 1000
WEEK_DAYS = 7


@dataclass(frozen=True)
class Total:
    value: int
    estimated: bool


async def collection_total(model: type[Document]) -> Total:
    """How many documents `model`'s collection holds: estimated from its statistics, or exactly when small."""
    collection = model.get_pymongo_collection()
    try:
        stats = await (await collection.aggregate([{"$collStats": {"count": {}}}])).to_list()
        estimate = int(stats[0]["count"]) if stats else 0
    except OperationFailure:  # no such collection yet
        estimate = 0
    # PostgreSQL's estimate is -1 until the table is first analysed, and lags behind until autovacuum analyses it.
    if estimate > EXACT_BELOW:
        return Total(estimate, estimated=True)
    counted = len(await collection.find({}, {"_id": 1}).limit(EXACT_BELOW + 1).to_list())
    if counted <= EXACT_BELOW:
        return Total(counted, estimated=False)
    return Total(max(estimate, counted), estimated=True)


async def sent_on(day: int) -> int:
    """Notifications stored by the sends of a day (a broadcast is one; an account-change notice is no send)."""
    dispatches = await Dispatch.find({"created_day": day}).to_list()
    return sum(dispatch.recipient_count for dispatch in dispatches)


async def dashboard_stats(live_connections: int) -> dict[str, Any]:
    """Counts of users and notifications; `live_connections` comes from the real-time gauge."""
    today = today_number()
    users, notifications = await asyncio.gather(collection_total(User), collection_total(Notification))
    inactive, admins, sent_today, *joined = await asyncio.gather(
        User.find({"is_active": False}).count(),
        User.find({"is_admin": True}).count(),
        sent_on(today),
        *(User.find({"created_day": day}).count() for day in range(today - WEEK_DAYS + 1, today + 1)),
    )
    estimated = [
        name
        for name, total in (("users.total", users), ("users.active", users), ("notifications.total", notifications))
        if total.estimated
    ]
    return {
        "users": {
            "total": users.value,
            "active": max(users.value - inactive, 0),
            "admins": admins,
            "new_this_week": sum(joined),
        },
        "notifications": {"today": sent_today, "total": notifications.value},
        "connections": live_connections,
        "estimated": estimated,
    }


async def recent_events(limit: int = 10) -> list[AuditEntry]:
    return await AuditEntry.find({}).sort([("_id", SortDirection.DESCENDING)]).limit(limit).to_list()
