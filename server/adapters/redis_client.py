"""The Redis client every command goes through: retried on a dropped connection, checked before reuse."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def connect(url: str, *, health_check_interval: float) -> aioredis.Redis:
    """A pooled client. After a Redis restart every pooled connection is stale: a connection idle for longer than
    `health_check_interval` is pinged before reuse, and a command that still meets a dead connection reconnects
    and is retried a few times with a short jittered backoff, instead of failing (or reaching only this process).
    """
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=health_check_interval,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=4),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError, BrokenPipeError],
    )
