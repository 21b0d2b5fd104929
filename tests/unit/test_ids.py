"""documents/ids.py: a client's id is parsed or refused, and new ids are ordered by creation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from beanie import PydanticObjectId
from bson import ObjectId

from tidings.documents import ids
from tidings.documents.ids import id_floor, new_id, parse_object_id

pytestmark = pytest.mark.unit

HEX = "64b7f0c2a1b2c3d4e5f60718"


class FrozenClock:
    """Stands in for the `time` module of ids.py: time_ns() returns what the test sets."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def time_ns(self) -> int:
        return self.ns


def test_parse_object_id_reads_24_hexadecimal_characters() -> None:
    oid = parse_object_id(HEX)
    assert isinstance(oid, PydanticObjectId)
    assert str(oid) == HEX


def test_parse_object_id_accepts_upper_case_and_spells_it_in_lower_case() -> None:
    oid = parse_object_id(HEX.upper())
    assert oid == PydanticObjectId(HEX)
    assert str(oid) == HEX


@pytest.mark.parametrize(
    "value",
    ["", HEX[:-1], HEX + "0", "g" * 24, "z" + HEX[1:], " " + HEX[1:], HEX[:-1] + "\n", "0x" + HEX[2:]],
    ids=["empty", "23-chars", "25-chars", "all-non-hex", "one-non-hex", "leading-space", "newline", "0x-prefix"],
)
def test_parse_object_id_refuses_malformed_strings(value: str) -> None:
    assert parse_object_id(value) is None


@pytest.mark.parametrize(
    "value",
    [None, 0, 123, 1.5, True, {"$oid": HEX}, [HEX], b"x" * 12],
    ids=["none", "zero", "int", "float", "bool", "dict", "list", "12-bytes"],
)
def test_parse_object_id_refuses_what_is_not_a_string(value: object) -> None:
    """Even 12 bytes, which bson itself would take as an ObjectId: only a client's string is parsed."""
    assert parse_object_id(value) is None


def test_new_id_is_strictly_increasing_across_many_calls() -> None:
    made = [new_id() for _ in range(20_000)]
    assert all(earlier < later for earlier, later in itertools.pairwise(made))


def test_new_id_generation_time_is_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    oid = new_id()
    after = datetime.now(UTC)
    assert oid.generation_time.tzinfo is not None
    assert before <= oid.generation_time <= after


def test_new_id_is_a_12_byte_object_id() -> None:
    oid = new_id()
    assert isinstance(oid, PydanticObjectId)
    assert len(oid.binary) == 12
    assert parse_object_id(str(oid)) == oid


def test_new_id_layout_is_seconds_microseconds_counter_random(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 bytes of seconds, 3 of microseconds, then a counter that only moves within the same microsecond."""
    monkeypatch.setattr(ids, "_last_id_prefix", 0)
    monkeypatch.setattr(ids, "time", FrozenClock(1_700_000_000_123_456_789))
    first, second = new_id(), new_id()
    assert first.binary[:4] == (1_700_000_000).to_bytes(4, "big")
    assert first.binary[4:7] == (123_456).to_bytes(3, "big")
    assert first.binary[7:9] == b"\x00\x00"
    assert second.binary[:7] == first.binary[:7]
    assert second.binary[7:9] == b"\x00\x01"
    assert first.generation_time == datetime.fromtimestamp(1_700_000_000, UTC)


def test_new_id_keeps_increasing_when_the_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FrozenClock(1_700_000_000_000_000_000)
    monkeypatch.setattr(ids, "_last_id_prefix", 0)
    monkeypatch.setattr(ids, "time", clock)
    first = new_id()
    clock.ns -= 5_000_000_000  # five seconds back (an NTP step)
    second = new_id()
    assert second > first
    # The ids still name the later of the two times, not the clock's step back.
    assert second.generation_time == first.generation_time


@pytest.mark.parametrize("seconds", [0.0, 1.999, 1_796_289_563.58, 2**32 - 1.5])
def test_id_floor_is_the_lowest_id_of_its_second(seconds: float) -> None:
    expected = str(ObjectId.from_datetime(datetime.fromtimestamp(seconds, UTC)))
    assert id_floor(seconds) == expected
