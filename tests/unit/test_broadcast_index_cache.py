"""The per-process copy of the broadcast index: trusted only while the broker delivers every broadcast's publish."""

from __future__ import annotations

import asyncio

import pytest

from tidings.documents import BroadcastIndex
from tidings.server.adapters.broker import Broker
from tidings.server.adapters.codecs import NOTIFY_TOPIC, encode_notifications
from tidings.server.services import broadcasts
from tidings.server.services.broadcasts import IndexCache

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
