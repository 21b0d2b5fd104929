"""The panel's notifications: send to users or everyone (with a preview first), and the log of what was sent."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web
from marshmallow import ValidationError

from tidings.handlers.admin.cookies import redirect
from tidings.handlers.admin.forms import PAGE_SIZE, actor, errors_text
from tidings.handlers.schemas import SendNotificationSchema
from tidings.server.adapters.errors import ValidationFailed
from tidings.server.keys import notifications_key
from tidings.server.services.recipients import resolve_recipients


def _names(text: str) -> list[str]:
    """Emails or usernames, separated by commas or new lines, each once."""
    return list(dict.fromkeys(name.strip() for name in text.replace("\n", ",").split(",") if name.strip()))[:1000]


async def _recipients(text: str) -> tuple[list[str], list[str]]:
    """(user ids, names not found) for the names typed: usernames never contain "@", so those are emails."""
    names = _names(text)
    try:
        ids = await resolve_recipients(
            emails=[name for name in names if "@" in name], usernames=[name for name in names if "@" not in name]
        )
    except ValidationFailed as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        missing = {name for field in details.values() for name in field.get("unknown", ())}
        return [], [name for name in names if name in missing]
    return [str(oid) for oid in ids], []


async def notifications(request: web.Request) -> web.Response:
    service = request.config_dict[notifications_key]
    context: dict[str, Any] = {
        "form": {"title": "", "body": "", "recipients": "", "audience": "users"},
        "error": None,
        "preview": None,
    }
    status = 200
    if request.method == "POST":
        form = await request.post()
        values = {key: str(form.get(key, "")) for key in ("title", "body", "recipients", "audience")}
        context["form"] = values
        broadcast = values["audience"] == "broadcast"
        ids, unknown = ([], []) if broadcast else await _recipients(values["recipients"])
        raw: dict[str, Any] = {"title": values["title"], "body": values["body"]}
        raw.update({"broadcast": True} if broadcast else {"user_ids": ids})
        try:
            if unknown:
                raise ValidationError({"recipients": [f"Not found: {', '.join(unknown)}"]})
            data = SendNotificationSchema().load(raw)
        except ValidationError as exc:
            context["error"] = errors_text(exc.messages)
            status = 422
        else:
            if form.get("action") == "send":
                await service.send(
                    title=data["title"],
                    body=data["body"],
                    user_ids=data["user_ids"],
                    broadcast=data["broadcast"],
                    sender=actor(request),
                )
                count = "everyone" if broadcast else f"{len(ids)} user(s)"
                raise redirect(request, "/admin/notifications", kind="success", text=f"Notification sent to {count}.")
            context["preview"] = {
                "title": data["title"],
                "body": data["body"],
                "broadcast": broadcast,
                "recipients": len(ids),
            }
    try:
        sent, next_before = await service.dispatches(before=request.query.get("before"), limit=PAGE_SIZE)
    except ValidationFailed:  # a malformed cursor: back to the first page
        raise web.HTTPSeeOther("/admin/notifications") from None
    context.update({"sent": sent, "next_url": f"/admin/notifications?before={next_before}" if next_before else None})
    return aiohttp_jinja2.render_template("notifications.html", request, context, status=status)
