"""Broadcasts, numbered densely in id order and kept in pages, so that every read is an equality on a page number.

A broadcast reaches every user who existed when it was sent, so a user's inbox holds every broadcast since they
joined. Ranges and sorts over them would decode the whole collection on FerretDB; instead each broadcast carries
its number (`broadcast_seq`) and page (`broadcast_page`), and one index document (`BroadcastIndex`) says how many
were made and where each page starts. Reading the newest broadcasts, those after an id, or how many come after an
id reads the index and one or two pages (at most BROADCAST_PAGE_SIZE documents each).
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from beanie import PydanticObjectId

from tidings.documents import BroadcastIndex, Notification
from tidings.documents.ids import new_id
from tidings.documents.notification import BROADCAST_PAGE_SIZE, BROADCASTS_ID
from tidings.server.adapters.broker import Broker
from tidings.server.adapters.codecs import NOTIFY_TOPIC
from tidings.server.adapters.locks import Locks

BROADCASTS_LOCK = "broadcasts"
# Retention changes the index (first_kept) without a publish: a cached copy is read again after this long.
INDEX_CACHE_SECONDS = 1.0
# Full pages of broadcasts kept per process (each BROADCAST_PAGE_SIZE notifications, a few kB apiece).
PAGES_CACHED = 64


class IndexCache:
    """The broadcast index as this process last read it, and the pages of broadcasts read under it: every inbox
    read, unread count and replay needs the index and a page or two, the same for every user. A reconnect storm
    read them once per user (the index alone was 8% of the server's CPU, through pymongo).

    The index copy is trusted only while the broker is connected, so that the publish of every new broadcast
    reaches this process and drops the copy first: a replay that starts after a broadcast's live frame arrived
    reads the index afresh, and one that starts before holds that frame back and sends it after (realtime/hub.py).
    A read that began before a drop is not kept.

    A full page (every number on it counted by the index) never changes but for retention deleting it, which
    readers filter out by the index's `first_kept`: full pages are kept, the most recently used PAGES_CACHED. The
    newest page still fills up: it is kept only together with the index copy it was read under, and goes with it.
    """

    def __init__(self, broker: Broker, ttl: float = INDEX_CACHE_SECONDS, pages: int = PAGES_CACHED) -> None:
        self._broker = broker
        self._ttl = ttl
        self._index: BroadcastIndex | None = None
        self._read_at = 0.0
        self._drops = 0
        self._pages_cached = pages
        self._full_pages: OrderedDict[int, list[Notification]] = OrderedDict()
        self._newest_page: tuple[int, list[Notification]] | None = None
        broker.subscribe(NOTIFY_TOPIC, self._on_notify)
        broker.on_connect(self.drop)
        broker.on_disconnect(self.drop)

    def drop(self) -> None:
        self._index = None
        self._newest_page = None
        self._drops += 1

    def _on_notify(self, payload: bytes) -> None:
        # A broadcast is delivered to no one in particular: [null, {...}] (codecs.encode_notifications).
        if b"[null, " in payload:
            self.drop()

    async def get(self) -> BroadcastIndex:
        if self._index is not None and self._broker.connected and time.monotonic() - self._read_at < self._ttl:
            return self._index
        drops, started = self._drops, time.monotonic()
        index = await read_index()
        if drops == self._drops and self._broker.connected:
            self._index, self._read_at = index, started
        return index

    @property
    def drops(self) -> int:
        """Changes with every drop: a page read that began before one is not kept under the new copy."""
        return self._drops

    def page(self, index: BroadcastIndex, number: int) -> list[Notification] | None:
        """A copy of page `number` that is right for `index`, or None (read it)."""
        if _is_full(index, number):
            found = self._full_pages.get(number)
            if found is not None:
                self._full_pages.move_to_end(number)
            return found
        if index is self._index and self._newest_page is not None and self._newest_page[0] == number:
            return self._newest_page[1]
        return None

    def keep(self, index: BroadcastIndex, number: int, found: list[Notification], drops: int) -> None:
        """Keep page `number` as read for `index` (`drops`: `self.drops` when the read began)."""
        if _is_full(index, number):
            self._full_pages[number] = found
            self._full_pages.move_to_end(number)
            while len(self._full_pages) > self._pages_cached:
                self._full_pages.popitem(last=False)
        elif index is self._index and drops == self._drops:
            self._newest_page = (number, found)


async def read_index() -> BroadcastIndex:
    return await BroadcastIndex.get(BROADCASTS_ID) or BroadcastIndex()


@dataclass(frozen=True)
class Broadcasts:
    locks: Locks
    cache: IndexCache | None = field(default=None)

    async def index(self, *, fresh: bool = False) -> BroadcastIndex:
        """The index; a copy this process read recently unless `fresh` (writes of read state read it afresh)."""
        if fresh or self.cache is None:
            return await read_index()
        return await self.cache.get()

    async def page(self, index: BroadcastIndex, number: int) -> list[Notification]:
        """One page of broadcasts as `index` counts them, in id order (index: broadcast_page, _id); this
        process's copy when it has one (IndexCache). Shared between readers: never change what it returns."""
        cached = self.cache.page(index, number) if self.cache is not None else None
        if cached is not None:
            # Retention may have deleted the page's oldest since it was read.
            return cached if not cached or _seq_of(cached[0]) >= index.first_kept else _kept(index, cached)
        drops = self.cache.drops if self.cache is not None else 0
        found = sorted(await Notification.find({"broadcast_page": number}).to_list(), key=_id_of)
        if self.cache is not None:
            self.cache.keep(index, number, found, drops)
        return found

    async def append(self, notification: Notification) -> None:
        """Give a new broadcast its id (also its dispatch's) and number, and store it.

        Under the "broadcasts" lock, so numbers are dense and follow ids. The broadcast is stored before the index
        counts it: a crash in between leaves a numbered broadcast the index does not count yet, which the next
        broadcast adopts, so numbers are never given twice.
        """
        async with self.locks.hold(BROADCASTS_LOCK):
            index = await read_index()
            await self._adopt_uncounted(index)
            seq = index.made
            # A broadcast is its own dispatch: its read count is found from either id.
            notification.id = notification.dispatch_id = new_id()
            notification.broadcast_seq = seq
            notification.broadcast_page = seq // BROADCAST_PAGE_SIZE
            await notification.insert()
            _count(index, notification)
            await index.save()

    @staticmethod
    async def _adopt_uncounted(index: BroadcastIndex) -> None:
        while uncounted := await Notification.find_one(
            {"broadcast_page": index.made // BROADCAST_PAGE_SIZE, "broadcast_seq": index.made}
        ):
            _count(index, uncounted)

    async def count_through(self, index: BroadcastIndex, oid: PydanticObjectId) -> int:
        """How many broadcasts have an id at or below `oid`, counting those retention deleted."""
        if index.newest_id is not None and oid >= index.newest_id:
            return index.made  # all of them (a read-all's floor): no page to read
        number = bisect.bisect_right(index.page_starts, oid) - 1
        if number < 0:
            return index.first_kept
        seqs = [_seq_of(n) for n in await self.page(index, number) if _id_of(n) <= oid and _seq_of(n) < index.made]
        return max([index.first_kept, number * BROADCAST_PAGE_SIZE, *(seq + 1 for seq in seqs)])

    async def newest(
        self,
        index: BroadcastIndex,
        *,
        floor: PydanticObjectId,
        before: PydanticObjectId | None = None,
        limit: int,
        skip: frozenset[PydanticObjectId] = frozenset(),
    ) -> list[Notification]:
        """Up to `limit` broadcasts with floor < id < before, newest first, leaving out the ids in `skip`."""
        starts = index.page_starts
        number = len(starts) - 1 if before is None else bisect.bisect_left(starts, before) - 1
        found: list[Notification] = []
        while number >= 0 and len(found) < limit:
            page = await self.page(index, number)
            found.extend(
                n
                for n in reversed(page)
                if floor < _id_of(n) and (before is None or _id_of(n) < before) and _id_of(n) not in skip
            )
            if starts[number] <= floor:
                break
            number -= 1
        return found[:limit]

    async def oldest_after(self, index: BroadcastIndex, after: PydanticObjectId, *, limit: int) -> list[Notification]:
        """Up to `limit` broadcasts with an id above `after`, oldest first."""
        starts = index.page_starts
        number = max(bisect.bisect_right(starts, after) - 1, 0)
        found: list[Notification] = []
        while number < len(starts) and len(found) < limit:
            found.extend(n for n in await self.page(index, number) if _id_of(n) > after)
            number += 1
        return found[:limit]


def _is_full(index: BroadcastIndex, number: int) -> bool:
    """Whether every number on page `number` is counted: then the page changes only by retention's deletes."""
    return (number + 1) * BROADCAST_PAGE_SIZE <= index.made


def _kept(index: BroadcastIndex, page: list[Notification]) -> list[Notification]:
    return [n for n in page if _seq_of(n) >= index.first_kept]


def _count(index: BroadcastIndex, notification: Notification) -> None:
    oid, seq = _id_of(notification), _seq_of(notification)
    if seq % BROADCAST_PAGE_SIZE == 0:
        index.page_starts.append(oid)
    index.made = seq + 1
    index.newest_id = oid


def _id_of(notification: Notification) -> PydanticObjectId:
    assert notification.id is not None
    return notification.id


def _seq_of(notification: Notification) -> int:
    assert notification.broadcast_seq is not None
    return notification.broadcast_seq
