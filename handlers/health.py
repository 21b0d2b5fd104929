"""Liveness and readiness probes."""

from aiohttp import web
from aiohttp_apigami import docs, response_schema

from tidings.handlers.schemas import HealthSchema
from tidings.server.keys import mongo_key, redis_key, settings_key
from tidings.server.services.readiness import probe_dependencies


@docs(tags=["health"], summary="The process is up")
@response_schema(HealthSchema, 200)
async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@docs(tags=["health"], summary="MongoDB and Redis answer", responses={503: {"description": "A dependency failed"}})
@response_schema(HealthSchema, 200)
async def ready(request: web.Request) -> web.Response:
    app = request.app
    checks = await probe_dependencies(app[mongo_key], app.get(redis_key), app[settings_key].health_probe_timeout)
    healthy = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503
    )
