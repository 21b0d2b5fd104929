"""Whether the dependencies answer: one probe for GET /health/ready and for the sampled metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from tidings.server.adapters.metrics import Dependency


async def probe_dependencies(
    mongo: AsyncMongoClient[Any], redis: aioredis.Redis | None, probe_timeout: float
) -> dict[Dependency, str]:
    """Each dependency's state: "ok", or "failed: <error type>"; Redis only when the app uses one. The probes run
    at once, each given `probe_timeout` seconds, and no failure escapes: a dependency that fails is "not ready"."""
    probes: dict[Dependency, Awaitable[object]] = {"mongodb": mongo.admin.command("ping")}
    if redis is not None:
        probes["redis"] = redis.ping()

    async def check(probe: Awaitable[object]) -> str:
        try:
            await asyncio.wait_for(probe, probe_timeout)
        except Exception as exc:
            return f"failed: {type(exc).__name__}"
        return "ok"

    results = await asyncio.gather(*(check(probe) for probe in probes.values()))
    return dict(zip(probes, results, strict=True))
