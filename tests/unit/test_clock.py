"""documents/clock.py: now, in UTC, to the millisecond MongoDB stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Self

import pytest

from tidings.documents import clock
from tidings.documents.clock import utcnow

pytestmark = pytest.mark.unit


def test_utcnow_is_timezone_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is UTC
    assert now.utcoffset() == timedelta(0)


def test_utcnow_is_whole_milliseconds_close_to_now() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    now = utcnow()
    after = datetime.now(UTC)
    assert now.microsecond % 1000 == 0
    assert before <= now <= after


def test_utcnow_truncates_rather_than_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """999,999 microseconds become 999 milliseconds: rounding up would carry into the next second."""
    asked: list[tzinfo | None] = []

    class FixedDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Self:
            asked.append(tz)
            return cls(2024, 1, 2, 3, 4, 5, 999_999, tzinfo=tz)

    monkeypatch.setattr(clock, "datetime", FixedDatetime)
    assert utcnow() == datetime(2024, 1, 2, 3, 4, 5, 999_000, tzinfo=UTC)
    assert asked == [UTC]
