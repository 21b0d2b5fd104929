"""CSRF protection for the panel: a token bound to the admin session on every POST, double submit at login."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from tidings.server.adapters.errors import Forbidden
from tidings.server.keys import principal_key, settings_key


def csrf_token_for(request: web.Request) -> str:
    """The CSRF token of the current admin session: bound to the session, so it dies with it."""
    secret = request.config_dict[settings_key].jwt_secret.encode()
    session_id = request[principal_key].session_id
    return hmac.new(secret, b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()[:40]


def new_login_csrf() -> str:
    """The login form's token, before any session exists; the same value goes into a cookie."""
    return secrets.token_urlsafe(24)


async def check_csrf(request: web.Request, expected: str) -> None:
    """Every state-changing request carries the token in its form or an X-CSRF-Token header."""
    sent = request.headers.get("X-CSRF-Token")
    if sent is None:
        form = await request.post()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden("The form has expired or did not come from this site (CSRF check failed). Reload and retry.")
