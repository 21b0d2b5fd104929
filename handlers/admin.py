"""The admin panel's pages; every change goes through the same services as the REST API."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web
from marshmallow import ValidationError

from documents import User
from documents.user import email_key, username_key
from handlers.auth import client_address
from server.audit import Actor
from server.authenticator import parse_object_id
from server.dashboard import dashboard_stats, recent_events
from server.errors import ApiError, Forbidden, TooManyRequests
from server.keys import accounts_key, audit_key, gauge_key, notifications_key, principal_key, sessions_key
from server.panel import (
    COOKIE_PATH,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    check_csrf,
    new_login_csrf,
    public_page,
    redirect,
    set_cookie,
)
from server.schemas import SendNotificationSchema, UserListQuerySchema

PAGE_SIZE = 25


def _safe_next(value: str | None) -> str:
    """Only ever redirect within the panel after login (no open redirect)."""
    if value and value.startswith("/admin/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/admin/"


def _actor(request: web.Request) -> Actor:
    return Actor.of(request[principal_key])


def _render_login(
    request: web.Request, *, error: str | None = None, status: int = 200, next_url: str | None = None
) -> web.Response:
    token = new_login_csrf()
    # The page asked for comes in the query of the login page, and in the form when a login attempt failed.
    wanted = request.query.get("next") if next_url is None else next_url
    response = aiohttp_jinja2.render_template(
        "login.html",
        request,
        {"login_csrf": token, "error": error, "next": _safe_next(wanted)},
        status=status,
    )
    set_cookie(response, request, LOGIN_CSRF_COOKIE, token, 3600)
    return response


@public_page
async def login_page(request: web.Request) -> web.Response:
    return _render_login(request)


@public_page
async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    next_url = str(form.get("next", ""))
    # Before a session exists, CSRF is checked by double submit: the form's token must equal the cookie's.
    try:
        await check_csrf(request, request.cookies.get(LOGIN_CSRF_COOKIE, ""))
    except Forbidden as exc:
        # A stale form (another login page opened since, or an hour old): a fresh form, not a JSON error.
        return _render_login(request, error=exc.message, status=exc.status, next_url=next_url)
    email, password = str(form.get("email", ""))[:254], str(form.get("password", ""))[:128]
    try:
        token = await request.config_dict[sessions_key].login_panel(
            email, password, client_address(request), request.headers.get("User-Agent")
        )
    except TooManyRequests as exc:
        response = _render_login(request, error=exc.message, status=429, next_url=next_url)
        response.headers.update(exc.headers)
        return response
    except ApiError as exc:
        return _render_login(request, error=exc.message, status=exc.status, next_url=next_url)
    response = web.HTTPSeeOther(_safe_next(next_url))
    set_cookie(response, request, SESSION_COOKIE, token, request.config_dict[sessions_key].settings.panel_session_ttl)
    response.del_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    await request.config_dict[sessions_key].revoke(parse_object_id(request[principal_key].session_id))
    response = redirect(request, "/admin/login", kind="success", text="You are logged out.")
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    raise response


@aiohttp_jinja2.template("dashboard.html")
async def dashboard(request: web.Request) -> dict[str, Any]:
    return {"stats": await dashboard_stats(request.config_dict[gauge_key]), "events": await recent_events()}


async def dashboard_json(request: web.Request) -> web.Response:
    """What the dashboard's script polls to update itself."""
    events = [entry.public() for entry in await recent_events()]
    return web.json_response({"stats": await dashboard_stats(request.config_dict[gauge_key]), "events": events})


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
        await request.config_dict[accounts_key].update_by_admin(_actor(request), user, changes)
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
    await request.config_dict[accounts_key].revoke_sessions(_actor(request), user)
    raise redirect(request, f"/admin/users/{user.id}", kind="success", text="Every session of this user was ended.")


