"""The in-process job queue (REDIS_URL=): retries with backoff, dead letters, periodic claims, graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.mail import eventually
from tidings.server.adapters.jobs import MemoryJobs, RetryPolicy

pytestmark = pytest.mark.unit

FAST = RetryPolicy(attempts=3, delay=0.01, max_delay=0.02, timeout=5)


@pytest.fixture
async def jobs() -> AsyncIterator[MemoryJobs]:
    queue = MemoryJobs(FAST, grace=1.0)
    yield queue
    await queue.close()


async def running(jobs: MemoryJobs) -> asyncio.Task[None]:
    return asyncio.create_task(jobs.run_worker(concurrency=4))


async def stop(jobs: MemoryJobs, task: asyncio.Task[None]) -> None:
    await jobs.stop_worker()
    await asyncio.wait_for(task, 5)


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=10, delay=20.0, max_delay=60.0)
    for attempt, ceiling in [(1, 20.0), (2, 40.0), (3, 60.0), (8, 60.0)]:
        delays = [policy.delay_after(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jittered over the whole range


async def test_a_failing_job_is_retried_then_succeeds(jobs: MemoryJobs) -> None:
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(n: int) -> None:
        attempts.append(n)
        if len(attempts) < 2:
            raise RuntimeError("refused once")
        done.set()

    jobs.register("flaky", flaky)
    task = await running(jobs)
    await jobs.enqueue("flaky", n=7)
    await asyncio.wait_for(done.wait(), 5)
    assert attempts == [7, 7]
    assert await jobs.counts() == {"queued": 0, "running": 0, "retrying": 0, "dead": 0}
    await stop(jobs, task)


async def test_a_job_failing_every_time_is_dead_lettered_and_can_be_retried(jobs: MemoryJobs) -> None:
    calls: list[int] = []
    healthy = asyncio.Event()

    async def broken() -> None:
        calls.append(1)
        if not healthy.is_set():
            raise RuntimeError("down")

    jobs.register("broken", broken)
    task = await running(jobs)
    key = await jobs.enqueue("broken")
    [dead] = await eventually(lambda: jobs.list("dead"))
    assert (dead.key, dead.attempts, dead.max_attempts, dead.error) == (key, 3, 3, "RuntimeError: down")
    healthy.set()
    assert await jobs.retry(key)

    async def all_done() -> bool:
        return not any((await jobs.counts()).values())

    await eventually(all_done)
    assert len(calls) == 4
    assert not await jobs.retry(key)
    await stop(jobs, task)


async def test_a_key_already_queued_is_not_queued_twice(jobs: MemoryJobs) -> None:
    jobs.register("noop", _noop)
    await jobs.enqueue("noop", key="once")
    await jobs.enqueue("noop", key="once")
    assert len(await jobs.list("queued")) == 1
    assert await jobs.discard("once")
    assert await jobs.list("queued") == []


async def test_periods_are_claimed_once(jobs: MemoryJobs) -> None:
    assert await jobs._claim("sweep", 10, ttl=1)
    assert not await jobs._claim("sweep", 10, ttl=1)
    assert await jobs._claim("sweep", 11, ttl=1)
    assert await jobs._claim("other", 10, ttl=1)


async def test_a_periodic_job_runs_each_period(jobs: MemoryJobs) -> None:
    runs = asyncio.Queue[int]()

    async def tick() -> None:
        runs.put_nowait(1)

    jobs.every("tick", 0.05, tick)
    task = await running(jobs)
    for _ in range(3):
        await asyncio.wait_for(runs.get(), 5)
    await stop(jobs, task)


async def test_stopping_lets_a_running_job_finish(jobs: MemoryJobs) -> None:
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        started.set()
        await release.wait()
        finished.set()

    jobs.register("slow", slow)
    task = await running(jobs)
    await jobs.enqueue("slow")
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(stop(jobs, task))
    await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await stopping
    assert finished.is_set()


async def _noop() -> None:
    return None
