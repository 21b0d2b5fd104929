"""Changes to stored data that a new version needs, run at start-up before anything is served.

Each migration is recorded in the `migrations` collection by a marker document whose `_id` is the migration's
name, once it has finished; a later start reads the marker by `_id` (one indexed lookup, on FerretDB too) and does
nothing more. A migration must be idempotent: several processes may start at once, and one may stop half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from tidings.documents.clock import day_number, utcnow
from tidings.documents.notification import (
    BROADCAST_PAGE_SIZE,
    BROADCASTS_ID,
    INBOX_PAGE_SIZE,
    BroadcastIndex,
    BroadcastReceipt,
    Dispatch,
    Inbox,
    InboxPage,
    Notification,
    inbox_page_key,
    page_of_key,
)
from tidings.documents.retention import RETENTION_ID, RetentionMark
from tidings.documents.user import User, search_keys_for
from tidings.server.adapters.db import upsert

log = logging.getLogger(__name__)

MIGRATIONS = "migrations"
USER_KEYS = "users.search_keys_and_created_day"
NOTIFICATION_FIELDS = "notifications.unread_by_created_day_and_broadcast_numbers"
INBOX_PAGES = "notifications.inbox_pages"
READ_WINDOW = 50_000
WRITE_CONCURRENCY = 10
# How long one start-up may spend on migrations: a backfill reads and writes a whole collection, once (10,000 users
# took 30-50 s on FerretDB, docs/scaling.md); a migration stopped half way goes on where it was at the next start.
MIGRATIONS_TIMEOUT = 3600.0


async def run_migrations(database: AsyncDatabase[Any]) -> None:
    """Every migration this version needs, in order."""
    await _once(database, USER_KEYS, backfill_users)
    await _once(database, NOTIFICATION_FIELDS, backfill_notifications)
    await _once(database, INBOX_PAGES, backfill_inbox_pages)


async def _once(
    database: AsyncDatabase[Any], name: str, migration: Callable[[AsyncDatabase[Any]], Awaitable[int]]
) -> None:
    markers = database[MIGRATIONS]
    if await markers.find_one({"_id": name}) is not None:
        return
    changed = await migration(database)
    with contextlib.suppress(DuplicateKeyError):  # another process finished it too
        await markers.insert_one({"_id": name, "finished_at": utcnow(), "changed": changed})
    log.info("migration finished", extra={"migration": name, "changed": changed})


async def backfill_users(database: AsyncDatabase[Any], window: int = READ_WINDOW) -> int:
    """Give every user stored without `search_keys` or `created_day` (before user search and the dashboard used
    them) both; returns how many.

    Reads up to `window` users at a time (the filter is not pushed down on FerretDB: each read decodes the whole
    collection, so windows are large), then writes each user's keys by its own update, WRITE_CONCURRENCY at a time:
    FerretDB holds one backend connection per statement of a bulk update until the whole command ends, and a bulk
    update of more statements than its pool has connections (50) never finishes, and stops every other client.
    Each write is guarded by the keys it was computed from, so a user whose email or username changed meanwhile
    (and got fresh search keys with it) is left as it is.
    """
    users = database[User.Settings.name]
    changed = 0
    while True:
        found = await users.find(
            {"$or": [{"search_keys": {"$exists": False}}, {"created_day": {"$exists": False}}]},
            {"email_key": 1, "username_key": 1, "created_at": 1},
            limit=window,
        ).to_list()
        for start in range(0, len(found), WRITE_CONCURRENCY):
            results = await asyncio.gather(
                *(_backfill_one(users, user) for user in found[start : start + WRITE_CONCURRENCY])
            )
            changed += sum(results)
        if len(found) < window:
            return changed


async def _backfill_one(users: AsyncCollection[Any], user: dict[str, Any]) -> int:
    guard = {"_id": user["_id"], "email_key": user["email_key"], "username_key": user["username_key"]}
    keys = search_keys_for(user["email_key"], user["username_key"])
    created = user.get("created_at") or user["_id"].generation_time
    created = created if created.tzinfo is not None else created.replace(tzinfo=UTC)
    result = await users.update_one(guard, {"$set": {"search_keys": keys, "created_day": day_number(created)}})
    return result.modified_count


async def backfill_notifications(database: AsyncDatabase[Any], window: int = READ_WINDOW) -> int:
    """Give what older versions stored the fields that reads now find it by, with equality; returns how many
    documents changed.

    Notifications get `created_day` and, when direct and unread, `unread_by`; broadcasts get their numbers and
    pages, and the index that counts them (each broadcast's rank in id order, so processes starting at once write
    the same values); dispatches and receipts get `created_day` (broadcasts' dispatches their number too); and
    retention starts the day before the oldest notification. One update per document, WRITE_CONCURRENCY at a
    time, as in backfill_users.
    """
    notifications = database[Notification.Settings.name]
    changed, oldest_day = 0, None
    while found := await notifications.find(
        {"created_day": {"$exists": False}}, {"created_at": 1, "recipient_id": 1, "read_at": 1}, limit=window
    ).to_list():
        days = [_day_of(doc) for doc in found]
        oldest_day = min([*days, *([oldest_day] if oldest_day is not None else [])])
        updates = [
            (
                {"_id": doc["_id"]},
                {"created_day": day, "unread_by": doc.get("recipient_id") if doc.get("read_at") is None else None},
            )
            for doc, day in zip(found, days, strict=True)
        ]
        changed += await _update_each(notifications, updates)
        if len(found) < window:
            break
    changed += await _number_broadcasts(database)
    for name in (Dispatch.Settings.name, BroadcastReceipt.Settings.name):
        collection = database[name]
        while found := await collection.find(
            {"created_day": {"$exists": False}}, {"created_at": 1, "notification_id": 1}, limit=window
        ).to_list():
            changed += await _update_each(
                collection, [({"_id": doc["_id"]}, {"created_day": _day_of(doc)}) for doc in found]
            )
            if len(found) < window:
                break
    if oldest_day is not None:
        with contextlib.suppress(DuplicateKeyError):  # a mark already exists: retention has run
            await database[RetentionMark.Settings.name].insert_one(
                {"_id": RETENTION_ID, "purged_through_day": oldest_day - 1}
            )
    return changed


async def _number_broadcasts(database: AsyncDatabase[Any]) -> int:
    notifications = database[Notification.Settings.name]
    found = await notifications.find({"recipient_id": None}, {"broadcast_seq": 1}).to_list()
    if all("broadcast_seq" in doc for doc in found):
        return 0
    ids = sorted(doc["_id"] for doc in found)
    updates = [
        ({"_id": oid}, {"broadcast_seq": seq, "broadcast_page": seq // BROADCAST_PAGE_SIZE})
        for seq, oid in enumerate(ids)
    ]
    changed = await _update_each(notifications, updates)
    await _update_each(
        database[Dispatch.Settings.name], [({"_id": oid}, {"broadcast_seq": seq}) for seq, oid in enumerate(ids)]
    )
    index = BroadcastIndex(made=len(ids), page_starts=ids[::BROADCAST_PAGE_SIZE], newest_id=ids[-1] if ids else None)
    await database[BroadcastIndex.Settings.name].replace_one(
        {"_id": BROADCASTS_ID}, index.model_dump(by_alias=True), upsert=True
    )
    return changed


async def backfill_inbox_pages(database: AsyncDatabase[Any]) -> int:
    """Give the direct notifications stored before inbox pages existed their pages (services/inbox_pages.py);
    returns how many documents changed.

    Each user's, newest first, fill pages -1, -2, ... (INBOX_PAGE_SIZE each), with a marker each; the user's Inbox
    gets top_page -1 (unless live pages exist) and low_page, so live numbering starts at page 0. Computed from every
    direct notification without a live page, so processes starting at once, or one going on where another stopped,
    write the same values. One read of every direct notification (`$ne` is not pushed down on FerretDB), once.
    """
    notifications = database[Notification.Settings.name]
    found = await notifications.find(
        {"recipient_id": {"$ne": None}}, {"recipient_id": 1, "inbox_page": 1, "created_day": 1}
    ).to_list()
    by_user: dict[Any, list[dict[str, Any]]] = {}
    for doc in found:
        page = doc.get("inbox_page")
        if page is None or page_of_key(page) < 0:
            by_user.setdefault(doc["recipient_id"], []).append(doc)
    changed = 0
    for user_id, docs in by_user.items():
        docs.sort(key=lambda doc: doc["_id"], reverse=True)
        updates = []
        for position, doc in enumerate(docs):
            key = inbox_page_key(user_id, -1 - position // INBOX_PAGE_SIZE)
            if doc.get("inbox_page") != key:
                updates.append(({"_id": doc["_id"]}, {"inbox_page": key}))
        pages = -(-len(docs) // INBOX_PAGE_SIZE)
        for page in range(1, pages + 1):
            start = docs[min(page * INBOX_PAGE_SIZE, len(docs)) - 1]  # the page's oldest
            marker = {"_id": inbox_page_key(user_id, -page), "user_id": user_id, "start": start["_id"]}
            with contextlib.suppress(DuplicateKeyError):  # written by another process, or an earlier start
                await database[InboxPage.Settings.name].insert_one(
                    {**marker, "created_day": start.get("created_day", _day_of(start))}
                )
        await upsert(database[Inbox.Settings.name], user_id, {"$max": {"top_page": -1}, "$min": {"low_page": -pages}})
        changed += await _update_each(notifications, updates)
    return changed


def _day_of(doc: dict[str, Any]) -> int:
    """A document's day: when it was made, or for a receipt, when its broadcast was."""
    made = doc.get("created_at") or (doc.get("notification_id") or doc["_id"]).generation_time
    return day_number(made if made.tzinfo is not None else made.replace(tzinfo=UTC))


async def _update_each(collection: AsyncCollection[Any], updates: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    """One `$set` per document, WRITE_CONCURRENCY at a time (never one bulk command: see backfill_users)."""
    changed = 0
    for start in range(0, len(updates), WRITE_CONCURRENCY):
        results = await asyncio.gather(
            *(
                collection.update_one(query, {"$set": values})
                for query, values in updates[start : start + WRITE_CONCURRENCY]
            )
        )
        changed += sum(result.modified_count for result in results)
    return changed
