"""GET /api/v1/ws: live notifications over a WebSocket (protocol in docs/websocket.md).

This module speaks the protocol: it parses client messages and answers them. The hub owns the socket's lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiohttp_apigami import docs
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from tidings.documents.ids import parse_object_id
from tidings.handlers.credentials import bearer_token, refuse_foreign_origin
from tidings.handlers.json_input import InvalidJson, NulInJson, parse_json
from tidings.handlers.openapi import BEARER, error_responses
from tidings.handlers.schemas import error_sentences
from tidings.server.adapters.errors import ApiError, InvalidToken
from tidings.server.keys import authenticator_key, hub_key, notifications_key, settings_key
from tidings.server.realtime.frames import CloseCode
from tidings.server.realtime.hub import Connection, Hub
from tidings.server.services.api_keys import is_api_key
from tidings.server.services.authenticator import Principal

log = logging.getLogger(__name__)

MAX_CLIENT_ERRORS = 10
UNAVAILABLE = "service_unavailable"
RATE_LIMITED = "Too many messages on this socket; slow down (see WS_MESSAGES_PER_SECOND)."
# A socket is a user's: an application's API key never opens one (docs/publishing.md).
API_KEY_REFUSED = b"API keys cannot open a WebSocket"


@docs(
    tags=["websocket"],
    summary="Live notifications over a WebSocket",
    description=(
        "Upgrade to a WebSocket carrying JSON messages: authenticate with an Authorization header or a first "
        'message {"type": "auth", "token": ...}; then notifications arrive live, and '
        '{"type": "resume", "after": id} replays what was missed. Messages and close codes: docs/websocket.md.'
    ),
    security=BEARER,
    responses={101: {"description": "Switching protocols"}, **error_responses(401, 403)},
)
async def websocket(request: web.Request) -> web.StreamResponse:
    # An idle socket keeps this frame for as long as it is open, so what it holds is kept small: the token
    # and the principal are gone once the socket is open.
    principal = await _upgrade_principal(request)
    settings = request.app[settings_key]
    # aiohttp refuses a message of exactly max_msg_size bytes; the documented limit allows it.
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat, max_msg_size=settings.ws_max_frame_bytes + 1, compress=False, autoping=True
    )
    await ws.prepare(request)
    hub = request.app[hub_key]
    hub.track(ws)
    conn: Connection | None = None
    try:
        if principal is None:
            principal = await _authenticate_in_band(request, ws)
        if principal is None:
            return ws
        assert request.transport is not None
        conn = await hub.open(ws, request.transport, principal)
        del principal
        if conn is None:
            return ws
        errors = 0
        # A token bucket per socket: each message takes a token; tokens come back at ws_messages_per_second.
        rate, burst = settings.ws_messages_per_second, settings.ws_message_burst
        tokens, refilled_at = float(burst), time.monotonic()
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break  # aiohttp already closed the socket (1009 for an oversized frame); nothing more can be sent
            now = time.monotonic()
            tokens, refilled_at = min(burst, tokens + (now - refilled_at) * rate), now
            if tokens < 1:
                await ws.send_json({"type": "error", "code": "rate_limited", "message": RATE_LIMITED})
                continue
            tokens -= 1
            problem = await _handle(request, ws, hub, conn, msg)
            if problem is not None:
                code, text = problem
                if code != UNAVAILABLE:  # an outage on our side is not the client's fault
                    errors += 1
                if errors > MAX_CLIENT_ERRORS:
                    await ws.close(code=CloseCode.PROTOCOL_ABUSE, message=b"too many invalid messages")
                    break
                await ws.send_json({"type": "error", "code": code, "message": text})
            if ws.closed:
                break
    except (PyMongoError, RedisError) as exc:
        # After the upgrade nothing can answer in HTTP: close with a documented code, and the client resumes.
        log.warning("backing service unavailable on a WebSocket: %s", exc)
        await _close(ws, CloseCode.RECONNECT, "service unavailable; reconnect and resume")
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unexpected error on a WebSocket")
        await _close(ws, WSCloseCode.INTERNAL_ERROR, "internal error; reconnect and resume")
    finally:
        hub.release(ws, conn)
    return ws


async def _close(ws: web.WebSocketResponse, code: int, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, message=message.encode())


async def _upgrade_principal(request: web.Request) -> Principal | None:
    """Check the upgrade request: its Origin, and its Authorization header when there is one."""
    # Refusing foreign Origins stops cross-site WebSocket hijacking.
    refuse_foreign_origin(request, "This Origin may not open a WebSocket.")
    token = bearer_token(request)
    if token is None or is_api_key(token):
        return None  # an API key is refused with 4401 once the socket is open
    return await request.app[authenticator_key].authenticate(token, remember=False)


async def _authenticate_in_band(request: web.Request, ws: web.WebSocketResponse) -> Principal | None:
    """Browsers cannot set headers on a WebSocket: the first message must be {"type": "auth", "token": ...}."""
    header = bearer_token(request)
    if header is not None and is_api_key(header):
        await ws.close(code=CloseCode.BAD_CREDENTIALS, message=API_KEY_REFUSED)
        return None
    timeout = request.app[settings_key].ws_auth_timeout
    try:
        async with asyncio.timeout(timeout):
            msg = await ws.receive()
    except TimeoutError:
        await ws.close(code=CloseCode.AUTH_TIMEOUT, message=f"authenticate within {timeout:g} seconds".encode())
        return None
    try:
        message = _parse(msg.data) if msg.type == WSMsgType.TEXT else None
    except ClientMistake:
        message = None  # not JSON, or a NUL in it (a token never holds one)
    token = message.get("token") if message and message.get("type") == "auth" else None
    if not isinstance(token, str):
        await ws.close(code=CloseCode.BAD_CREDENTIALS, message=b"first message must be auth")
        return None
    if is_api_key(token):
        await ws.close(code=CloseCode.BAD_CREDENTIALS, message=API_KEY_REFUSED)
        return None
    try:
        return await request.app[authenticator_key].authenticate(token, remember=False)
    except InvalidToken:
        await ws.close(code=CloseCode.BAD_CREDENTIALS, message=b"invalid token")
        return None


class ClientMistake(Exception):
    """A client message that is refused before it is acted on: its error's code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _parse(data: Any) -> dict[str, Any]:
    """The one way a client message is read: a JSON object without a NUL in any string or key, or ClientMistake."""
    try:
        message = parse_json(data)
    except NulInJson as exc:  # PostgreSQL cannot store a NUL (handlers/nul.py): never let one reach a query
        raise ClientMistake("invalid_message", " ".join(error_sentences(exc.errors))) from None
    except InvalidJson:
        raise ClientMistake("invalid_json", "Messages must be JSON objects.") from None
    if not isinstance(message, dict):
        raise ClientMistake("invalid_json", "Messages must be JSON objects.")
    return message


