"""Background jobs: a Redis-backed queue (saq) with retries, dead letters and periodic jobs; in memory without Redis.

Services never import saq: they enqueue by name through `Jobs`, and `server/app.py` registers the handlers. A job
runs at least once (a handler must be idempotent), is retried with jittered exponential backoff up to
`RetryPolicy.attempts` attempts, then dead-lettered: kept for `JOB_DEAD_TTL` seconds, listed on the panel's Jobs
page, where it can be retried or discarded. A periodic job runs once per period across every process: the first
worker to claim the period (a Redis `SET NX`) enqueues it. docs/jobs.md has the why and the how.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from saq.job import Job, Status
from saq.queue.redis import PubSubMultiplexer, RedisQueue
from saq.types import Context
from saq.worker import Worker

from tidings.server.adapters.tasks import cancel_and_wait

log = logging.getLogger(__name__)

JobHandler = Callable[..., Awaitable[None]]
JobState = Literal["queued", "running", "retrying", "dead"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "retrying", "dead")
# A finished job's record is kept this long (its result is never read; this is for the worker's own bookkeeping).
COMPLETED_TTL = 300
# Each consumer gives up a blocking dequeue this often, so that a stop is seen within it.
DEQUEUE_TIMEOUT = 1.0
MAX_LISTED = 200


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` attempts; before attempt n+1 a random delay up to min(max_delay, delay * 2**(n-1))."""

    attempts: int = 8
    delay: float = 20.0
    max_delay: float = 3600.0
    timeout: int = 120

    def delay_after(self, attempts: int) -> float:
        ceiling = min(self.max_delay, self.delay * 2.0 ** max(attempts - 1, 0))
        return ceiling * random.random()  # noqa: S311 - jitter, not a secret


@dataclass(frozen=True)
class JobInfo:
    """What the panel shows of a job: never its arguments (a mail's links are in them)."""

    key: str
    name: str
    state: JobState
    attempts: int
    max_attempts: int
    error: str | None
    queued_at: datetime | None
    run_at: datetime | None


@dataclass(frozen=True)
class Periodic:
    name: str
    interval: float


def _last_line(error: str | None) -> str | None:
    if not error:
        return None
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


def _when(epoch: float) -> datetime | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch / 1000 if epoch > 1e11 else epoch, UTC)  # saq keeps milliseconds


class Jobs(ABC):
    """Register handlers before the worker starts; enqueue from anywhere."""

    def __init__(self, policy: RetryPolicy, *, grace: float) -> None:
        self.policy = policy
        self.grace = grace
        self.handlers: dict[str, JobHandler] = {}
        self.periodic: list[Periodic] = []
        # Told the job's name each time a run fails (the metrics count them).
        self.failure_listeners: list[Callable[[str], None]] = []
        self._stop = asyncio.Event()

    def register(self, name: str, handler: JobHandler) -> None:
        @functools.wraps(handler)
        async def run(**kwargs: Any) -> None:
            try:
                await handler(**kwargs)
            except Exception:
                for listener in self.failure_listeners:
                    listener(name)
                raise

        self.handlers[name] = run

    def every(self, name: str, interval: float, handler: Callable[[], Awaitable[None]]) -> None:
        """Run `handler` once per `interval` seconds across all processes (periods are counted from the epoch)."""

        async def run(period: int = -1) -> None:
            await handler()
            log.info("periodic job ran", extra={"job": name, "period": period})

        self.register(name, run)
        self.periodic.append(Periodic(name, interval))

    @abstractmethod
    async def enqueue(self, name: str, *, key: str | None = None, **kwargs: Any) -> str:
        """Store a job; it runs as soon as a worker is free. A `key` already queued is not queued twice."""

    @abstractmethod
    async def list(self, state: JobState, limit: int = MAX_LISTED) -> list[JobInfo]: ...

    @abstractmethod
    async def counts(self) -> dict[JobState, int]: ...

    @abstractmethod
    async def retry(self, key: str) -> bool:
        """Queue a dead-lettered job again with fresh attempts; False when there is no such dead job."""

    @abstractmethod
    async def discard(self, key: str) -> bool:
        """Drop a queued, retrying or dead job; False when there is no such job."""

    @abstractmethod
    async def _claim(self, name: str, period: int, ttl: float) -> bool:
        """Whether this process is the first to claim `period` of the periodic job `name`."""

    @abstractmethod
    async def _consume(self, concurrency: int) -> None:
        """Run jobs until `self._stop` is set, then stop gracefully."""

    async def run_worker(self, concurrency: int) -> None:
        """Consume jobs and schedule periodic ones until `stop_worker`."""
        self._stop.clear()
        scheduler = asyncio.create_task(self._schedule_forever(), name="periodic-jobs")
        try:
            await self._consume(concurrency)
        finally:
            await cancel_and_wait(scheduler)

    async def stop_worker(self) -> None:
        """Let running jobs finish (for at most `grace` seconds; then they go back to the queue)."""
        self._stop.set()

    async def _schedule_forever(self) -> None:
        if not self.periodic:
            return
        while not self._stop.is_set():
            now = time.time()
            for job in self.periodic:
                period = int(now // job.interval)
                try:
                    if await self._claim(job.name, period, ttl=2 * job.interval + 60):
                        await self.enqueue(job.name, key=f"periodic:{job.name}:{period}", period=period)
                        log.info("periodic job queued", extra={"job": job.name, "period": period})
                except (RedisError, OSError) as exc:
                    log.warning("could not schedule periodic job %s: %s", job.name, exc)
            now = time.time()
            wait = min((math.floor(now / job.interval) + 1) * job.interval - now for job in self.periodic)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=max(wait, 0.01) + 0.01)

    async def close(self) -> None:
        """Release what the queue holds (never the shared Redis client)."""
        return None


