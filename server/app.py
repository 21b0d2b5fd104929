"""The application factory: `create_app(settings)` does no I/O; resources open in cleanup contexts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pymongo
from aiohttp import web
from pymongo import AsyncMongoClient

from tidings.handlers.admin.app import create_admin_app
from tidings.handlers.middlewares import auth_middleware, request_id_middleware, security_headers, validation_middleware
from tidings.handlers.openapi import setup_openapi
from tidings.handlers.routes import setup_routes
from tidings.server.adapters import redis_client
from tidings.server.adapters.broker import MemoryBroker, redis_broker
from tidings.server.adapters.db import init_database
from tidings.server.adapters.due_set import MemoryDueSet, RedisDueSet
from tidings.server.adapters.jobs import Jobs, JobState, MemoryJobs, RedisJobs, RetryPolicy
from tidings.server.adapters.leases import Leases
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.mailer import Mailer
from tidings.server.adapters.metrics import Metrics
from tidings.server.adapters.numbering import (
    MemoryInboxNumbering,
    MemoryNumbering,
    RedisInboxNumbering,
    RedisNumbering,
)
from tidings.server.adapters.ratelimit import MemoryRateLimiter, RedisRateLimiter
from tidings.server.adapters.security import Passwords, Tokens
from tidings.server.adapters.tasks import cancel_and_wait
from tidings.server.keys import (
    account_email_key,
    accounts_key,
    api_keys_key,
    audit_key,
    authenticator_key,
    broker_key,
    digests_key,
    dispatch_log_key,
    gauge_key,
    hub_key,
    idempotency_key,
    job_admin_key,
    jobs_key,
    limiter_key,
    metrics_key,
    mongo_key,
    notifications_key,
    read_counts_key,
    redis_key,
    retention_key,
    sessions_key,
    settings_key,
    tokens_key,
)
from tidings.server.logs import configure_logging
from tidings.server.realtime.gauge import ConnectionGauge
from tidings.server.realtime.hub import Hub
from tidings.server.runner import runner_for
from tidings.server.services.accounts import AccountService
from tidings.server.services.api_keys import ApiKeys
from tidings.server.services.audit import AuditLog
from tidings.server.services.authenticator import Authenticator
from tidings.server.services.broadcasts import Broadcasts, IndexCache
from tidings.server.services.digests import Digests
from tidings.server.services.dispatch_log import DispatchLog
from tidings.server.services.email_tokens import AccountEmail, EmailTokens
from tidings.server.services.idempotency import Idempotency
from tidings.server.services.inbox_pages import InboxPages
from tidings.server.services.job_admin import JobAdmin
from tidings.server.services.migrations import MIGRATIONS_TIMEOUT, run_migrations
from tidings.server.services.notifications import NotificationService
from tidings.server.services.outbox import Outbox
from tidings.server.services.read_counts import ReadCounts
from tidings.server.services.readiness import probe_dependencies
from tidings.server.services.retention import Retention
from tidings.server.services.sessions import SessionService
from tidings.server.settings import Settings

log = logging.getLogger(__name__)
# Creating the indexes of a fresh database takes a few seconds on FerretDB; on a big MongoDB collection, minutes.
INDEXES_TIMEOUT = 300.0
# How long start-up waits for the broker's subscription (Redis answered a ping a moment before).
BROKER_START_TIMEOUT = 5.0


async def _retry_until_ready(what: str, probe: Callable[[], Awaitable[object]], limit: float) -> None:
    """Wait for a dependency at start with bounded retries, so `make run` and containers start in any order."""
    deadline = asyncio.get_running_loop().time() + limit
    delay = 0.1
    while True:
        try:
            await probe()
            return
        except Exception as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise RuntimeError(f"{what} did not answer within {limit:.0f}s: {exc}") from exc
            log.warning("waiting for %s: %s", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def mongo_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    # timeoutMS bounds every operation, so a MongoDB that hangs (rather than refuses) gives 503s, not waits.
    timeout_ms = int(settings.mongodb_timeout * 1000)
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        settings.mongodb_url,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        timeoutMS=timeout_ms,
        appname="tidings",
    )
    try:
        await _retry_until_ready("MongoDB", lambda: client.admin.command("ping"), settings.startup_timeout)
        # Creating indexes may take longer than a request, and longer than waiting for MongoDB to answer.
        with pymongo.timeout(max(settings.startup_timeout, INDEXES_TIMEOUT)):
            await init_database(client[settings.mongodb_db])
        with pymongo.timeout(MIGRATIONS_TIMEOUT):  # once per migration, over a whole collection
            await run_migrations(client[settings.mongodb_db])
        app[mongo_key] = client
        yield
    finally:
        await client.close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """Redis for rate limits and fan-out; without REDIS_URL, in-process stand-ins for a single process."""
    settings = app[settings_key]
    if not redis_client.enabled(settings):
        app[limiter_key] = MemoryRateLimiter()
        app[broker_key] = MemoryBroker()
        yield
        return
    # One Redis, a Redis behind Sentinel, or a Redis Cluster (settings.redis_sentinels, settings.redis_cluster).
    client = redis_client.client_for(settings)
    try:
        await _retry_until_ready("Redis", client.ping, settings.startup_timeout)
        app[redis_key] = client
        app[limiter_key] = RedisRateLimiter(client, settings.redis_prefix)
        app[broker_key] = redis_broker(settings, client)
        yield
    finally:
        await client.aclose()


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """The job queue (docs/jobs.md): in Redis, on the app's one Redis client; without Redis, in this process."""
    settings = app[settings_key]
    policy = RetryPolicy(
        attempts=settings.job_attempts,
        delay=settings.job_retry_delay,
        max_delay=settings.job_retry_max_delay,
        timeout=settings.job_timeout,
    )
    redis = app.get(redis_key)
    jobs: Jobs
    if redis is None:
        jobs = MemoryJobs(policy, grace=settings.shutdown_timeout)
    else:
        jobs = RedisJobs(
            redis, settings.redis_prefix, policy, grace=settings.shutdown_timeout, dead_ttl=settings.job_dead_ttl
        )
    app[jobs_key] = jobs
    try:
        yield
    finally:
        await jobs.close()


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    """The service objects handlers call, and the thread pool that hashes passwords."""
    settings = app[settings_key]
    executor = ThreadPoolExecutor(settings.password_hash_threads, thread_name_prefix="argon2")
    passwords = Passwords(settings, executor)
    authenticator = Authenticator(app[tokens_key], app[broker_key])
    app[authenticator_key] = authenticator
    locks = Locks(app.get(redis_key), settings.redis_prefix, settings.lock_timeout)
    metrics = app[metrics_key]
    sessions = SessionService(settings, passwords, app[tokens_key], app[limiter_key], authenticator, locks, metrics)
    app[sessions_key] = sessions
    audit = AuditLog()
    app[audit_key] = audit
    leases = Leases(app.get(redis_key), settings.redis_prefix)
    redis = app.get(redis_key)
    numbering = (
        RedisNumbering(redis, f"{settings.redis_prefix}dispatch_log:number") if redis is not None else MemoryNumbering()
    )
    dispatch_log = DispatchLog(numbering, locks, leases)
    app[dispatch_log_key] = dispatch_log
    # A closed slot of tallies is folded once any insert that could still land in it has: 2 x MONGODB_TIMEOUT.
    read_counts = ReadCounts(
        leases, grace=2 * settings.mongodb_timeout, step_timeout=max(4 * settings.mongodb_timeout, 10.0)
    )
    app[read_counts_key] = read_counts
    # Start-up work, once per database: dispatches stored before the log get their pages (idempotent; when another
    # process holds the backfill, the background task below finishes it should that process stop).
    await dispatch_log.backfill()
    inbox_numbering = RedisInboxNumbering(redis, settings.redis_prefix) if redis is not None else MemoryInboxNumbering()
    index_cache = IndexCache(app[broker_key])
    notifications = NotificationService(
        app[broker_key],
        audit,
        locks,
        Broadcasts(locks, index_cache),
        read_counts,
        dispatch_log,
        InboxPages(inbox_numbering, locks),
        metrics,
    )
    app[notifications_key] = notifications
    app[retention_key] = Retention(
        settings.notification_retention_days, locks, read_counts.forget, index_changed=index_cache.drop
    )
    app[accounts_key] = AccountService(passwords, sessions, authenticator, notifications, audit, locks)
    app[api_keys_key] = ApiKeys(app[broker_key], app[limiter_key], audit)
    app[idempotency_key] = Idempotency(settings.idempotency_ttl)
    hub = Hub(settings, app[broker_key], notifications, authenticator, metrics)
    app[hub_key] = hub
    app[gauge_key] = ConnectionGauge(
        hub, app.get(redis_key), settings.redis_prefix, settings.connection_report_interval
    )
    _email_ctx(app)
    _count_in_metrics(app)
    yield
    executor.shutdown(wait=True, cancel_futures=True)


