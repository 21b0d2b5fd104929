"""Retention: notifications older than NOTIFICATION_RETENTION_DAYS are deleted, a day at a time.

Every notification, dispatch and broadcast receipt carries the day it was made (`created_day`), so a day is
deleted by equality, which FerretDB pushes down, where a range on dates would decode the whole collection. A
mark records the last day done, so each run starts where the last one stopped (a day costs three reads when
nothing was made on it) and a crash only repeats deletes. Broadcasts numbered up to those deleted are counted
as read for everyone (BroadcastIndex.first_kept) before they go, so no unread count ever includes a broadcast
nobody can see any more.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from beanie import Document, PydanticObjectId, SortDirection

from tidings.documents import BroadcastIndex, BroadcastReceipt, Dispatch, InboxPage, Notification, RetentionMark
from tidings.documents.clock import today_number
from tidings.documents.notification import BROADCASTS_ID
from tidings.documents.retention import RETENTION_ID
from tidings.server.adapters.locks import Locks
from tidings.server.services.broadcasts import BROADCASTS_LOCK

log = logging.getLogger(__name__)

# FerretDB on SQLite refuses to delete more than about 32,000 documents at once.
DELETE_BATCH = 5000


@dataclass(frozen=True)
class Retention:
    days: int  # 0: keep everything
    locks: Locks
    # Forgets what is kept about deleted dispatches elsewhere (their read counts).
    forget_dispatches: Callable[[Sequence[PydanticObjectId]], Awaitable[None]]
    # Told when the broadcast index changed (this process's copy goes; the others' expire within a second).
    index_changed: Callable[[], None] = lambda: None

    async def purge(self, *, today: int | None = None) -> int:
        """Delete what was made more than `days` days before `today`; the number of documents deleted."""
        if self.days == 0:
            return 0
        # Whole days older than `days`: the day exactly `days` ago is kept.
        last_day = (today_number() if today is None else today) - self.days - 1
        deleted = 0
        async with self.locks.hold("retention"):
            mark = await RetentionMark.get(RETENTION_ID)
            if mark is None or mark.purged_through_day is None:
                # A database made by this version has nothing older than its first run; an older database got
                # its mark from the migration that dated its documents.
                await RetentionMark(purged_through_day=last_day).save()
                return 0
            for day in range(mark.purged_through_day + 1, last_day + 1):
                deleted += await self._purge_day(day)
                mark.purged_through_day = day
                await mark.save()
        if deleted:
            log.info("retention deleted %d documents made before day %d", deleted, last_day + 1)
        return deleted

    async def _purge_day(self, day: int) -> int:
        deleted = 0
        for batch in await _batches(Notification, day):
            broadcasts = [n.broadcast_seq for n in batch if n.broadcast_seq is not None]
            if broadcasts:
                await self._retire_broadcasts(max(broadcasts) + 1)
            deleted += await _delete(Notification, day, batch)
        for receipts in await _batches(BroadcastReceipt, day):
            deleted += await _delete(BroadcastReceipt, day, receipts)
        # Inbox page markers go with the day their page started: a page keeps its notifications without one
        # (services/inbox_pages.py), and one emptied and unmarked ends its inbox.
        for markers in await _batches(InboxPage, day):
            deleted += await _delete(InboxPage, day, markers)
        for dispatches in await _batches(Dispatch, day):
            await self.forget_dispatches([d.id for d in dispatches if d.id is not None])
            deleted += await _delete(Dispatch, day, dispatches)
        return deleted

    async def _retire_broadcasts(self, first_kept: int) -> None:
        async with self.locks.hold(BROADCASTS_LOCK):
            index = await BroadcastIndex.get(BROADCASTS_ID)
            if index is not None and index.first_kept < first_kept:
                await index.set({BroadcastIndex.first_kept: first_kept})
                self.index_changed()


async def _batches(model: type[Any], day: int) -> list[list[Any]]:
    """The day's documents of `model`, in id order, in batches (one equality read)."""
    found = await model.find({"created_day": day}).sort([("_id", SortDirection.ASCENDING)]).to_list()
    return [found[start : start + DELETE_BATCH] for start in range(0, len(found), DELETE_BATCH)]


async def _delete(model: type[Document], day: int, batch: Sequence[Document]) -> int:
    """Delete one batch: the day's documents from its first id to its last, by an equality and an _id range."""
    result = await model.find({"created_day": day, "_id": {"$gte": batch[0].id, "$lte": batch[-1].id}}).delete()
    return result.deleted_count if result is not None else 0
