"""Request id and JSON errors, then authentication, then request validation, applied to every request in that order.

Each layer costs every request a coroutine (and a WebSocket its frame for as long as it is open), so the request id
and the error rendering share one middleware, and the others hand the handler's coroutine on without awaiting it
when they have nothing to do for a route.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_apigami import validation_middleware as apigami_validation_middleware
from aiohttp_apigami.middlewares import _get_handler_schemas
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from tidings.handlers.credentials import bearer_token
from tidings.handlers.csp import API_CSP, DOCS_CSP
from tidings.server.adapters.errors import ApiError, NotAuthenticated
from tidings.server.keys import api_keys_key, authenticator_key, key_principal_key, metrics_key, principal_key
from tidings.server.logs import request_id_var
from tidings.server.services.api_keys import is_api_key, required_scope
from tidings.server.services.authenticator import Role, require_admin, required_role

log = logging.getLogger(__name__)

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Codes for the HTTP errors aiohttp itself raises (routing, body size) before any handler runs.
_HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def new_request_id() -> str:
    """32 hex digits. An id only has to be unique, not secret: from the process's PRNG (seeded from the OS), without
    the system call per request that os.urandom makes."""
    return f"{random.getrandbits(128):032x}"


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return web.json_response({"error": error}, status=status)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (a sane incoming X-Request-ID is kept) for its log lines and its response, render
    every failure as {"error": {"code", "message", "details"?}}, never a stack trace, and count the request in the
    metrics (by route template, never the raw path)."""
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID")
    request_id = incoming if incoming and _SAFE_REQUEST_ID.fullmatch(incoming) else new_request_id()
    token = request_id_var.set(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            # Redirects and other non-error exceptions raised by handlers still carry the id.
            exc.headers["X-Request-ID"] = request_id
            _observe(request, exc.status, started, websocket=False)
            raise
        response = error_response(exc.status, _HTTP_ERROR_CODES.get(exc.status, "http_error"), exc.reason)
        for name in ("Allow", "Retry-After", "WWW-Authenticate"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except ApiError as exc:
        response = web.json_response(exc.body(), status=exc.status)
        response.headers.update(exc.headers)
    except ConnectionResetError:
        # The client went away (a timeout on its side): nobody reads an answer, and nothing failed here.
        log.info("client went away during %s %s", request.method, request.path)
        response = error_response(499, "client_closed_request", "The client closed the connection.")
    except (PyMongoError, RedisError) as exc:
        # A backing service is down or timed out: the client may retry; nothing was half-done on our side.
        log.warning("backing service unavailable in %s %s: %s", request.method, request.path, exc)
        response = error_response(503, "service_unavailable", "A backing service is unavailable; retry shortly.")
        response.headers["Retry-After"] = "5"
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = error_response(500, "internal_error", "Something went wrong on our side.")
    finally:
        request_id_var.reset(token)
    response.headers["X-Request-ID"] = request_id
    _observe(request, response.status, started, websocket=isinstance(response, web.WebSocketResponse))
    return response


def _observe(request: web.Request, status: int, started: float, *, websocket: bool) -> None:
    """Count the request under its route template ("<unmatched>" when no route matched: a 404 or 405 from the
    router), with its duration unless it was a WebSocket, whose "duration" is the life of the socket."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "<unmatched>"
    seconds = None if websocket else time.perf_counter() - started
    request.config_dict[metrics_key].observe_request(request.method, route, status, seconds)


@web.middleware
def auth_middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Enforce @auth_required / @admin_required before the body is even parsed; an API key passes only where the
    handler's @key_scope allows it."""
    role = required_role(request.match_info.handler)
    if role is None:
        return handler(request)
    return _authenticated(request, handler, role)


async def _authenticated(request: web.Request, handler: Handler, role: Role) -> web.StreamResponse:
    token = bearer_token(request)
    if token is None:
        raise NotAuthenticated("A bearer access token is required.")
    if is_api_key(token):
        # 401 for a key that does not stand, 429 past its limit, then 403 insufficient_scope.
        key = await request.app[api_keys_key].authenticate(token)
        key.require(required_scope(request.match_info.handler))
        request[key_principal_key] = key
        return await handler(request)
    principal = await request.app[authenticator_key].authenticate(token)
    if role == "admin":
        require_admin(principal.is_admin)
    request[principal_key] = principal
    return await handler(request)


@web.middleware
def validation_middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """aiohttp-apigami's request validation, for the handlers that declare a request schema; the others (the
    WebSocket, /users/me, health) go straight on."""
    if not _get_handler_schemas(request):
        return handler(request)
    return apigami_validation_middleware(request, handler)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers every response carries, but a WebSocket's 101.

    Browsers ignore these on a protocol switch, and the upgrade's headers live as long as the socket, so they
    would cost every idle socket memory for nothing (docs/performance.md).
    """
    if response.status == 101:
        return
    docs = request.path == "/api/docs" or request.path.startswith("/api/docs/")
    _add_security_headers(response, DOCS_CSP if docs else API_CSP)


def _add_security_headers(response: web.StreamResponse, csp: str) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy", csp)


_REASON_LIMIT = 200  # aiohttp's reason may quote what the client sent


def refused_request_response(status: int, reason: str) -> web.Response:
    """The answer to a request that aiohttp's HTTP parser refused (an over-long header line, a garbled request
    line, bad HTTP) before any middleware ran: the one error shape, a fresh X-Request-ID and the security headers,
    as every other answer has. The server's request handler (server/runner.py) sends it; the connection closes."""
    # One line: llhttp's reasons run over several, the last a caret under the offending byte.
    reason = " ".join(line.strip() for line in reason.splitlines() if line.strip() not in ("", "^")) or "Bad Request"
    if len(reason) > _REASON_LIMIT:
        reason = reason[: _REASON_LIMIT - 3] + "..."
    response = error_response(
        status, _HTTP_ERROR_CODES.get(status, "bad_request"), f"The request is not valid HTTP: {reason}"
    )
    response.headers["X-Request-ID"] = new_request_id()
    _add_security_headers(response, API_CSP)
    response.headers["Connection"] = "close"  # said, since the answer is HTTP/1.0, where aiohttp leaves it unsaid
    response.force_close()
    return response
