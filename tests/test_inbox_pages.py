"""Inbox pages (services/inbox_pages.py): a user's direct notifications are read a page or two at a time, and every
way of reading them (first page, deep pages, resume) stays complete, in order and without duplicates: across page
boundaries, with broadcasts between them, after a lost counter, without Redis, after retention, and after the
start-up backfill of notifications stored before pages existed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId
from bson import ObjectId
from pymongo import monitoring

from tests.conftest import Account, Accounts
from tests.realtime import API
from tidings.documents import Inbox, InboxPage, Notification
from tidings.documents.notification import INBOX_PAGE_SIZE, inbox_page_key, page_of_key
from tidings.server.adapters.numbering import NumberingUnavailable
from tidings.server.keys import mongo_key, notifications_key, redis_key, settings_key
from tidings.server.services.migrations import INBOX_PAGES, MIGRATIONS, run_migrations
from tidings.server.services.notifications import NotificationService
from tidings.server.services.retention import Retention


def service(client: TestClient[Any, Any]) -> NotificationService:
    notifications: NotificationService = client.app[notifications_key]
    return notifications


async def send_direct(client: TestClient[Any, Any], user: Account, count: int, label: str = "d") -> list[str]:
    """`count` sends to `user`, one at a time (each its own dispatch), through the service."""
    sent = []
    for number in range(count):
        notifications = await service(client).send(title=f"{label}{number}", body="b", user_ids=[user.id])
        sent.append(str(notifications[0].id))
    return sent


async def broadcast(client: TestClient[Any, Any]) -> str:
    return str((await service(client).send(title="everyone", body="b", broadcast=True))[0].id)


async def whole_inbox(client: TestClient[Any, Any], user: Account, limit: int) -> list[str]:
    """Every notification, newest first, by following `next_before` with pages of `limit`."""
    seen: list[str] = []
    query = f"?limit={limit}"
    while True:
        response = await client.get(f"{API}/notifications{query}", headers=user.headers)
        assert response.status == 200, await response.text()
        page = await response.json()
        seen += [item["id"] for item in page["items"]]
        if page["next_before"] is None:
            return seen
        query = f"?limit={limit}&before={page['next_before']}"


async def replayed(client: TestClient[Any, Any], user: Account, after: str, limit: int = 1000) -> list[str]:
    items = await service(client).after(PydanticObjectId(user.id), PydanticObjectId(after), limit)
    return [item["id"] for item in items]


async def pages_of(user: Account) -> dict[str, int]:
    found = await Notification.find({"recipient_id": PydanticObjectId(user.id)}).to_list()
    return {str(n.id): page_of_key(n.inbox_page) for n in found if n.inbox_page is not None}


async def check_everything(client: TestClient[Any, Any], user: Account, expected_oldest_first: list[str]) -> None:
    """Every way of reading the user's notifications gives exactly `expected_oldest_first`."""
    newest_first = expected_oldest_first[::-1]
    for limit in (1, 7, 20, INBOX_PAGE_SIZE, 60, 200):
        assert await whole_inbox(client, user, limit) == newest_first, limit
    for position in (0, 1, INBOX_PAGE_SIZE - 1, INBOX_PAGE_SIZE, len(expected_oldest_first) // 2):
        if position < len(expected_oldest_first):
            after = expected_oldest_first[position]
            assert await replayed(client, user, after) == expected_oldest_first[position + 1 :], position
            assert await replayed(client, user, after, limit=3) == expected_oldest_first[position + 1 : position + 4]
    assert await replayed(client, user, "0" * 24) == expected_oldest_first


async def test_pages_hold_the_inbox_in_order_across_boundaries_and_broadcasts(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    user = await accounts.user()
    expected: list[str] = []
    for round_ in range(3):
        expected += await send_direct(client, user, INBOX_PAGE_SIZE - 3 + round_ * 4, label=f"r{round_}-")
        expected.append(await broadcast(client))
    pages = await pages_of(user)
    direct = [oid for oid in expected if oid in pages]
    assert [pages[oid] for oid in direct] == sorted(pages[oid] for oid in direct)
    assert max(pages.values()) == (len(direct) - 1) // INBOX_PAGE_SIZE
    inbox = await Inbox.get(PydanticObjectId(user.id))
    assert inbox is not None and inbox.top_page == max(pages.values())
    for page in set(pages.values()):
        marker = await InboxPage.get(inbox_page_key(PydanticObjectId(user.id), page))
        assert marker is not None and str(marker.start) == min(oid for oid in direct if pages[oid] == page)
    await check_everything(client, user, expected)
    # A cursor that is a broadcast, or someone else's notification, finds its place among the pages.
    other = await accounts.user()
    (someone_elses,) = await send_direct(client, other, 1)
    response = await client.get(f"{API}/notifications?limit=5&before={someone_elses}", headers=user.headers)
    assert [item["id"] for item in (await response.json())["items"]] == expected[::-1][:5]


async def test_concurrent_sends_to_one_user_keep_ids_in_page_order(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    user = await accounts.user()
    results = await asyncio.gather(
        *(service(client).send(title=f"c{n}", body="b", user_ids=[user.id]) for n in range(3 * INBOX_PAGE_SIZE))
    )
    pages = await pages_of(user)
    ordered = sorted(pages, key=ObjectId)
    assert [pages[oid] for oid in ordered] == sorted(pages.values())
    assert len({str(r[0].id) for r in results}) == 3 * INBOX_PAGE_SIZE == len(pages)
    await check_everything(client, user, ordered)


async def test_an_id_older_than_the_last_numbered_is_replaced_by_a_newer_one(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    user = await accounts.user()
    numbering = service(client).inbox_pages.numbering
    older, newer = str(ObjectId()), str(ObjectId())
    await send_direct(client, user, 1)  # starts the user's counter
    first, second = await numbering.assign([(user.id, newer)]), await numbering.assign([(user.id, older)])
    assert first[0] is not None and second[0] is not None
    assert first[0][1] == newer and second[0][1] > newer and second[0][0] == first[0][0] + 1


async def test_a_lost_counter_restarts_on_a_fresh_page(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    expected = await send_direct(client, user, 3)
    redis = client.app.get(redis_key)
    if redis is None:
        pytest.skip("the suite runs without Redis")
    await redis.delete(f"{client.app[settings_key].redis_prefix}inbox:{user.id}")
    expected += await send_direct(client, user, 2)
    pages = await pages_of(user)
    assert [pages[oid] for oid in expected] == [0, 0, 0, 1, 1]
    await check_everything(client, user, expected)


async def unavailable(*args: Any) -> Any:
    raise NumberingUnavailable("Redis is down")


async def test_without_counters_notifications_go_to_the_top_page(
    client: TestClient[Any, Any], accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, newcomer = await accounts.user(), await accounts.user()
    expected = await send_direct(client, user, INBOX_PAGE_SIZE + 2)
    numbering = service(client).inbox_pages.numbering
    for method in ("assign", "current", "start_after"):
        monkeypatch.setattr(numbering, method, unavailable)
    expected += await send_direct(client, user, 3)
    newcomers = await send_direct(client, newcomer, 2)  # no page yet: page 0 is opened
    pages = await pages_of(user)
    assert [pages[oid] for oid in expected[-3:]] == [1, 1, 1]
    assert set((await pages_of(newcomer)).values()) == {0}
    await check_everything(client, user, expected)
    await check_everything(client, newcomer, newcomers)
    monkeypatch.undo()
    expected += await send_direct(client, user, 1)
    await check_everything(client, user, expected)


async def test_retention_ends_the_inbox_where_it_deleted(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.user()
    user_id = PydanticObjectId(user.id)
    old = await send_direct(client, user, 2 * INBOX_PAGE_SIZE)
    kept = await send_direct(client, user, 5)
    # Date the first two pages (and their markers) 400 days back, as if made then.
    day = (await Notification.find_one({"inbox_page": inbox_page_key(user_id, 0)})).created_day  # type: ignore[union-attr]
    for oid in old:
        await Notification.find({"_id": PydanticObjectId(oid)}).update({"$set": {"created_day": day - 400}})
    for page in (0, 1):
        await InboxPage.find({"_id": inbox_page_key(user_id, page)}).update({"$set": {"created_day": day - 400}})
    retention = Retention(30, client.app[notifications_key].locks, lambda ids: asyncio.sleep(0))
    from tidings.documents import RetentionMark
    from tidings.documents.retention import RETENTION_ID

    await RetentionMark.find({"_id": RETENTION_ID}).delete()
    await RetentionMark(purged_through_day=day - 401).save()
    assert await retention.purge(today=day) >= 2 * INBOX_PAGE_SIZE
    assert await InboxPage.get(inbox_page_key(user_id, 1)) is None
    await check_everything(client, user, kept)
    assert await replayed(client, user, old[3]) == kept
    response = await client.get(f"{API}/notifications?before={old[-1]}", headers=user.headers)
    assert (await response.json())["items"] == []


async def test_the_backfill_pages_notifications_stored_before_pages(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    user = await accounts.user()
    user_id = ObjectId(user.id)
    database = client.app[mongo_key][client.app[settings_key].mongodb_db]
    legacy = [
        {
            "_id": ObjectId(str(oid)),
            "recipient_id": user_id,
            "unread_by": None,
            "title": f"legacy {number}",
            "body": "b",
            "data": None,
            "sender_id": None,
            "dispatch_id": None,
            "read_at": None,
            "created_at": oid.generation_time,
            "created_day": 20000,
        }
        for number, oid in enumerate(ObjectId() for _ in range(2 * INBOX_PAGE_SIZE + 3))
    ]
    await database.notifications.insert_many(legacy)
    await database[MIGRATIONS].delete_one({"_id": INBOX_PAGES})
    await asyncio.gather(run_migrations(database), run_migrations(database))  # two processes starting at once
    expected = [str(doc["_id"]) for doc in legacy]
    pages = await pages_of(user)
    assert [pages[oid] for oid in expected] == [-3] * 3 + [-2] * INBOX_PAGE_SIZE + [-1] * INBOX_PAGE_SIZE
    inbox = await Inbox.get(PydanticObjectId(user.id))
    assert inbox is not None and inbox.top_page == -1 and inbox.low_page == -3
    await check_everything(client, user, expected)
    expected += await send_direct(client, user, 2)
    assert {(await pages_of(user))[oid] for oid in expected[-2:]} == {0}
    await check_everything(client, user, expected)


class FindRecorder(monitoring.CommandListener):
    """The notification finds sent to one database while `database` is set, and how many documents they returned."""

    def __init__(self) -> None:
        self.database = ""
        self.finds: list[dict[str, Any]] = []
        self.returned = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database and event.command.get("find") == "notifications":
            self.finds.append(dict(event.command.get("filter", {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.database_name == self.database and event.command_name in ("find", "getMore"):
            cursor = event.reply.get("cursor")
            if isinstance(cursor, dict) and str(cursor.get("ns", "")).endswith(".notifications"):
                self.returned += len(cursor.get("firstBatch") or cursor.get("nextBatch") or [])

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reset(self) -> None:
        self.finds.clear()
        self.returned = 0


FINDS = FindRecorder()
monitoring.register(FINDS)  # pymongo has no unregister: inert unless a test sets its database


async def test_a_first_page_reads_two_pages_however_long_the_history(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    """The property, not a timing: a user with 8 pages of history reads 2 of them for a first page, and a
    resume the pages from its cursor up, never the user's whole history (`recipient_id`)."""
    user = await accounts.user()
    sent = await send_direct(client, user, 8 * INBOX_PAGE_SIZE)
    FINDS.reset()
    FINDS.database = client.app[settings_key].mongodb_db
    try:
        response = await client.get(f"{API}/notifications?limit=20", headers=user.headers)
        assert [item["id"] for item in (await response.json())["items"]] == sent[::-1][:20]
        assert FINDS.finds and not any("recipient_id" in query for query in FINDS.finds), FINDS.finds
        assert FINDS.returned <= 2 * INBOX_PAGE_SIZE
        FINDS.reset()
        assert await replayed(client, user, sent[-30]) == sent[-29:]
        assert FINDS.finds and not any("recipient_id" in query for query in FINDS.finds), FINDS.finds
        assert FINDS.returned <= 3 * INBOX_PAGE_SIZE + 1
    finally:
        FINDS.database = ""


async def test_the_newest_numbered_ids_of_many_users_are_read_together(client: TestClient[Any, Any]) -> None:
    """numbered_since for many users at once (a reconnect storm): one pipeline, each user's own answer."""
    pages = client.app[notifications_key].inbox_pages
    users = [PydanticObjectId() for _ in range(5)]
    old, new = PydanticObjectId(ObjectId.from_datetime(ObjectId().generation_time)), PydanticObjectId()
    for user in users[:3]:
        await pages.numbering.start_after(str(user), -1)
    await pages.numbering.assign([(str(users[0]), str(old)), (str(users[1]), str(new))])
    answers = await asyncio.gather(*(pages.numbered_since(user, new) for user in users))
    # users[0]: numbered only before; users[1]: numbered at `new`; users[2]: a counter that numbered nothing;
    # users[3:]: no counter. Only users[0] is known to have had nothing since.
    assert answers == [False, True, True, True, True]
