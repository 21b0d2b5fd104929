"""Helpers for the notification and WebSocket tests: await messages and closes with a deadline, never a sleep."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from tests.conftest import Account

API = "/api/v1"
# Generous: the machine may be busy. Every wait returns as soon as its event happens.
TIMEOUT = 10.0


def describe(msg: Any) -> str:
    return f"{msg.type.name} data={msg.data!r} extra={msg.extra!r}"


async def next_json(ws: ClientWebSocketResponse, within: float = TIMEOUT) -> dict[str, Any]:
    """The next message, which must be a JSON object in a text frame."""
    msg = await ws.receive(timeout=within)
    assert msg.type is WSMsgType.TEXT, f"expected a JSON message, got {describe(msg)}"
    message = json.loads(msg.data)
    assert isinstance(message, dict), message
    return message


async def next_of(ws: ClientWebSocketResponse, kind: str, within: float = TIMEOUT) -> dict[str, Any]:
    """The next message, which must be of this type."""
    message = await next_json(ws, within)
    assert message.get("type") == kind, f"expected {kind!r}, got {message}"
    return message


async def ready(ws: ClientWebSocketResponse) -> dict[str, Any]:
    return await next_of(ws, "ready")


async def expect_close(
    ws: ClientWebSocketResponse, code: int, *, skip: Collection[str] = (), within: float = TIMEOUT
) -> str:
    """Wait for the server's close frame and check its code; messages of the types in `skip` may come first."""
    while True:
        msg = await ws.receive(timeout=within)
        if msg.type is WSMsgType.TEXT and json.loads(msg.data).get("type") in skip:
            continue
        assert msg.type is WSMsgType.CLOSE, f"expected a close with {code}, got {describe(msg)}"
        assert msg.data == code, f"expected close code {code}, got {describe(msg)}"
        assert ws.closed
        return str(msg.extra or "")


async def pong(ws: ClientWebSocketResponse) -> None:
    """A round trip: the socket is alive, and nothing was queued for it before the pong."""
    await ws.send_json({"type": "ping"})
    await next_of(ws, "pong")


async def notifications_until(
    ws: ClientWebSocketResponse, last_id: str, within: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Every notification received up to and including the one with `last_id`; anything else fails."""
    received: list[dict[str, Any]] = []
    while True:
        message = await next_of(ws, "notification", within)
        received.append(message["notification"])
        if message["notification"]["id"] == last_id:
            return received


def ids(notifications: list[dict[str, Any]]) -> list[str]:
    return [notification["id"] for notification in notifications]


# Through the REST API


async def send(client: TestClient[Any, Any], admin: Account, **fields: Any) -> list[dict[str, Any]]:
    body = {"title": "Hello", "body": "World", **fields}
    response = await client.post(f"{API}/notifications", json=body, headers=admin.headers)
    assert response.status == 201, await response.text()
    sent: list[dict[str, Any]] = (await response.json())["notifications"]
    return sent


async def send_to(client: TestClient[Any, Any], admin: Account, user: Account, **fields: Any) -> dict[str, Any]:
    [notification] = await send(client, admin, user_ids=[user.id], **fields)
    return notification


async def unread(client: TestClient[Any, Any], user: Account) -> int:
    response = await client.get(f"{API}/notifications/unread-count", headers=user.headers)
    assert response.status == 200, await response.text()
    count: int = (await response.json())["unread"]
    return count
