"""The panel's cookies: its session, the login form's CSRF token, and messages shown once after a redirect."""

from __future__ import annotations

import base64
import binascii
import json

from aiohttp import web

from tidings.server.keys import settings_key

SESSION_COOKIE = "tidings_admin"
LOGIN_CSRF_COOKIE = "tidings_login_csrf"
FLASH_COOKIE = "tidings_flash"
# Every panel cookie is sent to the panel only.
COOKIE_PATH = "/admin"


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


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=COOKIE_PATH)


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
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("kind") not in ("success", "error"):
        return None
    return {"kind": message["kind"], "text": str(message.get("text", ""))[:500]}


def redirect(request: web.Request, location: str, *, kind: str | None = None, text: str = "") -> web.HTTPSeeOther:
    """A 303 to another panel page, optionally with a flash message."""
    response = web.HTTPSeeOther(location)
    if kind is not None:
        flash(response, request, kind, text)
    return response
