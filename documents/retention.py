"""How far retention has deleted: one document, read and written by the retention job."""

from beanie import Document
from pydantic import Field

RETENTION_ID = "notifications"


class RetentionMark(Document):
    id: str = Field(default=RETENTION_ID)  # type: ignore[assignment]
    # Every day up to and including this one (documents/clock.py day_number) has been deleted.
    purged_through_day: int | None = None

    class Settings:
        name = "retention"