# Redis: saq


class _QuietJob(Job):
    """saq logs jobs with their arguments at DEBUG and on errors; a mail's arguments hold its links."""

    def info(self, full: bool = False) -> str:
        return super().info(False)

    @property
    def abort_id(self) -> str:
        # In the queue's space, so that its scripts' keys share one slot on a Redis Cluster (saq's own abort key,
        # "saq:abort:<key>", does not: CROSSSLOT).
        if isinstance(self.queue, _Queue):
            return self.queue.namespace(f"abort:{self.key}")
        return super().abort_id

    def __repr__(self) -> str:
        return self.info(False)


class _Queue(RedisQueue):
    """saq's Redis queue with every key under REDIS_PREFIX, on the app's own Redis client (a Sentinel or cluster
    client as well as a plain one), keeping dead letters for `dead_ttl` seconds."""

    def __init__(self, redis: aioredis.Redis, prefix: str, dead_ttl: int) -> None:
        # One hash tag for every key of the queue (the prefix's own, if it has one): its scripts use several keys at
        # once, which a Redis Cluster allows only within one slot.
        self._space = f"{prefix}{{jobs}}:"
        self._dead_ttl = dead_ttl
        super().__init__(redis, name="jobs")
        self._pubsub = PubSubMultiplexer(redis.pubsub(), prefix=self.job_id(""))
        # Consumers blocked in a dequeue, which a stop cancels rather than waits out.
        self.waiting: set[asyncio.Task[Any]] = set()

    def namespace(self, key: str) -> str:
        return f"{self._space}{key}"

    def job_id(self, job_key: str) -> str:
        return f"{self._space}job:{job_key}"

    def job_key_from_id(self, job_id: str) -> str:
        return job_id[len(self.job_id("")) :]

    def deserialize(
        self, payload: dict[str, Any] | str | bytes | None, status: Status | str | None = None
    ) -> Job | None:
        job = super().deserialize(payload, status)
        if job is not None:
            job.__class__ = _QuietJob
        return job

    async def _finish(
        self, job: Job, status: Status, *, result: Any = None, error: str | None = None, **kwargs: Any
    ) -> None:
        job.ttl = COMPLETED_TTL if status == Status.COMPLETE else self._dead_ttl
        await super()._finish(job, status, result=result, error=error, **kwargs)

    async def disconnect(self) -> None:
        await self._pubsub.close()

    async def dequeue(self, timeout: float = 0.0, poll_interval: float = 0.0) -> Job | None:  # noqa: ASYNC109 - saq's signature
        task = asyncio.current_task()
        assert task is not None
        self.waiting.add(task)
        try:
            return await super().dequeue(timeout, poll_interval)
        finally:
            self.waiting.discard(task)


class _Worker(Worker[Context]):
    # The process's own signal handling (aiohttp's runner, or `tidings worker`) decides when to stop.
    SIGNALS: list[Any] = []  # noqa: RUF012 - overrides saq's class attribute