def _email_ctx(app: web.Application) -> None:
    """Mail, the flows that send it, and the periodic jobs; their handlers are registered before a worker starts."""
    settings, jobs = app[settings_key], app[jobs_key]
    mailer = Mailer(settings)
    mailer.warn_if_unsent()
    outbox = Outbox(mailer, jobs)
    outbox.register()
    tokens = EmailTokens()
    account_email = AccountEmail(settings, tokens, app[accounts_key], outbox, jobs, app[limiter_key])
    account_email.register()
    app[account_email_key] = account_email

    async def sweep_sessions() -> None:
        # FerretDB lacks TTL indexes, so expired sessions (and unused mailed tokens) are deleted here.
        with pymongo.timeout(max(settings.session_sweep_interval, 60.0)):  # a sweep may scan for long
            deleted = await app[sessions_key].delete_expired()
            deleted_tokens = await tokens.delete_expired()
        if deleted or deleted_tokens:
            log.info("deleted expired sessions", extra={"count": deleted, "email_tokens": deleted_tokens})

    jobs.every("sweep_sessions", settings.session_sweep_interval, sweep_sessions)
    redis, prefix = app.get(redis_key), settings.redis_prefix
    digests = Digests(
        settings,
        app[notifications_key],
        app[accounts_key],
        outbox,
        candidates=RedisDueSet(redis, f"{prefix}digest:users") if redis is not None else MemoryDueSet(),
        broadcasts=RedisDueSet(redis, f"{prefix}digest:broadcasts") if redis is not None else MemoryDueSet(),
    )
    digests.register(jobs)
    app[digests_key] = digests
    app[job_admin_key] = JobAdmin(jobs, app[audit_key])


