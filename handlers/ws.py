"""GET /api/v1/ws: live notifications over a WebSocket (protocol in docs/websocket.md)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMessage, WSMsgType, web
from aiohttp_apigami import docs
from bson import ObjectId

from server.authenticator import Principal, parse_object_id
from server.errors import ApiError, Forbidden, InvalidToken
from server.hub import CloseCode, Connection, Hub
from server.keys import authenticator_key, hub_key, notifications_key, settings_key
from server.openapi import BEARER, error_responses

MAX_CLIENT_ERRORS = 10


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
    # and the principal are gone once the Connection is made.
    principal = await _upgrade_principal(request)
    settings = request.app[settings_key]
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat, max_msg_size=settings.ws_max_frame_bytes, compress=False, autoping=True
    )
    await ws.prepare(request)
    hub = request.app[hub_key]
    hub.sockets.add(ws)
    conn: Connection | None = None
    try:
        conn = await _open(request, ws, hub, principal)
        del principal
        if conn is None:
            return ws
        errors = 0
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break  # aiohttp already closed the socket (1009 for an oversized frame); nothing more can be sent
            problem = await _handle(request, ws, hub, conn, msg)
            if problem is not None:
                errors += 1
                if errors > MAX_CLIENT_ERRORS:
                    await ws.close(code=CloseCode.PROTOCOL_ABUSE, message=b"too many invalid messages")
                    break
                code, text = problem
                await ws.send_json({"type": "error", "code": code, "message": text})
            if ws.closed:
                break
    finally:
        if conn is not None:
            hub.remove(conn)
        hub.sockets.discard(ws)
    return ws


async def _upgrade_principal(request: web.Request) -> Principal | None:
    """Check the upgrade request: its Origin, and its Authorization header when there is one."""
    origin = request.headers.get("Origin")
    # Browsers always send Origin; refusing foreign ones stops cross-site WebSocket hijacking.
    if origin is not None and origin not in request.app[settings_key].allowed_origins:
        raise Forbidden("This Origin may not open a WebSocket.")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return await request.app[authenticator_key].authenticate(token.strip(), remember=False)


async def _open(
    request: web.Request, ws: web.WebSocketResponse, hub: Hub, principal: Principal | None
) -> Connection | None:
    """Authenticate (in band when the upgrade carried no token), register, say "ready" and go live; None when
    the socket was closed instead."""
    if principal is None:
        principal = await _authenticate_in_band(request, ws)
        if principal is None:
            return None
    assert request.transport is not None
    conn = Connection(
        ws,
        request.transport,
        principal.user_id,
        principal.session_id,
        principal.token_version,
        principal.token_expires_at,
        start_id=str(ObjectId.from_datetime(datetime.now(UTC))),
    )
    conn.pending = []
    if not hub.add(conn):
        await ws.close(code=CloseCode.TOO_MANY_CONNECTIONS, message=b"too many connections for this user")
        return None
    user_oid = parse_object_id(principal.user_id)
    assert user_oid is not None
    unread = await request.app[notifications_key].unread_count(user_oid)
    await ws.send_json({"type": "ready", "user_id": principal.user_id, "unread": unread})
    hub.go_live(conn)
    return conn


async def _authenticate_in_band(request: web.Request, ws: web.WebSocketResponse) -> Principal | None:
    """Browsers cannot set headers on a WebSocket: the first message must be {"type": "auth", "token": ...}."""
    settings = request.app[settings_key]
    try:
        async with asyncio.timeout(settings.ws_auth_timeout):
            msg = await ws.receive()
    except TimeoutError:
        await ws.close(code=CloseCode.AUTH_TIMEOUT, message=b"authenticate within 10 seconds")
        return None
    message = _parse(msg.data) if msg.type == WSMsgType.TEXT else None
    token = message.get("token") if message and message.get("type") == "auth" else None
    if not isinstance(token, str):
        await ws.close(code=CloseCode.BAD_CREDENTIALS, message=b"first message must be auth")
        return None
    try:
        return await request.app[authenticator_key].authenticate(token, remember=False)
    except InvalidToken:
        await ws.close(code=CloseCode.BAD_CREDENTIALS, message=b"invalid token")
        return None


def _parse(data: Any) -> dict[str, Any] | None:
    try:
        message = json.loads(data)
    except (TypeError, ValueError):
        return None
    return message if isinstance(message, dict) else None


async def _handle(
    request: web.Request, ws: web.WebSocketResponse, hub: Hub, conn: Connection, msg: WSMessage
) -> tuple[str, str] | None:
    """Act on one client message; returns the client's error (code, message), if it made one."""
    if msg.type != WSMsgType.TEXT:
        return "unsupported", "Only JSON text messages are accepted."
    message = _parse(msg.data)
    if message is None:
        return "invalid_json", "Messages must be JSON objects."
    kind = message.get("type")
    if kind == "ping":
        await ws.send_json({"type": "pong"})
    elif kind == "resume":
        after = message.get("after")
        if not isinstance(after, str) or parse_object_id(after) is None:
            return "invalid_message", "resume needs 'after': a notification id."
        await hub.replay(conn, after)
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
    if not isinstance(notification_id, str) or parse_object_id(notification_id) is None:
        return "invalid_message", "read needs 'id': a notification id."
    user_oid = parse_object_id(conn.user_id)
    assert user_oid is not None
    try:
        await request.app[notifications_key].mark_read(user_oid, notification_id)
    except ApiError as exc:
        return exc.code, exc.message
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
    if principal.user_id != conn.user_id:
        hub.close(conn, CloseCode.FORBIDDEN, "token is for another user")
        return
    conn.session_id, conn.token_version, conn.expires_at = (
        principal.session_id,
        principal.token_version,
        principal.token_expires_at,
    )
    await ws.send_json({"type": "auth_ok", "expires_in": max(0, int(principal.token_expires_at - time.time()))})
