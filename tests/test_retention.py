"""Retention: notifications older than NOTIFICATION_RETENTION_DAYS go, with their dispatches and receipts, and
nothing a user can still see changes; unread counts never include a broadcast that is gone."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Account, AppFactory
from tests.realtime import API, send, unread
from tidings.documents import BroadcastReceipt, Dispatch, Notification, RetentionMark
from tidings.documents.clock import today_number
from tidings.documents.ids import parse_object_id
from tidings.documents.retention import RETENTION_ID
from tidings.server.keys import retention_key

DAYS = 30


async def age(notification_ids: list[str], days: int) -> None:
    """Make notifications (and their dispatches and receipts) look `days` old."""
    day = today_number() - days
    for notification_id in notification_ids:
        oid = parse_object_id(notification_id)
        notification = await Notification.get(oid)
        assert notification is not None and notification.dispatch_id is not None
        await notification.set({Notification.created_day: day})
        await Dispatch.find_one({"_id": notification.dispatch_id}).update({"$set": {"created_day": day}})
        await BroadcastReceipt.find({"notification_id": oid}).update({"$set": {"created_day": day}})


async def last_run(days_ago: int) -> None:
    """As if the retention job last ran `days_ago` days ago (a database that has been up that long)."""
    await RetentionMark(purged_through_day=today_number() - days_ago).save()


async def inbox_ids(client: TestClient[Any, Any], user: Account) -> list[str]:
    response = await client.get(f"{API}/notifications?limit=100", headers=user.headers)
    assert response.status == 200
    return [item["id"] for item in (await response.json())["items"]]


async def test_old_notifications_go_and_counts_stay_right(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(notification_retention_days=DAYS)
    admin, alice = await accounts.user(admin=True), await accounts.user()
    old_direct = [n["id"] for n in await send(client, admin, user_ids=[alice.id])]
    old_broadcasts = [(await send(client, admin, broadcast=True))[0]["id"] for _ in range(3)]
    read = await client.post(f"{API}/notifications/{old_broadcasts[0]}/read", headers=alice.headers)
    assert read.status == 204
    new_direct = [n["id"] for n in await send(client, admin, user_ids=[alice.id])]
    new_broadcast = (await send(client, admin, broadcast=True))[0]["id"]
    assert await unread(client, alice) == 5  # 1 + 2 old unread, 1 + 1 new
    await age(old_direct + old_broadcasts, DAYS + 1)
    await last_run(100)

    deleted = await client.app[retention_key].purge()

    assert deleted == 1 + 3 + 1 + 4  # notifications, their one receipt and their four dispatches
    assert await inbox_ids(client, alice) == [new_broadcast, *new_direct]
    assert await unread(client, alice) == 2
    assert await BroadcastReceipt.find({"user_id": parse_object_id(alice.id)}).count() == 0
    mark = await RetentionMark.get(RETENTION_ID)
    assert mark is not None and mark.purged_through_day == today_number() - DAYS - 1
    assert await client.app[retention_key].purge() == 0  # nothing left to do, and the mark moved on
    read_all = await client.post(f"{API}/notifications/read-all", headers=alice.headers)
    assert read_all.status == 204
    assert await unread(client, alice) == 0


async def test_a_day_inside_the_window_is_kept(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(notification_retention_days=DAYS)
    admin, bob = await accounts.user(admin=True), await accounts.user()
    kept = [n["id"] for n in await send(client, admin, user_ids=[bob.id])]
    await age(kept, DAYS)
    await last_run(100)
    assert await client.app[retention_key].purge() == 0
    assert await inbox_ids(client, bob) == kept


async def test_the_first_run_starts_the_mark(make_client: AppFactory) -> None:
    client, _, _ = await make_client(notification_retention_days=DAYS)
    assert await client.app[retention_key].purge() == 0
    mark = await RetentionMark.get(RETENTION_ID)
    assert mark is not None and mark.purged_through_day == today_number() - DAYS - 1


async def test_zero_days_keeps_everything(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(notification_retention_days=0)
    admin, carol = await accounts.user(admin=True), await accounts.user()
    kept = [n["id"] for n in await send(client, admin, user_ids=[carol.id])]
    await age(kept, 10_000)
    await last_run(20_000)
    assert await client.app[retention_key].purge() == 0
    assert await inbox_ids(client, carol) == kept
