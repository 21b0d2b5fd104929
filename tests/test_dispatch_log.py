"""The paged log of sends (server/services/dispatch_log.py): numbers from Redis, pages read by equality, a `before`
cursor, races and a lost counter, the backfill of older databases, and the panel's Sent list built on it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId
from bson import ObjectId

from tests.conftest import AppFactory
from tests.realtime import API, send
from tests.test_admin_panel import older_link, open_panel, row_with, rows_of
from tidings.documents import Dispatch, DispatchLogChunk, DispatchLogDirectory
from tidings.documents.dispatch_log import CHUNK_PAGES, DISPATCH_LOG_ID, LOG_PAGE_SIZE
from tidings.documents.ids import new_id
from tidings.server.adapters.errors import ValidationFailed
from tidings.server.adapters.leases import Leases
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.numbering import MemoryNumbering
from tidings.server.keys import dispatch_log_key, notifications_key, read_counts_key, redis_key
from tidings.server.services import dispatch_log as dispatch_log_module
from tidings.server.services.dispatch_log import DispatchLog, dispatch_page
from tidings.server.settings import Settings

Client = TestClient[Any, Any]


@dataclass
class Log:
    client: Client
    settings: Settings
    log: DispatchLog

    @property
    def counter_key(self) -> str:
        return f"{self.settings.redis_prefix}dispatch_log:number"


@pytest.fixture
async def log(make_client: AppFactory) -> AsyncIterator[Log]:
    client, _, settings = await make_client(read_count_fold_interval=3600.0)
    yield Log(client, settings, client.app[dispatch_log_key])


def dispatch(title: str = "d", oid: PydanticObjectId | None = None) -> Dispatch:
    return Dispatch(id=oid or new_id(), title=title, body="", broadcast=False, recipient_count=1)


async def store(log: DispatchLog, made: Dispatch) -> Dispatch:
    await log.assign(made)
    await made.insert()
    return made


async def make(log: DispatchLog, count: int, *, at_once: int = 10) -> list[Dispatch]:
    """`count` dispatches, `at_once` of them concurrently (ids and numbers then come in slightly different orders)."""
    made: list[Dispatch] = []
    for start in range(0, count, at_once):
        made += await asyncio.gather(
            *(store(log, dispatch(f"d{n}")) for n in range(start, min(count, start + at_once)))
        )
    return made


async def walk(log: DispatchLog, limit: int) -> list[PydanticObjectId | None]:
    """Every dispatch of the log, page by page."""
    seen: list[PydanticObjectId | None] = []
    before: PydanticObjectId | None = None
    while True:
        page, cursor = await log.newest(before=before, limit=limit)
        assert len(page) <= limit
        seen += [d.id for d in page]
        if cursor is None:
            return seen
        assert len(page) == limit
        assert cursor == str(page[-1].id)
        before = PydanticObjectId(cursor)


def newest_first(made: list[Dispatch]) -> list[PydanticObjectId | None]:
    return sorted((d.id for d in made), key=str, reverse=True)


async def test_the_log_runs_newest_first_across_pages_with_before(log: Log) -> None:
    made = await make(log.log, 3 * LOG_PAGE_SIZE + 17)
    assert sorted({d.log_page or 0 for d in made}) == [0, 1, 2, 3]
    directory = await DispatchLogDirectory.get(DISPATCH_LOG_ID)
    chunk = await DispatchLogChunk.get(0)
    assert directory is not None and directory.chunks == [0] and chunk is not None
    assert sorted(chunk.pages) == [0, 1, 2, 3] and directory.chunk_starts == [min(chunk.starts)]
    for limit in (1, 7, 20, 25, 50, 51, 500):
        assert await walk(log.log, limit) == newest_first(made), limit
    # A cursor anywhere, also an id that is no dispatch's.
    ordered = newest_first(made)
    for index in (0, 16, 17, 66, 67, 120, 166):
        before = ordered[index]
        assert before is not None
        page, _ = await log.log.newest(before=before, limit=20)
        assert [d.id for d in page] == ordered[index + 1 : index + 21]
    page, cursor = await log.log.newest(before=new_id(), limit=5)
    assert [d.id for d in page] == ordered[:5] and cursor == str(ordered[4])
    assert await log.log.newest(before=PydanticObjectId("0" * 24), limit=5) == ([], None)


async def test_a_dispatch_numbered_after_a_newer_one_is_still_in_order(log: Log) -> None:
    made = await make(log.log, LOG_PAGE_SIZE - 1, at_once=1)
    # Two sends race: the older id gets the later number, which starts page 1; the newer one ends page 0.
    older, newer = dispatch("older"), dispatch("newer")
    await store(log.log, newer)
    await store(log.log, older)
    assert (newer.log_page, older.log_page) == (0, 1)
    made += [older, newer, *await make(log.log, LOG_PAGE_SIZE + 3, at_once=1)]
    for limit in range(1, 8):
        assert await walk(log.log, limit) == newest_first(made), limit
    ordered = newest_first(made)
    for index in range(len(ordered)):
        before = ordered[index]
        assert before is not None
        page, _ = await log.log.newest(before=before, limit=3)
        assert [d.id for d in page] == ordered[index + 1 : index + 4], index


class Timeline:
    """A clock for sends: ids made at chosen times (the log's page marks too, through new_id)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime.now(UTC) - timedelta(days=1)
        self.pages_read: list[int] = []
        monkeypatch.setattr(dispatch_log_module, "new_id", self.id)
        find = Dispatch.find

        def spy(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], dict) and "log_page" in args[0]:
                self.pages_read.append(args[0]["log_page"])
            return find(*args, **kwargs)

        monkeypatch.setattr(Dispatch, "find", spy)

    def id(self) -> PydanticObjectId:
        return PydanticObjectId(ObjectId.from_datetime(self.now).binary[:4] + os.urandom(8))

    def at(self, minute: float) -> Dispatch:
        self.now = datetime.now(UTC) - timedelta(days=1) + timedelta(minutes=minute)
        return dispatch(f"m{minute}", self.id())


