"""server/adapters/ratelimit.py: the in-memory fixed-window limiter (the Redis one needs Redis)."""

from __future__ import annotations

import pytest

from tidings.server.adapters import ratelimit
from tidings.server.adapters.ratelimit import MemoryRateLimiter

pytestmark = pytest.mark.unit


class FakeClock:
    """Stands in for the `time` module of ratelimit.py; the event loop keeps the real time.monotonic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ratelimit, "time", fake)
    return fake


async def test_hit_counts_events_and_reports_the_whole_window_left(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    assert await limiter.hit("k", 60) == (1, 60)
    assert await limiter.hit("k", 60) == (2, 60)
    assert await limiter.hit("k", 60) == (3, 60)


async def test_the_window_is_fixed_and_its_remaining_seconds_round_up(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    await limiter.hit("k", 10)
    clock.now += 0.5
    assert await limiter.hit("k", 10) == (2, 10)  # 9.5 s left, rounded up
    clock.now += 8.7
    assert await limiter.hit("k", 10) == (3, 1)  # 0.8 s left: later hits do not extend the window


async def test_the_seconds_left_are_never_below_one(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    await limiter.hit("k", 10)
    clock.now += 10 - 0.0001
    assert await limiter.hit("k", 10) == (2, 1)
    assert await limiter.peek("k") == (2, 1)


async def test_the_count_starts_again_when_the_window_expires(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    for _ in range(5):
        await limiter.hit("k", 10)
    clock.now += 10  # the window ends exactly now
    assert await limiter.hit("k", 10) == (1, 10)


async def test_keys_are_counted_separately(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    await limiter.hit("a", 60)
    await limiter.hit("a", 60)
    assert await limiter.hit("b", 30) == (1, 30)
    assert await limiter.peek("a") == (2, 60)


async def test_peek_does_not_count(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    assert await limiter.peek("k") == (0, 0)
    await limiter.hit("k", 60)
    clock.now += 15
    assert await limiter.peek("k") == (1, 45)
    assert await limiter.peek("k") == (1, 45)
    assert await limiter.hit("k", 60) == (2, 45)


async def test_peek_after_the_window_expired_is_zero(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    await limiter.hit("k", 10)
    clock.now += 11
    assert await limiter.peek("k") == (0, 0)
    assert await limiter.hit("k", 10) == (1, 10)


async def test_reset_forgets_the_key_only(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    await limiter.hit("k", 60)
    await limiter.hit("k", 60)
    await limiter.hit("other", 60)
    await limiter.reset("k")
    assert await limiter.peek("k") == (0, 0)
    assert await limiter.hit("k", 60) == (1, 60)
    assert await limiter.peek("other") == (1, 60)


async def test_reset_of_an_unknown_key_is_harmless(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter()
    await limiter.reset("never-seen")
    assert await limiter.peek("never-seen") == (0, 0)


async def test_at_capacity_the_oldest_window_is_evicted(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(max_keys=2)
    await limiter.hit("first", 60)
    await limiter.hit("second", 60)
    await limiter.hit("second", 60)
    assert await limiter.hit("third", 60) == (1, 60)
    assert await limiter.peek("first") == (0, 0)
    assert await limiter.peek("second") == (2, 60)
    assert await limiter.peek("third") == (1, 60)


async def test_at_capacity_expired_windows_go_before_live_ones(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(max_keys=2)
    await limiter.hit("live", 100)
    await limiter.hit("short", 1)
    clock.now += 2
    await limiter.hit("new", 100)
    # "live" was the oldest entry, but "short" had expired: only it made room.
    assert await limiter.peek("live") == (1, 98)
    assert await limiter.peek("new") == (1, 100)


async def test_counting_a_known_key_at_capacity_evicts_nothing(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(max_keys=2)
    await limiter.hit("a", 60)
    await limiter.hit("b", 60)
    assert await limiter.hit("a", 60) == (2, 60)
    assert await limiter.hit("b", 60) == (2, 60)


async def test_never_holds_more_than_max_keys(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(max_keys=3)
    for number in range(50):
        await limiter.hit(f"key-{number}", 60)
    remembered = [number for number in range(50) if (await limiter.peek(f"key-{number}"))[0]]
    assert remembered == [47, 48, 49]