def _count_in_metrics(app: web.Application) -> None:
    """What the adapters report through their own hooks: the broker's subscription, and failed jobs."""
    metrics, broker = app[metrics_key], app[broker_key]
    connected_before = False

    def connected() -> None:
        nonlocal connected_before
        metrics.broker_connected(reconnect=connected_before)
        connected_before = True

    broker.on_connect(connected)
    broker.on_disconnect(metrics.broker_disconnected)
    app[jobs_key].failure_listeners.append(metrics.job_failed)


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the process's one subscription for the app's lifetime; cancelled and awaited on the way out.

    The server listens only once the subscription is live (or BROKER_START_TIMEOUT passed): until then no cache may
    be trusted, and the first seconds after a restart, when every socket reconnects, are when caches count most.
    """
    broker = app[broker_key]
    subscribed = asyncio.Event()
    broker.on_connect(subscribed.set)
    task = asyncio.create_task(broker.run(), name="broker")
    try:
        await asyncio.wait_for(subscribed.wait(), BROKER_START_TIMEOUT)
    except TimeoutError:
        log.warning("the broker's subscription is not live yet; serving without it until it is")
    yield
    await cancel_and_wait(task)


async def background_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's own periodic tasks, cancelled and awaited on the way out."""

    async def fold_read_counts() -> None:
        # Tallies of reads into the sends' read counters; one process at a time does it, the others skip.
        while True:
            await asyncio.sleep(app[settings_key].read_count_fold_interval)
            try:
                await app[read_counts_key].fold()
            except Exception:
                log.exception("read count fold failed")

    async def keep_dispatch_log() -> None:
        # Finishes a backfill that another process left (start-up ran it), then skips pages retention emptied.
        pause = 60.0
        while True:
            await asyncio.sleep(pause)
            try:
                if await app[dispatch_log_key].backfill():
                    await app[dispatch_log_key].trim()
                    pause = 3600.0
            except Exception:
                log.exception("dispatch log upkeep failed")

    async def apply_retention() -> None:
        # Deletes the days that fell out of NOTIFICATION_RETENTION_DAYS; idempotent, so overlapping runs are safe.
        # The first run waits an interval too: start-up has enough to do, and a short-lived process (a test, a CLI
        # command) should not be cancelled in the middle of a delete.
        while True:
            await asyncio.sleep(app[settings_key].retention_interval)
            try:
                with pymongo.timeout(app[settings_key].retention_interval):  # a first run may have many days to do
                    await app[retention_key].purge()
            except Exception:
                log.exception("retention failed")

    async def sweep_idempotency() -> None:
        # Expired idempotency records (FerretDB lacks TTL indexes; a request also deletes one it finds expired).
        while True:
            await asyncio.sleep(app[settings_key].session_sweep_interval)
            try:
                with pymongo.timeout(app[settings_key].session_sweep_interval):
                    await app[idempotency_key].sweep()
            except Exception:
                log.exception("idempotency sweep failed")

    async def sample_metrics() -> None:
        # The metrics that are probed rather than counted: dependencies up, /health/ready's verdict, job counts.
        settings = app[settings_key]
        while True:
            checks = await probe_dependencies(app[mongo_key], app.get(redis_key), settings.health_probe_timeout)
            job_counts: Mapping[JobState, int] | None = None
            if all(state == "ok" for state in checks.values()):
                try:
                    job_counts = await app[jobs_key].counts()
                except Exception as exc:  # the probe just passed; a failure here is a race with an outage
                    log.warning("could not count jobs for the metrics: %s", exc)
            app[metrics_key].sampled({name: state == "ok" for name, state in checks.items()}, job_counts)
            await asyncio.sleep(settings.metrics_sample_interval)

    tasks = [
        asyncio.create_task(sweep_idempotency(), name="idempotency-sweeper"),
        asyncio.create_task(apply_retention(), name="retention"),
        asyncio.create_task(fold_read_counts(), name="read-count-fold"),
        asyncio.create_task(keep_dispatch_log(), name="dispatch-log-upkeep"),
        asyncio.create_task(app[notifications_key].read_cleanup.run(), name="read-all-clean-up"),
        asyncio.create_task(app[hub_key].expire_tokens(), name="ws-token-expiry"),
        asyncio.create_task(app[gauge_key].report_forever(), name="ws-connection-gauge"),
    ]
    if app[metrics_key].enabled:
        tasks.append(asyncio.create_task(sample_metrics(), name="metrics-sampler"))
    yield
    await cancel_and_wait(*tasks)