async def test_sends_far_apart_read_only_the_pages_they_need(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = Timeline(monkeypatch)
    made = [await store(log.log, timeline.at(minute)) for minute in range(4 * LOG_PAGE_SIZE - 1)]  # one a minute
    # A race at the boundary of pages 3 and 4: the older id gets the later number, which starts page 4.
    older, newer = timeline.at(200.2), timeline.at(200.6)
    made += [await store(log.log, newer), await store(log.log, older)]
    assert (newer.log_page, older.log_page) == (3, 4)
    made += [await store(log.log, timeline.at(minute)) for minute in range(201, 230)]
    ordered = newest_first(made)
    timeline.pages_read.clear()
    page, _ = await log.log.newest(before=None, limit=20)
    assert [d.id for d in page] == ordered[:20]
    # Page 4 and the one above it: page 4 holds 30, and page 3 opened long before the 21st newest was sent.
    assert timeline.pages_read == [5, 4]
    cursor = made[120].id
    assert cursor is not None
    timeline.pages_read.clear()
    page, _ = await log.log.newest(before=cursor, limit=20)
    assert [d.id for d in page] == ordered[ordered.index(cursor) + 1 :][:20]
    # Page 2 (the cursor's) and page 1: page 3 started 30 minutes after the cursor, page 1 opened long before.
    assert timeline.pages_read == [2, 1]
    # Around the race, every cursor and page size keeps the order.
    for limit in (1, 3, 20):
        assert await walk(log.log, limit) == ordered
    for index in range(len(ordered) - 40, len(ordered)):
        before = ordered[index]
        assert before is not None
        page, _ = await log.log.newest(before=before, limit=3)
        assert [d.id for d in page] == ordered[index + 1 : index + 4], index


async def test_a_lost_counter_starts_a_fresh_page_and_order_holds(log: Log) -> None:
    redis = log.client.app[redis_key]
    made = await make(log.log, 60)
    assert await redis.get(log.counter_key) == b"59"
    await redis.delete(log.counter_key)  # Redis restarted without its data
    made += await make(log.log, 30)
    assert sorted({d.log_page or 0 for d in made[60:]}) == [2]  # page 1 was under way: a fresh page after it
    assert await redis.get(log.counter_key) == b"129"
    await redis.delete(log.counter_key)
    made += await make(log.log, 5)
    assert {d.log_page for d in made[90:]} == {3}
    for limit in (1, 10, 25, 95):
        assert await walk(log.log, limit) == newest_first(made), limit


async def test_without_redis_the_counter_lives_in_the_process(make_client: AppFactory) -> None:
    client, _, settings = await make_client(redis_url=None, read_count_fold_interval=3600.0)
    log = client.app[dispatch_log_key]
    made = await make(log, 70)
    assert sorted({d.log_page or 0 for d in made}) == [0, 1]
    # Another process's life (a restart): its counter starts on a fresh page after the last recorded one.
    again = DispatchLog(MemoryNumbering(), Locks(None, "", settings.lock_timeout), Leases(None, ""))
    made += await make(again, 10)
    assert {d.log_page for d in made[70:]} == {2}
    assert await walk(log, 30) == newest_first(made)


async def older_database(count: int) -> list[PydanticObjectId]:
    """Dispatches as a version without the log stored them (no log_page), and no directory."""
    ids = [new_id() for _ in range(count)]
    await Dispatch.get_pymongo_collection().insert_many(
        [{"_id": oid, "title": "old", "body": "", "broadcast": False, "recipient_count": 1} for oid in ids]
    )
    await DispatchLogDirectory.get_pymongo_collection().delete_many({})
    await DispatchLogChunk.get_pymongo_collection().delete_many({})
    return ids


async def test_the_backfill_pages_older_dispatches_below_new_ones(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    old = await older_database(2 * LOG_PAGE_SIZE + 20)
    # Stopped half way: after the first page, and after recording the second page but before filling it.
    record_page = log.log._record_page
    calls = 0

    async def stop_after_recording(page: int, start: PydanticObjectId, opened: PydanticObjectId) -> None:
        nonlocal calls
        calls += 1
        await record_page(page, start, opened)
        if calls == 2:
            raise RuntimeError("stopped")

    monkeypatch.setattr(log.log, "_record_page", stop_after_recording)
    with pytest.raises(RuntimeError):
        await log.log.backfill()
    monkeypatch.undo()
    assert await log.log.backfill() is True
    stored = {d.id: d.log_page for d in await Dispatch.find({}).to_list()}
    assert all(page is not None and page < 0 for page in stored.values())
    assert sorted({page or 0 for page in stored.values()}) == [-4, -3, -1]  # -2 was recorded, then left empty
    assert await log.log.backfill() is True  # done: nothing more
    assert {d.id: d.log_page for d in await Dispatch.find({}).to_list()} == stored
    made = await make(log.log, 30)
    assert {d.log_page for d in made} == {0}
    expected = sorted([*old, *(d.id for d in made if d.id)], key=str, reverse=True)
    for limit in (1, 20, 25, 60):
        assert await walk(log.log, limit) == expected, limit


async def test_pages_emptied_by_retention_are_skipped(log: Log) -> None:
    made = await make(log.log, 3 * LOG_PAGE_SIZE, at_once=1)
    oldest = made[: LOG_PAGE_SIZE + 10]
    await Dispatch.find({"_id": {"$in": [d.id for d in oldest]}}).delete()
    await log.log.trim()
    directory = await DispatchLogDirectory.get(DISPATCH_LOG_ID)
    assert directory is not None and directory.kept_from == 1
    await log.log.trim()  # again: nothing more to skip
    assert await walk(log.log, 25) == newest_first(made[LOG_PAGE_SIZE + 10 :])


async def test_dispatch_page_gives_read_counts_and_refuses_a_bad_cursor(log: Log) -> None:
    made = await make(log.log, 30)
    counts = log.client.app[read_counts_key]
    first, second = made[-1].id, made[-2].id
    assert first is not None and second is not None
    await counts.direct_read({first: 1, second: 2})
    await counts.direct_read({first: 1})
    stats, cursor = await dispatch_page(log.log, counts, before=None, limit=25)
    ordered = newest_first(made)
    assert [s.dispatch.id for s in stats] == ordered[:25] and cursor == str(ordered[24])
    by_id = {s.dispatch.id: s.read_count for s in stats}
    assert (by_id[first], by_id[second]) == (2, 2)
    assert sum(by_id.values()) == 4
    stats, cursor = await dispatch_page(log.log, counts, before=cursor, limit=25)
    assert [s.dispatch.id for s in stats] == ordered[25:] and cursor is None
    with pytest.raises(ValidationFailed):
        await dispatch_page(log.log, counts, before="not-an-id", limit=25)


async def test_the_panel_lists_sends_across_pages_with_read_counts(make_client: AppFactory) -> None:
    """Needs NotificationService.send to call DispatchLog.assign and .dispatches to call dispatch_page."""
    client, accounts, _ = await make_client()
    panel = await open_panel(client, accounts)
    users = [await accounts.user() for _ in range(2)]
    for number in range(27):
        await send(client, panel.admin, user_ids=[user.id for user in users], title=f"n{number:02d}")
    [broadcast] = await send(client, panel.admin, broadcast=True, title="everyone")
    late = await accounts.user()  # joined after the broadcast
    response = await client.post(f"{API}/notifications/read-all", headers=users[0].headers)
    assert response.status == 204
    response = await client.post(f"{API}/notifications/{broadcast['id']}/read", headers=users[1].headers)
    assert response.status == 204
    response = await client.post(f"{API}/notifications/read-all", headers=late.headers)
    assert response.status == 204
    await client.app[notifications_key].read_cleanup.join()  # read-alls tally their direct reads after it
    first = await panel.page("/admin/notifications")
    rows = rows_of(first)
    assert len(rows) == 25
    assert row_with(first, "everyone").endswith(f"{panel.admin.email} everyone 2")
    assert row_with(first, "n26").endswith("2 users 1 / 2")
    assert [row.split()[3] for row in rows[1:]] == [f"n{number:02d}" for number in range(26, 2, -1)]
    link = older_link(first)
    assert link is not None
    second = await panel.page(link)
    assert [row.split()[3] for row in rows_of(second)] == ["n02", "n01", "n00"]
    assert row_with(second, "n00").endswith("2 users 1 / 2")
    assert older_link(second) is None


async def test_marks_kept_in_the_head_by_older_versions_move_into_chunks(log: Log) -> None:
    made = await make(log.log, 2 * LOG_PAGE_SIZE + 5)
    chunks = await DispatchLogChunk.find({}).to_list()
    legacy = sorted(mark for chunk in chunks for mark in chunk.marks())
    await DispatchLogChunk.get_pymongo_collection().delete_many({})
    await DispatchLogDirectory.get_pymongo_collection().replace_one(
        {"_id": DISPATCH_LOG_ID},
        {
            "_id": DISPATCH_LOG_ID,
            "pages": [page for page, _, _ in legacy],
            "starts": [start for _, start, _ in legacy],
            "opened": [opened for _, _, opened in legacy],
            "backfilled": True,
        },
    )
    assert await log.log.backfill()
    directory = await DispatchLogDirectory.get(DISPATCH_LOG_ID)
    assert directory is not None and directory.pages == [] and directory.chunks == [0]
    chunk = await DispatchLogChunk.get(0)
    assert chunk is not None and chunk.marks() == legacy
    assert await walk(log.log, 7) == newest_first(made)


async def test_a_log_spanning_chunks_reads_across_them(log: Log) -> None:
    made = await make(log.log, 3 * LOG_PAGE_SIZE, at_once=1)
    # Move the three pages to the end of chunk 0 and the start of chunk 1, as a long log has them.
    for page in (2, 1, 0):
        await Dispatch.find({"log_page": page}).update({"$set": {"log_page": page + CHUNK_PAGES - 1}})
    chunk = await DispatchLogChunk.get(0)
    assert chunk is not None
    await DispatchLogChunk.get_pymongo_collection().delete_many({})
    await DispatchLogDirectory.get_pymongo_collection().delete_many({})
    await log.log._record_held(  # noqa: SLF001: the directory a long log would have
        [(page + CHUNK_PAGES - 1, start, opened) for page, start, opened in chunk.marks()]
    )
    directory = await DispatchLogDirectory.get(DISPATCH_LOG_ID)
    assert directory is not None and directory.chunks == [0, 1]
    for limit in (1, 20, 49, 50, 51, 500):
        assert await walk(log.log, limit) == newest_first(made), limit
