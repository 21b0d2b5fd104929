"""Broadcast numbering (server/services/broadcasts.py): dense numbers in id order, pages read by equality, and the
counts and pages the inbox, unread count and replay are built from."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Accounts
from tests.realtime import API, send, unread
from tidings.documents import BroadcastIndex, Notification
from tidings.documents.ids import new_id
from tidings.documents.notification import BROADCAST_PAGE_SIZE
from tidings.server.keys import notifications_key
from tidings.server.services.broadcasts import Broadcasts


def book(client: TestClient[Any, Any]) -> Broadcasts:
    broadcasts: Broadcasts = client.app[notifications_key].broadcasts
    return broadcasts


async def make(client: TestClient[Any, Any], count: int) -> list[Notification]:
    made = []
    for number in range(count):
        notification = Notification(title=f"b{number}", body="everyone")
        await book(client).append(notification)
        made.append(notification)
    return made


async def test_concurrent_broadcasts_are_numbered_densely_in_id_order(client: TestClient[Any, Any]) -> None:
    made = [Notification(title=f"b{number}", body="everyone") for number in range(20)]
    await asyncio.gather(*(book(client).append(notification) for notification in made))
    stored = sorted(await Notification.find({"recipient_id": None}).to_list(), key=lambda n: n.id or new_id())
    assert [n.broadcast_seq for n in stored] == list(range(20))
    assert all(n.dispatch_id == n.id and n.broadcast_page == 0 for n in stored)
    index = await book(client).index()
    assert index.made == 20 and index.newest_id == stored[-1].id and index.page_starts == [stored[0].id]


async def test_pages_counts_and_ranges_across_page_boundaries(client: TestClient[Any, Any]) -> None:
    made = await make(client, BROADCAST_PAGE_SIZE * 2 + 5)
    ids = [n.id for n in made]
    assert all(oid is not None for oid in ids)
    broadcasts = book(client)
    index = await broadcasts.index()
    assert index.page_starts == [ids[0], ids[BROADCAST_PAGE_SIZE], ids[2 * BROADCAST_PAGE_SIZE]]
    before_all = new_id()
    for position in (0, 1, BROADCAST_PAGE_SIZE - 1, BROADCAST_PAGE_SIZE, len(ids) - 1):
        oid = ids[position]
        assert oid is not None
        assert await broadcasts.count_through(index, oid) == position + 1
    assert await broadcasts.count_through(index, new_id()) == len(ids)
    floor, before = ids[10], ids[BROADCAST_PAGE_SIZE + 7]
    assert floor is not None and before is not None
    newest = await broadcasts.newest(index, floor=floor, before=before, limit=1000)
    assert [n.id for n in newest] == list(reversed(ids[11 : BROADCAST_PAGE_SIZE + 7]))
    limited = await broadcasts.newest(index, floor=floor, limit=3)
    assert [n.id for n in limited] == list(reversed(ids[-3:]))
    newest_id = ids[-1]
    assert newest_id is not None
    skipped = await broadcasts.newest(index, floor=floor, limit=2, skip=frozenset({newest_id}))
    assert [n.id for n in skipped] == [ids[-2], ids[-3]]
    after = await broadcasts.oldest_after(index, before, limit=60)
    assert [n.id for n in after] == ids[BROADCAST_PAGE_SIZE + 8 :]
    assert await broadcasts.oldest_after(index, ids[-1] or before_all, limit=5) == []


async def test_a_broadcast_stored_but_not_counted_is_adopted_by_the_next(client: TestClient[Any, Any]) -> None:
    await make(client, 2)
    # A crash between storing a broadcast and counting it: numbered 2, but the index still says 2 were made.
    orphan = Notification(id=new_id(), title="orphan", body="b", broadcast_seq=2, broadcast_page=0)
    orphan.dispatch_id = orphan.id
    await orphan.insert()
    [after_crash] = await make(client, 1)
    assert after_crash.broadcast_seq == 3
    index = await BroadcastIndex.get("broadcasts")
    assert index is not None and index.made == 4 and index.newest_id == after_crash.id


async def test_unread_counts_follow_numbers_receipts_and_read_all(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin = await accounts.user(admin=True)
    await make(client, 3)  # before alice joined: never hers
    alice = await accounts.user()
    ids = [(await send(client, admin, broadcast=True))[0]["id"] for _ in range(BROADCAST_PAGE_SIZE + 3)]
    assert await unread(client, alice) == len(ids)
    for oid in (ids[0], ids[BROADCAST_PAGE_SIZE], ids[-1]):
        assert (await client.post(f"{API}/notifications/{oid}/read", headers=alice.headers)).status == 204
    assert await unread(client, alice) == len(ids) - 3
    assert (await client.post(f"{API}/notifications/read-all", headers=alice.headers)).status == 204
    assert await unread(client, alice) == 0
    later = (await send(client, admin, broadcast=True))[0]["id"]
    assert await unread(client, alice) == 1
    response = await client.get(f"{API}/notifications?unread=true", headers=alice.headers)
    assert [item["id"] for item in (await response.json())["items"]] == [later]
