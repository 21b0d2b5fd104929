"""The panel's users: search, one user's page, and the actions on it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from marshmallow import ValidationError

from tidings.documents import User
from tidings.handlers.admin.cookies import redirect
from tidings.handlers.admin.forms import PAGE_SIZE, actor, errors_text
from tidings.handlers.schemas import SendNotificationSchema, UserListQuerySchema
from tidings.server.adapters.errors import ApiError
from tidings.server.keys import accounts_key, notifications_key, sessions_key


def _tristate(value: str | None) -> bool | None:
    return {"yes": True, "no": False}.get(value or "")


@aiohttp_jinja2.template("users.html")
async def users(request: web.Request) -> dict[str, Any]:
    q = request.query.get("q", "").strip()[:100]
    active, admin = request.query.get("active", ""), request.query.get("admin", "")
    raw_query: dict[str, Any] = {"limit": PAGE_SIZE}
    if q:
        raw_query["q"] = q
    if request.query.get("before"):
        raw_query["before"] = request.query["before"]
    try:
        query = UserListQuerySchema().load(raw_query)
    except ValidationError:
        raise web.HTTPSeeOther("/admin/users") from None
    page = await request.config_dict[accounts_key].search(
        query=query.get("q"),
        before=query.get("before"),
        limit=query["limit"],
        is_active=_tristate(active),
        is_admin=_tristate(admin),
    )
    filters = {"q": q, "active": active, "admin": admin}
    chosen = {k: v for k, v in filters.items() if v}
    next_url = None
    if page.next_before:
        next_url = "/admin/users?" + urlencode({**chosen, "before": page.next_before})
    # The first page of the same search, when on a later one.
    first_url = ("/admin/users?" + urlencode(chosen) if chosen else "/admin/users") if "before" in raw_query else None
    return {"users": page.items, "filters": filters, "next_url": next_url, "first_url": first_url}


async def _user(request: web.Request) -> User:
    return await request.config_dict[accounts_key].get(request.match_info["user_id"])


async def user_detail(request: web.Request) -> web.Response:
    try:
        user = await _user(request)
    except ApiError:
        return aiohttp_jinja2.render_template("not_found.html", request, {"what": "user"}, status=404)
    sessions = await request.config_dict[sessions_key].active_count(user)
    return aiohttp_jinja2.render_template("user.html", request, {"user": user, "sessions": sessions})


async def _change_user(request: web.Request, changes: dict[str, Any], done: str) -> web.StreamResponse:
    user = await _user(request)
    location = f"/admin/users/{user.id}"
    try:
        await request.config_dict[accounts_key].update_by_admin(actor(request), user, changes)
    except ApiError as exc:
        raise redirect(request, location, kind="error", text=exc.message) from None
    raise redirect(request, location, kind="success", text=done)


def _flag(form: Any) -> bool:
    value = form.get("value")
    if value not in {"true", "false"}:
        raise web.HTTPBadRequest(reason="value must be true or false")
    return bool(value == "true")


async def set_active(request: web.Request) -> web.StreamResponse:
    active = _flag(await request.post())
    return await _change_user(
        request, {"is_active": active}, "Account activated." if active else "Account deactivated."
    )


async def set_admin(request: web.Request) -> web.StreamResponse:
    admin = _flag(await request.post())
    return await _change_user(
        request, {"is_admin": admin}, "Admin rights granted." if admin else "Admin rights removed."
    )


async def revoke_sessions(request: web.Request) -> web.StreamResponse:
    user = await _user(request)
    await request.config_dict[accounts_key].revoke_sessions(actor(request), user)
    raise redirect(request, f"/admin/users/{user.id}", kind="success", text="Every session of this user was ended.")


async def notify_user(request: web.Request) -> web.StreamResponse:
    user = await _user(request)
    form = await request.post()
    location = f"/admin/users/{user.id}"
    try:
        data = SendNotificationSchema().load(
            {"title": form.get("title", ""), "body": form.get("body", ""), "user_ids": [str(user.id)]}
        )
        await request.config_dict[notifications_key].send(
            title=data["title"], body=data["body"], user_ids=data["user_ids"], sender=actor(request)
        )
    except ValidationError as exc:
        raise redirect(request, location, kind="error", text=errors_text(exc.messages)) from None
    except ApiError as exc:
        raise redirect(request, location, kind="error", text=exc.message) from None
    raise redirect(request, location, kind="success", text="Notification sent.")
