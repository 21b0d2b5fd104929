"""server/services/notifications.py: what `data` MongoDB can store, and which broadcasts a user has read."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from beanie import PydanticObjectId

from tidings.documents import Notification
from tidings.server.services.notifications import MAX_DATA_DEPTH, BroadcastState, RecentReadStates, data_problem

pytestmark = pytest.mark.unit

DEPTH = "At most 32 levels of nesting."
KEYS = "Keys may not start with '$' or contain '.' or NUL."
INTEGERS = "Integers must fit in 64 bits."


def nested(levels: int, container: str = "dict") -> Any:
    """`levels` containers, each inside the previous one; the innermost is empty."""
    value: Any = {} if container == "dict" else []
    for _ in range(levels - 1):
        value = {"k": value} if container == "dict" else [value]
    return value


@pytest.mark.parametrize(
    "data",
    [None, {}, {"a": 1, "b": [1, "x", None, True, 1.5], "c": {"d": {"e": "f"}}}, {"a$": 1, "": 2, "ünïcode": 3}],
    ids=["none", "empty", "nested", "odd-but-allowed-keys"],
)
def test_storable_data_has_no_problem(data: Any) -> None:
    assert data_problem(data) is None


@pytest.mark.parametrize("container", ["dict", "list"])
def test_32_levels_are_allowed_and_33_are_not(container: str) -> None:
    assert MAX_DATA_DEPTH == 32
    assert data_problem({"data": nested(31, container)}) is None
    assert data_problem({"data": nested(32, container)}) == DEPTH


def test_very_deep_data_is_refused_without_recursion() -> None:
    """Checked iteratively: 100,000 levels would overflow a recursive check."""
    assert data_problem(nested(100_000)) == DEPTH
    assert data_problem(nested(100_000, "list")) == DEPTH


@pytest.mark.parametrize(
    "data",
    [
        {"$set": 1},
        {"$": 1},
        {"a.b": 1},
        {".": 1},
        {"a\x00b": 1},
        {"ok": {"deep": {"$where": "x"}}},
        {"ok": [1, {"x.y": 2}]},
    ],
    ids=["operator", "dollar", "dot", "only-dot", "nul", "nested-operator", "in-a-list"],
)
def test_keys_mongodb_cannot_store_are_refused(data: Any) -> None:
    assert data_problem(data) == KEYS


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 0, True, 1e300], ids=["max", "min", "zero", "bool", "float"])
def test_64_bit_integers_are_allowed(value: object) -> None:
    assert data_problem({"n": value}) is None


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30], ids=["max+1", "min-1", "huge"])
def test_integers_beyond_64_bits_are_refused(value: int) -> None:
    assert data_problem({"n": value}) == INTEGERS
    assert data_problem({"n": [1, {"m": value}]}) == INTEGERS


# BroadcastState.is_read

FLOOR = PydanticObjectId("64b7f0c2a1b2c3d4e5f60718")
BELOW = PydanticObjectId("64b7f0c2a1b2c3d4e5f60717")
ABOVE = PydanticObjectId("64b7f0c2a1b2c3d4e5f60719")
FURTHER = PydanticObjectId("64b7f0c2a1b2c3d4e5f6071a")
USER = PydanticObjectId("64b7f0c2a1b2c3d4e5f60000")


def notification(
    oid: PydanticObjectId, *, recipient: PydanticObjectId | None, read_at: datetime | None = None
) -> Notification:
    # model_construct: a Beanie document without a database (no validation, no collection needed).
    built: Notification = Notification.model_construct(
        id=oid, recipient_id=recipient, title="t", body="b", read_at=read_at
    )
    assert isinstance(built, Notification)
    return built


@pytest.fixture
def state() -> BroadcastState:
    return BroadcastState(floor=FLOOR, read_ids=frozenset({FURTHER}))


@pytest.mark.parametrize(("oid", "read"), [(BELOW, True), (FLOOR, True), (ABOVE, False), (FURTHER, True)])
def test_a_broadcast_is_read_at_or_below_the_floor_or_with_a_receipt(
    state: BroadcastState, oid: PydanticObjectId, read: bool
) -> None:
    assert state.is_read(notification(oid, recipient=None)) is read


@pytest.mark.parametrize(("read_at", "read"), [(None, False), (datetime(2024, 1, 1, tzinfo=UTC), True)])
def test_a_direct_notification_is_read_when_it_has_read_at(
    state: BroadcastState, read_at: datetime | None, read: bool
) -> None:
    """Its own read_at decides, whatever the broadcast floor and receipts say."""
    assert state.is_read(notification(BELOW, recipient=USER, read_at=read_at)) is read
    assert state.is_read(notification(FURTHER, recipient=USER, read_at=read_at)) is read


def test_recent_read_states_expire_drop_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    states = RecentReadStates(ttl=2.0, capacity=2)
    users = [PydanticObjectId() for _ in range(3)]
    state = BroadcastState(users[0], frozenset(), None, 0, False)
    states.keep(users[0], None, state)
    assert states.get(users[0]) == (None, state)
    now[0] += 2.5
    assert states.get(users[0]) is None  # too old: read again
    states.keep(users[0], None, state)
    states.drop(users[0])
    assert states.get(users[0]) is None  # a write of this process
    for user in users:
        states.keep(user, None, state)
    assert states.get(users[0]) is None  # the oldest goes past the capacity
    assert states.get(users[2]) == (None, state)
