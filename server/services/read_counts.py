"""How many recipients have read each send: tallies inserted on every read, folded into counters in the background.

Recording a read is one insert: a ReadTally (n reads of a dispatch) or a CoverageTally (a read-all: one more
reader of every broadcast numbered first_seq <= seq < end_seq). Nothing is updated on the read path, so nothing
needs a lock there, and no update of a shared counter can be lost on FerretDB (which applies updates as
read-modify-write).

Folding (`fold`, every READ_COUNT_FOLD_INTERVAL seconds, by the one process holding the fold's lease): tallies are
written to the open slot (FoldState.open_slot, cached by each process for SLOT_CACHE_SECONDS). Every SLOT_SECONDS
the fold closes the open slot; a closed slot is folded once no write can still land in it: the grace (2 x
MONGODB_TIMEOUT, the longest an insert started before the close can take) plus the cache's age. Folding slot k
adds its tallies to the counters whose `applied_slot` is below k and sets `applied_slot = k` in the same update,
then deletes the slot's tallies and records k as folded. A crash anywhere only repeats work that is skipped.

Counting (`counts`): a counter plus its tallies from slots above its `applied_slot`. Tallies are read before
counters: a fold in between shows in the counters, since a slot's tallies are deleted only after its counters are
updated.

Counters:
- ReadCounter, one per page of the log of sends (id = Dispatch.log_page), with the reads of each of its
  dispatches: reads of a direct send's notifications, or receipts of a broadcast. A tally carries its dispatch's
  log page (looked up once per process and dispatch), so a page of the Sent list reads the tallies and counters of
  its one or two log pages, not 2 documents per dispatch. Kept here rather than on Dispatch: a count must read its
  counter after its tallies (the dispatches in hand were read before), and the fold, the only writer, then never
  writes a document anyone else writes.
- Coverage of read-alls by broadcast number: a difference array (a read-all adds +1 at first_seq, -1 at end_seq)
  in pages of BROADCAST_PAGE_SIZE (CoveragePage, id = seq // BROADCAST_PAGE_SIZE) and one CoverageSummary of page
  totals, so the readers of broadcast s are a prefix sum over 2 documents read by _id.

Queries, each by _id or by equality on one field (FerretDB pushes those down; MongoDB index in brackets):
ReadTally {log_page: p} [log_page], {fold_slot: k} [fold_slot], {dispatch_id: D} [dispatch_id] (a dispatch without
a log page, and retention); CoverageTally {fold_slot: k} [fold_slot]; ReadCounter, CoveragePage, CoverageSummary,
FoldState, Dispatch by _id [_id].
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
from beanie import Document, PydanticObjectId
from pymongo.errors import DuplicateKeyError

from tidings.documents import (
    CoveragePage,
    CoverageSummary,
    CoverageTally,
    Dispatch,
    DispatchLogDirectory,
    FoldState,
    ReadCounter,
    ReadTally,
)
from tidings.documents.dispatch_log import DISPATCH_LOG_ID
from tidings.documents.notification import BROADCAST_PAGE_SIZE
from tidings.documents.read_count import COVERAGE_SUMMARY_ID, FOLD_STATE_ID
from tidings.server.adapters.leases import Lease, Leases
from tidings.server.adapters.tasks import gather_bounded

log = logging.getLogger(__name__)


FOLD_LEASE = "read-counts-fold"
# A slot stays open this long: a count reads the slots not folded yet, about (grace + this) / this of them.
SLOT_SECONDS = 5.0
# How long a process writes to the open slot it last read before reading it again.
SLOT_CACHE_SECONDS = 1.0
# FerretDB on SQLite refuses to delete more than about 32,000 documents at once. A slot of up to this many tallies is
# deleted by one equality; a bigger one in batches of ids, each pass decoding the slot again.
DELETE_BATCH = 20_000
# Log pages of dispatches each process remembers (a page never changes once given).
PAGE_CACHE_SIZE = 20_000
# A dispatch not found yet is looked for again this many times, this far apart (its send may not have stored it).
LOOKUPS, LOOKUP_PAUSE = 3, 0.05


class FoldPostponed(Exception):
    """A tally's dispatch has no log page yet (the start-up backfill is under way): fold that slot later."""


# Pure parts: the difference array over broadcast numbers.


