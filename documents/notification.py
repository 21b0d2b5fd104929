"""Notifications: one document per recipient, or one per broadcast with read receipts beside it."""

from datetime import datetime
from typing import Annotated, Any, ClassVar

from beanie import Document, Indexed, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from tidings.documents.clock import utcnow


class Notification(Document):
    # None for a broadcast: every user who existed when it was sent (user id < notification id).
    recipient_id: Annotated[PydanticObjectId | None, Indexed()] = None
    title: str
    body: str
    data: dict[str, Any] | None = None
    sender_id: PydanticObjectId | None = None
    # The send this notification came from: one per recipient of a send share it.
    dispatch_id: Annotated[PydanticObjectId | None, Indexed()] = None
    # Set once on direct notifications; broadcasts keep their read state in receipts.
    read_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "notifications"
        indexes: ClassVar = [IndexModel([("recipient_id", ASCENDING), ("read_at", ASCENDING), ("_id", ASCENDING)])]

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

    class Settings:
        name = "broadcast_receipts"
        indexes: ClassVar = [
            IndexModel([("user_id", ASCENDING), ("notification_id", ASCENDING)], unique=True),
        ]


class Inbox(Document):
    """Per-user read watermark for broadcasts; its id is the user's id."""

    broadcasts_read_through: PydanticObjectId | None = Field(default=None)

    class Settings:
        name = "inboxes"


class Dispatch(Document):
    """One send: to chosen users (one notification each) or a broadcast (one notification, id = dispatch id)."""

    sender_id: PydanticObjectId | None = None
    sender_email: str | None = None
    title: str
    body: str
    broadcast: bool
    recipient_count: int
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "dispatches"
