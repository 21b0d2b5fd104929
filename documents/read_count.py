"""Read counts of sends: a tally inserted for every read, folded into counters by one process at a time.

Recording a read is one insert (a tally). Every few seconds one process folds the tallies of a closed slot into
counters and deletes them; a count is its counter plus the tallies not folded yet. Every query here is by `_id` or
by equality on one field (`log_page`, `fold_slot`, `dispatch_id`), which FerretDB pushes down to its backend; the
indexes below serve the same queries on MongoDB.

Slots: a tally carries the number of the slot that was open when it was written (`FoldState.open_slot`). A
counter records the last slot folded into it (`applied_slot`), set in the same update as its value, so a tally is
in a counter exactly when `tally.fold_slot <= counter.applied_slot`: folding again, or after a crash between the
counter update and the tally deletion, never counts a tally twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from tidings.documents.clock import utcnow
from tidings.documents.notification import BROADCAST_PAGE_SIZE

FOLD_STATE_ID = "read_counts"
COVERAGE_SUMMARY_ID = "summary"


class ReadTally(Document):
    """`n` more readers of dispatch `dispatch_id` (negative: a broadcast's receipt replaced by a read-all), with the
    dispatch's log page (None when it could not be found), by which counts read the tallies of a page of the log."""

    dispatch_id: PydanticObjectId
    log_page: int | None = None
    n: int
    fold_slot: int

    class Settings:
        name = "read_tallies"
        # {log_page: p} (a count), {fold_slot: k} (the fold), {dispatch_id: D} (retention).
        indexes: ClassVar = [
            IndexModel([("log_page", ASCENDING)]),
            IndexModel([("fold_slot", ASCENDING)]),
            IndexModel([("dispatch_id", ASCENDING)]),
        ]


class CoverageTally(Document):
    """One more reader of every broadcast numbered `first_seq <= seq < end_seq`: a user's read-all."""

    first_seq: int
    end_seq: int
    fold_slot: int

    class Settings:
        name = "coverage_tallies"
        # {fold_slot: k}: the fold, and a count reading the slots not folded yet.
        indexes: ClassVar = [IndexModel([("fold_slot", ASCENDING)])]


class ReadCounter(Document):
    """Folded reads of the dispatches of one log page (id = Dispatch.log_page), by dispatch id (hex): reads of a
    direct send's notifications, or receipts of a broadcast (a read-all's coverage is counted by broadcast number,
    in CoveragePage). One document per page of the log, so a page of the Sent list reads one or two."""

    id: int  # type: ignore[assignment]
    reads: dict[str, int] = Field(default_factory=dict)
    applied_slot: int = -1

    class Settings:
        name = "read_counters"


def _zeros() -> list[int]:
    return [0] * BROADCAST_PAGE_SIZE


class CoveragePage(Document):
    """Read-alls as a difference array over broadcast numbers: `diff[j]` is the change of the reader count at
    broadcast `id * BROADCAST_PAGE_SIZE + j`. Its id is the page number."""

    id: int  # type: ignore[assignment]
    diff: list[int] = Field(default_factory=_zeros)
    applied_slot: int = -1

    class Settings:
        name = "coverage_pages"


class CoverageSummary(Document):
    """The one document (id "summary") with each coverage page's total: `totals[k] = sum(page k's diff)`. The
    reader count of broadcast s is sum(totals[:s // size]) + sum(page(s // size).diff[:s % size + 1])."""

    id: str = Field(default=COVERAGE_SUMMARY_ID)  # type: ignore[assignment]
    totals: list[int] = Field(default_factory=list)
    applied_slot: int = -1

    class Settings:
        name = "coverage_summary"


class FoldState(Document):
    """The one document (id "read_counts") that says where tallies go and what has been folded.

    Tallies are written to `open_slot`. Slots next_fold .. open_slot - 1 are closed, not folded yet:
    `closed_at[i]` is when slot next_fold + i was closed. Slots below next_fold are folded and deleted.
    Written only by the process that holds the fold's lease.
    """

    id: str = Field(default=FOLD_STATE_ID)  # type: ignore[assignment]
    open_slot: int = 0
    opened_at: datetime = Field(default_factory=utcnow)
    next_fold: int = 0
    closed_at: list[datetime] = Field(default_factory=list)

    class Settings:
        name = "read_fold_state"
