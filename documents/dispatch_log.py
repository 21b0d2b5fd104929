"""The directory of the paged log of sends (Dispatch.log_page): where each page starts.

Dispatches are numbered as they are sent (a Redis counter) and kept in pages of LOG_PAGE_SIZE; a page is read by
equality on `log_page`, which FerretDB pushes down. The directory (two ids per 50 sends, in chunks of
CHUNK_PAGES pages) lets a page of the log start at any `before` id, and the counter restart after the last page
when its Redis key is lost.
"""

from __future__ import annotations

from beanie import Document, PydanticObjectId
from pydantic import Field

LOG_PAGE_SIZE = 50
DISPATCH_LOG_ID = "dispatch_log"


# Page marks are kept in chunks of this many pages, so that reading the newest page of the log decodes one small
# chunk (a document holding every mark took 60-150 ms to decode on FerretDB at 5,000 pages).
CHUNK_PAGES = 64


def chunk_of(page: int) -> int:
    return page // CHUNK_PAGES


class DispatchLogDirectory(Document):
    """The head of the directory (id "dispatch_log"): which chunks of page marks exist, and where each starts.

    Live pages are numbered 0, 1, 2, ... as dispatches are sent; dispatches stored before the log existed get
    pages -1, -2, ... (newest first) from the start-up backfill, which lowers `low_page` as it goes and sets
    `backfilled` when it is done. Written under the "dispatch_log" lock (FerretDB applies $push as
    read-modify-write).
    """

    id: str = Field(default=DISPATCH_LOG_ID)  # type: ignore[assignment]
    # chunks[i] exists (a DispatchLogChunk); chunk_starts[i] is the start of the first page recorded in it.
    chunks: list[int] = Field(default_factory=list)
    chunk_starts: list[PydanticObjectId] = Field(default_factory=list)
    low_page: int = 0
    backfilled: bool = False
    # Pages below this one are empty (retention deleted their dispatches): the log stops reading there.
    kept_from: int | None = None
    # Written by versions that kept every mark here; the start-up backfill moves them into chunks.
    pages: list[int] = Field(default_factory=list)
    starts: list[PydanticObjectId] = Field(default_factory=list)
    opened: list[PydanticObjectId] = Field(default_factory=list)

    class Settings:
        name = "dispatch_log"

    def chunk_holding(self, oid: PydanticObjectId) -> int | None:
        """The highest chunk whose first recorded start is at or before `oid` (else the lowest chunk)."""
        at_or_before = [c for c, start in zip(self.chunks, self.chunk_starts, strict=False) if start <= oid]
        return max(at_or_before, default=min(self.chunks, default=None))


class DispatchLogChunk(Document):
    """The marks of pages chunk * CHUNK_PAGES ... (its id is the chunk number). `pages[i]` started with dispatch
    `starts[i]`; `opened[i]` bounds the ids below that page: every dispatch of a lower page has an older id than
    `opened[i]` (up to the race margin of services/dispatch_log.py). For a live page it is an id made once its first
    number was taken; for a backfilled page, the newest id given that page."""

    id: int  # type: ignore[assignment]
    pages: list[int] = Field(default_factory=list)
    starts: list[PydanticObjectId] = Field(default_factory=list)
    opened: list[PydanticObjectId] = Field(default_factory=list)

    class Settings:
        name = "dispatch_log_chunks"

    def marks(self) -> list[tuple[int, PydanticObjectId, PydanticObjectId]]:
        """(page, start, opened) in page order."""
        return sorted(zip(self.pages, self.starts, self.opened, strict=False))
