"""A user's direct notifications in pages: what an inbox page, a deep page and a resume read instead of everything.

FerretDB pushes down an equality on one field, never a sort, a range or a limit: `{recipient_id: U}` sorted by id
and limited to 21 decodes every notification the user ever got (about 80 us each). So each direct notification
gets a number in its recipient's inbox as it is sent (RedisInboxNumbering: one script call for all the recipients
of a send) and is kept in page `number // INBOX_PAGE_SIZE` of that inbox (`Notification.inbox_page`); a read takes
the page or two it needs by equality.

Pages follow ids: the script hands out each user's numbers in the order of the ids it is given, and an id that is
not newer than the last one numbered for that user (two processes sending to one user at once) is stored under
the smallest id above it. So every notification of page p has an older id than every one of page p + 1, and a
read stops as soon as the pages it read hold what it needs.

The number of a page's first notification opens the page: under the user's lock "inbox:<id>", the page's marker
(InboxPage) is stored, then `Inbox.top_page` raised, and only then the notification. A read starts at the top
page, from the user's counter in Redis (exact), or `top_page + 1` without it (an opening may be under way). An
empty page with a marker lies inside the inbox; one without (retention deleted it with its day, or it was never
opened) is its end.

A counter that is gone (Redis restarted, or the user was quiet for INBOX_COUNTER_TTL) restarts on a fresh page
above `top_page`; with Redis down, notifications go to the top page (a page only grows; the order holds).

Queries: Notification {inbox_page: key} [index inbox_page, _id]; InboxPage and Inbox by _id. The start-up
backfill (migrations.py) gives pages -1, -2, ... to notifications stored before pages existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from tidings.documents import Inbox, InboxPage, Notification
from tidings.documents.notification import INBOX_PAGE_SIZE, inbox_page_key, page_of_key
from tidings.server.adapters.db import upsert
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.numbering import InboxNumbering, NumberingUnavailable
from tidings.server.adapters.tasks import gather_bounded

log = logging.getLogger(__name__)


def inbox_lock(user_id: PydanticObjectId) -> str:
    """The lock of everything one user's Inbox document holds (read state and pages)."""
    return f"inbox:{user_id}"


def restart_value(top_page: int | None) -> int:
    """What a lost counter restarts after: the last number before a fresh page above every opened one."""
    return (0 if top_page is None else top_page + 1) * INBOX_PAGE_SIZE - 1


