"""Liveness and readiness probes."""

import asyncio
from collections.abc import Awaitable

from aiohttp import web
from aiohttp_apigami import docs, response_schema

from tidings.handlers.schemas import HealthSchema
from tidings.server.keys import mongo_key, redis_key, settings_key


@docs(tags=["health"], summary="The process is up")
@response_schema(HealthSchema, 200)
async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@docs(tags=["health"], summary="MongoDB and Redis answer", responses={503: {"description": "A dependency failed"}})
@response_schema(HealthSchema, 200)
async def ready(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    probes: dict[str, Awaitable[object]] = {"mongodb": request.app[mongo_key].admin.command("ping")}
    if redis_key in request.app:
        probes["redis"] = request.app[redis_key].ping()
    for name, probe in probes.items():
        try:
            await asyncio.wait_for(probe, request.app[settings_key].health_probe_timeout)
            checks[name] = "ok"
        except Exception as exc:  # any failure of a dependency is a "not ready", never a 500
            checks[name] = f"failed: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503
    )
