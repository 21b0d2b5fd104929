"""The WebSocket hub: this process's authenticated sockets, live fan-out, replay and forced closes.

Delivery writes pre-built WebSocket frames straight to each socket's transport: a broadcast is serialized and
framed once, whatever the number of sockets, and no per-socket task or queue exists. The transport's write
buffer is the bounded send queue: a socket whose buffer would pass `ws_send_buffer_bytes` is closed with
SLOW_CLIENT, and its client resumes from the last id it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from server.authenticator import AUTH_TOPIC, Authenticator, parse_object_id
from server.notifications import NOTIFY_TOPIC, NotificationService
from server.pubsub import Broker
from server.settings import Settings
from server.tasks import cancel_and_wait

log = logging.getLogger(__name__)

REPLAY_BATCH = 500
MAX_TRACKED = 64
# How long a forced close may take; a peer that has not taken our data by then is dropped (see close_socket).
CLOSE_TIMEOUT = 5.0


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


async def close_socket(
    ws: web.WebSocketResponse, transport: asyncio.WriteTransport | None, code: int, message: str
) -> None:
    """Close with `code` in bounded time, even when the peer stopped reading.

    aiohttp's close() would first wait for the send buffer to drain, forever for such a peer, and a transport's
    close() keeps the socket until its buffer is flushed: so the buffer is not drained, and is dropped at the end.
    """
    try:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await ws.close(code=code, message=message.encode(), drain=False)
    finally:
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()


def notification_frame(notification: dict[str, Any]) -> bytes:
    return text_frame(json.dumps({"type": "notification", "notification": notification}).encode())


class Connection:
    """One authenticated socket."""

    __slots__ = (
        "closing",
        "delivered",
        "expires_at",
        "last_id",
        "pending",
        "pending_bytes",
        "session_id",
        "token_version",
        "transport",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        user_id: str,
        session_id: str,
        token_version: int,
        expires_at: float,
        start_id: str,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.user_id = user_id
        self.session_id = session_id
        self.token_version = token_version
        self.expires_at = expires_at
        # The newest notification id this socket was sent (or, before any, the position it started from).
        self.last_id = start_id
        # While replaying from MongoDB, live frames wait here: (id, frame).
        self.pending: list[tuple[str, bytes]] | None = None
        self.pending_bytes = 0
        # Ids written since the socket went live, until its first resume, so the replay skips them; a list, as
        # every idle socket holds one (a set costs 216 bytes empty) and it is searched at most once.
        self.delivered: list[str] | None = []
        self.closing = False


class Hub:
    def __init__(
        self, settings: Settings, broker: Broker, notifications: NotificationService, authenticator: Authenticator
    ) -> None:
        self._settings = settings
        self._notifications = notifications
        self._authenticator = authenticator
        # Lists, not sets: one per connected user, and a user has a few sockets at most (ws_max_per_user).
        self._by_user: dict[str, list[Connection]] = {}
        # Every socket, authenticated or not, so shutdown can close them all; the handler removes its own.
        self.sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.deliveries = 0
        broker.subscribe(NOTIFY_TOPIC, self._on_notify)
        broker.subscribe(AUTH_TOPIC, self._on_auth)
        broker.on_connect(self._on_broker_connect)
        broker.on_disconnect(self._on_broker_disconnect)
        # While the subscription is down: per socket, where its catch-up must start (its position when the
        # outage began) and what it was sent meanwhile (local deliveries), so the catch-up neither skips nor
        # repeats. None while the subscription is live.
        self._outage: dict[Connection, tuple[str, set[str]]] | None = None

    # Registry

    def connections(self) -> int:
        return sum(len(conns) for conns in self._by_user.values())

    def add(self, conn: Connection) -> bool:
        """Register an authenticated socket; False when its user is at the connection limit."""
        conns = self._by_user.setdefault(conn.user_id, [])
        if len(conns) >= self._settings.ws_max_per_user:
            return False
        conns.append(conn)
        if self._outage is not None:
            self._outage[conn] = (conn.last_id, set())
        return True

    def go_live(self, conn: Connection) -> None:
        """Send what arrived while the socket was being set up or replayed, then deliver directly."""
        pending, conn.pending, conn.pending_bytes = conn.pending or [], None, 0
        for notification_id, frame in pending:
            self._write(conn, notification_id, frame)

    def remove(self, conn: Connection) -> None:
        if self._outage is not None:
            self._outage.pop(conn, None)
        conns = self._by_user.get(conn.user_id)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._by_user[conn.user_id]

    # Delivery

    def _on_notify(self, payload: bytes) -> None:
        for recipient, notification in json.loads(payload):
            frame = notification_frame(notification)
            if recipient is None:
                # Broadcasts reach users who existed when it was sent: ids are ordered by creation.
                for user_id, conns in list(self._by_user.items()):
                    if user_id < notification["id"]:
                        for conn in list(conns):
                            self.deliver(conn, notification["id"], frame)
            else:
                for conn in list(self._by_user.get(recipient, ())):
                    self.deliver(conn, notification["id"], frame)

    def deliver(self, conn: Connection, notification_id: str, frame: bytes) -> None:
        if conn.closing:
            return
        if conn.pending is not None:
            conn.pending.append((notification_id, frame))
            conn.pending_bytes += len(frame)
            if conn.pending_bytes > self._settings.ws_send_buffer_bytes:
                self.close(conn, CloseCode.SLOW_CLIENT, "too far behind; reconnect and resume")
            return
        self._write(conn, notification_id, frame)

    def _write(self, conn: Connection, notification_id: str, frame: bytes) -> None:
        transport = conn.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() + len(frame) > self._settings.ws_send_buffer_bytes:
            self.close(conn, CloseCode.SLOW_CLIENT, "send buffer full; reconnect and resume")
            return
        transport.write(frame)
        self.deliveries += 1
        if self._outage is not None and conn in self._outage:
            self._outage[conn][1].add(notification_id)
        if conn.delivered is not None:
            # Only a resume right after "ready" needs these; a socket that never resumes stops tracking.
            if len(conn.delivered) >= MAX_TRACKED:
                conn.delivered = None
            else:
                conn.delivered.append(notification_id)
        if notification_id > conn.last_id:  # same-length hex ids compare like the ObjectIds
            conn.last_id = notification_id

    async def replay(
        self, conn: Connection, after: str, *, held: bool = False, skip: frozenset[str] = frozenset()
    ) -> None:
        """Send what the socket missed after `after` from MongoDB, then go live with no gap and no duplicate.

        `held`: the caller already holds live frames back (conn.pending), since the moment it chose `after`.
        """
        user_oid, after_oid = parse_object_id(conn.user_id), parse_object_id(after)
        if not held:
            if user_oid is None or after_oid is None:
                return
            if conn.pending is not None:
                # One replay at a time; overlapping ones (a resume during a catch-up) resync through a reconnect.
                self.close(conn, CloseCode.LOST_SYNC, "lost sync; reconnect and resume")
                return
            conn.pending, conn.pending_bytes = [], 0
        sent, conn.delivered = set(conn.delivered or ()) | skip, None
        try:
            while user_oid is not None and after_oid is not None and not conn.closing:
                batch = await self._notifications.after(user_oid, after_oid, REPLAY_BATCH)
                for notification in batch:
                    if notification["id"] not in sent:
                        self._write(conn, notification["id"], notification_frame(notification))
                        sent.add(notification["id"])
                if len(batch) < REPLAY_BATCH:
                    break
                next_oid = parse_object_id(batch[-1]["id"])
                assert next_oid is not None
                after_oid = next_oid
            conn.pending = [(nid, frame) for nid, frame in conn.pending or [] if nid not in sent]
        finally:
            self.go_live(conn)

    # Forced closes

    def close(self, conn: Connection, code: int, message: str) -> None:
        if conn.closing:
            return
        conn.closing = True
        self.remove(conn)
        self.spawn(close_socket(conn.ws, conn.transport, code, message))

    def _on_auth(self, message: bytes) -> None:
        kind, _, key = message.decode().partition(":")
        if kind == "u" and key in self._by_user:
            self.spawn(self._recheck_user(key))
        elif kind == "s":
            for conns in list(self._by_user.values()):
                for conn in list(conns):
                    if conn.session_id == key:
                        self.close(conn, CloseCode.BAD_CREDENTIALS, "logged out")

    async def _recheck_user(self, user_id: str, *, sessions: bool = False) -> None:
        """Close the user's sockets whose user was deactivated or revoked (and, with `sessions`, whose session
        was logged out) since they authenticated."""
        state = await self._authenticator.user_state(user_id)
        for conn in list(self._by_user.get(user_id, ())):
            if state is None or not state.is_active:
                self.close(conn, CloseCode.FORBIDDEN, "account deactivated")
            elif state.token_version != conn.token_version:
                self.close(conn, CloseCode.BAD_CREDENTIALS, "credentials revoked")
            elif sessions and not await self._authenticator.session_live(conn.session_id, conn.user_id):
                self.close(conn, CloseCode.BAD_CREDENTIALS, "logged out")

    def _on_broker_disconnect(self) -> None:
        self._outage = {conn: (conn.last_id, set()) for conns in self._by_user.values() for conn in conns}

    def _on_broker_connect(self) -> None:
        """After an outage, catch every socket up from MongoDB: it may have missed what was published meanwhile.

        Each catch-up starts where its socket was when the outage began (local deliveries since then may have
        moved last_id past notifications made elsewhere), and skips what it was sent meanwhile. Live frames are
        held from now, not from when the task runs.
        """
        outage, self._outage = self._outage, None
        if outage is None:  # the first connection at start-up
            return
        # Revocations made elsewhere while the subscription was down were not heard: check every user again.
        for user_id in list(self._by_user):
            self.spawn(self._recheck_user(user_id, sessions=True))
        for conns in list(self._by_user.values()):
            for conn in list(conns):
                after, sent_meanwhile = outage.get(conn, (conn.last_id, set()))
                if conn.pending is not None:  # being set up or replayed, maybe from before the outage ended
                    self.close(conn, CloseCode.LOST_SYNC, "lost sync; reconnect and resume")
                    continue
                conn.pending, conn.pending_bytes = [], 0
                self.spawn(self._catch_up(conn, after, frozenset(sent_meanwhile)))

    async def _catch_up(self, conn: Connection, after: str, skip: frozenset[str]) -> None:
        try:
            await self.replay(conn, after, held=True, skip=skip)
        except Exception:
            log.exception("catch-up failed; asking the client to resume")
            self.close(conn, CloseCode.LOST_SYNC, "lost sync; reconnect and resume")

    # Background work owned by the hub

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def expire_tokens(self) -> None:
        """Close sockets whose access token expired without an in-band refresh; runs until cancelled."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for conns in list(self._by_user.values()):
                for conn in list(conns):
                    if conn.expires_at <= now:
                        self.close(conn, CloseCode.TOKEN_EXPIRED, "token expired; refresh and reconnect")

    async def shutdown(self) -> None:
        """Close every socket with 1001 (going away), all at once: clients reconnect elsewhere and resume."""
        transports: dict[web.WebSocketResponse, asyncio.WriteTransport] = {}
        for conns in list(self._by_user.values()):
            for conn in conns:
                conn.closing = True  # nothing is written after the close frame
                transports[conn.ws] = conn.transport
        await asyncio.gather(
            *(
                close_socket(ws, transports.get(ws), CloseCode.GOING_AWAY, "server shutting down")
                for ws in list(self.sockets)
            )
        )
        await cancel_and_wait(*self._tasks)
