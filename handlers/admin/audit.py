"""The panel's audit log."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from tidings.handlers.admin.forms import PAGE_SIZE
from tidings.server.adapters.errors import ValidationFailed
from tidings.server.keys import audit_key


@aiohttp_jinja2.template("audit.html")
async def audit(request: web.Request) -> dict[str, Any]:
    try:
        page = await request.config_dict[audit_key].page(before=request.query.get("before"), limit=PAGE_SIZE)
    except ValidationFailed:  # a malformed cursor: back to the first page
        raise web.HTTPSeeOther("/admin/audit") from None
    return {"entries": page.items, "next_url": f"/admin/audit?before={page.next_before}" if page.next_before else None}
