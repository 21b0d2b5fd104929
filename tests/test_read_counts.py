"""Read counts of sends (server/services/read_counts.py): tallies on every read, folded into counters, exact at
every moment; on the real FerretDB (or MongoDB) and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Account, Accounts, AppFactory
from tests.realtime import API, send
from tidings.documents import (
    CoveragePage,
    CoverageSummary,
    CoverageTally,
    Dispatch,
    FoldState,
    Notification,
    ReadCounter,
    ReadTally,
)
from tidings.documents.ids import new_id, parse_object_id
from tidings.documents.notification import BROADCAST_PAGE_SIZE
from tidings.documents.read_count import FOLD_STATE_ID
from tidings.server.adapters.leases import Leases
from tidings.server.keys import dispatch_log_key, notifications_key, read_counts_key
from tidings.server.services.read_counts import SLOT_CACHE_SECONDS, ReadCounts

Client = TestClient[Any, Any]


@dataclass
class World:
    client: Client
    accounts: Accounts
    admin: Account
    # The app's own ReadCounts records the reads; its fold loop is off (READ_COUNT_FOLD_INTERVAL of an hour).
    counts: ReadCounts
    # Folds without waiting: no grace, slots closed at every fold, the open slot never cached.
    folder: ReadCounts

    async def fold(self) -> None:
        """Fold everything recorded so far, then let the app's cached slot expire, so that no later read is
        written to a slot already folded (the grace and the cache's age are what the real fold waits for)."""
        await self.folder.fold()
        await self.folder.fold()
        await asyncio.sleep(SLOT_CACHE_SECONDS + 0.05)

    async def count(self, *dispatch_ids: Any) -> list[int]:
        dispatches = [await Dispatch.get(parse_object_id(str(oid))) for oid in dispatch_ids]
        assert all(dispatches)
        found = await self.counts.counts([d for d in dispatches if d is not None])
        return [found[d.id] for d in dispatches if d is not None and d.id is not None]

    async def read(self, user: Account, notification_id: str) -> None:
        response = await self.client.post(f"{API}/notifications/{notification_id}/read", headers=user.headers)
        assert response.status == 204, await response.text()

    async def read_all(self, user: Account) -> None:
        """A read-all, and its clean-up in the background, which tallies the direct notifications it marks."""
        response = await self.client.post(f"{API}/notifications/read-all", headers=user.headers)
        assert response.status == 204, await response.text()
        await self.client.app[notifications_key].read_cleanup.join()

    async def direct(self, recipients: int = 10) -> Dispatch:
        """A direct send's dispatch, stored with its log page as a send stores it."""
        made = Dispatch(id=new_id(), title="d", body="", broadcast=False, recipient_count=recipients)
        await self.client.app[dispatch_log_key].assign(made)
        await made.insert()
        return made

    async def broadcasts(self, first_seq: int, count: int) -> list[Dispatch]:
        made = []
        for seq in range(first_seq, first_seq + count):
            made.append(Dispatch(id=new_id(), title="b", body="", broadcast=True, recipient_count=1, broadcast_seq=seq))
            await self.client.app[dispatch_log_key].assign(made[-1])
        await Dispatch.insert_many(made)
        return made


async def reads_of(dispatch: Dispatch) -> int | None:
    """What the folded counter of the dispatch's log page holds for it."""
    assert dispatch.log_page is not None
    counter = await ReadCounter.get(dispatch.log_page)
    return None if counter is None else counter.reads.get(str(dispatch.id))


def quick_folder() -> ReadCounts:
    return ReadCounts(Leases(None, ""), grace=0.0, slot_seconds=0.0, cache_seconds=0.0)


@pytest.fixture
async def world(make_client: AppFactory) -> AsyncIterator[World]:
    client, accounts, _ = await make_client(read_count_fold_interval=3600.0)
    admin = await accounts.user(admin=True)
    yield World(client, accounts, admin, client.app[read_counts_key], quick_folder())


async def dispatch_of(notification: dict[str, Any]) -> Any:
    stored = await Notification.get(parse_object_id(notification["id"]))
    assert stored is not None
    return stored.dispatch_id


async def test_direct_reads_count_at_once_and_after_folding(world: World) -> None:
    users = [await world.accounts.user() for _ in range(3)]
    sent = await send(world.client, world.admin, user_ids=[user.id for user in users])
    other = await send(world.client, world.admin, user_ids=[users[0].id])
    dispatch, other_dispatch = await dispatch_of(sent[0]), await dispatch_of(other[0])
    mine = {str(n.recipient_id): str(n.id) for n in await Notification.find({"dispatch_id": dispatch}).to_list()}
    assert await world.count(dispatch, other_dispatch) == [0, 0]
    await world.read(users[0], mine[users[0].id])
    await world.read(users[1], mine[users[1].id])
    await world.read(users[1], mine[users[1].id])  # twice: counted once
    assert await world.count(dispatch, other_dispatch) == [2, 0]
    await world.fold()
    assert await world.count(dispatch, other_dispatch) == [2, 0]
    stored = await Dispatch.get(dispatch)
    assert stored is not None and await reads_of(stored) == 2
    assert await ReadTally.find({"dispatch_id": dispatch}).count() == 0
    # A read-all reads the rest: the third user's, and the first user's other send.
    await world.read_all(users[2])
    await world.read_all(users[0])
    assert await world.count(dispatch, other_dispatch) == [3, 1]
    await world.fold()
    assert await world.count(dispatch, other_dispatch) == [3, 1]


async def test_broadcasts_read_one_by_one_and_all_at_once(world: World) -> None:
    early = [await world.accounts.user() for _ in range(3)]
    first = (await send(world.client, world.admin, broadcast=True, title="b0"))[0]["id"]
    late = await world.accounts.user()  # never sees b0
    second = (await send(world.client, world.admin, broadcast=True, title="b1"))[0]["id"]
    third = (await send(world.client, world.admin, broadcast=True, title="b2"))[0]["id"]
    assert await world.count(first, second, third) == [0, 0, 0]
    # One by one.
    await world.read(early[0], second)
    await world.read(early[0], second)
    await world.read(late, third)
    assert await world.count(first, second, third) == [0, 1, 1]
    # Read-all without earlier receipts: every broadcast the user can see, once.
    await world.read_all(early[1])
    assert await world.count(first, second, third) == [1, 2, 2]
    await world.fold()
    assert await world.count(first, second, third) == [1, 2, 2]
    # Read-all with an earlier receipt: that one is not counted twice.
    await world.read_all(early[0])
    assert await world.count(first, second, third) == [2, 2, 3]
    # A user who joined after b0: b1 and b2 only; then nothing more to read.
    await world.read_all(late)
    await world.read_all(late)
    assert await world.count(first, second, third) == [2, 3, 3]
    await world.fold()
    assert await world.count(first, second, third) == [2, 3, 3]
    # A read-all, then a newer broadcast read by itself, then another read-all.
    fourth = (await send(world.client, world.admin, broadcast=True, title="b3"))[0]["id"]
    await world.read(early[2], fourth)
    assert await world.count(first, second, third, fourth) == [2, 3, 3, 1]
    await world.read_all(early[2])
    await world.read_all(early[1])
    assert await world.count(first, second, third, fourth) == [3, 4, 4, 2]
    await world.fold()
    assert await world.count(first, second, third, fourth) == [3, 4, 4, 2]


async def test_coverage_across_pages_is_exact_before_between_and_after_folds(world: World) -> None:
    """Read-alls over 3 pages of broadcast numbers, folded in several slots, counted at every step."""
    made = await world.broadcasts(0, 3 * BROADCAST_PAGE_SIZE + 7)
    ranges = [(0, 157), (3, 52), (49, 101), (50, 51), (120, 157), (10, 10)]
    expected = [0] * len(made)
    for number, (first, end) in enumerate(ranges):
        await world.folder.coverage(first, end)
        for seq in range(first, end):
            expected[seq] += 1
        if number % 2:
            await world.folder.fold()
        found = await world.counts.counts(made)
        assert [found[d.id] for d in made if d.id] == expected, number
    await world.folder.fold()
    await world.folder.fold()
    assert await CoverageTally.find({}).count() == 0
    found = await world.counts.counts(made)
    assert [found[d.id] for d in made if d.id] == expected
    summary = await CoverageSummary.get("summary")
    assert summary is not None and sum(summary.totals) == 0  # every read-all ends: its +1 and -1 cancel out
    assert sorted(page.id for page in await CoveragePage.find({}).to_list()) == [0, 1, 2, 3]


async def test_concurrent_tallies_are_all_counted(world: World) -> None:
    direct = await world.direct(100)
    [broadcast] = await world.broadcasts(0, 1)
    assert direct.id is not None and broadcast.id is not None
    await asyncio.gather(
        *(world.counts.direct_read({direct.id: 1}) for _ in range(50)),
        *(world.counts.receipts({broadcast.id: 1}) for _ in range(50)),
        *(world.counts.coverage(0, 1) for _ in range(50)),
        *(world.counts.receipts({broadcast.id: -1}) for _ in range(20)),
    )
    assert await world.counts.counts([direct, broadcast]) == {direct.id: 50, broadcast.id: 80}
    await world.fold()
    assert await world.counts.counts([direct, broadcast]) == {direct.id: 50, broadcast.id: 80}
    # And while a fold runs.
    await asyncio.gather(
        *(world.counts.direct_read({direct.id: 2}) for _ in range(50)),
        world.folder.fold(),
        *(world.counts.coverage(0, 1) for _ in range(50)),
    )
    await world.fold()
    assert await world.counts.counts([direct, broadcast]) == {direct.id: 150, broadcast.id: 130}


async def test_fold_is_idempotent_and_survives_a_crash_before_deleting(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = await world.direct()
    [broadcast] = await world.broadcasts(60, 1)
    assert direct.id is not None and broadcast.id is not None
    expected = {direct.id: 3, broadcast.id: 2}
    await world.counts.direct_read({direct.id: 3})
    await world.counts.receipts({broadcast.id: 1})
    await world.counts.coverage(10, 61)
    await world.fold()
    await world.fold()
    assert await world.counts.counts([direct, broadcast]) == expected
    state = await FoldState.get(FOLD_STATE_ID)
    assert state is not None

    # A crash between the counters' update and the tallies' deletion.
    await world.counts.direct_read({direct.id: 4})
    await world.counts.coverage(60, 70)
    await world.counts.receipts({broadcast.id: -1})
    expected = {direct.id: 7, broadcast.id: 2}
    await world.folder.fold()  # closes the slot

    async def crash(*args: Any) -> None:
        raise RuntimeError("stopped before deleting")

    monkeypatch.setattr(world.folder, "_delete_slot", crash)
    with pytest.raises(RuntimeError):
        await world.folder.fold()
    assert await reads_of(direct) == 7  # folded ...
    assert await ReadTally.find({"dispatch_id": direct.id}).count() == 1  # ... and still there
    assert await world.counts.counts([direct, broadcast]) == expected
    monkeypatch.undo()
    await world.folder.fold()
    assert await world.counts.counts([direct, broadcast]) == expected
    assert await ReadTally.find({}).count() == 0
    assert await CoverageTally.find({}).count() == 0
    await world.fold()
    await world.fold()
    assert await world.counts.counts([direct, broadcast]) == expected
    assert await reads_of(direct) == 7


async def test_only_slots_past_the_grace_are_folded(world: World) -> None:
    patient = ReadCounts(Leases(None, ""), grace=30.0, slot_seconds=0.0, cache_seconds=0.0)
    direct = await world.direct()
    assert direct.id is not None
    await patient.direct_read({direct.id: 1})
    assert await patient.fold() == 0  # closes the slot
    assert await patient.fold() == 0  # too recent to fold
    assert await ReadTally.find({"dispatch_id": direct.id}).count() == 1
    state = await FoldState.get(FOLD_STATE_ID)
    assert state is not None and len(state.closed_at) == 2
    assert await world.counts.counts([direct]) == {direct.id: 1}
    # One fold at a time: a second one meanwhile skips.
    leases = Leases(None, "")
    one = ReadCounts(leases, grace=0.0, slot_seconds=0.0, cache_seconds=0.0)
    two = ReadCounts(leases, grace=0.0, slot_seconds=0.0, cache_seconds=0.0)
    folded = await asyncio.gather(one.fold(), two.fold())
    assert sorted(folded) == [0, 2]
    assert await ReadTally.find({"dispatch_id": direct.id}).count() == 0
    assert await world.counts.counts([direct]) == {direct.id: 1}


async def test_forget_deletes_what_is_kept_for_deleted_dispatches(world: World) -> None:
    kept, gone = await world.direct(), await world.direct()
    assert kept.id is not None and gone.id is not None
    await world.counts.direct_read({kept.id: 1, gone.id: 2})
    await world.fold()
    await world.counts.direct_read({kept.id: 1, gone.id: 2})
    await world.counts.forget([gone.id])
    assert await ReadTally.find({"dispatch_id": gone.id}).count() == 0
    assert await ReadTally.find({"dispatch_id": kept.id}).count() == 1
    assert await world.counts.counts([kept]) == {kept.id: 2}
    # A tally of a dispatch that is nowhere (a send that failed after storing its notifications) is dropped.
    await world.counts.direct_read({new_id(): 5})
    assert await ReadTally.find({"log_page": None}).count() == 1
    await world.fold()
    assert await ReadTally.find({}).count() == 0
    assert await reads_of(kept) == 2


async def test_the_app_folds_in_the_background(make_client: AppFactory) -> None:
    client, _, _ = await make_client(read_count_fold_interval=0.05, mongodb_timeout=2.0)
    counts = client.app[read_counts_key]
    direct = Dispatch(id=new_id(), title="d", body="", broadcast=False, recipient_count=10)
    await client.app[dispatch_log_key].assign(direct)
    await direct.insert()
    assert direct.id is not None
    await counts.direct_read({direct.id: 5})
    # Slots of 5 s, then a grace of 4 s and the slot cache's 1 s: folded within about 11 s.
    for _ in range(400):
        if await reads_of(direct) is not None:
            break
        await asyncio.sleep(0.1)
    assert await reads_of(direct) == 5
    assert await counts.counts([direct]) == {direct.id: 5}
