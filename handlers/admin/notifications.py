"""The panel's notifications: send to users or everyone (with a preview first), and the log of what was sent."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web
from marshmallow import ValidationError

from tidings.handlers.admin.cookies import redirect
from tidings.handlers.admin.forms import (
    PAGE_SIZE,
    SEND_SENTENCES,
    actor,
    form_sentences,
    unknown_names_sentence,
)
from tidings.handlers.admin.text import plural
from tidings.handlers.schemas import SendNotificationSchema
from tidings.server.adapters.errors import ValidationFailed
from tidings.server.keys import notifications_key
from tidings.server.services.recipients import resolve_recipients

# The send form's field that a schema field in error points at (the users box stands for user_ids).
_FORM_FIELD = {"user_ids": "recipients", "_schema": "audience"}


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
        "invalid": [],
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
        data: dict[str, Any] = {}
        messages: dict[str, Any] = {}
        try:
            data = SendNotificationSchema().load(raw)
        except ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        if unknown or messages:
            # The names not found say more than "no user": they replace the empty list's sentence.
            sentences = form_sentences(messages, SEND_SENTENCES)
            if unknown:
                sentences = [unknown_names_sentence(unknown)] + [
                    sentence for sentence in sentences if sentence != SEND_SENTENCES["user_ids"]
                ]
            context["error"] = " ".join(sentences)
            fields = (*messages, *(["user_ids"] if unknown else []))
            context["invalid"] = list(dict.fromkeys(_FORM_FIELD.get(field, field) for field in fields))
            status = 422
        elif form.get("action") == "send":
            await service.send(
                title=data["title"],
                body=data["body"],
                user_ids=data["user_ids"],
                broadcast=data["broadcast"],
                sender=actor(request),
            )
            count = "everyone" if broadcast else plural(len(ids), "user")
            raise redirect(request, "/admin/notifications", kind="success", text=f"Notification sent to {count}.")
        else:
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
