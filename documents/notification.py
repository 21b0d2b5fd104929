"""Notifications: one document per recipient, or one per broadcast with read receipts beside it."""

from datetime import datetime
from typing import Annotated, Any, ClassVar

from beanie import Document, Indexed, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from tidings.documents.clock import today_number, utcnow

# Broadcasts are numbered 0, 1, 2, ... in id order, and kept in pages of this many: a page is read by equality on
# `broadcast_page`, which FerretDB pushes down to its backend, where ranges and sorts decode the whole collection.
BROADCAST_PAGE_SIZE = 50
BROADCASTS_ID = "broadcasts"


class Notification(Document):
    # None for a broadcast: every user who existed when it was sent (user id < notification id).
    recipient_id: PydanticObjectId | None = None
    # The recipient while a direct notification is unread, then None: unread queries read only unread documents.
    unread_by: PydanticObjectId | None = None
    title: str
    body: str
    data: dict[str, Any] | None = None
    sender_id: PydanticObjectId | None = None
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

    class Settings:
        name = "notifications"
        # Each hot query is an equality on one of these fields, then a range or sort on _id (docs/scaling.md).
        indexes: ClassVar = [
            IndexModel([("recipient_id", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("unread_by", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("broadcast_page", ASCENDING), ("_id", ASCENDING)]),
            IndexModel([("created_day", ASCENDING), ("_id", ASCENDING)]),
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
        }


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
    """Per-user read watermark for broadcasts; its id is the user's id."""

    broadcasts_read_through: PydanticObjectId | None = Field(default=None)

    class Settings:
        name = "inboxes"


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
