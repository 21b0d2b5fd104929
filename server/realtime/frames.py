"""What the server writes on a WebSocket: close codes, pre-built frames, and a close that cannot hang."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from typing import Any, NamedTuple

from aiohttp import web


class CloseCode:
    """4000-4099: reconnect (with backoff) and resume. 4400-4499: do not reconnect; mirrors HTTP statuses."""

    GOING_AWAY = 1001  # server shutting down: reconnect and resume
    RECONNECT = 4000
    TOKEN_EXPIRED = 4001
    SLOW_CLIENT = 4002
    LOST_SYNC = 4003
    PROTOCOL_ABUSE = 4400
    BAD_CREDENTIALS = 4401
    FORBIDDEN = 4403
    AUTH_TIMEOUT = 4408
    TOO_MANY_CONNECTIONS = 4429


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented, uncompressed server-to-client text frame (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


def notification_frame(notification: dict[str, Any]) -> bytes:
    return text_frame(json.dumps({"type": "notification", "notification": notification}).encode())


class Framed(NamedTuple):
    """A notification as the API shows it, with its frame: made once for every socket it is written to."""

    notification: dict[str, Any]
    frame: bytes

    @property
    def id(self) -> str:
        notification_id: str = self.notification["id"]
        return notification_id


async def close_socket(
    ws: web.WebSocketResponse, transport: asyncio.WriteTransport | None, code: int, message: str, within: float
) -> None:
    """Close with `code` within `within` seconds, even when the peer stopped reading.

    aiohttp's close() would first wait for the send buffer to drain, forever for such a peer, and a transport's
    close() keeps the socket until its buffer is flushed: so the buffer is not drained, and is dropped at the end.
    """
    try:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(within):
                await ws.close(code=code, message=message.encode(), drain=False)
    finally:
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()
