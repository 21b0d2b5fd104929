"""The broker's bookkeeping of held channels, and how notifications are split into channels, without Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tidings.server.adapters.broker import Held, MemoryBroker, RedisBroker
from tidings.server.adapters.codecs import USER_TOPIC, decode_notifications, route_notifications

pytestmark = pytest.mark.unit


class Unused:
    """Stands in for a Redis client the bookkeeping never calls."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Redis was called: {name}")


def redis_broker(**options: Any) -> RedisBroker:
    return RedisBroker(Unused(), "p:", Unused(), **options)  # type: ignore[arg-type]


def connect(broker: RedisBroker) -> None:
    """As after a connect: nothing pending, connected."""
    broker._to_subscribe.clear()
    broker._set_connected(True)


def flush(broker: RedisBroker) -> tuple[list[str], list[str]]:
    """What the writer would send now: (subscribe, unsubscribe), bookkept as sent."""
    subscribe, broker._to_subscribe = sorted(broker._to_subscribe), set()
    unsubscribe, broker._to_unsubscribe = sorted(broker._to_unsubscribe), set()
    broker._requested.difference_update(unsubscribe)
    broker._requested.update(subscribe)
    broker._inflight.update(subscribe)
    return subscribe, unsubscribe


async def test_a_hold_settles_when_its_subscribe_is_confirmed_and_the_next_is_live_at_once() -> None:
    broker = redis_broker()
    connect(broker)
    first = broker.hold(USER_TOPIC, "u1")
    assert flush(broker) == (["p:notify:u:u1"], [])
    broker._confirmed("p:notify:u:u1")
    assert await first is Held.NEW
    assert await broker.hold(USER_TOPIC, "u1") is Held.LIVE
    assert broker.held() == 1


async def test_a_release_before_the_batch_goes_out_costs_nothing() -> None:
    broker = redis_broker()
    connect(broker)
    pending = broker.hold(USER_TOPIC, "u1")
    broker.release(USER_TOPIC, "u1")
    assert await pending is Held.DOWN
    assert flush(broker) == ([], [])
    assert broker.held() == 0


async def test_the_last_release_unsubscribes_and_a_hold_meanwhile_waits_for_a_fresh_subscribe() -> None:
    broker = redis_broker()
    connect(broker)
    broker.hold(USER_TOPIC, "u1")
    flush(broker)
    broker._confirmed("p:notify:u:u1")
    broker.release(USER_TOPIC, "u1")
    assert flush(broker) == ([], ["p:notify:u:u1"])
    # UNSUBSCRIBE is on its way: a new hold must not count on the old subscription.
    again = broker.hold(USER_TOPIC, "u1")
    assert flush(broker) == (["p:notify:u:u1"], [])
    broker._confirmed("p:notify:u:u1")
    assert await again is Held.NEW


async def test_a_release_and_hold_within_one_batch_keep_the_subscription() -> None:
    broker = redis_broker()
    connect(broker)
    broker.hold(USER_TOPIC, "u1")
    flush(broker)
    broker._confirmed("p:notify:u:u1")
    broker.release(USER_TOPIC, "u1")
    assert await broker.hold(USER_TOPIC, "u1") is Held.LIVE
    assert flush(broker) == ([], [])


async def test_holds_while_disconnected_are_down_and_connected_waits_for_every_channel() -> None:
    broker = redis_broker()
    assert await broker.hold(USER_TOPIC, "u1") is Held.DOWN
    assert await broker.hold(USER_TOPIC, "u2") is Held.DOWN
    subscribe, _ = flush(broker)
    assert subscribe == ["p:notify:u:u1", "p:notify:u:u2"]
    broker._confirmed("p:notify:u:u1")
    assert not broker.connected
    broker._confirmed("p:notify:u:u2")
    assert broker.connected


async def test_the_global_routing_holds_no_channel_per_user() -> None:
    broker = redis_broker(global_routes=True)
    connect(broker)
    assert await broker.hold(USER_TOPIC, "u1") is Held.LIVE
    assert flush(broker) == ([], [])
    assert broker.routed_channel(USER_TOPIC, "u1") == "p:notify:u"
    broker.release(USER_TOPIC, "u1")
    assert broker.held() == 0


async def test_the_memory_broker_delivers_routed_messages_to_held_keys_only() -> None:
    broker = MemoryBroker()
    got: list[bytes] = []
    broker.route(USER_TOPIC, got.append)
    broker.hold(USER_TOPIC, "u1")
    await broker.publish_routed(USER_TOPIC, [("u1", b"a"), ("u2", b"b")])
    assert got == [b"a"]


def test_notifications_are_split_into_a_broadcast_message_and_one_per_recipient() -> None:
    broadcast, routed = route_notifications(
        [("u1", {"id": "1"}), (None, {"id": "2"}), ("u2", {"id": "3"}), ("u1", {"id": "4"})]
    )
    assert broadcast is not None and decode_notifications(broadcast) == [(None, {"id": "2"})]
    assert [(user, json.loads(message)) for user, message in routed] == [
        ("u1", [["u1", {"id": "1"}], ["u1", {"id": "4"}]]),
        ("u2", [["u2", {"id": "3"}]]),
    ]
    assert route_notifications([("u1", {"id": "1"})])[0] is None
