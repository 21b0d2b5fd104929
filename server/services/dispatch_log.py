"""The log of sends, newest first, in pages read by equality: what the panel's "Sent" list shows.

Each dispatch gets a number before it is stored (a Redis counter, INCR; in the process without Redis) and is kept
in log page `number // LOG_PAGE_SIZE` (Dispatch.log_page). A page of the log reads the few pages that can hold it
by equality on `log_page`, which FerretDB pushes down, where a sort over all dispatches would decode every one.

Numbers are taken right after ids are made, so pages follow ids, but two processes can race: a dispatch may sit in
a page next to the one its id would put it in, never further. So a page of the log reads one page either side of
those that hold its dispatches, and sorts what it read by id; but each page of 50 costs about 10 ms to decode on
FerretDB, so the page either side is skipped when time shows it cannot matter. An id is made at most RACE_SECONDS
(clock differences between hosts included) before its number is taken, so every dispatch of page p or above has
an id newer than start(p) - RACE_SECONDS, and every dispatch below page p an id older than opened(p) +
RACE_SECONDS, where start(p) is the id numbered first on page p and opened(p) an id made once that number was
taken (both in the directory). Sends far apart (the usual case) then read one or two pages; a burst of sends, the
page either side as well. The order is right as long as both hold: a race moves a dispatch at most one page, and
its id is made at most RACE_SECONDS before its number (NotificationService.send calls assign right after).

The directory records those two ids of every page, in chunks of CHUNK_PAGES pages (DispatchLogChunk), with a
head (DispatchLogDirectory) that lists the chunks and where each starts: a read of the log loads the chunk or two
it needs, a `before` cursor finds its chunk in the head, and a counter whose Redis key was lost (Redis restarted,
a new deployment) starts again on a fresh page after the last one recorded, without a scan. Numbers skipped that
way are harmless.

Queries: Dispatch {log_page: p} [index log_page, _id]; DispatchLogDirectory and DispatchLogChunk by _id. The
start-up backfill alone reads {log_page: None} (a scan on FerretDB, once per database).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import pymongo
from beanie import PydanticObjectId
from bson import ObjectId

from tidings.documents import Dispatch, DispatchLogChunk, DispatchLogDirectory
from tidings.documents.dispatch_log import DISPATCH_LOG_ID, LOG_PAGE_SIZE, chunk_of
from tidings.documents.ids import new_id
from tidings.server.adapters.db import upsert
from tidings.server.adapters.leases import Leases
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.numbering import Numbering, NumberingUnavailable
from tidings.server.adapters.pagination import parse_cursor
from tidings.server.adapters.tasks import gather_bounded

log = logging.getLogger(__name__)


DIRECTORY_LOCK = "dispatch_log"
BACKFILL_LEASE = "dispatch-log-backfill"
# The backfill's one long read (every dispatch without a page) may take this long; its lease outlives two of them.
BACKFILL_READ_TIMEOUT = 300.0
# The longest an id is made before its number is taken, with the clocks of two hosts apart: the margin of every
# page bound (ask the lead to call assign right after the id is made).
RACE_SECONDS = 60.0


@dataclass(frozen=True)
class DispatchStats:
    dispatch: Dispatch
    read_count: int


class ReadCountSource(Protocol):
    """What gives read counts (services/read_counts.py ReadCounts)."""

    async def counts(self, dispatches: Sequence[Dispatch]) -> dict[PydanticObjectId, int]: ...


# Pure parts: page arithmetic.


def page_of(number: int) -> int:
    return number // LOG_PAGE_SIZE


@dataclass(frozen=True)
class PageMark:
    """Where a page starts (its first dispatch), and an id newer than everything below it (without the margin)."""

    start: PydanticObjectId
    opened: PydanticObjectId


def page_marks(
    records: Iterable[tuple[int, PydanticObjectId, PydanticObjectId]], marks: dict[int, PageMark] | None = None
) -> dict[int, PageMark]:
    """Each recorded (page, start, opened)'s marks, added to `marks` (a page recorded twice: its oldest start and
    newest bound)."""
    marks = {} if marks is None else marks
    for page, start, opened in records:
        known = marks.get(page)
        marks[page] = PageMark(min(start, known.start), max(opened, known.opened)) if known else PageMark(start, opened)
    return marks


def shifted(oid: ObjectId, seconds: float) -> PydanticObjectId:
    """The smallest id made `seconds` after `oid` (before it, when negative)."""
    return PydanticObjectId(ObjectId.from_datetime(oid.generation_time + timedelta(seconds=seconds)))


def restart_after(marks: Mapping[int, object]) -> int:
    """What a lost counter restarts after: the last number before a fresh page after the last live page."""
    last = max((page for page in marks if page >= 0), default=-1)
    return (last + 1) * LOG_PAGE_SIZE - 1


def first_page(marks: Mapping[int, PageMark], before: PydanticObjectId | None) -> int:
    """The highest page that can hold a dispatch older than `before`.

    By time: below the lowest page whose dispatches are all newer (started RACE_SECONDS after `before`). By
    number: the first page recorded as starting after `before`, which may hold one that raced, and nothing above
    it. With no such page, the page after the newest recorded one (its start may not be recorded yet)."""
    top = max(0, max(marks, default=0)) + 1
    if before is None:
        return top
    later = [page for page, mark in marks.items() if mark.start > before]
    newer = [page for page in later if shifted(marks[page].start, -RACE_SECONDS) > before]
    return min(min(later, default=top), min(newer, default=top + 1) - 1)


def lowest_page(low_page: int, kept_from: int | None = None) -> int:
    """The lowest page that can hold a dispatch: backfilled pages are negative (down to `low_page`), live ones start
    at 0."""
    low = min(0, low_page)
    return low if kept_from is None else max(low, kept_from)


def finished(
    marks: Mapping[int, PageMark],
    lowest_read: int,
    low: int,
    counts: Sequence[int],
    newest: Sequence[PydanticObjectId],
    need: int,
) -> bool:
    """Whether the pages read from the top down to `lowest_read` hold the `need` newest dispatches. `counts`: how
    many wanted dispatches each page read held, in the order read; `newest`: their ids, newest first.

    True when no page is left below, or when they hold `need` and the pages below can hold nothing newer than the
    `need`-th: by number, once a page below the one that completed them was read; by time, once the lowest page
    read was opened RACE_SECONDS before the `need`-th was made."""
    if lowest_read <= low:
        return True
    if len(newest) < need:
        return False
    if sum(counts[:-1]) >= need:
        return True
    mark = marks.get(lowest_read)
    return mark is not None and shifted(mark.opened, RACE_SECONDS) <= newest[need - 1]


def newest_of(found: Iterable[Dispatch], limit: int) -> tuple[list[Dispatch], str | None]:
    """The `limit` newest by id, and the `before` of the next page (None when there is none)."""
    ordered = sorted(found, key=_id_of, reverse=True)
    if len(ordered) <= limit:
        return ordered, None
    return ordered[:limit], str(_id_of(ordered[limit - 1]))


def _id_of(dispatch: Dispatch) -> PydanticObjectId:
    assert dispatch.id is not None
    return dispatch.id


@dataclass
class Directory:
    """The directory's head, and the marks of the chunks loaded so far: a read loads the chunks it needs."""

    head: DispatchLogDirectory | None
    marks: dict[int, PageMark] = field(default_factory=dict)
    loaded: set[int] = field(default_factory=set)

    @property
    def low(self) -> int:
        return lowest_page(self.head.low_page, self.head.kept_from) if self.head else 0

    def chunks(self) -> list[int]:
        return sorted(self.head.chunks) if self.head else []

    async def load(self, chunks: Iterable[int]) -> None:
        existing = set(self.chunks())
        wanted = [chunk for chunk in dict.fromkeys(chunks) if chunk in existing and chunk not in self.loaded]
        for chunk, found in zip(wanted, await asyncio.gather(*map(DispatchLogChunk.get, wanted)), strict=True):
            self.loaded.add(chunk)
            if found is not None:
                page_marks(found.marks(), self.marks)

    async def load_top(self) -> None:
        """The newest chunk, and the one below it (the newest page may have raced into it)."""
        await self.load(self.chunks()[-2:])

    async def load_around(self, oid: PydanticObjectId) -> None:
        """The chunk that holds `oid`'s place, and the next one up (its first pages may hold a dispatch that
        raced)."""
        chunks = self.chunks()
        if self.head is None or not chunks:
            return
        holding = self.head.chunk_holding(oid)
        position = chunks.index(holding) if holding in chunks else 0
        await self.load(chunks[position : position + 2])


