"""The pure parts of the paged log of sends: page arithmetic and which pages a page of the log must read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from beanie import PydanticObjectId
from bson import ObjectId

from tidings.documents import Dispatch, DispatchLogChunk, DispatchLogDirectory
from tidings.documents.dispatch_log import CHUNK_PAGES, LOG_PAGE_SIZE, chunk_of
from tidings.documents.ids import new_id
from tidings.server.services.dispatch_log import (
    RACE_SECONDS,
    PageMark,
    finished,
    first_page,
    lowest_page,
    newest_of,
    page_marks,
    page_of,
    restart_after,
    shifted,
)

pytestmark = pytest.mark.unit

START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def at(seconds: float) -> PydanticObjectId:
    """An id made `seconds` after START."""
    return PydanticObjectId(ObjectId.from_datetime(START + timedelta(seconds=seconds)))


def mark(start: float, opened: float) -> PageMark:
    return PageMark(at(start), at(opened))


def test_numbers_fill_pages_of_fifty() -> None:
    assert LOG_PAGE_SIZE == 50
    assert [page_of(n) for n in (0, 49, 50, 99, 100, 149, 150)] == [0, 0, 1, 1, 2, 2, 3]


def test_a_page_recorded_twice_keeps_its_widest_marks() -> None:
    # model_construct: a Beanie document without a database.
    chunk = DispatchLogChunk.model_construct(
        id=0, pages=[0, 1, 1], starts=[at(0), at(20), at(10)], opened=[at(1), at(21), at(30)]
    )
    assert page_marks(chunk.marks()) == {0: mark(0, 1), 1: mark(10, 30)}
    assert page_marks([]) == {}
    # Marks read from another chunk are added to those already read.
    assert page_marks([(2, at(40), at(41))], page_marks(chunk.marks())) == {
        0: mark(0, 1),
        1: mark(10, 30),
        2: mark(40, 41),
    }


def test_the_head_finds_the_chunk_that_holds_an_id() -> None:
    head = DispatchLogDirectory.model_construct(chunks=[-1, 0, 1], chunk_starts=[at(0), at(100), at(200)])
    assert head.chunk_holding(at(150)) == 0
    assert head.chunk_holding(at(100)) == 0
    assert head.chunk_holding(at(500)) == 1
    assert head.chunk_holding(at(-5)) == -1  # older than everything: the lowest chunk
    assert DispatchLogDirectory.model_construct(chunks=[], chunk_starts=[]).chunk_holding(at(1)) is None
    assert [chunk_of(page) for page in (-1, -CHUNK_PAGES, -CHUNK_PAGES - 1, 0, CHUNK_PAGES - 1, CHUNK_PAGES)] == [
        -1,
        -1,
        -2,
        0,
        0,
        1,
    ]


def test_ids_shift_by_seconds() -> None:
    assert shifted(at(10), 5) == at(15)
    assert shifted(at(10), -RACE_SECONDS) == at(10 - RACE_SECONDS)


def test_a_lost_counter_restarts_on_a_fresh_page_after_the_last_live_one() -> None:
    assert restart_after({}) == -1  # the first number is 0
    assert restart_after({-2: None, -1: None}) == -1  # backfilled pages are below the live ones
    assert restart_after({-1: None, 0: None, 3: None}) == 4 * LOG_PAGE_SIZE - 1
    assert page_of(restart_after({0: None, 3: None}) + 1) == 4


def test_the_first_page_read_is_the_highest_that_can_hold_an_older_id() -> None:
    hour = 3600
    marks = {0: mark(0, 1), 1: mark(hour, hour + 1), 2: mark(2 * hour, 2 * hour + 1)}
    assert first_page(marks, None) == 3  # above the newest: its start may not be recorded yet
    assert first_page({}, None) == 1
    assert first_page({-3: mark(0, 1), -2: mark(5, 6)}, None) == 1  # only backfilled pages: live ones start at 0
    # Page 1 started an hour after the cursor: by time, it holds nothing older.
    assert first_page(marks, at(10)) == 0
    assert first_page(marks, at(hour + 10)) == 1
    # Page 2 started within the race margin after the cursor: it may hold an older id that raced.
    assert first_page(marks, at(2 * hour - RACE_SECONDS / 2)) == 2
    assert first_page(marks, at(3 * hour)) == 3
    # Sends in a burst: by number, the page after the cursor's is the highest that can hold a racing one.
    burst = {page: mark(page, page + 0.5) for page in range(6)}
    assert first_page(burst, at(2.2)) == 3
    assert first_page(burst, at(10)) == 6
    assert first_page({0: mark(0, 0.5), 1: mark(1, 1.5), 3: mark(3, 3.5)}, at(1.2)) == 3  # page 2 not recorded


def test_the_lowest_page_is_the_lowest_backfilled_one_or_where_retention_stopped() -> None:
    assert lowest_page(0) == 0
    assert lowest_page(-4) == -4
    assert lowest_page(-4, kept_from=-2) == -2
    assert lowest_page(3) == 0


def test_reading_stops_once_the_pages_below_hold_nothing_newer() -> None:
    hour = 3600
    marks = {0: mark(0, 1), 1: mark(hour, hour + 1), 2: mark(2 * hour, 2 * hour + 1)}
    newest = [at(2 * hour + 600 - n) for n in range(30)]  # read from page 2 down
    # By time: all of page 1 is older than the 21st newest.
    assert finished(marks, 2, 0, [0, 30], newest, 21)
    assert not finished(marks, 2, 0, [0, 20], newest[:20], 21)  # not enough yet
    assert finished(marks, 0, 0, [3], newest[:3], 21)  # nothing below page 0
    # The 21st newest within the margin of page 2's opening: page 1 may hold newer ones ...
    close = [at(2 * hour + RACE_SECONDS / 2 - n) for n in range(30)]
    assert not finished(marks, 2, 0, [0, 30], close, 21)
    # ... until it is read: by number, nothing below it can.
    assert finished(marks, 1, 0, [0, 30, 50], close + newest, 21)
    assert not finished(marks, 3, 0, [30], newest, 21)  # page 3 has no marks: the next one down is read
    assert finished(marks, 1, -5, [21], [at(hour + 600)] * 21, 21)


def test_newest_of_sorts_by_id_and_gives_the_next_cursor() -> None:
    made = [Dispatch.model_construct(id=oid, title="t", body="", broadcast=False) for oid in ids(5)]
    shuffled = [made[3], made[0], made[4], made[1], made[2]]
    page, cursor = newest_of(shuffled, 3)
    assert [d.id for d in page] == [made[4].id, made[3].id, made[2].id]
    assert cursor == str(made[2].id)
    page, cursor = newest_of(shuffled, 5)
    assert len(page) == 5
    assert cursor is None


def ids(count: int) -> list[PydanticObjectId]:
    return [new_id() for _ in range(count)]