def coverage_points(first_seq: int, end_seq: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """A read-all of broadcasts first_seq <= seq < end_seq as difference-array points: (seq, change)."""
    return (first_seq, 1), (end_seq, -1)


def page_changes(ranges: Iterable[tuple[int, int]]) -> dict[int, dict[int, int]]:
    """The difference-array changes of read-all ranges, by page and offset within the page (zeros left out)."""
    changes: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for first_seq, end_seq in ranges:
        if end_seq <= first_seq:
            continue
        for seq, change in coverage_points(first_seq, end_seq):
            page, offset = divmod(seq, BROADCAST_PAGE_SIZE)
            changes[page][offset] += change
    return {
        page: {offset: change for offset, change in offsets.items() if change}
        for page, offsets in changes.items()
        if any(offsets.values())
    }


def apply_changes(diff: list[int], offsets: Mapping[int, int]) -> list[int]:
    """A page's difference array with `offsets` added."""
    result = list(diff) + [0] * (BROADCAST_PAGE_SIZE - len(diff))
    for offset, change in offsets.items():
        result[offset] += change
    return result


def apply_totals(totals: list[int], by_page: Mapping[int, int]) -> list[int]:
    """Page totals with `by_page` added (the list grows to the highest page)."""
    result = list(totals)
    for page, change in by_page.items():
        if page >= len(result):
            result.extend([0] * (page + 1 - len(result)))
        result[page] += change
    return result


def folded_coverage(seq: int, totals: Sequence[int], diff: Sequence[int]) -> int:
    """Readers of broadcast `seq` through read-alls, from the summary's totals and the difference array of its page."""
    page, offset = divmod(seq, BROADCAST_PAGE_SIZE)
    return sum(totals[:page]) + sum(diff[: offset + 1])


def unfolded_coverage(seq: int, tallies: Iterable[tuple[int, int, int]], *, summary_slot: int, page_slot: int) -> int:
    """Readers of broadcast `seq` through read-alls tallied as (fold_slot, first_seq, end_seq) and not yet in the
    counters: a point below the broadcast's page is in the summary once its slot is, one on the page in the page."""
    page = seq // BROADCAST_PAGE_SIZE
    total = 0
    for slot, first_seq, end_seq in tallies:
        if end_seq <= first_seq:
            continue
        for point, change in coverage_points(first_seq, end_seq):
            point_page = point // BROADCAST_PAGE_SIZE
            below = point_page < page and slot > summary_slot
            on_page = point_page == page and point <= seq and slot > page_slot
            if below or on_page:
                total += change
    return total


def _id_of(document: Document) -> Any:
    assert document.id is not None
    return document.id


class ReadCounts:
    """Read counts of dispatches: `direct_read`, `receipts` and `coverage` record, `counts` reads, `fold` folds."""

    def __init__(
        self,
        leases: Leases,
        *,
        grace: float,
        slot_seconds: float = SLOT_SECONDS,
        cache_seconds: float = SLOT_CACHE_SECONDS,
        step_timeout: float = 30.0,
    ) -> None:
        self._leases = leases
        # A closed slot is folded once writes that read it as open have surely landed.
        self._wait = timedelta(seconds=grace + cache_seconds)
        self._slot_length = timedelta(seconds=slot_seconds)
        self._cache_seconds = cache_seconds
        # Each step of a fold (a read, a group of writes) may take this long; the lease outlives three of them.
        self._step_timeout = step_timeout
        self._lease_ttl = 3 * step_timeout
        self._slot: int | None = None
        self._slot_read_at = 0.0
        self._slot_lock = asyncio.Lock()
        self._pages: OrderedDict[PydanticObjectId, int] = OrderedDict()

    # Recording: one insert each.

    async def direct_read(self, by_dispatch: Mapping[PydanticObjectId, int]) -> None:
        """`n` notifications of dispatch D were read (one tally per dispatch, one insert)."""
        await self._tally(by_dispatch)

    async def receipts(self, by_dispatch: Mapping[PydanticObjectId, int]) -> None:
        """+1 when a user marks one broadcast read by itself; -1 when a read-all replaces that receipt."""
        await self._tally(by_dispatch)

    async def coverage(self, first_seq: int, end_seq: int) -> None:
        """One more reader of every broadcast numbered first_seq <= seq < end_seq (a read-all)."""
        if end_seq <= first_seq:
            return
        slot = await self._open_slot()
        await CoverageTally(first_seq=first_seq, end_seq=end_seq, fold_slot=slot).insert()

    async def _tally(self, by_dispatch: Mapping[PydanticObjectId, int]) -> None:
        changes = {dispatch_id: n for dispatch_id, n in by_dispatch.items() if n}
        if not changes:
            return
        pages = await self._pages_of(changes)
        # The slot last, right before the insert: the fold's wait counts from when the slot was read.
        slot = await self._open_slot()
        await ReadTally.insert_many(
            [
                ReadTally(dispatch_id=dispatch_id, log_page=pages.get(dispatch_id), n=n, fold_slot=slot)
                for dispatch_id, n in changes.items()
            ]
        )

    async def _pages_of(self, dispatch_ids: Iterable[PydanticObjectId]) -> dict[PydanticObjectId, int | None]:
        """Each dispatch's log page, from this process's memory or its document (None: not found, or no page)."""
        wanted = list(dispatch_ids)
        missing = [dispatch_id for dispatch_id in wanted if dispatch_id not in self._pages]
        for dispatch_id, page in zip(missing, await gather_bounded(map(_page_of_dispatch, missing)), strict=True):
            if page is not None:
                self._pages[dispatch_id] = page
                if len(self._pages) > PAGE_CACHE_SIZE:
                    self._pages.popitem(last=False)
        return {dispatch_id: self._pages.get(dispatch_id) for dispatch_id in wanted}

    async def _open_slot(self) -> int:
        """The slot tallies go to: the process's cached copy, read again when older than SLOT_CACHE_SECONDS (the
        age counts from before the read, which is what the fold's wait assumes)."""
        if self._slot is not None and time.monotonic() - self._slot_read_at < self._cache_seconds:
            return self._slot
        async with self._slot_lock:
            if self._slot is not None and time.monotonic() - self._slot_read_at < self._cache_seconds:
                return self._slot
            started = time.monotonic()
            state = await self._state()
            self._slot, self._slot_read_at = state.open_slot, started
            return state.open_slot

    @staticmethod
    async def _state() -> FoldState:
        state = await FoldState.get(FOLD_STATE_ID)
        if state is not None:
            return state
        with contextlib.suppress(DuplicateKeyError):  # made meanwhile by another process
            await FoldState().insert()
        state = await FoldState.get(FOLD_STATE_ID)
        assert state is not None
        return state

    # Counting.

    async def counts(self, dispatches: Sequence[Dispatch]) -> dict[PydanticObjectId, int]:
        """How many recipients have read each dispatch, exactly: counters plus the tallies not folded into them."""
        pages = sorted({dispatch.log_page for dispatch in dispatches if dispatch.log_page is not None})
        unpaged = [_id_of(dispatch) for dispatch in dispatches if dispatch.log_page is None]
        seqs = {
            _id_of(dispatch): dispatch.broadcast_seq
            for dispatch in dispatches
            if dispatch.broadcast and dispatch.broadcast_seq is not None
        }
        # Tallies first, then counters (see the module's docstring).
        by_page, by_dispatch, covers = await asyncio.gather(
            gather_bounded(ReadTally.find({"log_page": page}).to_list() for page in pages),
            gather_bounded(ReadTally.find({"dispatch_id": dispatch_id}).to_list() for dispatch_id in unpaged),
            self._unfolded_coverage_tallies() if seqs else _nothing(),
        )
        coverage_pages = sorted({seq // BROADCAST_PAGE_SIZE for seq in seqs.values()})
        counters, summary, coverage_documents = await asyncio.gather(
            gather_bounded(ReadCounter.get(page) for page in pages),
            CoverageSummary.get(COVERAGE_SUMMARY_ID) if seqs else _none(),
            gather_bounded(CoveragePage.get(page) for page in coverage_pages),
        )
        counter_of = dict(zip(pages, counters, strict=True))
        coverage_of = dict(zip(coverage_pages, coverage_documents, strict=True))
        tallies: dict[PydanticObjectId, list[ReadTally]] = defaultdict(list)
        for tally in (tally for found in (*by_page, *by_dispatch) for tally in found):
            tallies[tally.dispatch_id].append(tally)
        ranges = [(tally.fold_slot, tally.first_seq, tally.end_seq) for tally in covers]
        result: dict[PydanticObjectId, int] = {}
        for dispatch in dispatches:
            dispatch_id = _id_of(dispatch)
            counter = counter_of.get(dispatch.log_page) if dispatch.log_page is not None else None
            applied = counter.applied_slot if counter is not None else -1
            count = (counter.reads.get(str(dispatch_id), 0) if counter is not None else 0) + sum(
                tally.n for tally in tallies[dispatch_id] if tally.fold_slot > applied
            )
            seq = seqs.get(dispatch_id)
            if seq is not None:
                page = coverage_of[seq // BROADCAST_PAGE_SIZE]
                count += folded_coverage(seq, summary.totals if summary else [], page.diff if page else [])
                count += unfolded_coverage(
                    seq,
                    ranges,
                    summary_slot=summary.applied_slot if summary else -1,
                    page_slot=page.applied_slot if page else -1,
                )
            result[dispatch_id] = count
        return result

    @staticmethod
    async def _unfolded_coverage_tallies() -> list[CoverageTally]:
        """Read-all tallies of the slots not folded yet: those from next_fold to the open slot."""
        state = await FoldState.get(FOLD_STATE_ID)
        if state is None:
            return []
        found = await gather_bounded(
            CoverageTally.find({"fold_slot": slot}).to_list() for slot in range(state.next_fold, state.open_slot + 1)
        )
        return [tally for slot in found for tally in slot]

    # Folding.

    async def fold(self, *, now: datetime | None = None) -> int:
        """Fold every closed slot old enough, then close the open slot if it has been open long enough; by one
        process at a time (the others skip). The number of slots folded."""
        async with self._leases.try_hold(FOLD_LEASE, self._lease_ttl) as lease:
            if lease is None:
                return 0
            with pymongo.timeout(self._step_timeout):
                state = await self._state()
            now = now or datetime.now(UTC)
            folded = 0
            while state.closed_at and state.closed_at[0] + self._wait <= now:
                try:
                    await self._fold_slot(state.next_fold, lease)
                except FoldPostponed as exc:
                    log.info("read count fold postponed: %s", exc)
                    break
                await lease.renew()
                with pymongo.timeout(self._step_timeout):
                    await state.set(
                        {FoldState.next_fold: state.next_fold + 1, FoldState.closed_at: state.closed_at[1:]}
                    )
                folded += 1
            if now - state.opened_at >= self._slot_length:
                await lease.renew()
                with pymongo.timeout(self._step_timeout):
                    await state.set(
                        {
                            FoldState.open_slot: state.open_slot + 1,
                            FoldState.opened_at: now,
                            FoldState.closed_at: [*state.closed_at, now],
                        }
                    )
            return folded

    async def _fold_slot(self, slot: int, lease: Lease) -> None:
        with pymongo.timeout(self._step_timeout):
            tallies, covers = await asyncio.gather(
                ReadTally.find({"fold_slot": slot}).to_list(), CoverageTally.find({"fold_slot": slot}).to_list()
            )
        await self._fold_counters(slot, tallies, lease)
        await self._fold_coverage(slot, covers, lease)
        await lease.renew()
        await self._delete_slot(slot, tallies, covers)

    async def _fold_counters(self, slot: int, tallies: Sequence[ReadTally], lease: Lease) -> None:
        with pymongo.timeout(self._step_timeout):
            looked_up = await self._pages_of({tally.dispatch_id for tally in tallies if tally.log_page is None})
            unplaced = [dispatch_id for dispatch_id, page in looked_up.items() if page is None]
            if unplaced and not await _backfilled():
                # Stored without a page, or not at all: wait for the backfill if any of them exists.
                exists = await gather_bounded(_page_of_dispatch(oid, tries=1, missing=-1) for oid in unplaced)
                if any(found != -1 for found in exists):
                    raise FoldPostponed("a dispatch stored before the log has no log page yet")
        by_page: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for tally in tallies:
            page = tally.log_page if tally.log_page is not None else looked_up.get(tally.dispatch_id)
            if page is not None:
                by_page[page][str(tally.dispatch_id)] += tally.n
            # Else its dispatch is gone (retention, a send that failed) or never in the log: nothing to count.
        pages = sorted(page for page, reads in by_page.items() if any(reads.values()))
        if not pages:
            return
        with pymongo.timeout(self._step_timeout):
            counters = await gather_bounded(ReadCounter.get(page) for page in pages)
        await lease.renew()
        writes = []
        for page, counter in zip(pages, counters, strict=True):
            if counter is None:
                counter = ReadCounter(id=page)
            if counter.applied_slot < slot:  # else folded before a crash
                for dispatch_id, n in by_page[page].items():
                    counter.reads[dispatch_id] = counter.reads.get(dispatch_id, 0) + n
                counter.applied_slot = slot
                # The values and their mark in one update.
                writes.append(counter.save())
        with pymongo.timeout(self._step_timeout):
            await gather_bounded(writes)

    async def _fold_coverage(self, slot: int, covers: Sequence[CoverageTally], lease: Lease) -> None:
        changes = page_changes((tally.first_seq, tally.end_seq) for tally in covers)
        if not changes:
            return
        pages = sorted(changes)
        with pymongo.timeout(self._step_timeout):
            found, summary = await asyncio.gather(
                gather_bounded(CoveragePage.get(page) for page in pages), CoverageSummary.get(COVERAGE_SUMMARY_ID)
            )
        await lease.renew()
        writes = []
        for page, document in zip(pages, found, strict=True):
            if document is None:
                document = CoveragePage(id=page)
            if document.applied_slot < slot:
                document.diff = apply_changes(document.diff, changes[page])
                document.applied_slot = slot
                writes.append(document.save())
        summary = summary or CoverageSummary()
        if summary.applied_slot < slot:
            by_page = {page: sum(offsets.values()) for page, offsets in changes.items()}
            summary.totals = apply_totals(summary.totals, by_page)
            summary.applied_slot = slot
            writes.append(summary.save())
        with pymongo.timeout(self._step_timeout):
            await gather_bounded(writes)

    async def _delete_slot(self, slot: int, tallies: Sequence[ReadTally], covers: Sequence[CoverageTally]) -> None:
        """Delete a folded slot's tallies: by equality, in batches of ids when there are many."""
        batches: list[tuple[type[Document], Sequence[Document]]] = [(ReadTally, tallies), (CoverageTally, covers)]
        with pymongo.timeout(self._step_timeout):
            for model, found in batches:
                if not found:
                    continue
                if len(found) <= DELETE_BATCH:
                    await model.find({"fold_slot": slot}).delete()
                    continue
                for start in range(0, len(found), DELETE_BATCH):
                    batch = [_id_of(document) for document in found[start : start + DELETE_BATCH]]
                    await model.find({"fold_slot": slot, "_id": {"$in": batch}}).delete()

    async def forget(self, dispatch_ids: Sequence[PydanticObjectId]) -> None:
        """Delete the tallies of deleted dispatches (retention's forget_dispatches), by dispatch_id. Their entries
        in their log page's counter stay: a few bytes each, never read again (the log no longer lists them)."""
        await gather_bounded(ReadTally.find({"dispatch_id": dispatch_id}).delete() for dispatch_id in dispatch_ids)


async def _backfilled() -> bool:
    """Whether every dispatch stored before the log has its page (services/dispatch_log.py's backfill)."""
    directory = await DispatchLogDirectory.get(DISPATCH_LOG_ID)
    return directory is not None and directory.backfilled


async def _page_of_dispatch(
    dispatch_id: PydanticObjectId, *, tries: int = LOOKUPS, missing: int | None = None
) -> int | None:
    """A dispatch's log page, by _id; `missing` when there is no such dispatch (after `tries` looks, LOOKUP_PAUSE
    apart: a read can come while its send is still storing the dispatch)."""
    for attempt in range(tries):
        found = await Dispatch.get_pymongo_collection().find_one({"_id": dispatch_id}, {"log_page": 1})
        if found is not None:
            page = found.get("log_page")
            return int(page) if page is not None else None
        if attempt + 1 < tries:
            await asyncio.sleep(LOOKUP_PAUSE)
    return missing


async def _nothing() -> list[CoverageTally]:
    return []


async def _none() -> CoverageSummary | None:
    return None
