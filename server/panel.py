"""The admin panel's sub-application: cookie sessions, CSRF, flash messages, templates and security headers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from server.errors import Forbidden, InvalidToken, NotAuthenticated
from server.keys import authenticator_key, principal_key, settings_key

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
SESSION_COOKIE = "tidings_admin"
LOGIN_CSRF_COOKIE = "tidings_login_csrf"
FLASH_COOKIE = "tidings_flash"
COOKIE_PATH = "/admin"
PUBLIC_ATTR = "__tidings_public_page__"
# Requests that change nothing: pages (HEAD is GET without the body); everything else is an action.
SAFE_METHODS = frozenset({"GET", "HEAD"})
# No inline script or style anywhere in the panel: everything comes from /static.
PANEL_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

PageHandler = TypeVar("PageHandler", bound=Callable[..., Awaitable[web.StreamResponse]])


def public_page(handler: PageHandler) -> PageHandler:
    """Mark a panel handler reachable without an admin session (the login page)."""
    setattr(handler, PUBLIC_ATTR, True)
    return handler


def csrf_token_for(request: web.Request) -> str:
    """The CSRF token of the current admin session: bound to the session, so it dies with it."""
    secret = request.config_dict[settings_key].jwt_secret.encode()
    session_id = request[principal_key].session_id
    return hmac.new(secret, b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()[:40]


async def check_csrf(request: web.Request, expected: str) -> None:
    """Every state-changing request carries the token in its form or an X-CSRF-Token header."""
    sent = request.headers.get("X-CSRF-Token")
    if sent is None:
        form = await request.post()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden("The form has expired or did not come from this site (CSRF check failed). Reload and retry.")


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.config_dict[settings_key].secure_cookies,
    )


def flash(response: web.StreamResponse, request: web.Request, kind: str, text: str) -> None:
    """A message shown once on the next page (after a redirect)."""
    value = base64.urlsafe_b64encode(json.dumps({"kind": kind, "text": text}).encode()).decode()
    set_cookie(response, request, FLASH_COOKIE, value, 60)


def take_flash(request: web.Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        message = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(message, dict) or message.get("kind") not in {"success", "error"}:
        return None
    return {"kind": message["kind"], "text": str(message.get("text", ""))[:500]}


def redirect(request: web.Request, location: str, *, kind: str | None = None, text: str = "") -> web.HTTPSeeOther:
    """A 303 to another panel page, optionally with a flash message."""
    response = web.HTTPSeeOther(location)
    if kind is not None:
        flash(response, request, kind, text)
    return response


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admin session (redirect to login for pages, 401/403 for actions), CSRF on every POST, page headers."""
    if not getattr(request.match_info.handler, PUBLIC_ATTR, False):
        await _require_admin(request)
        if request.method not in SAFE_METHODS:
            await check_csrf(request, csrf_token_for(request))
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers["Content-Security-Policy"] = PANEL_CSP
            exc.headers["Cache-Control"] = "no-store"
        raise
    response.headers["Content-Security-Policy"] = PANEL_CSP
    response.headers["Cache-Control"] = "no-store"
    if FLASH_COOKIE in request.cookies and FLASH_COOKIE not in response.cookies:
        response.del_cookie(FLASH_COOKIE, path=COOKIE_PATH)
    return response


async def _require_admin(request: web.Request) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    principal = None
    if token:
        try:
            principal = await request.config_dict[authenticator_key].authenticate(token, kind="panel")
        except InvalidToken:
            principal = None
    if principal is not None and principal.is_admin:
        request[principal_key] = principal
        return
    if request.method in SAFE_METHODS:
        raise web.HTTPSeeOther(f"/admin/login?next={quote(request.path_qs, safe='')}")
    if principal is None:
        raise NotAuthenticated("An admin session is required.")
    raise Forbidden("Administrators only.")


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def _datetime(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


async def _context(request: web.Request) -> dict[str, Any]:
    principal = request.get(principal_key)
    return {
        "admin": principal,
        "csrf_token": csrf_token_for(request) if principal else "",
        "flash": take_flash(request),
        "path": request.path,
    }


def create_admin_app() -> web.Application:
    """The panel, mounted at /admin/ by create_app; it reads the parent's services through config_dict."""
    from handlers import admin

    panel = web.Application(middlewares=[admin_middleware])
    env = aiohttp_jinja2.setup(
        panel,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        context_processors=[_context],
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["datetime"] = _datetime
    admin.setup_routes(panel)
    return panel
