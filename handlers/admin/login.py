"""Logging in to the panel and out of it."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from tidings.documents.ids import parse_object_id
from tidings.handlers.admin.cookies import LOGIN_CSRF_COOKIE, SESSION_COOKIE, clear_cookie, redirect, set_cookie
from tidings.handlers.admin.csrf import check_csrf, new_login_csrf
from tidings.handlers.admin.session import public_page
from tidings.handlers.credentials import client_address
from tidings.server.adapters.errors import ApiError, Forbidden, TooManyRequests
from tidings.server.keys import principal_key, sessions_key, settings_key


def _safe_next(value: str | None) -> str:
    """Only ever redirect within the panel after login (no open redirect)."""
    if value and value.startswith("/admin/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/admin/"


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
    set_cookie(response, request, SESSION_COOKIE, token, request.config_dict[settings_key].panel_session_ttl)
    clear_cookie(response, LOGIN_CSRF_COOKIE)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    await request.config_dict[sessions_key].revoke(parse_object_id(request[principal_key].session_id))
    response = redirect(request, "/admin/login", kind="success", text="You are logged out.")
    clear_cookie(response, SESSION_COOKIE)
    raise response
