"""Notifications: one document per recipient, or one per broadcast with read receipts beside it."""

from datetime import datetime
from typing import Annotated, Any, ClassVar

from beanie import Document, Indexed, PydanticObjectId
from bson import ObjectId
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from tidings.documents.clock import today_number, utcnow

# Broadcasts are numbered 0, 1, 2, ... in id order, and kept in pages of this many: a page is read by equality on
# `broadcast_page`, which FerretDB pushes down to its backend, where ranges and sorts decode the whole collection.
BROADCAST_PAGE_SIZE = 50
BROADCASTS_ID = "broadcasts"
# A user's direct notifications are numbered 0, 1, 2, ... as they are sent and kept in pages of this many
# (services/inbox_pages.py): an inbox page reads a page or two by equality on `inbox_page`, never the whole history.
INBOX_PAGE_SIZE = 25


def inbox_page_key(user_id: ObjectId, page: int) -> str:
    """The value of `Notification.inbox_page` (and a marker's id) for one page of one user's inbox."""
    return f"{user_id}:{page}"


def page_of_key(key: str) -> int:
    return int(key.rpartition(":")[2])


class Notification(Document):
    # None for a broadcast: every user who existed when it was sent (user id < notification id).
    recipient_id: PydanticObjectId | None = None
    # The recipient while a direct notification is unread, then None: unread queries read only unread documents.
    unread_by: PydanticObjectId | None = None
    title: str
    body: str
    data: dict[str, Any] | None = None
    # The admin who sent it (documents stored before `sender` existed have only this).
    sender_id: PydanticObjectId | None = None
    # Who sent it, {"type": "user" | "key", "id", "name"}: an admin, or an API key (then sender_id is None).
    sender: dict[str, Any] | None = None
    # The send this notification came from: one per recipient of a send share it.
    dispatch_id: Annotated[PydanticObjectId | None, Indexed()] = None
    # Set once on direct notifications; broadcasts keep their read state in receipts.
    read_at: datetime | None = None
    # Broadcasts only: the broadcast's number, and its page (broadcast_seq // BROADCAST_PAGE_SIZE).
    broadcast_seq: int | None = None
    broadcast_page: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    # created_at's day (documents/clock.py day_number): retention deletes a day at a time by equality.
    created_day: int = Field(default_factory=today_number)
    # Direct only: inbox_page_key(recipient, page), the page of the recipient's inbox it is kept in.
    inbox_page: str | None = None

    class Settings:
        name = "notifications"
        # Each hot query is an equality on one of these fields, then a range or sort on _id (docs/scaling.md).
        indexes: ClassVar = [
            IndexModel([("recipient_id", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("unread_by", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("broadcast_page", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("created_day", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("inbox_page", ASCENDING), ("_id", ASCENDING)]),
        ]

    @property
    def is_broadcast(self) -> bool:
        return self.recipient_id is None

    def public(self, read: bool) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "title": self.title,
            "body": self.body,
            "data": self.data,
            "created_at": self.created_at.isoformat(),
            "broadcast": self.is_broadcast,
            "read": read,
            "sender": self.sender_json(),
        }

    def sender_json(self) -> dict[str, Any] | None:
        """`sender`, or for a document stored before it existed, the admin of `sender_id` (name unknown)."""
        if self.sender is not None:
            return self.sender
        if self.sender_id is not None:
            return {"type": "user", "id": str(self.sender_id), "name": None}
        return None


class BroadcastReceipt(Document):
    """A user read one broadcast (broadcasts read before Inbox.broadcasts_read_through need none)."""

    notification_id: PydanticObjectId
    user_id: PydanticObjectId
    # The broadcast's day: retention deletes receipts with their broadcasts.
    created_day: int = Field(default_factory=today_number)

    class Settings:
        name = "broadcast_receipts"
        indexes: ClassVar = [
            IndexModel([("user_id", ASCENDING), ("notification_id", ASCENDING)], unique=True),
            IndexModel([("created_day", ASCENDING)]),
        ]


class Inbox(Document):
    """Per user (its id is the user's id): the read watermarks, and the pages of direct notifications.

    Written under the lock "inbox:<user id>" (FerretDB applies updates as read-modify-write).
    """

    broadcasts_read_through: PydanticObjectId | None = Field(default=None)
    # Direct notifications with an id up to this one are read (read-all); each is also marked read by itself soon
    # after (NotificationService.clear_read), which is what unread queries select by.
    direct_read_through: PydanticObjectId | None = None
    # Set by a read-all, unset once its clean-up has marked them all: reads that see it ask for the clean-up again.
    clearing: bool = False
    # The newest page opened (its marker is stored first), and the lowest page there can be: pages the start-up
    # backfill gave to notifications stored before inbox pages existed are -1, -2, ...
    top_page: int | None = None
    low_page: int = 0

    class Settings:
        name = "inboxes"


class InboxPage(Document):
    """A page of a user's inbox was opened (its id is inbox_page_key(user, page)): an empty page with a marker lies
    inside the inbox (every number of it went to a send that failed), one without lies below its end.

    `start` is the id of the page's first notification: every notification of a lower page has an older id.
    """

    id: str  # type: ignore[assignment]
    user_id: PydanticObjectId
    start: PydanticObjectId
    # The start's day: retention deletes markers with their day (a page keeps its notifications without one).
    created_day: int

    class Settings:
        name = "inbox_pages"
        indexes: ClassVar = [IndexModel([("user_id", ASCENDING)]), IndexModel([("created_day", ASCENDING)])]


class BroadcastIndex(Document):
    """The one document (id "broadcasts") that numbers broadcasts: how many were made, and where each page starts.

    Written under the "broadcasts" lock, so numbers are dense and in id order; broadcasts are rare.
    """

    id: str = Field(default=BROADCASTS_ID)  # type: ignore[assignment]
    # Broadcasts made so far: the next one is number `made`.
    made: int = 0
    # page_starts[k] is the id of broadcast number k * BROADCAST_PAGE_SIZE.
    page_starts: list[PydanticObjectId] = Field(default_factory=list)
    newest_id: PydanticObjectId | None = None
    # Broadcasts numbered below this were deleted by retention: they count as read for everyone.
    first_kept: int = 0

    class Settings:
        name = "broadcast_index"


class Dispatch(Document):
    """One send: to chosen users (one notification each) or a broadcast (one notification, id = dispatch id)."""

    sender_id: PydanticObjectId | None = None
    sender_email: str | None = None
    # As Notification.sender: an admin or an API key; None before it existed (then sender_id and sender_email say).
    sender: dict[str, Any] | None = None
    title: str
    body: str
    broadcast: bool
    recipient_count: int
    # Broadcasts only: the broadcast's number (Notification.broadcast_seq), which its read count is kept by.
    broadcast_seq: int | None = None
    # Its page of the log of sends (services/dispatch_log.py): the panel reads the log a page at a time.
    log_page: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    created_day: int = Field(default_factory=today_number)

    class Settings:
        name = "dispatches"
        indexes: ClassVar = [
            IndexModel([("log_page", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("created_day", ASCENDING)]),
        ]

    @property
    def sender_label(self) -> str | None:
        """Who sent it, as the panel says: the admin's email, or "API key <name>"; None for the system."""
        if self.sender is not None and self.sender.get("type") == "key":
            return f"API key {self.sender.get('name')}"
        return self.sender_email
