"""The panel's audit log: filtered by who, what, about whom and when, paged with the filters kept."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from tidings.handlers.admin.forms import PAGE_SIZE
from tidings.server.adapters.errors import ValidationFailed
from tidings.server.keys import audit_key
from tidings.server.services.audit import ACTIONS, AuditFilter

# The filter form's fields, in its order; what the page's links carry.
FILTERS = ("actor", "action", "target", "from", "to")
MAX_NAME = 254  # an email's longest
LABELS = {"from": "From", "to": "To"}


def _day(value: str, field: str, errors: list[str]) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors.append(f"{LABELS[field]}: enter a date as year-month-day, for example 2026-12-31.")
        return None


def parse_filters(query: Any) -> tuple[dict[str, str], AuditFilter, list[str]]:
    """The filters asked for (as the form shows them), what they select, and sentences for what cannot be read.

    Dates are whole UTC days, both included."""
    values = {field: str(query.get(field, "")).strip()[:MAX_NAME] for field in FILTERS}
    errors: list[str] = []
    if values["action"] and values["action"] not in ACTIONS:
        errors.append("Action: choose one from the list.")
    since, until = _day(values["from"], "from", errors), _day(values["to"], "to", errors)
    if since and until and until < since:
        errors.append("To is before From: choose a To date on or after the From date.")
    chosen = AuditFilter(
        actor=values["actor"] or None,
        action=values["action"] or None,
        target=values["target"] or None,
        since=datetime(since.year, since.month, since.day, tzinfo=UTC) if since else None,
        until=datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1) if until else None,
    )
    return values, chosen, errors


async def audit(request: web.Request) -> web.Response:
    values, chosen, errors = parse_filters(request.query)
    kept = {field: value for field, value in values.items() if value}
    context: dict[str, Any] = {
        "entries": [],
        "filters": values,
        "filtered": bool(kept),
        "actions": ACTIONS,
        "error": " ".join(errors) or None,
        "next_url": None,
        "first_url": None,
    }
    if errors:
        return aiohttp_jinja2.render_template("audit.html", request, context, status=422)
    before = request.query.get("before")
    try:
        page = await request.config_dict[audit_key].page(before=before, limit=PAGE_SIZE, chosen=chosen)
    except ValidationFailed:  # a malformed cursor: back to the first page of the same filters
        raise web.HTTPSeeOther(_url(kept)) from None
    context["entries"] = page.items
    if page.next_before:
        context["next_url"] = _url({**kept, "before": page.next_before})
    if before:
        context["first_url"] = _url(kept)
    return aiohttp_jinja2.render_template("audit.html", request, context)


def _url(query: dict[str, str]) -> str:
    return "/admin/audit?" + urlencode(query) if query else "/admin/audit"
