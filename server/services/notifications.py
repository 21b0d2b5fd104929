"""Notifications: persist first, then publish; list, count and mark read with correct per-user broadcast state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from beanie import PydanticObjectId, SortDirection
from pymongo.errors import DuplicateKeyError

from tidings.documents import BroadcastReceipt, Dispatch, Inbox, Notification
from tidings.documents.ids import new_id, parse_object_id
from tidings.server.adapters.broker import Broker
from tidings.server.adapters.codecs import NOTIFY_TOPIC, encode_notifications
from tidings.server.adapters.errors import NotFound, ValidationFailed
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.pagination import newest_first
from tidings.server.services.audit import Actor, AuditLog
from tidings.server.services.recipients import resolve_recipients

log = logging.getLogger(__name__)

MAX_DATA_BYTES = 4096
# BSON documents nest at most 100 levels, and deep JSON exhausts Python's recursion limit: keep `data` shallow.
MAX_DATA_DEPTH = 32
FORGET_BATCH = 5000
BSON_INT_RANGE = range(-(2**63), 2**63)


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_before: str | None


@dataclass(frozen=True)
class BroadcastState:
    """Broadcasts with id <= floor are read (or predate the user); above it, those in read_ids are."""

    floor: PydanticObjectId
    read_ids: frozenset[PydanticObjectId]

    def is_read(self, notification: Notification) -> bool:
        if not notification.is_broadcast:
            return notification.read_at is not None
        assert notification.id is not None
        return notification.id <= self.floor or notification.id in self.read_ids


def data_problem(data: Any) -> str | None:
    """Why MongoDB could not store `data` as it is, or None; iterative, so any depth is safe to check."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DATA_DEPTH:
            return f"At most {MAX_DATA_DEPTH} levels of nesting."
        if isinstance(value, dict):
            for key, item in value.items():
                if key.startswith("$") or "." in key or "\x00" in key:
                    return "Keys may not start with '$' or contain '.' or NUL."
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, int) and not isinstance(value, bool) and value not in BSON_INT_RANGE:
            return "Integers must fit in 64 bits."
    return None


def visible_to(user_id: PydanticObjectId) -> dict[str, Any]:
    """Direct notifications to the user, and broadcasts sent after the user joined."""
    return {"$or": [{"recipient_id": user_id}, {"recipient_id": None, "_id": {"$gt": user_id}}]}


@dataclass(frozen=True)
class DispatchStats:
    dispatch: Dispatch
    read_count: int