class RedisOutageFilter(logging.Filter):
    """saq logs each of its upkeep rounds that fails while Redis is down as an ERROR with a traceback, every second;
    the outage is the broker's to report (it logs it once per reconnection attempt). One WARNING line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RedisError | OSError) and record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args, record.exc_info = "job queue: Redis unavailable: %s", (exc,), None
        return True


def _quiet_outages() -> None:
    saq_log = logging.getLogger("saq")
    if not any(isinstance(f, RedisOutageFilter) for f in saq_log.filters):
        saq_log.addFilter(RedisOutageFilter())


def _state(job: Job) -> JobState | None:
    if job.status in (Status.ACTIVE, Status.ABORTING):
        return "running"
    if job.status in (Status.FAILED, Status.ABORTED):
        return "dead"
    if job.status in (Status.NEW, Status.QUEUED):
        return "retrying" if job.attempts and job.error else "queued"
    return None


def _info(job: Job) -> JobInfo:
    state = _state(job)
    assert state is not None
    return JobInfo(
        key=job.key,
        name=job.function,
        state=state,
        attempts=job.attempts,
        max_attempts=job.retries,
        error=_last_line(job.error),
        queued_at=_when(job.queued),
        run_at=_when(job.scheduled) if job.scheduled else None,
    )


class RedisJobs(Jobs):
    """Jobs in Redis through saq: they survive restarts and crashes of every process."""

    def __init__(self, redis: aioredis.Redis, prefix: str, policy: RetryPolicy, *, grace: float, dead_ttl: int) -> None:
        super().__init__(policy, grace=grace)
        self._redis = redis
        self._prefix = prefix
        self.queue = _Queue(redis, prefix, dead_ttl)

    def _job(self, name: str, key: str | None, kwargs: dict[str, Any]) -> Job:
        return _QuietJob(
            function=name,
            kwargs=kwargs,
            key=key or uuid.uuid4().hex,
            retries=self.policy.attempts,
            retry_delay=self.policy.delay,
            retry_backoff=self.policy.max_delay,
            timeout=self.policy.timeout,
            ttl=COMPLETED_TTL,
        )

    async def enqueue(self, name: str, *, key: str | None = None, **kwargs: Any) -> str:
        if name not in self.handlers:
            raise KeyError(f"no job named {name!r}")
        job = self._job(name, key, kwargs)
        await self.queue.enqueue(job)
        return job.key

    async def _all(self) -> list[Job]:
        return [job async for job in self.queue.iter_jobs(statuses=[s for s in Status if s != Status.COMPLETE])]

    async def list(self, state: JobState, limit: int = MAX_LISTED) -> list[JobInfo]:
        jobs = [job for job in await self._all() if _state(job) == state]
        jobs.sort(key=lambda job: job.queued)
        return [_info(job) for job in jobs[:limit]]

    async def counts(self) -> dict[JobState, int]:
        counts: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        for job in await self._all():
            state = _state(job)
            if state is not None:
                counts[state] += 1
        return counts

    async def retry(self, key: str) -> bool:
        job = await self.queue.job(key)
        if job is None or _state(job) != "dead":
            return False
        fresh = self._job(job.function, job.key, job.kwargs or {})
        await self._redis.delete(self.queue.job_id(key))
        return await self.queue.enqueue(fresh) is not None

    async def discard(self, key: str) -> bool:
        job = await self.queue.job(key)
        if job is None or _state(job) is None:
            return False
        if _state(job) != "dead":
            await self.queue.abort(job, "discarded")
        await self._redis.delete(self.queue.job_id(key))
        return True

    async def _claim(self, name: str, period: int, ttl: float) -> bool:
        claimed = await self._redis.set(
            f"{self._prefix}jobs:period:{name}:{period}", b"1", nx=True, ex=max(1, math.ceil(ttl))
        )
        return bool(claimed)

    async def _consume(self, concurrency: int) -> None:
        functions = [(name, _call(handler)) for name, handler in self.handlers.items()]
        _quiet_outages()
        worker = _Worker(
            self.queue,
            functions,
            concurrency=concurrency,
            timers={"schedule": 1, "sweep": 30, "abort": 1, "worker_info": 10},
            dequeue_timeout=DEQUEUE_TIMEOUT,
            shutdown_grace_period_s=max(1, math.ceil(self.grace)),
        )
        starting = asyncio.create_task(worker.start(), name="job-worker")
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            # saq's upkeep loops sleep up to a timer between rounds and would hold the stop for the whole grace
            # period: they end now. Running jobs finish within the grace period; after it they are cancelled and
            # go back to the queue.
            worker.event.set()
            upkeep = [task for task in worker.tasks if task.get_name() != "process"]
            worker.tasks.difference_update(upkeep)
            # Idle consumers too: one cancelled just as Redis handed it a job leaves that job among the active ones,
            # where the next sweep finds it and queues it again.
            await cancel_and_wait(*upkeep, *self.queue.waiting)
            await worker.stop()
            await cancel_and_wait(starting)

    async def close(self) -> None:
        await self.queue.disconnect()


def _call(handler: JobHandler) -> Callable[..., Awaitable[None]]:
    async def run(ctx: Context, **kwargs: Any) -> None:
        await handler(**kwargs)

    run.__qualname__ = getattr(handler, "__qualname__", "job")
    return run


# Memory: one process, no Redis


@dataclass
class _MemoryJob:
    key: str
    name: str
    kwargs: dict[str, Any]
    state: JobState = "queued"
    attempts: int = 0
    error: str | None = None
    queued_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    run_at: datetime | None = None


class MemoryJobs(Jobs):
    """Jobs in this process's memory, for REDIS_URL= (one process): retried alike, lost when the process ends."""

    def __init__(self, policy: RetryPolicy, *, grace: float, max_dead: int = 1000) -> None:
        super().__init__(policy, grace=grace)
        self._jobs: dict[str, _MemoryJob] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._claimed: set[tuple[str, int]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._max_dead = max_dead

    async def enqueue(self, name: str, *, key: str | None = None, **kwargs: Any) -> str:
        if name not in self.handlers:
            raise KeyError(f"no job named {name!r}")
        key = key or uuid.uuid4().hex
        existing = self._jobs.get(key)
        if existing is not None and existing.state != "dead":
            return key
        self._jobs[key] = _MemoryJob(key, name, dict(kwargs))
        self._ready.put_nowait(key)
        return key

    def _info(self, job: _MemoryJob) -> JobInfo:
        return JobInfo(
            job.key, job.name, job.state, job.attempts, self.policy.attempts, _last_line(job.error), job.queued_at,
            job.run_at,
        )  # fmt: skip

    async def list(self, state: JobState, limit: int = MAX_LISTED) -> list[JobInfo]:
        return [self._info(job) for job in self._jobs.values() if job.state == state][:limit]

    async def counts(self) -> dict[JobState, int]:
        counts: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        for job in self._jobs.values():
            counts[job.state] += 1
        return counts

    async def retry(self, key: str) -> bool:
        job = self._jobs.get(key)
        if job is None or job.state != "dead":
            return False
        self._jobs[key] = _MemoryJob(key, job.name, job.kwargs)
        self._ready.put_nowait(key)
        return True

    async def discard(self, key: str) -> bool:
        job = self._jobs.get(key)
        if job is None or job.state == "running":
            return False
        del self._jobs[key]
        return True

    async def _claim(self, name: str, period: int, ttl: float) -> bool:
        if (name, period) in self._claimed:
            return False
        self._claimed = {claim for claim in self._claimed if claim[0] != name or claim[1] >= period - 1}
        self._claimed.add((name, period))
        return True

    def _later(self, key: str, delay: float) -> None:
        def ready() -> None:
            self._timers.discard(handle)
            self._ready.put_nowait(key)

        handle = asyncio.get_running_loop().call_later(delay, ready)
        self._timers.add(handle)

    async def _run_one(self, job: _MemoryJob) -> None:
        job.state = "running"
        job.attempts += 1
        try:
            async with asyncio.timeout(self.policy.timeout):
                await self.handlers[job.name](**job.kwargs)
        except asyncio.CancelledError:
            job.state = "queued"  # stopped: back to the queue
            raise
        except Exception as exc:
            log.exception("job %s (%s) failed", job.name, job.key)
            job.error = f"{type(exc).__name__}: {exc}"
            if job.attempts >= self.policy.attempts:
                job.state = "dead"
                self._trim_dead()
            else:
                job.state = "retrying"
                delay = self.policy.delay_after(job.attempts)
                job.run_at = datetime.fromtimestamp(time.time() + delay, UTC)
                self._later(job.key, delay)
        else:
            self._jobs.pop(job.key, None)

    def _trim_dead(self) -> None:
        dead = [key for key, job in self._jobs.items() if job.state == "dead"]
        for key in dead[: max(0, len(dead) - self._max_dead)]:
            del self._jobs[key]

    async def _consume(self, concurrency: int) -> None:
        running: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(concurrency)
        stopping = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                await slots.acquire()
                getting = asyncio.create_task(self._ready.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    await cancel_and_wait(getting)
                    slots.release()
                    break
                job = self._jobs.get(getting.result())
                if job is None or job.state not in ("queued", "retrying"):
                    slots.release()
                    continue
                task = asyncio.create_task(self._run_one(job), name=f"job:{job.name}")
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            stopping.cancel()
            if running:
                _, late = await asyncio.wait(running, timeout=self.grace)
                if late:
                    await cancel_and_wait(*late)
                    for task in late:
                        key = task.get_name()
                        log.warning("job %s did not finish within the grace period: queued again", key)
                    for job in self._jobs.values():
                        if job.state == "queued":
                            self._ready.put_nowait(job.key)

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()


def describe(job: JobInfo) -> dict[str, Any]:
    """A job as JSON for logs and the API: its fields, times as ISO text."""
    data = dataclasses.asdict(job)
    for name in ("queued_at", "run_at"):
        value = data[name]
        data[name] = value.isoformat(timespec="seconds") if value else None
    return data
