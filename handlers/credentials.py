"""What a request says about its caller: the bearer token it carries, and the address it comes from."""

from __future__ import annotations

from aiohttp import web

from tidings.server.keys import settings_key


def bearer_token(request: web.BaseRequest) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case), or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def client_address(request: web.Request) -> str:
    """The caller's address; behind a trusted proxy, the last hop it appended to X-Forwarded-For."""
    if request.config_dict[settings_key].trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1]
    return request.remote or "unknown"
