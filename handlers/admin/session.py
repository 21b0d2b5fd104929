"""The panel's gate: an admin session on every page but the login page, CSRF on every action, page headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from tidings.handlers.admin.cookies import FLASH_COOKIE, SESSION_COOKIE, clear_cookie
from tidings.handlers.admin.csrf import check_csrf, csrf_token_for
from tidings.handlers.csp import PAGE_CSP
from tidings.server.adapters.errors import ApiError, InvalidToken, NotAuthenticated
from tidings.server.keys import authenticator_key, principal_key
from tidings.server.services.authenticator import require_admin

PUBLIC_ATTR = "__tidings_public_page__"
# Requests that change nothing: pages (HEAD is GET without the body); everything else is an action.
SAFE_METHODS = frozenset({"GET", "HEAD"})

PageHandler = TypeVar("PageHandler", bound=Callable[..., Awaitable[web.StreamResponse]])


def public_page(handler: PageHandler) -> PageHandler:
    """Mark a panel handler reachable without an admin session (the login page)."""
    setattr(handler, PUBLIC_ATTR, True)
    return handler


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admin session (redirect to login for pages, 401/403 for actions), CSRF on every POST, page headers."""
    if not getattr(request.match_info.handler, PUBLIC_ATTR, False):
        await _require_admin_session(request)
        if request.method not in SAFE_METHODS:
            await check_csrf(request, csrf_token_for(request))
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        # A person's mistyped panel address gets the panel's page, not the API's JSON error.
        response = aiohttp_jinja2.render_template("not_found.html", request, {"what": "page"}, status=404)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers["Content-Security-Policy"] = PAGE_CSP
            exc.headers["Cache-Control"] = "no-store"
        raise
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "no-store"
    if FLASH_COOKIE in request.cookies and FLASH_COOKIE not in response.cookies:
        clear_cookie(response, FLASH_COOKIE)
    return response


async def _require_admin_session(request: web.Request) -> None:
    """An admin's session cookie, or: a page sends the browser to the login page, an action gets 401 or 403."""
    token = request.cookies.get(SESSION_COOKIE)
    try:
        if not token:
            raise NotAuthenticated("An admin session is required.")
        try:
            principal = await request.config_dict[authenticator_key].authenticate(token, kind="panel")
        except InvalidToken:
            raise NotAuthenticated("An admin session is required.") from None
        require_admin(principal.is_admin)
    except ApiError:
        if request.method in SAFE_METHODS:
            raise web.HTTPSeeOther(f"/admin/login?next={quote(request.path_qs, safe='')}") from None
        raise
    request[principal_key] = principal
