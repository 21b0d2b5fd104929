"""The per-process copy of the broadcast index: trusted only while the broker delivers every broadcast's publish."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from beanie import PydanticObjectId

from tidings.documents import BroadcastIndex, Notification
from tidings.documents.notification import BROADCAST_PAGE_SIZE
from tidings.server.adapters.broker import Broker
from tidings.server.adapters.codecs import NOTIFY_TOPIC, encode_notifications
from tidings.server.adapters.locks import Locks
from tidings.server.services import broadcasts
from tidings.server.services.broadcasts import Broadcasts, IndexCache

pytestmark = pytest.mark.unit


class StubBroker(Broker):
    def deliver(self, payload: bytes) -> None:
        self._dispatch(NOTIFY_TOPIC, payload)

    def connect(self, connected: bool) -> None:
        self._set_connected(connected)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each read of the index returns a new `made`, so a test can tell a copy from a fresh read."""
    made: list[int] = []

    async def read_index() -> BroadcastIndex:
        made.append(len(made))
        index: BroadcastIndex = BroadcastIndex.model_construct(made=made[-1])
        return index

    monkeypatch.setattr(broadcasts, "read_index", read_index)
    return made


async def test_a_copy_is_kept_until_a_broadcast_is_published(reads: list[int]) -> None:
    broker = StubBroker()
    cache = IndexCache(broker, ttl=60)
    broker.connect(True)
    assert (await cache.get()).made == 0
    assert (await cache.get()).made == 0  # the copy
    broker.deliver(encode_notifications([("65f000000000000000000001", {"id": "x"})]))  # targeted: kept
    assert (await cache.get()).made == 0
    broker.deliver(encode_notifications([(None, {"id": "y"})]))  # a broadcast: dropped
    assert (await cache.get()).made == 1
    assert len(reads) == 2


async def test_no_copy_is_trusted_while_the_broker_is_down(reads: list[int]) -> None:
    broker = StubBroker()
    cache = IndexCache(broker, ttl=60)
    assert (await cache.get()).made == 0  # never connected yet
    assert (await cache.get()).made == 1
    broker.connect(True)
    assert (await cache.get()).made == 2
    broker.connect(False)
    assert (await cache.get()).made == 3
    broker.connect(True)
    assert (await cache.get()).made == 4
    assert (await cache.get()).made == 4


async def test_a_copy_expires_and_a_read_overtaken_by_a_drop_is_not_kept(
    reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = StubBroker()
    broker.connect(True)
    cache = IndexCache(broker, ttl=0)
    assert (await cache.get()).made == 0
    assert (await cache.get()).made == 1  # expired at once
    cache = IndexCache(broker, ttl=60)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_read() -> BroadcastIndex:
        started.set()
        await release.wait()
        index: BroadcastIndex = BroadcastIndex.model_construct(made=-1)
        return index

    monkeypatch.setattr(broadcasts, "read_index", slow_read)
    pending = asyncio.ensure_future(cache.get())
    await started.wait()
    broker.deliver(encode_notifications([(None, {"id": "z"})]))  # published while the read was on its way
    release.set()
    assert (await pending).made == -1
    monkeypatch.setattr(broadcasts, "read_index", lambda: asyncio.sleep(0, BroadcastIndex.model_construct(made=7)))
    assert (await cache.get()).made == 7  # the overtaken read was not kept


def page_of(number: int, count: int) -> list[Notification]:
    first = number * BROADCAST_PAGE_SIZE
    return [
        Notification.model_construct(
            id=PydanticObjectId(f"65f0000000000000{first + k:08x}"), broadcast_seq=first + k, broadcast_page=number
        )
        for k in range(count)
    ]


async def test_full_pages_are_kept_and_the_newest_only_with_its_index(reads: list[int]) -> None:
    broker = StubBroker()
    broker.connect(True)
    cache = IndexCache(broker, ttl=60, pages=2)
    index = await cache.get()
    index.made = 2 * BROADCAST_PAGE_SIZE + 3  # pages 0 and 1 full, page 2 filling up
    for number in (0, 1):
        cache.keep(index, number, page_of(number, BROADCAST_PAGE_SIZE), cache.drops)
    newest = page_of(2, 3)
    cache.keep(index, 2, newest, cache.drops)
    assert cache.page(index, 2) is newest
    fresh = BroadcastIndex.model_construct(made=index.made)  # read afresh (a write's read): not the copy
    assert cache.page(fresh, 2) is None
    assert cache.page(fresh, 0) is not None  # full pages serve any index that counts them
    broker.deliver(encode_notifications([(None, {"id": "y"})]))  # a new broadcast: the newest page goes
    assert cache.page(index, 2) is None
    assert cache.page(index, 1) is not None
    cache.keep(index, 3, page_of(3, 1), cache.drops)  # not full for this index, and not its copy: not kept
    assert cache.page(index, 3) is None
    index.made = 3 * BROADCAST_PAGE_SIZE
    cache.keep(index, 2, page_of(2, BROADCAST_PAGE_SIZE), cache.drops)  # full now; page 0 is the least recent
    assert cache.page(index, 0) is None
    assert cache.page(index, 1) is not None and cache.page(index, 2) is not None


async def test_a_newest_page_read_across_a_drop_is_not_kept(reads: list[int]) -> None:
    broker = StubBroker()
    broker.connect(True)
    cache = IndexCache(broker, ttl=60)
    index = await cache.get()
    drops = cache.drops
    broker.deliver(encode_notifications([(None, {"id": "y"})]))
    index = await cache.get()
    cache.keep(index, 0, page_of(0, 1), drops)
    assert cache.page(index, 0) is None


async def test_cached_pages_leave_out_what_retention_deleted(reads: list[int]) -> None:
    broker = StubBroker()
    broker.connect(True)
    cache = IndexCache(broker, ttl=60)
    index = await cache.get()
    index.made = BROADCAST_PAGE_SIZE
    cache.keep(index, 0, page_of(0, BROADCAST_PAGE_SIZE), cache.drops)
    service = Broadcasts(cast(Locks, None), cache)
    assert len(await service.page(index, 0)) == BROADCAST_PAGE_SIZE  # from the copy: no database here
    index.first_kept = 10
    kept = await service.page(index, 0)
    assert [n.broadcast_seq for n in kept] == list(range(10, BROADCAST_PAGE_SIZE))
