"""Notifications: persist first, then publish; list, count and mark read with correct per-user broadcast state."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from beanie import PydanticObjectId, SortDirection
from pymongo.errors import DuplicateKeyError

from tidings.documents import BroadcastReceipt, Dispatch, Inbox, Notification
from tidings.documents.clock import day_number, utcnow
from tidings.documents.ids import new_id, parse_object_id
from tidings.server.adapters.broker import Broker
from tidings.server.adapters.codecs import NOTIFY_TOPIC, USER_TOPIC, route_notifications
from tidings.server.adapters.db import upsert
from tidings.server.adapters.errors import ApiError, NotFound, ValidationFailed
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.metrics import Metrics, SenderType
from tidings.server.adapters.pagination import parse_cursor
from tidings.server.adapters.tasks import KeyedWork, gather_bounded
from tidings.server.services.audit import Actor, AuditLog
from tidings.server.services.broadcasts import Broadcasts
from tidings.server.services.dispatch_log import DispatchLog, DispatchStats, dispatch_page
from tidings.server.services.inbox_pages import InboxPages, inbox_lock
from tidings.server.services.recipients import resolve_recipients

log = logging.getLogger(__name__)

MAX_DATA_BYTES = 4096
# BSON documents nest at most 100 levels, and deep JSON exhausts Python's recursion limit: keep `data` shallow.
MAX_DATA_DEPTH = 32
FORGET_BATCH = 5000
# Users whose read-all still has notifications to mark one by one (clear_read), waiting at once in one process.
READ_CLEANUP_CAPACITY = 10_000
CLEAR_CONCURRENCY = 4
# The sends of a batch prepared at once (recipients resolved, numbers taken): a few MongoDB and Redis round trips each.
SEND_CONCURRENCY = 8
BSON_INT_RANGE = range(-(2**63), 2**63)
# A replay that follows its socket's "ready" reuses the read state that the ready's unread count read a moment
# before, rather than reading the Inbox and the receipts again: in a reconnect storm, two of a user's eight reads.
READ_STATE_REUSE_SECONDS = 2.0
READ_STATES_KEPT = 20_000


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_before: str | None


@dataclass(frozen=True)
class BroadcastState:
    """Broadcasts with id <= floor are read (or predate the user); above it, those in read_ids are. Direct
    notifications are read once marked, or when their id is at most `direct_through` (a read-all)."""

    floor: PydanticObjectId
    read_ids: frozenset[PydanticObjectId]
    direct_through: PydanticObjectId | None = None
    # Receipts stored, read_ids or not (one marked read during a read-all may lie at or below the floor).
    receipts: int = 0
    # A read-all's clean-up has not finished (Inbox.clearing).
    clearing: bool = False

    def is_read(self, notification: Notification) -> bool:
        assert notification.id is not None
        if not notification.is_broadcast:
            return notification.read_at is not None or (
                self.direct_through is not None and notification.id <= self.direct_through
            )
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


def visible_to(notification: Notification, user_id: PydanticObjectId) -> bool:
    """Direct notifications to the user, and broadcasts sent after the user joined."""
    if notification.is_broadcast:
        return notification.id is not None and notification.id > user_id
    return notification.recipient_id == user_id


class ReadTallies(Protocol):
    """Where read-state changes are tallied for the senders' read counts (services/read_counts.py)."""

    async def direct_read(self, by_dispatch: Mapping[PydanticObjectId, int]) -> None: ...

    async def receipts(self, by_dispatch: Mapping[PydanticObjectId, int]) -> None: ...

    async def coverage(self, first_seq: int, end_seq: int) -> None: ...

    async def counts(self, dispatches: Sequence[Dispatch]) -> dict[PydanticObjectId, int]: ...


