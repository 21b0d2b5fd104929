"""Password reset, address verification and email change: the JSON API, and the two pages a mailed link opens.

The pages (`/reset-password`, `/verify-email`) are server-rendered forms with no script at all, the panel's CSP
and `Referrer-Policy: no-referrer` (the token is in their URL). A GET never spends a token, so a mail client's link
scanner cannot use one up; only the form's POST (or the API's) does.
"""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web
from aiohttp_apigami import docs, request_schema, response_schema

from tidings.handlers.assets import TEMPLATES_DIR
from tidings.handlers.credentials import client_address
from tidings.handlers.csp import PAGE_CSP
from tidings.handlers.openapi import BEARER, error_responses
from tidings.handlers.schemas import (
    PASSWORD,
    AcceptedSchema,
    EmailTokenSchema,
    PasswordResetConfirmSchema,
    PasswordResetRequestSchema,
)
from tidings.server.adapters.errors import ApiError, InvalidToken
from tidings.server.keys import account_email_key, accounts_key, digests_key, principal_key, validated_key
from tidings.server.services.authenticator import auth_required
from tidings.server.services.digests import InvalidUnsubscribe
from tidings.server.services.email_tokens import InvalidEmailToken

PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
ACCEPTED = {
    "status": "accepted",
    "message": "If an active account has this email address, a link to reset its password is on its way.",
}
_pages = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=jinja2.StrictUndefined
)
_INVALID_TOKEN_400 = "The token is malformed, unknown, expired, superseded or already used: code invalid_token"  # noqa: S105 - a description


def _page(
    title: str, *, status: int = 200, form: str = "", token: str = "", error: str = "", message: str = ""
) -> web.Response:
    html = _pages.get_template("account_page.html").render(
        title=title, form=form, token=token, error=error, message=message
    )
    return web.Response(text=html, status=status, content_type="text/html", headers=PAGE_HEADERS)


def _token_of(value: Any) -> str:
    return value if isinstance(value, str) and "\x00" not in value and len(value) <= 200 else ""


@docs(
    tags=["auth"],
    summary="Ask for a password reset link",
    description=(
        "Always 202 with the same body, whether or not an active account has this email (no enumeration). "
        "Rate-limited per email (PASSWORD_RESET_PER_EMAIL an hour) and per client address "
        "(PASSWORD_RESET_PER_ADDRESS an hour)."
    ),
    responses=error_responses(400, 413, 422, 429),
)
@request_schema(PasswordResetRequestSchema)
@response_schema(AcceptedSchema, 202)
async def request_reset(request: web.Request) -> web.Response:
    await request.app[account_email_key].request_reset(request[validated_key]["email"], client_address(request))
    return web.json_response(ACCEPTED, status=202)


@docs(
    tags=["auth"],
    summary="Set a new password with a reset token",
    description="Ends every session of the user (tokens and sockets, on every process) and tells the user.",
    responses={204: {"description": "Password changed"}, **error_responses(400, 413, 422, s400=_INVALID_TOKEN_400)},
)
@request_schema(PasswordResetConfirmSchema)
async def confirm_reset(request: web.Request) -> web.Response:
    data = request[validated_key]
    await request.app[account_email_key].confirm_reset(data["token"], data["password"])
    return web.Response(status=204)


@docs(
    tags=["auth"],
    summary="Confirm an email address (verification, or a change of address)",
    responses={
        204: {"description": "The address is verified (a change: it is now the login)"},
        **error_responses(400, 409, 413, 422, s400=_INVALID_TOKEN_400, s409="Another account took the address"),
    },
)
@request_schema(EmailTokenSchema)
async def verify_email(request: web.Request) -> web.Response:
    await request.app[account_email_key].verify(request[validated_key]["token"])
    return web.Response(status=204)


@docs(
    tags=["auth"],
    summary="Send the verification (or pending change's) link again",
    security=BEARER,
    responses=error_responses(401, 429),
)
@response_schema(AcceptedSchema, 202)
@auth_required
async def resend_verification(request: web.Request) -> web.Response:
    user = await request.app[accounts_key].get(request[principal_key].user_id)
    await request.app[account_email_key].resend(user)
    return web.json_response(
        {"status": "accepted", "message": "A confirmation link is on its way, if one is due."}, status=202
    )


async def reset_page(request: web.Request) -> web.Response:
    token = _token_of(request.query.get("token"))
    if not token:
        return _page("Reset your password", status=400, error="This link is incomplete: ask for a new one.")
    return _page("Reset your password", form="reset", token=token)


async def reset_submit(request: web.Request) -> web.Response:
    form = await request.post()
    token = _token_of(form.get("token"))
    password, again = form.get("password"), form.get("password_again")
    if not token:
        return _page("Reset your password", status=400, error="This link is incomplete: ask for a new one.")

    def again_with(error: str) -> web.Response:
        return _page("Reset your password", status=400, form="reset", token=token, error=error)

    if not isinstance(password, str) or "\x00" in password:
        return again_with("Enter a new password.")
    if password != again:
        return again_with("The passwords differ.")
    try:
        PASSWORD(password)
    except Exception:
        return again_with("The password must be 8 to 128 characters long.")
    try:
        await request.app[account_email_key].confirm_reset(token, password)
    except InvalidEmailToken as exc:
        return _page("Reset your password", status=400, error=f"{exc.message} Ask for a new one.")
    return _page("Password changed", message="Your password was changed. Every session was signed out: sign in again.")


async def verify_page(request: web.Request) -> web.Response:
    token = _token_of(request.query.get("token"))
    if not token:
        return _page("Confirm your email address", status=400, error="This link is incomplete.")
    return _page("Confirm your email address", form="verify", token=token)


async def verify_submit(request: web.Request) -> web.Response:
    form = await request.post()
    token = _token_of(form.get("token"))
    try:
        if not token:
            raise InvalidEmailToken()
        user = await request.app[account_email_key].verify(token)
    except (InvalidEmailToken, InvalidToken) as exc:
        return _page("Confirm your email address", status=400, error=exc.message)
    except ApiError as exc:
        return _page("Confirm your email address", status=exc.status, error=exc.message)
    return _page("Address confirmed", message=f"{user.email} is confirmed.")


async def unsubscribe_page(request: web.Request) -> web.Response:
    """What the digest's unsubscribe link opens: a button (a GET changes nothing)."""
    token = _token_of(request.query.get("token"))
    if not token:
        return _page("Unsubscribe", status=400, error="This link is incomplete.")
    return _page("Stop unread digests", form="unsubscribe", token=token)


async def unsubscribe(request: web.Request) -> web.Response:
    """RFC 8058's one-click POST (`List-Unsubscribe=One-Click`, from the mail client) or the page's button: the
    token in the URL (or the form) is the proof; no login."""
    form = await request.post()
    token = _token_of(request.query.get("token") or form.get("token"))
    try:
        await request.app[digests_key].unsubscribe(token)
    except InvalidUnsubscribe as exc:
        return _page("Unsubscribe", status=400, error=exc.message)
    return _page("Unsubscribed", message="You will get no more unread digests. Turn them back on in your settings.")