async def _directory() -> Directory:
    return Directory(await DispatchLogDirectory.get(DISPATCH_LOG_ID))


class DispatchLog:
    def __init__(self, numbering: Numbering, locks: Locks, leases: Leases) -> None:
        self._numbering = numbering
        self._locks = locks
        self._leases = leases

    async def assign(self, dispatch: Dispatch) -> None:
        """Give a new dispatch its log page; call it right after its id is made, before it is stored."""
        try:
            number = await self._next_number()
        except NumberingUnavailable as exc:
            # Redis down: the newest recorded page, which only makes that page longer; order is kept.
            log.warning("dispatch counter unavailable, using the newest log page: %s", exc)
            directory = await _directory()
            await directory.load_top()
            dispatch.log_page = max(0, max(directory.marks, default=0))
            return
        dispatch.log_page = page_of(number)
        if number % LOG_PAGE_SIZE == 0:
            # Made after the number was taken: newer than the id of every dispatch numbered before it.
            await self._record_page(dispatch.log_page, _id_of(dispatch), new_id())

    async def _next_number(self) -> int:
        for _ in range(3):
            number = await self._numbering.next()
            if number is not None:
                return number
            # The counter is gone (or never was): restart it on a fresh page after the last one recorded.
            directory = await _directory()
            await directory.load_top()
            await self._numbering.start_after(restart_after(directory.marks))
        raise NumberingUnavailable("the dispatch counter keeps disappearing")

    async def _record_page(self, page: int, start: PydanticObjectId, opened: PydanticObjectId) -> None:
        # Under a lock: FerretDB applies $push as read-modify-write, so two at once could lose one.
        async with self._locks.hold(DIRECTORY_LOCK):
            await self._record_held([(page, start, opened)])

    @staticmethod
    async def _record_held(records: Sequence[tuple[int, PydanticObjectId, PydanticObjectId]]) -> None:
        """Add marks to their chunks, then list the chunks in the head with their lowest start (hold the lock)."""
        by_chunk: dict[int, list[tuple[int, PydanticObjectId, PydanticObjectId]]] = {}
        for record in records:
            by_chunk.setdefault(chunk_of(record[0]), []).append(record)
        for chunk, marks in by_chunk.items():
            pushed = {
                name: {"$each": [mark[i] for mark in marks]} for i, name in enumerate(("pages", "starts", "opened"))
            }
            await upsert(DispatchLogChunk.get_pymongo_collection(), chunk, {"$push": pushed})
        head = await DispatchLogDirectory.get(DISPATCH_LOG_ID)
        starts = dict(zip(head.chunks, head.chunk_starts, strict=False)) if head else {}
        changed = dict(starts)
        for chunk, marks in by_chunk.items():
            lowest = min(mark[1] for mark in marks)
            changed[chunk] = min(changed.get(chunk, lowest), lowest)
        low_page = min((record[0] for record in records), default=0)
        update: dict[str, Any] = {"$min": {"low_page": min(0, low_page)}}
        if changed != starts:
            chunks = sorted(changed)
            update["$set"] = {"chunks": chunks, "chunk_starts": [changed[chunk] for chunk in chunks]}
        await upsert(DispatchLogDirectory.get_pymongo_collection(), DISPATCH_LOG_ID, update)

    async def newest(self, *, before: PydanticObjectId | None, limit: int) -> tuple[list[Dispatch], str | None]:
        """Up to `limit` dispatches with an id below `before` (all when None), newest first, and the `before` of
        the next page (None on the last)."""
        directory = await _directory()
        await (directory.load_top() if before is None else directory.load_around(before))
        marks, low = directory.marks, directory.low
        need = limit + 1
        page = first_page(marks, before)
        found: list[Dispatch] = []
        counts: list[int] = []
        # The page above the newest recorded one is usually empty: read it with the next one.
        width = 2 if before is None else 1
        while page >= low:
            numbers = list(range(page, max(page - width, low - 1), -1))
            pages = await asyncio.gather(*(Dispatch.find({"log_page": number}).to_list() for number in numbers))
            for dispatches in pages:
                wanted = [d for d in dispatches if before is None or _id_of(d) < before]
                found += wanted
                counts.append(len(wanted))
            found.sort(key=_id_of, reverse=True)
            page, width = numbers[-1] - 1, 1
            await directory.load([chunk_of(numbers[-1])])
            if finished(marks, numbers[-1], low, counts, [_id_of(d) for d in found[:need]], need):
                break
        return newest_of(found, limit)

    async def backfill(self) -> bool:
        """Give pages to dispatches stored before the log existed: -1, -2, ... newest first, 50 to a page, by one
        process at a time. Idempotent; a crash only leaves a page part filled. True once done (now or before)."""
        head = await DispatchLogDirectory.get(DISPATCH_LOG_ID)
        if head is not None and head.backfilled and not head.pages:
            return True
        async with self._leases.try_hold(BACKFILL_LEASE, 2 * BACKFILL_READ_TIMEOUT) as lease:
            if lease is None:
                return False
            await self._chunk_legacy_marks()
            if head is not None and head.backfilled:
                return True
            collection = Dispatch.get_pymongo_collection()
            with pymongo.timeout(BACKFILL_READ_TIMEOUT):
                # Without a page: a scan on FerretDB (null is never pushed down), once per database.
                rows: list[dict[str, Any]] = await collection.find({"log_page": None}, {"_id": 1}).to_list()
            ids = sorted((PydanticObjectId(row["_id"]) for row in rows), reverse=True)
            page = (await _directory()).low - 1
            for start in range(0, len(ids), LOG_PAGE_SIZE):
                chunk = ids[start : start + LOG_PAGE_SIZE]
                await lease.renew()
                # Older pages hold older dispatches: the newest of this one bounds them (no race here).
                await self._record_page(page, min(chunk), max(chunk))
                await gather_bounded(collection.update_one({"_id": oid}, {"$set": {"log_page": page}}) for oid in chunk)
                page -= 1
            await lease.renew()
            async with self._locks.hold(DIRECTORY_LOCK):
                await DispatchLogDirectory.get_pymongo_collection().update_one(
                    {"_id": DISPATCH_LOG_ID}, {"$set": {"backfilled": True}}, upsert=True
                )
            if ids:
                log.info("gave log pages to %d dispatches stored before the log", len(ids))
            return True

    async def _chunk_legacy_marks(self) -> None:
        """Move the marks that older versions kept in the head into chunks (idempotent: a mark recorded twice is
        merged when read)."""
        async with self._locks.hold(DIRECTORY_LOCK):
            head = await DispatchLogDirectory.get(DISPATCH_LOG_ID)
            if head is None or not head.pages:
                return
            legacy = list(zip(head.pages, head.starts, head.opened, strict=False))
            await self._record_held(legacy)
            await DispatchLogDirectory.get_pymongo_collection().update_one(
                {"_id": DISPATCH_LOG_ID}, {"$set": {"pages": [], "starts": [], "opened": []}}
            )
            log.info("moved %d page marks of the log of sends into chunks", len(legacy))

    async def trim(self) -> None:
        """Skip the emptied pages at the bottom of the log (retention deletes the oldest dispatches): the oldest
        page of the log then reads no empty pages below it. Pages below the newest two never get new dispatches."""
        directory = await _directory()
        if directory.head is None or not directory.head.backfilled:
            return
        await directory.load_top()
        low = directory.low
        top = max(0, max(directory.marks, default=0))
        page = low
        while page < top - 1 and not await Dispatch.find({"log_page": page}).to_list():
            page += 1
        if page > low:
            async with self._locks.hold(DIRECTORY_LOCK):
                await DispatchLogDirectory.get_pymongo_collection().update_one(
                    {"_id": DISPATCH_LOG_ID}, {"$max": {"kept_from": page}}
                )


async def dispatch_page(
    log: DispatchLog, counts: ReadCountSource, *, before: str | None, limit: int
) -> tuple[list[DispatchStats], str | None]:
    """One page of the Sent log, newest first, with each dispatch's read count; a malformed `before` is a
    ValidationFailed (422)."""
    found, next_before = await log.newest(before=parse_cursor(before), limit=limit)
    read = await counts.counts(found)
    return [DispatchStats(dispatch, read.get(_id_of(dispatch), 0)) for dispatch in found], next_before