async def _handle(
    request: web.Request, ws: web.WebSocketResponse, hub: Hub, conn: Connection, msg: WSMessage
) -> tuple[str, str] | None:
    """Act on one client message; returns the client's error (code, message), if it made one."""
    if msg.type != WSMsgType.TEXT:
        return "unsupported", "Only JSON text messages are accepted."
    try:
        message = _parse(msg.data)
    except ClientMistake as exc:
        return exc.code, exc.message
    kind = message.get("type")
    if kind == "ping":
        await ws.send_json({"type": "pong"})
    elif kind == "resume":
        after = message.get("after")
        if not isinstance(after, str) or parse_object_id(after) is None:
            return "invalid_message", "resume needs 'after': a notification id."
        try:
            await hub.replay(conn, after)
        except (PyMongoError, RedisError):
            # Part of the replay may be written already: only a new resume can continue without a gap.
            hub.close(conn, CloseCode.LOST_SYNC, "service unavailable; reconnect and resume")
    elif kind == "read":
        return await _mark_read(request, ws, conn, message.get("id"))
    elif kind == "auth":
        await _refresh_auth(request, ws, hub, conn, message.get("token"))
    else:
        return "unknown_type", "Unknown message type."
    return None


async def _mark_read(
    request: web.Request, ws: web.WebSocketResponse, conn: Connection, notification_id: Any
) -> tuple[str, str] | None:
    if parse_object_id(notification_id) is None:
        return "invalid_message", "read needs 'id': a notification id."
    user_oid = parse_object_id(conn.user_id)
    assert user_oid is not None
    try:
        await request.app[notifications_key].mark_read(user_oid, notification_id)
    except ApiError as exc:
        return exc.code, exc.message
    except (PyMongoError, RedisError):
        return UNAVAILABLE, "A backing service is unavailable; retry shortly."
    await ws.send_json({"type": "read", "id": notification_id})
    return None


async def _refresh_auth(
    request: web.Request, ws: web.WebSocketResponse, hub: Hub, conn: Connection, token: Any
) -> None:
    """A fresh access token for the same user extends the connection past the old token's expiry."""
    try:
        if not isinstance(token, str):
            raise InvalidToken()
        principal = await request.app[authenticator_key].authenticate(token, remember=False)
    except InvalidToken:
        hub.close(conn, CloseCode.BAD_CREDENTIALS, "invalid token")
        return
    if hub.reauthenticate(conn, principal):
        await ws.send_json({"type": "auth_ok", "expires_in": max(0, int(principal.token_expires_at - time.time()))})