async def _inbox_and_state(user_id: PydanticObjectId) -> tuple[Inbox | None, BroadcastState]:
    """The user's inbox document and broadcast read state, from both reads at once. Receipts at or below the
    watermark (read-all deletes them, but one marked read meanwhile may remain) are left out."""
    inbox, receipts = await asyncio.gather(Inbox.get(user_id), BroadcastReceipt.find({"user_id": user_id}).to_list())
    watermark = inbox.broadcasts_read_through if inbox else None
    floor = max(user_id, watermark) if watermark is not None else user_id
    read_ids = frozenset(receipt.notification_id for receipt in receipts if receipt.notification_id > floor)
    return inbox, BroadcastState(
        floor,
        read_ids,
        inbox.direct_read_through if inbox else None,
        len(receipts),
        inbox.clearing if inbox else False,
    )


@dataclass(frozen=True)
class SendRequest:
    """One send, as POST /api/v1/notifications takes it (validated by its schema)."""

    title: str
    body: str
    data: dict[str, Any] | None = None
    user_ids: Sequence[str] = ()
    emails: Sequence[str] = ()
    usernames: Sequence[str] = ()
    broadcast: bool = False


@dataclass(frozen=True)
class _Prepared:
    """A send ready to be stored: its notifications, its dispatch and what the audit log says of it."""

    notifications: list[Notification]
    dispatch: Dispatch
    details: dict[str, Any]


def _id_of(notification: Notification) -> PydanticObjectId:
    assert notification.id is not None
    return notification.id


class RecentReadStates:
    """Users' Inbox and broadcast read state as an unread count just read them, for replays only.

    What a replay takes from them: the read flags of what it sends, and the Inbox's recorded and lowest pages (a
    lower recorded page, or a lower lowest, only makes it read more). None of it decides which notifications are
    replayed, so a state a little old never makes a gap. Read flags may be up to READ_STATE_REUSE_SECONDS old for a
    change made on another process, as if it had come just after the replay; this process's own changes drop the
    user's state at once.
    """

    def __init__(self, ttl: float = READ_STATE_REUSE_SECONDS, capacity: int = READ_STATES_KEPT) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._states: OrderedDict[PydanticObjectId, tuple[float, Inbox | None, BroadcastState]] = OrderedDict()

    def keep(self, user_id: PydanticObjectId, inbox: Inbox | None, state: BroadcastState) -> None:
        self._states[user_id] = (time.monotonic() + self._ttl, inbox, state)
        self._states.move_to_end(user_id)
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def get(self, user_id: PydanticObjectId) -> tuple[Inbox | None, BroadcastState] | None:
        kept = self._states.get(user_id)
        if kept is None:
            return None
        if kept[0] < time.monotonic():
            del self._states[user_id]
            return None
        return kept[1], kept[2]

    def drop(self, user_id: PydanticObjectId) -> None:
        self._states.pop(user_id, None)


