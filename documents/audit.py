"""The audit log: who changed what, when."""

from datetime import datetime
from typing import Any, ClassVar

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from tidings.documents.clock import utcnow


class AuditEntry(Document):
    actor_id: PydanticObjectId | None = None
    # Copied at the time, so the log still reads right after the actor changes email or is deleted.
    actor_email: str | None = None
    action: str
    target_id: PydanticObjectId | None = None
    target_label: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "audit_log"
        indexes: ClassVar = [
            # The panel's filters of the log: an equality on one of these, newest first (services/audit.py).
            IndexModel([("actor_id", ASCENDING), ("_id", DESCENDING)]),
            IndexModel([("action", ASCENDING), ("_id", DESCENDING)]),
            IndexModel([("target_id", ASCENDING), ("_id", DESCENDING)]),
        ]

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "actor_id": str(self.actor_id) if self.actor_id else None,
            "actor_email": self.actor_email,
            "action": self.action,
            "target_id": str(self.target_id) if self.target_id else None,
            "target_label": self.target_label,
            "details": self.details,
            "created_at": self.created_at.isoformat(),
        }