async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """Consume jobs in this process unless RUN_WORKER=0 (`tidings worker` runs one on its own). On the way out,
    running jobs get SHUTDOWN_TIMEOUT to finish; those that do not go back to the queue."""
    settings = app[settings_key]
    if not settings.run_worker:
        yield
        return
    jobs = app[jobs_key]
    task = asyncio.create_task(jobs.run_worker(settings.worker_concurrency), name="job-worker")
    yield
    await jobs.stop_worker()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=settings.shutdown_timeout + 5.0)
    except TimeoutError:
        log.warning("the job worker did not stop in time")
    await cancel_and_wait(task)


async def close_sockets(app: web.Application) -> None:
    """on_shutdown: close every WebSocket with 1001 before handlers are cancelled."""
    await app[hub_key].shutdown()


def create_app(settings: Settings) -> web.Application:
    """Build the application; nothing is opened until it starts."""
    app = web.Application(
        middlewares=[request_id_middleware, auth_middleware, validation_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[settings_key] = settings
    app[tokens_key] = Tokens(settings)
    app[metrics_key] = Metrics(enabled=settings.metrics)
    # Order matters: each context uses what the ones before it opened, and they close in reverse.
    app.cleanup_ctx.extend([mongo_ctx, redis_ctx, jobs_ctx, services_ctx, broker_ctx, background_ctx, worker_ctx])
    app.on_shutdown.append(close_sockets)
    app.on_response_prepare.append(security_headers)
    setup_routes(app)
    setup_openapi(app)
    app.add_subapp("/admin/", create_admin_app())
    return app


async def gunicorn_runner() -> web.AppRunner:
    """gunicorn's entry point (gunicorn.conf.py's wsgi_app), settings from the environment. aiohttp's worker serves
    the runner a factory returns as it is: the same runner as `tidings serve`, and no copy of its options here."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return runner_for(create_app(settings))
