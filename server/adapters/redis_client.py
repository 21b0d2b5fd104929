"""The Redis clients every command and the broker's subscription go through: one Redis, a Redis behind Sentinel, or
a Redis Cluster, as the settings say; retried on a dropped connection, checked before reuse."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidings.server.settings import Settings

CONNECT_TIMEOUT = 5.0
# Commands in flight at once per process. Past it a command waits up to POOL_WAIT for a free connection: redis-py's
# default pool (100 since redis-py 8) refuses the next one at once ("Too many connections"), which a reconnect storm's
# reads reach. Behind Sentinel the pool cannot wait, so it is larger.
MAX_CONNECTIONS = 100
POOL_WAIT = 10.0
SENTINEL_MAX_CONNECTIONS = 1_000


def enabled(settings: Settings) -> bool:
    """Whether the settings name a Redis at all (else the in-process stand-ins serve a single process)."""
    return settings.redis_url is not None or bool(settings.redis_sentinels)


def _retried(health_check_interval: float) -> dict[str, Any]:
    """After a Redis restart (or a failover) every pooled connection is stale: a connection idle for longer than
    `health_check_interval` is pinged before reuse, and a command that still meets a dead connection reconnects (to
    the new primary, behind Sentinel) and is retried a few times with a short jittered backoff, instead of failing
    (or reaching only this process)."""
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "health_check_interval": health_check_interval,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=4),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionResetError, BrokenPipeError],
    }


def connect(url: str, *, health_check_interval: float) -> aioredis.Redis:
    """A pooled client of one Redis at `url`."""
    return _waiting_pool(url, _retried(health_check_interval))


def _waiting_pool(url: str, options: dict[str, Any]) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT, **options)
    return aioredis.Redis.from_pool(pool)


def _sentinel_master(settings: Settings, options: dict[str, Any]) -> aioredis.Redis:
    addresses = []
    for item in settings.redis_sentinels:
        host, _, port = item.rpartition(":")
        addresses.append((host, int(port)))
    db = 0
    if settings.redis_url:
        db = int(aioredis.connection.parse_url(settings.redis_url).get("db", 0) or 0)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        addresses,
        sentinel_kwargs={"password": settings.redis_sentinel_password, "socket_connect_timeout": CONNECT_TIMEOUT},
        password=settings.redis_password,
        db=db,
    )
    master: aioredis.Redis = sentinel.master_for(
        settings.redis_sentinel_master, max_connections=SENTINEL_MAX_CONNECTIONS, **options
    )
    return master


def client_for(settings: Settings) -> aioredis.Redis:
    """The client of every command: rate limits, locks, numbering, leases, caches, jobs, publishing.

    A RedisCluster is not a subclass of Redis but answers the same commands (each routed to the shard of its key);
    callers that need one node's view (PUBSUB, a pipeline spanning keys) must hash-tag their keys.
    """
    options = _retried(settings.redis_health_check_interval)
    if settings.redis_sentinels:
        return _sentinel_master(settings, options)
    assert settings.redis_url is not None
    if settings.redis_cluster:
        cluster: Any = RedisCluster.from_url(settings.redis_url, password=settings.redis_password, **options)
        return cluster  # type: ignore[no-any-return]
    if settings.redis_password:
        options["password"] = settings.redis_password
    return _waiting_pool(settings.redis_url, options)


def subscriber_for(settings: Settings) -> aioredis.Redis:
    """A client whose pool makes the broker's pub/sub connection: no hidden retries and no health check, since a
    drop must be seen (caches are distrusted until the subscription is back) and the broker pings on its own.
    Behind Sentinel each new connection asks the sentinels for the current primary."""
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.redis_sentinels:
        return _sentinel_master(settings, options)
    assert settings.redis_url is not None
    if settings.redis_password:
        options["password"] = settings.redis_password
    return _waiting_pool(settings.redis_url, options)