@dataclass(frozen=True)
class NotificationService:
    broker: Broker
    audit: AuditLog
    locks: Locks

    async def send(
        self,
        *,
        title: str,
        body: str,
        data: dict[str, Any] | None = None,
        user_ids: Sequence[str] = (),
        emails: Sequence[str] = (),
        usernames: Sequence[str] = (),
        broadcast: bool = False,
        sender: Actor | None = None,
    ) -> list[Notification]:
        """Store the notifications (one per recipient, named by id, email or username, or one broadcast), then
        publish them.

        Once this returns they are in MongoDB; a failed publish only delays live delivery, because every
        process catches its sockets up from MongoDB when its subscription comes back.
        """
        problem = data_problem(data)
        if problem is not None:
            raise ValidationFailed(details={"data": [problem]})
        if data is not None and len(json.dumps(data)) > MAX_DATA_BYTES:
            raise ValidationFailed(details={"data": [f"At most {MAX_DATA_BYTES} bytes of JSON."]})
        if broadcast:
            recipients: list[PydanticObjectId | None] = [None]
        else:
            recipients = list(await resolve_recipients(user_ids=user_ids, emails=emails, usernames=usernames))
        now = datetime.now(UTC)
        # MongoDB keeps milliseconds: the 201 and live frames must show what the inbox and replays will.
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        dispatch = Dispatch(
            id=new_id(),
            sender_id=sender.id if sender else None,
            sender_email=sender.email if sender else None,
            title=title,
            body=body,
            broadcast=broadcast,
            recipient_count=len(recipients),
            created_at=now,
        )
        notifications = [
            Notification(
                # A broadcast shares its dispatch's id, so its read count is found from either.
                id=dispatch.id if broadcast else new_id(),
                recipient_id=recipient,
                title=title,
                body=body,
                data=data,
                sender_id=dispatch.sender_id,
                dispatch_id=dispatch.id,
                created_at=now,
            )
            for recipient in recipients
        ]
        await Notification.insert_many(notifications)
        await dispatch.insert()
        await self.publish(notifications)
        if sender is not None:
            await self.audit.record(
                sender,
                "notification.sent",
                target_id=dispatch.id,
                target_label=title,
                # A broadcast reaches everyone, not "1 recipient" (its one stored document).
                details={"audience": "everyone"} if broadcast else {"recipients": len(recipients)},
            )
        return notifications

    async def notice(
        self, user_id: PydanticObjectId, *, title: str, body: str, data: dict[str, Any], actor: Actor | None
    ) -> Notification:
        """Tell one user what was done to their account, from the admin who did it. Not a send: no dispatch, no
        "notification.sent" in the audit log (the change itself is audited)."""
        notification = Notification(
            id=new_id(), recipient_id=user_id, title=title, body=body, data=data, sender_id=actor.id if actor else None
        )
        await notification.insert()
        await self.publish([notification])
        return notification

    async def publish(self, notifications: list[Notification]) -> None:
        try:
            await self.broker.publish(
                NOTIFY_TOPIC,
                encode_notifications(
                    (str(n.recipient_id) if n.recipient_id else None, n.public(read=False)) for n in notifications
                ),
            )
        except Exception as exc:
            log.warning("could not publish notifications; sockets catch up when the broker returns: %s", exc)

    async def broadcast_state(self, user_id: PydanticObjectId) -> BroadcastState:
        # Both reads at once; receipts at or below the watermark (read-all deletes them, but one marked read
        # meanwhile may remain) are left out here.
        inbox, receipts = await asyncio.gather(
            Inbox.get(user_id),
            BroadcastReceipt.find({"user_id": user_id, "notification_id": {"$gt": user_id}}).to_list(),
        )
        watermark = inbox.broadcasts_read_through if inbox else None
        floor = max(user_id, watermark) if watermark is not None else user_id
        return BroadcastState(
            floor, frozenset(receipt.notification_id for receipt in receipts if receipt.notification_id > floor)
        )

    async def inbox(
        self, user_id: PydanticObjectId, *, before: str | None = None, limit: int = 50, unread: bool = False
    ) -> Page:
        """Newest first, keyset-paginated on the id."""
        state = await self.broadcast_state(user_id)
        if unread:
            conditions: dict[str, Any] = {
                "$or": [
                    {"recipient_id": user_id, "read_at": None},
                    {"recipient_id": None, "_id": {"$gt": state.floor, "$nin": list(state.read_ids)}},
                ]
            }
        else:
            conditions = visible_to(user_id)
        found, next_before = await newest_first(Notification, conditions, before=before, limit=limit)
        return Page([n.public(state.is_read(n)) for n in found], next_before)

    async def after(self, user_id: PydanticObjectId, after: PydanticObjectId, limit: int) -> list[dict[str, Any]]:
        """Notifications newer than `after`, oldest first: what a reconnecting socket missed."""
        state = await self.broadcast_state(user_id)
        conditions = {"$and": [visible_to(user_id), {"_id": {"$gt": after}}]}
        found = await Notification.find(conditions).sort([("_id", SortDirection.ASCENDING)]).limit(limit).to_list()
        return [n.public(state.is_read(n)) for n in found]

    async def unread_count(self, user_id: PydanticObjectId) -> int:
        state = await self.broadcast_state(user_id)
        unread_or_newer = await Notification.find(
            {"$or": [{"recipient_id": user_id, "read_at": None}, {"recipient_id": None, "_id": {"$gt": state.floor}}]}
        ).count()
        return unread_or_newer - len(state.read_ids)

    async def mark_read(self, user_id: PydanticObjectId, notification_id: str) -> None:
        oid = parse_object_id(notification_id)
        notification = await Notification.find_one({"$and": [visible_to(user_id), {"_id": oid}]}) if oid else None
        if notification is None or oid is None:
            raise NotFound("No such notification.")
        if not notification.is_broadcast:
            if notification.read_at is None:
                await Notification.find_one({"_id": oid, "read_at": None}).update(
                    {"$set": {"read_at": datetime.now(UTC)}}
                )
            return
        state = await self.broadcast_state(user_id)
        if state.is_read(notification):
            return
        with contextlib.suppress(DuplicateKeyError):  # read twice at once: already recorded
            await BroadcastReceipt(notification_id=oid, user_id=user_id).insert()

    async def mark_all_read(self, user_id: PydanticObjectId) -> None:
        await Notification.find({"recipient_id": user_id, "read_at": None}).update(
            {"$set": {"read_at": datetime.now(UTC)}}
        )
        newest = (
            await Notification.find({"recipient_id": None}).sort([("_id", SortDirection.DESCENDING)]).limit(1).to_list()
        )
        if not newest or newest[0].id is None:
            return
        watermark = newest[0].id
        # One writer per inbox: concurrent read-alls would race to create it (a duplicate key), and on FerretDB
        # an update could overwrite a newer watermark with an older one.
        async with self.locks.hold(f"inbox:{user_id}"):
            inbox = await Inbox.get(user_id)
            if inbox is None:
                try:
                    await Inbox(id=user_id, broadcasts_read_through=watermark).insert()
                except DuplicateKeyError:  # created meanwhile by a process that could not take the lock
                    inbox = await Inbox.get(user_id)
            if inbox is not None and (
                inbox.broadcasts_read_through is None or inbox.broadcasts_read_through < watermark
            ):
                await inbox.set({Inbox.broadcasts_read_through: watermark})
        await BroadcastReceipt.find({"user_id": user_id, "notification_id": {"$lte": watermark}}).delete()

    async def forget_user(self, user_id: PydanticObjectId) -> None:
        """Delete what is kept for one user: their notifications, broadcast receipts and inbox.

        In batches, since FerretDB on SQLite refuses to delete more than about 32,000 documents at once.
        """
        for model, owner in ((Notification, "recipient_id"), (BroadcastReceipt, "user_id")):
            while batch := await model.find({owner: user_id}).limit(FORGET_BATCH).to_list():
                await model.find({"_id": {"$in": [document.id for document in batch]}}).delete()
        inbox = await Inbox.get(user_id)
        if inbox is not None:
            await inbox.delete()

    async def dispatches(self, *, before: str | None = None, limit: int = 20) -> tuple[list[DispatchStats], str | None]:
        """What was sent, newest first, with how many recipients have read each."""
        found, next_before = await newest_first(Dispatch, {}, before=before, limit=limit)
        return [DispatchStats(dispatch, await self._read_count(dispatch)) for dispatch in found], next_before

    @staticmethod
    async def _read_count(dispatch: Dispatch) -> int:
        if not dispatch.broadcast:
            return await Notification.find({"dispatch_id": dispatch.id, "read_at": {"$ne": None}}).count()
        receipts = await BroadcastReceipt.find({"notification_id": dispatch.id}).count()
        read_all = await Inbox.find({"broadcasts_read_through": {"$gte": dispatch.id}}).count()
        return receipts + read_all
