"""The panel's users: search, one user's page, and the actions on it."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from marshmallow import ValidationError

from tidings.documents import User
from tidings.handlers.admin.cookies import redirect
from tidings.handlers.admin.forms import PAGE_SIZE, SEND_SENTENCES, actor, form_sentences
from tidings.handlers.schemas import PASSWORD, AdminUpdateUserSchema, SendNotificationSchema, UserListQuerySchema
from tidings.server.adapters.errors import ApiError, Conflict
from tidings.server.keys import account_email_key, accounts_key, gauge_key, notifications_key, sessions_key


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


def _no_such_user(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template("not_found.html", request, {"what": "user"}, status=404)


async def user_detail(request: web.Request) -> web.Response:
    try:
        user = await _user(request)
    except ApiError:
        return _no_such_user(request)
    assert user.id is not None
    sessions, sockets = await asyncio.gather(
        request.config_dict[sessions_key].active_count(user),
        request.config_dict[gauge_key].user_total(str(user.id)),
    )
    context = {"user": user, "sessions": sessions, "sockets": sockets, "password": PASSWORD}
    return aiohttp_jinja2.render_template("user.html", request, context)


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


async def send_password_reset(request: web.Request) -> web.StreamResponse:
    """Mail the user a password reset link (audited); their password stays until they use it."""
    user = await _user(request)
    await request.config_dict[account_email_key].send_reset_by_admin(actor(request), user)
    text = f"A password reset link is on its way to {user.email}."
    raise redirect(request, f"/admin/users/{user.id}", kind="success", text=text)


async def revoke_sessions(request: web.Request) -> web.StreamResponse:
    user = await _user(request)
    await request.config_dict[accounts_key].revoke_sessions(actor(request), user)
    raise redirect(request, f"/admin/users/{user.id}", kind="success", text="Every session of this user was ended.")


# The API's rule for passwords, said as the form asks.
PASSWORD_SENTENCES = {"password": f"Enter a password of {PASSWORD.min} to {PASSWORD.max} characters."}
PASSWORDS_DIFFER = "The two passwords differ: type the same password in both boxes."


async def set_password(request: web.Request) -> web.StreamResponse:
    """An admin sets a user's password (the API's rules for it); the user's sessions and sockets end."""
    user = await _user(request)
    form = await request.post()
    location = f"/admin/users/{user.id}"
    password, repeated = str(form.get("password", "")), str(form.get("password_again", ""))
    try:
        data = AdminUpdateUserSchema().load({"password": password})
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        text = " ".join(form_sentences(messages, PASSWORD_SENTENCES))
        raise redirect(request, location, kind="error", text=text) from None
    if password != repeated:
        raise redirect(request, location, kind="error", text=PASSWORDS_DIFFER)
    await request.config_dict[accounts_key].set_password(actor(request), user, data["password"])
    text = f"Password set for {user.email}. Their sessions have ended: they sign in again with the new password."
    raise redirect(request, location, kind="success", text=text)


async def delete_page(request: web.Request) -> web.Response:
    """The confirmation before a deletion, naming the user."""
    try:
        user = await _user(request)
    except ApiError:
        return _no_such_user(request)
    return aiohttp_jinja2.render_template("delete_user.html", request, {"user": user})


async def delete_user(request: web.Request) -> web.StreamResponse:
    """Delete an account through the same service as the API: its sessions, notifications and sockets go too; the
    last active admin stays."""
    try:
        user = await _user(request)
    except ApiError:  # deleted meanwhile (a second click, another admin)
        raise redirect(request, "/admin/users", kind="error", text="There is no such user any more.") from None
    try:
        await request.config_dict[accounts_key].delete(actor(request), user)
    except Conflict as exc:
        text = f"{user.email} was not deleted. {exc.message}"
        raise redirect(request, f"/admin/users/{user.id}", kind="error", text=text) from None
    raise redirect(request, "/admin/users", kind="success", text=f"{user.email} was deleted.")


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
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        text = " ".join(form_sentences(messages, SEND_SENTENCES))
        raise redirect(request, location, kind="error", text=text) from None
    except ApiError as exc:
        raise redirect(request, location, kind="error", text=exc.message) from None
    raise redirect(request, location, kind="success", text="Notification sent.")