def pages_for(limit: int) -> int:
    """How many pages to read at once for `limit` notifications: enough to hold them, and one more."""
    return -(-limit // INBOX_PAGE_SIZE) + 1


def _id_of(notification: Notification) -> PydanticObjectId:
    assert notification.id is not None
    return notification.id


@dataclass(frozen=True)
class Bounds:
    """Where one user's pages lie: `top` is the highest page to read; pages up to `recorded` have markers."""

    top: int
    recorded: int | None
    low: int


@dataclass(frozen=True)
class InboxPages:
    numbering: InboxNumbering
    locks: Locks

    # Writing

    async def assign(self, notifications: Sequence[Notification]) -> None:
        """Number direct notifications in their recipients' inboxes and give each its page; call it right before
        storing them. An id may be replaced (by a newer one) to keep each user's ids in the order of their
        numbers."""
        pending = [n for n in notifications if n.recipient_id is not None]
        for _ in range(3):
            if not pending:
                return
            try:
                numbered = await self.numbering.assign([(str(n.recipient_id), str(_id_of(n))) for n in pending])
            except NumberingUnavailable as exc:
                log.warning("inbox counters unavailable, using the top pages: %s", exc)
                await gather_bounded(self._to_top_page(n) for n in pending)
                return
            openings: list[Notification] = []
            missing: list[Notification] = []
            for notification, result in zip(pending, numbered, strict=True):
                if result is None:
                    missing.append(notification)
                    continue
                number, oid = result
                notification.id = PydanticObjectId(oid)
                page = number // INBOX_PAGE_SIZE
                assert notification.recipient_id is not None
                notification.inbox_page = inbox_page_key(notification.recipient_id, page)
                if number % INBOX_PAGE_SIZE == 0:
                    openings.append(notification)
            await gather_bounded(self._open(n) for n in openings)
            # Counters that were gone restart above every opened page (one Inbox read each), then number again.
            await gather_bounded(self._restart(user) for user in {n.recipient_id for n in missing if n.recipient_id})
            pending = missing
        raise NumberingUnavailable("inbox counters keep disappearing")

    async def _restart(self, user_id: PydanticObjectId) -> None:
        inbox = await Inbox.get(user_id)
        await self.numbering.start_after(str(user_id), restart_value(inbox.top_page if inbox else None))

    async def _open(self, notification: Notification) -> None:
        assert notification.recipient_id is not None and notification.inbox_page is not None
        user_id, page = notification.recipient_id, page_of_key(notification.inbox_page)
        async with self.locks.hold(inbox_lock(user_id)):
            await self._record(user_id, page, _id_of(notification), notification.created_day)

    @staticmethod
    async def _record(user_id: PydanticObjectId, page: int, start: PydanticObjectId, day: int) -> None:
        """The page's marker, then the Inbox's top page (hold the user's inbox lock)."""
        with contextlib.suppress(DuplicateKeyError):  # recorded before (a retried send)
            await InboxPage(id=inbox_page_key(user_id, page), user_id=user_id, start=start, created_day=day).insert()
        await upsert(Inbox.get_pymongo_collection(), user_id, {"$max": {"top_page": page}})

    async def _to_top_page(self, notification: Notification) -> None:
        """Without counters: the user's top page, opening page 0 for a user who has none."""
        user_id = notification.recipient_id
        assert user_id is not None
        inbox = await Inbox.get(user_id)
        top = inbox.top_page if inbox is not None else None
        if top is None:
            top = 0
            async with self.locks.hold(inbox_lock(user_id)):
                await self._record(user_id, top, _id_of(notification), notification.created_day)
        notification.inbox_page = inbox_page_key(user_id, top)

    # Reading

    async def bounds(self, user_id: PydanticObjectId, inbox: Inbox | None) -> Bounds | None:
        """The user's pages, or None when the user has none."""
        recorded = inbox.top_page if inbox is not None else None
        low = inbox.low_page if inbox is not None else 0
        try:
            number = await self.numbering.current(str(user_id))
        except NumberingUnavailable:
            number = None
        if number is not None and number >= 0:
            return Bounds(number // INBOX_PAGE_SIZE, recorded, low)
        if recorded is None:
            # No page recorded: a first opening may be under way (its number taken, its marker not yet stored).
            return None if number is None else Bounds(0, None, low)
        return Bounds(recorded + 1, recorded, low)

    async def newest(
        self,
        user_id: PydanticObjectId,
        inbox: Inbox | None,
        *,
        before: PydanticObjectId | None,
        limit: int,
    ) -> list[Notification]:
        """Up to `limit` of the user's direct notifications older than `before` (all when None), newest first."""
        bounds = await self.bounds(user_id, inbox)
        if bounds is None:
            return []
        page = bounds.top if before is None else await self._page_holding(user_id, before, bounds)
        found: list[Notification] = []
        width = pages_for(limit)
        while page >= bounds.low:
            numbers = list(range(page, max(page - width, bounds.low - 1), -1))
            pages, end = await self._read(user_id, numbers, bounds)
            for number, page_read in zip(numbers, pages, strict=True):
                if end is not None and number <= end:
                    break
                found += [n for n in page_read if before is None or _id_of(n) < before]
            if end is not None or len(found) >= limit:
                break
            page, width = numbers[-1] - 1, pages_for(limit - len(found))
        found.sort(key=_id_of, reverse=True)
        return found[:limit]

    async def oldest_after(
        self, user_id: PydanticObjectId, inbox: Inbox | None, *, after: PydanticObjectId, limit: int
    ) -> list[Notification]:
        """Up to `limit` of the user's direct notifications newer than `after`, oldest first."""
        bounds = await self.bounds(user_id, inbox)
        if bounds is None:
            return []
        # A resume usually comes after something recent: the top two pages, read first, often reach down to it.
        top = list(range(bounds.top, max(bounds.top - 2, bounds.low - 1), -1))
        top_pages, end = await self._read(user_id, top, bounds)
        at_top = [n for page_read in top_pages for n in page_read if _id_of(n) > after]
        lowest = top_pages[-1] if end is None else []
        if end is not None or top[-1] <= bounds.low or any(_id_of(n) <= after for n in lowest):
            return sorted(at_top, key=_id_of)[:limit]
        # Further back: from the page that holds its place up to those read already.
        page = await self._page_holding(user_id, after, bounds)
        found: list[Notification] = []
        width = pages_for(limit)
        while page < top[-1] and len(found) < limit:
            numbers = list(range(page, min(page + width, top[-1])))
            pages, _ = await self._read(user_id, numbers, bounds)  # an end below the oldest kept page is passed
            found += [n for page_read in pages for n in page_read if _id_of(n) > after]
            page, width = numbers[-1] + 1, pages_for(limit - len(found))
        if len(found) < limit:
            found += at_top
        found.sort(key=_id_of)
        return found[:limit]

    async def _read(
        self, user_id: PydanticObjectId, numbers: list[int], bounds: Bounds
    ) -> tuple[list[list[Notification]], int | None]:
        """The notifications of these pages (read at once), and the highest of them that is an end of the inbox
        (None if none is): an empty page with no marker, at or below the highest recorded page."""
        pages = await asyncio.gather(
            *(Notification.find({"inbox_page": inbox_page_key(user_id, number)}).to_list() for number in numbers)
        )
        empty = [
            number
            for number, page in zip(numbers, pages, strict=True)
            if not page and bounds.recorded is not None and number <= bounds.recorded
        ]
        markers = await asyncio.gather(*(InboxPage.get(inbox_page_key(user_id, number)) for number in empty))
        ends = [number for number, marker in zip(empty, markers, strict=True) if marker is None]
        return list(pages), max(ends, default=None)

    async def _page_holding(self, user_id: PydanticObjectId, oid: PydanticObjectId, bounds: Bounds) -> int:
        """The highest page opened at or before `oid` (what holds its place among the user's notifications), or the
        lowest page: the notification's own page when it is one of the user's, else found from the markers,
        galloping down from the top and then halving."""
        notification = await Notification.get(oid)
        if notification is not None and notification.recipient_id == user_id and notification.inbox_page:
            return page_of_key(notification.inbox_page)

        async def at_or_before(page: int) -> bool:
            marker = await InboxPage.get(inbox_page_key(user_id, page))
            if marker is None:
                # Below the recorded top, retention deleted it (all older than what is kept); above, an opening is
                # under way, which starts after anything a client can name.
                return bounds.recorded is not None and page <= bounds.recorded
            return marker.start <= oid

        above, page, step = bounds.top + 1, bounds.top, 1
        while not await at_or_before(page):
            if page <= bounds.low:
                return bounds.low
            above, page, step = page, max(page - step, bounds.low), step * 2
        while above - page > 1:  # at_or_before holds at `page`, not at `above`
            middle = (page + above) // 2
            if await at_or_before(middle):
                page = middle
            else:
                above = middle
        return page

    async def numbered_since(self, user_id: PydanticObjectId, oid: PydanticObjectId) -> bool:
        """Whether a direct notification with an id at or above `oid` may have been numbered for the user: a send
        numbers before it stores and publishes, so False means none was published either. True when unknown (no
        counter, or Redis unavailable)."""
        try:
            newest = await self.numbering.newest(str(user_id))
        except NumberingUnavailable:
            return True
        return newest is None or newest >= str(oid)

    # Forgetting

    @staticmethod
    async def forget(user_id: PydanticObjectId) -> None:
        """Delete a deleted user's page markers (their notifications and Inbox go with NotificationService)."""
        await InboxPage.find({"user_id": user_id}).delete()