@dataclass(frozen=True)
class NotificationService:
    broker: Broker
    audit: AuditLog
    locks: Locks
    broadcasts: Broadcasts
    read_tallies: ReadTallies
    dispatch_log: DispatchLog
    inbox_pages: InboxPages
    metrics: Metrics
    # Read-alls set a watermark and leave the notifications to mark one by one here (the app runs it).
    read_cleanup: KeyedWork[PydanticObjectId] = field(init=False)
    # Told of every stored notification once it is published (the unread digests record their candidates).
    sent_hooks: list[Callable[[list[Notification]], Awaitable[None]]] = field(default_factory=list)
    recent_states: RecentReadStates = field(init=False, default_factory=RecentReadStates)

    def __post_init__(self) -> None:
        object.__setattr__(self, "read_cleanup", KeyedWork(self.clear_read, READ_CLEANUP_CAPACITY, "read-all clean-up"))

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
        request = SendRequest(title, body, data, tuple(user_ids), tuple(emails), tuple(usernames), broadcast)
        [outcome] = await self.send_many([request], sender)
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    async def send_many(
        self, requests: Sequence[SendRequest], sender: Actor | None = None
    ) -> list[list[Notification] | ApiError]:
        """`send` for several notifications at once (a batch): each is checked, resolved and numbered on its own,
        and one that fails (an unknown recipient) fails alone, as its ApiError in its place; then what they store,
        publish and audit is written together, a few writes for them all rather than a few each."""
        prepared = await gather_bounded((self._prepare(request, sender) for request in requests), SEND_CONCURRENCY)
        ready = [item for item in prepared if isinstance(item, _Prepared)]
        if ready:
            await self._store(ready, sender)
        return [item if isinstance(item, ApiError) else item.notifications for item in prepared]

    async def _prepare(self, request: SendRequest, sender: Actor | None) -> _Prepared | ApiError:
        """One send's notifications and dispatch, numbered (a broadcast is stored here, under its lock), or the
        client's mistake."""
        title, body, data, broadcast = request.title, request.body, request.data, request.broadcast
        problem = data_problem(data)
        if problem is not None:
            return ValidationFailed(details={"data": [problem]})
        if data is not None and len(json.dumps(data)) > MAX_DATA_BYTES:
            return ValidationFailed(details={"data": [f"At most {MAX_DATA_BYTES} bytes of JSON."]})
        try:
            recipients = (
                []
                if broadcast
                else await resolve_recipients(
                    user_ids=request.user_ids, emails=request.emails, usernames=request.usernames
                )
            )
        except ApiError as exc:
            return exc
        # MongoDB keeps milliseconds: the 201 and live frames must show what the inbox and replays will.
        now = utcnow()
        # An admin's id stays in sender_id, as before `sender` existed; an API key is only in `sender`.
        sender_id = sender.id if sender and sender.kind == "user" else None
        sender_json = sender.sender() if sender else None
        if broadcast:
            notifications = [
                Notification(
                    title=title,
                    body=body,
                    data=data,
                    sender_id=sender_id,
                    sender=sender_json,
                    created_at=now,
                    created_day=day_number(now),
                )
            ]
            await self.broadcasts.append(notifications[0])
            dispatch_id = _id_of(notifications[0])
        else:
            dispatch_id = new_id()
            notifications = [
                Notification(
                    id=new_id(),
                    recipient_id=recipient,
                    unread_by=recipient,
                    title=title,
                    body=body,
                    data=data,
                    sender_id=sender_id,
                    sender=sender_json,
                    dispatch_id=dispatch_id,
                    created_at=now,
                    created_day=day_number(now),
                )
                for recipient in recipients
            ]
        dispatch = Dispatch(
            id=dispatch_id,
            sender_id=sender_id,
            sender_email=sender.email if sender else None,
            sender=sender_json,
            title=title,
            body=body,
            broadcast=broadcast,
            recipient_count=1 if broadcast else len(recipients),
            broadcast_seq=notifications[0].broadcast_seq if broadcast else None,
            created_at=now,
            created_day=day_number(now),
        )
        # Its page of the log of sends, numbered right after its id was made (services/dispatch_log.py).
        await self.dispatch_log.assign(dispatch)
        if not broadcast:
            await self.inbox_pages.assign(notifications)
        # A broadcast reaches everyone, not "1 recipient" (its one stored document).
        details: dict[str, Any] = {"audience": "everyone"} if broadcast else {"recipients": len(recipients)}
        if sender is not None and sender.kind == "key":
            # An admin is the entry's actor; a key is named there too, and said to be a key here.
            details["sender"] = sender_json
        return _Prepared(notifications, dispatch, details)

    async def _store(self, ready: Sequence[_Prepared], sender: Actor | None) -> None:
        """Store what the sends prepared (broadcasts are stored already), publish them, audit them: a write each."""
        direct = [n for item in ready if not item.dispatch.broadcast for n in item.notifications]
        if direct:
            await Notification.insert_many(direct)
        await Dispatch.insert_many([item.dispatch for item in ready])
        await self.publish([n for item in ready for n in item.notifications])
        sender_type: SenderType = "key" if sender is not None and sender.kind == "key" else "user"
        for item in ready:
            if item.dispatch.broadcast:
                self.metrics.count_sent("broadcast", sender_type)
            else:
                self.metrics.count_sent("targeted", sender_type, len(item.notifications))
        if sender is not None:
            await self.audit.record_many(
                sender,
                "notification.sent",
                [(item.dispatch.id, item.dispatch.title, item.details) for item in ready],
            )

    async def notice(
        self, user_id: PydanticObjectId, *, title: str, body: str, data: dict[str, Any], actor: Actor | None
    ) -> Notification:
        """Tell one user what was done to their account, from the admin who did it. Not a send: no dispatch, no
        "notification.sent" in the audit log (the change itself is audited)."""
        now = utcnow()
        notification = Notification(
            id=new_id(),
            recipient_id=user_id,
            unread_by=user_id,
            title=title,
            body=body,
            data=data,
            sender_id=actor.id if actor else None,
            sender=actor.sender() if actor else None,
            created_at=now,
            created_day=day_number(now),
        )
        await self.inbox_pages.assign([notification])
        await notification.insert()
        await self.publish([notification])
        return notification

    async def publish(self, notifications: list[Notification]) -> None:
        """Broadcasts on the channel every process holds; the rest on each recipient's own channel, which only the
        processes with a socket of that user hold."""
        broadcasts, routed = route_notifications(
            (str(n.recipient_id) if n.recipient_id else None, n.public(read=False)) for n in notifications
        )
        try:
            if broadcasts is not None:
                await self.broker.publish(NOTIFY_TOPIC, broadcasts)
            if routed:
                await self.broker.publish_routed(USER_TOPIC, routed)
        except Exception as exc:
            log.warning("could not publish notifications; sockets catch up when the broker returns: %s", exc)
        for hook in self.sent_hooks:
            try:
                await hook(notifications)
            except Exception as exc:
                # Redis down, as a rule (the digests' due set): the send stands, as for the publish above.
                log.warning("a notification hook failed: %s", exc)

    @staticmethod
    async def broadcast_state(user_id: PydanticObjectId) -> BroadcastState:
        return (await _inbox_and_state(user_id))[1]

    async def inbox(
        self, user_id: PydanticObjectId, *, before: str | None = None, limit: int = 50, unread: bool = False
    ) -> Page:
        """Newest first, keyset-paginated on the id: the user's direct notifications (a page or two of their inbox,
        or their unread ones) and the broadcasts since they joined, each read by equality on an indexed field
        (docs/scaling.md)."""
        before_oid = parse_cursor(before)
        (inbox, state), index = await asyncio.gather(_inbox_and_state(user_id), self.broadcasts.index())
        direct, broadcasts = await asyncio.gather(
            self._unread_direct(user_id, state, before_oid, limit + 1)
            if unread
            else self.inbox_pages.newest(user_id, inbox, before=before_oid, limit=limit + 1),
            self.broadcasts.newest(
                index,
                floor=state.floor if unread else user_id,
                before=before_oid,
                limit=limit + 1,
                skip=state.read_ids if unread else frozenset(),
            ),
        )
        found = list(heapq.merge(direct, broadcasts, key=_id_of, reverse=True))[: limit + 1]
        next_before = str(_id_of(found[limit - 1])) if len(found) > limit else None
        return Page([n.public(state.is_read(n)) for n in found[:limit]], next_before)

    async def _unread_direct(
        self, user_id: PydanticObjectId, state: BroadcastState, before: PydanticObjectId | None, limit: int
    ) -> list[Notification]:
        """Newest first; those a read-all covered are left out (they sort last: older than what is still unread)."""
        query: dict[str, Any] = {"unread_by": user_id}
        if before is not None:
            query["_id"] = {"$lt": before}
        found = await Notification.find(query).sort([("_id", SortDirection.DESCENDING)]).limit(limit).to_list()
        return self._still_unread(user_id, state, found)

    def _still_unread(
        self, user_id: PydanticObjectId, state: BroadcastState, found: list[Notification]
    ) -> list[Notification]:
        """The direct notifications of `found` still unread; any that a read-all covered are marked soon."""
        unread = [n for n in found if not state.is_read(n)]
        if len(unread) < len(found):
            self.read_cleanup.request(user_id)
        return unread

    async def after(self, user_id: PydanticObjectId, after: PydanticObjectId, limit: int) -> list[dict[str, Any]]:
        """Notifications newer than `after`, oldest first: what a reconnecting socket missed."""
        recent = self.recent_states.get(user_id)
        if recent is not None:
            (inbox, state), index = recent, await self.broadcasts.index()
        else:
            (inbox, state), index = await asyncio.gather(_inbox_and_state(user_id), self.broadcasts.index())
        direct, broadcasts = await asyncio.gather(
            self.inbox_pages.oldest_after(user_id, inbox, after=after, limit=limit),
            self.broadcasts.oldest_after(index, max(after, user_id), limit=limit),
        )
        found = list(heapq.merge(direct, broadcasts, key=_id_of))[:limit]
        return [n.public(state.is_read(n)) for n in found]

    async def numbered_since(self, user_id: PydanticObjectId, oid: PydanticObjectId) -> bool:
        """Whether a direct notification with an id at or above `oid` may have been sent to the user (True when
        unknown): one Redis read (InboxPages.numbered_since)."""
        return await self.inbox_pages.numbered_since(user_id, oid)

    async def unread_count(self, user_id: PydanticObjectId) -> int:
        (inbox, state), index = await asyncio.gather(_inbox_and_state(user_id), self.broadcasts.index())
        self.recent_states.keep(user_id, inbox, state)
        if state.clearing:
            self.read_cleanup.request(user_id)
        # Those a read-all covered are read already, though still marked unread until its clean-up is done.
        query: dict[str, Any] = {"unread_by": user_id}
        if state.direct_through is not None:
            query["_id"] = {"$gt": state.direct_through}
        direct, read_through_floor = await asyncio.gather(
            Notification.find(query).count(), self.broadcasts.count_through(index, state.floor)
        )
        return int(direct) + max(index.made - read_through_floor - len(state.read_ids), 0)

    async def mark_read(self, user_id: PydanticObjectId, notification_id: str) -> None:
        oid = parse_object_id(notification_id)
        if oid is None:
            raise NotFound("No such notification.")
        try:
            await self._mark_read(user_id, oid)
        finally:
            self.recent_states.drop(user_id)  # what a replay shows from now on reads the change

    async def _mark_read(self, user_id: PydanticObjectId, oid: PydanticObjectId) -> None:
        # One writer of a user's read state at a time, so each change is tallied once (FerretDB applies
        # updates as read-modify-write; on MongoDB the filtered update alone would do).
        async with self.locks.hold(inbox_lock(user_id)):
            notification = await Notification.get(oid)
            if notification is None or not visible_to(notification, user_id):
                raise NotFound("No such notification.")
            if not notification.is_broadcast:
                inbox = await Inbox.get(user_id) if notification.read_at is None else None
                through = inbox.direct_read_through if inbox else None
                if notification.read_at is None and (through is None or oid > through):
                    await notification.set({Notification.read_at: datetime.now(UTC), Notification.unread_by: None})
                    if notification.dispatch_id is not None:
                        await self.read_tallies.direct_read({notification.dispatch_id: 1})
                return
            state = await self.broadcast_state(user_id)
            if state.is_read(notification):
                return
            with contextlib.suppress(DuplicateKeyError):  # read twice at once: already recorded
                await BroadcastReceipt(
                    notification_id=oid, user_id=user_id, created_day=notification.created_day
                ).insert()
                await self.read_tallies.receipts({oid: 1})

    async def mark_all_read(self, user_id: PydanticObjectId) -> None:
        """Everything the user has now is read: two watermarks in the Inbox (one write), whatever the number of
        notifications, and none of them read; the direct ones are then marked one by one in the background
        (clear_read), which tallies them for the senders' read counts.

        The direct watermark is an id made now: ids follow creation across processes (documents/ids.py), so it
        covers every direct notification sent before the read-all, one stored a moment later included."""
        async with self.locks.hold(inbox_lock(user_id)):
            state, index = await asyncio.gather(self.broadcast_state(user_id), self.broadcasts.index(fresh=True))
            changes: dict[str, Any] = {"direct_read_through": new_id(), "clearing": True}
            watermark = index.newest_id
            broadcasts_read = watermark is not None and watermark > state.floor
            if broadcasts_read:
                changes["broadcasts_read_through"] = watermark
                read_before = await self.broadcasts.count_through(index, state.floor)
            await upsert(Inbox.get_pymongo_collection(), user_id, {"$set": changes})
            if broadcasts_read:
                # Once the watermark is stored: its coverage, and the receipts it makes redundant, at once.
                await asyncio.gather(
                    self.read_tallies.coverage(read_before, index.made),
                    # The watermark now counts the broadcasts read one by one above the old floor.
                    self.read_tallies.receipts(dict.fromkeys(state.read_ids, -1)),
                    BroadcastReceipt.find({"user_id": user_id, "notification_id": {"$lte": watermark}}).delete()
                    if state.receipts
                    else asyncio.sleep(0),
                )
        self.recent_states.drop(user_id)
        self.read_cleanup.request(user_id)

    async def clear_read(self, user_id: PydanticObjectId) -> None:
        """Mark read, one by one, the direct notifications a read-all covered, and tally each one marked; run in
        the background (read_cleanup), and again whenever a read finds one left (a crash, a full queue).

        Each update is conditional on the notification being unread, under the user's lock, so each is tallied
        once; a notification stored after the read-all with an older id (sent just before it) is read too, as the
        watermark says."""
        async with self.locks.hold(inbox_lock(user_id)):
            inbox, found = await asyncio.gather(Inbox.get(user_id), Notification.find({"unread_by": user_id}).to_list())
            through = inbox.direct_read_through if inbox else None
            covered = [n for n in found if through is not None and _id_of(n) <= through]
            if not covered:
                if inbox is not None and inbox.clearing:
                    await inbox.set({Inbox.clearing: False})
                return
            now = datetime.now(UTC)
            collection = Notification.get_pymongo_collection()
            results = await gather_bounded(
                (
                    collection.update_one(
                        {"_id": n.id, "unread_by": user_id}, {"$set": {"read_at": now, "unread_by": None}}
                    )
                    for n in covered
                ),
                CLEAR_CONCURRENCY,
            )
            cleared = [bool(result.modified_count) for result in results]
            by_dispatch = Counter(
                n.dispatch_id for n, done in zip(covered, cleared, strict=True) if done and n.dispatch_id is not None
            )
            if by_dispatch:
                await self.read_tallies.direct_read(by_dispatch)
            await Inbox.get_pymongo_collection().update_one({"_id": user_id}, {"$set": {"clearing": False}})

    async def forget_user(self, user_id: PydanticObjectId) -> None:
        """Delete what is kept for one user: their notifications, broadcast receipts, inbox and its pages.

        In batches, since FerretDB on SQLite refuses to delete more than about 32,000 documents at once; each
        batch is "the owner's oldest N", an equality FerretDB pushes down.
        """
        for model, owner in ((Notification, "recipient_id"), (BroadcastReceipt, "user_id")):
            while batch := (
                await model.find({owner: user_id})
                .sort([("_id", SortDirection.ASCENDING)])
                .limit(FORGET_BATCH)
                .to_list()
            ):
                await model.find({owner: user_id, "_id": {"$lte": batch[-1].id}}).delete()
        await self.inbox_pages.forget(user_id)
        inbox = await Inbox.get(user_id)
        if inbox is not None:
            await inbox.delete()
        self.recent_states.drop(user_id)

    async def dispatches(self, *, before: str | None = None, limit: int = 20) -> tuple[list[DispatchStats], str | None]:
        """What was sent, newest first, with how many recipients have read each."""
        return await dispatch_page(self.dispatch_log, self.read_tallies, before=before, limit=limit)
