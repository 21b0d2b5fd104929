"""The panel's Jobs page: queued, running, retrying and dead-lettered jobs; retry and discard (CSRF-checked by the
panel's middleware, audited by the service)."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from tidings.handlers.admin.cookies import redirect
from tidings.handlers.admin.forms import actor
from tidings.server.adapters.errors import ApiError
from tidings.server.keys import job_admin_key

STATE_TITLES = {
    "queued": "Queued",
    "running": "Running",
    "retrying": "Failed, to be retried",
    "dead": "Dead-lettered",
}
MAX_KEY = 200


@aiohttp_jinja2.template("jobs.html")
async def jobs(request: web.Request) -> dict[str, Any]:
    overview = await request.config_dict[job_admin_key].overview()
    return {"overview": overview, "titles": STATE_TITLES}


async def _act(request: web.Request, action: str) -> web.StreamResponse:
    form = await request.post()
    key = str(form.get("key", ""))[:MAX_KEY]
    service = request.config_dict[job_admin_key]
    try:
        if action == "retry":
            await service.retry(actor(request), key)
        else:
            await service.discard(actor(request), key)
    except ApiError as exc:
        raise redirect(request, "/admin/jobs", kind="error", text=exc.message) from None
    done = "The job was queued again." if action == "retry" else "The job was discarded."
    raise redirect(request, "/admin/jobs", kind="success", text=done)


async def retry_job(request: web.Request) -> web.StreamResponse:
    return await _act(request, "retry")


async def discard_job(request: web.Request) -> web.StreamResponse:
    return await _act(request, "discard")
