"""The directory of the paged log of sends (Dispatch.log_page): where each page starts.

Dispatches are numbered as they are sent (a Redis counter) and kept in pages of LOG_PAGE_SIZE; a page is read by
equality on `log_page`, which FerretDB pushes down. The directory is small (two numbers per 50 sends) and lets a
page of the log start at any `before` id, and the counter restart after the last page when its Redis key is lost.
"""

from __future__ import annotations

from beanie import Document, PydanticObjectId
from pydantic import Field

LOG_PAGE_SIZE = 50
DISPATCH_LOG_ID = "dispatch_log"


class DispatchLogDirectory(Document):
    """The one document (id "dispatch_log"). `pages[i]` started with dispatch `starts[i]`; `opened[i]` bounds the
    ids below that page: every dispatch of a lower page has an older id than `opened[i]` (up to the race margin of
    services/dispatch_log.py). For a live page it is an id made once its first number was taken; for a backfilled
    page, the newest id given that page.

    Live pages are numbered 0, 1, 2, ... as dispatches are sent; dispatches stored before the log existed get
    pages -1, -2, ... (newest first) from the start-up backfill, which sets `backfilled` when it is done.
    Written under the "dispatch_log" lock (FerretDB applies $push as read-modify-write).
    """

    id: str = Field(default=DISPATCH_LOG_ID)  # type: ignore[assignment]
    pages: list[int] = Field(default_factory=list)
    starts: list[PydanticObjectId] = Field(default_factory=list)
    opened: list[PydanticObjectId] = Field(default_factory=list)
    backfilled: bool = False
    # Pages below this one are empty (retention deleted their dispatches): the log stops reading there.
    kept_from: int | None = None

    class Settings:
        name = "dispatch_log"

    def marks(self) -> list[tuple[int, PydanticObjectId, PydanticObjectId]]:
        """(page, start, opened) in page order."""
        return sorted(zip(self.pages, self.starts, self.opened, strict=False))
