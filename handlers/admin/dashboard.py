"""The panel's front page: figures and recent events, refreshed by its script."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from tidings.server.keys import gauge_key
from tidings.server.services.dashboard import dashboard_stats, recent_events


async def _stats(request: web.Request) -> dict[str, Any]:
    return await dashboard_stats(live_connections=await request.config_dict[gauge_key].total())


@aiohttp_jinja2.template("dashboard.html")
async def dashboard(request: web.Request) -> dict[str, Any]:
    return {"stats": await _stats(request), "events": await recent_events()}


async def dashboard_json(request: web.Request) -> web.Response:
    """What the dashboard's script polls to update itself."""
    events = [entry.public() for entry in await recent_events()]
    return web.json_response({"stats": await _stats(request), "events": events})