def _errors_text(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{field}: {_errors_text(value)}" for field, value in messages.items())
    if isinstance(messages, list):
        return " ".join(_errors_text(value) for value in messages)
    return str(messages)


async def notify_user(request: web.Request) -> web.StreamResponse:
    user = await _user(request)
    form = await request.post()
    location = f"/admin/users/{user.id}"
    try:
        data = SendNotificationSchema().load(
            {"title": form.get("title", ""), "body": form.get("body", ""), "user_ids": [str(user.id)]}
        )
        await request.config_dict[notifications_key].send(
            title=data["title"], body=data["body"], user_ids=data["user_ids"], sender=_actor(request)
        )
    except ValidationError as exc:
        raise redirect(request, location, kind="error", text=_errors_text(exc.messages)) from None
    except ApiError as exc:
        raise redirect(request, location, kind="error", text=exc.message) from None
    raise redirect(request, location, kind="success", text="Notification sent.")


async def _resolve_recipients(text: str) -> tuple[list[str], list[str]]:
    """Emails or usernames, separated by commas or new lines -> (user ids, names not found)."""
    names = list(dict.fromkeys(name.strip() for name in text.replace("\n", ",").split(",") if name.strip()))[:1000]
    found = await User.find(
        {
            "$or": [
                {"email_key": {"$in": [email_key(name) for name in names]}},
                {"username_key": {"$in": [username_key(name) for name in names]}},
            ]
        }
    ).to_list()
    by_name = {key: str(user.id) for user in found for key in (user.email_key, user.username_key)}
    ids, unknown = [], []
    for name in names:
        user_id = by_name.get(email_key(name)) or by_name.get(username_key(name))
        if user_id is None:
            unknown.append(name)
        else:
            ids.append(user_id)
    return list(dict.fromkeys(ids)), unknown


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
        ids, unknown = ([], []) if broadcast else await _resolve_recipients(values["recipients"])
        raw: dict[str, Any] = {"title": values["title"], "body": values["body"]}
        raw.update({"broadcast": True} if broadcast else {"user_ids": ids})
        try:
            if unknown:
                raise ValidationError({"recipients": [f"Not found: {', '.join(unknown)}"]})
            data = SendNotificationSchema().load(raw)
        except ValidationError as exc:
            context["error"] = _errors_text(exc.messages)
            status = 422
        else:
            if form.get("action") == "send":
                await service.send(
                    title=data["title"],
                    body=data["body"],
                    user_ids=data.get("user_ids"),
                    broadcast=data["broadcast"],
                    sender=_actor(request),
                )
                count = "everyone" if broadcast else f"{len(ids)} user(s)"
                raise redirect(request, "/admin/notifications", kind="success", text=f"Notification sent to {count}.")
            context["preview"] = {
                "title": data["title"],
                "body": data["body"],
                "broadcast": broadcast,
                "recipients": len(ids),
            }
    before = request.query.get("before") if parse_object_id(request.query.get("before", "")) else None
    sent, next_before = await service.dispatches(before=before, limit=PAGE_SIZE)
    context.update({"sent": sent, "next_url": f"/admin/notifications?before={next_before}" if next_before else None})
    return aiohttp_jinja2.render_template("notifications.html", request, context, status=status)


@aiohttp_jinja2.template("audit.html")
async def audit(request: web.Request) -> dict[str, Any]:
    before = request.query.get("before") if parse_object_id(request.query.get("before", "")) else None
    page = await request.config_dict[audit_key].page(before=before, limit=PAGE_SIZE)
    return {"entries": page.items, "next_url": f"/admin/audit?before={page.next_before}" if page.next_before else None}


def setup_routes(panel: web.Application) -> None:
    panel.router.add_get("/login", login_page)
    panel.router.add_post("/login", login_submit)
    panel.router.add_post("/logout", logout)
    panel.router.add_get("/", dashboard)
    panel.router.add_get("/dashboard.json", dashboard_json)
    panel.router.add_get("/users", users)
    panel.router.add_get("/users/{user_id}", user_detail)
    panel.router.add_post("/users/{user_id}/active", set_active)
    panel.router.add_post("/users/{user_id}/admin", set_admin)
    panel.router.add_post("/users/{user_id}/revoke", revoke_sessions)
    panel.router.add_post("/users/{user_id}/notify", notify_user)
    panel.router.add_get("/notifications", notifications)
    panel.router.add_post("/notifications", notifications)
    panel.router.add_get("/audit", audit)
