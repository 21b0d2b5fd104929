"""The start-up migration that gives notifications stored by older versions the fields reads now use."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from bson import ObjectId

from tests.conftest import Accounts
from tests.realtime import API, unread
from tidings.documents import BroadcastIndex, RetentionMark
from tidings.documents.clock import day_number, utcnow
from tidings.documents.ids import new_id
from tidings.documents.retention import RETENTION_ID
from tidings.server.keys import mongo_key, settings_key
from tidings.server.services.migrations import INBOX_PAGES, MIGRATIONS, NOTIFICATION_FIELDS, run_migrations


async def test_legacy_notifications_are_dated_marked_and_numbered(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    alice = await accounts.user()
    database = client.app[mongo_key][client.app[settings_key].mongodb_db]
    old = utcnow() - timedelta(days=3)
    alice_id = ObjectId(alice.id)
    read_one, unread_one, dispatch = new_id(), new_id(), new_id()
    broadcasts = [new_id() for _ in range(3)]
    legacy = {"title": "t", "body": "b", "data": None, "sender_id": None, "created_at": old}
    await database.notifications.insert_many(
        [
            {**legacy, "_id": read_one, "recipient_id": alice_id, "dispatch_id": dispatch, "read_at": old},
            {**legacy, "_id": unread_one, "recipient_id": alice_id, "dispatch_id": dispatch, "read_at": None},
            *({**legacy, "_id": oid, "recipient_id": None, "dispatch_id": oid, "read_at": None} for oid in broadcasts),
        ]
    )
    await database.dispatches.insert_many(
        [
            {**legacy, "_id": oid, "sender_email": None, "broadcast": oid != dispatch, "recipient_count": count}
            for oid, count in [(dispatch, 2), *((b, 1) for b in broadcasts)]
        ]
    )
    await database.broadcast_receipts.insert_one(
        {"_id": new_id(), "notification_id": broadcasts[1], "user_id": alice_id}
    )
    await database[MIGRATIONS].delete_many({"_id": {"$in": [NOTIFICATION_FIELDS, INBOX_PAGES]}})
    await database.retention.delete_many({})

    await run_migrations(database)

    assert await unread(client, alice) == 1 + 3 - 1
    response = await client.get(f"{API}/notifications", headers=alice.headers)
    items = (await response.json())["items"]
    assert [item["id"] for item in items] == [str(oid) for oid in [*reversed(broadcasts), unread_one, read_one]]
    assert [item["read"] for item in items] == [False, True, False, False, True]
    index = await BroadcastIndex.get("broadcasts")
    assert index is not None and index.made == 3 and index.newest_id == broadcasts[-1]
    numbered = await database.notifications.find({"recipient_id": None}).sort("_id", 1).to_list()
    assert [doc["broadcast_seq"] for doc in numbered] == [0, 1, 2]
    assert all(doc["created_day"] == day_number(old) for doc in await database.dispatches.find({}).to_list())
    mark = await RetentionMark.get(RETENTION_ID)
    assert mark is not None and mark.purged_through_day == day_number(old) - 1
    await run_migrations(database)  # done once: a second start changes nothing
    assert await unread(client, alice) == 3
    # A broadcast made now is numbered after the legacy ones.
    admin = await accounts.user(admin=True)
    sent = await client.post(
        f"{API}/notifications", json={"title": "t", "body": "b", "broadcast": True}, headers=admin.headers
    )
    assert sent.status == 201
    assert await unread(client, alice) == 4
