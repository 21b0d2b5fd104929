"""What a request says about its caller: the bearer token it carries, the address and the origin it comes from."""

from __future__ import annotations

from aiohttp import web

from tidings.server.adapters.errors import Forbidden
from tidings.server.keys import key_principal_key, principal_key, settings_key
from tidings.server.services.audit import Actor


def bearer_token(request: web.BaseRequest) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case), or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def acting(request: web.Request) -> Actor:
    """Who makes an authenticated request: the API key it carries, or the user of its access token."""
    key = request.get(key_principal_key)
    return key.actor if key is not None else Actor.of(request[principal_key])


def caller(request: web.Request) -> str:
    """The authenticated caller as one string, "key:<id>" or "user:<id>": what idempotency keys are scoped by."""
    key = request.get(key_principal_key)
    return f"key:{key.key_id}" if key is not None else f"user:{request[principal_key].user_id}"


def client_address(request: web.Request) -> str:
    """The caller's address; behind a trusted proxy, the last hop it appended to X-Forwarded-For."""
    if request.config_dict[settings_key].trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1]
    return request.remote or "unknown"


def refuse_foreign_origin(request: web.Request, refusal: str) -> None:
    """Raise Forbidden (with `refusal`) when the request comes from a page of another origin. Browsers send Origin
    with every WebSocket upgrade and every POST; clients that are not browsers send none, and pass."""
    origin = request.headers.get("Origin")
    if origin is not None and origin not in request.config_dict[settings_key].allowed_origins:
        raise Forbidden(refusal)
