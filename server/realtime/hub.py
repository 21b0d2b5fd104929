"""The WebSocket hub: this process's sockets and their whole lifecycle, live fan-out, replay and forced closes.

A socket is tracked from its upgrade, opened (registered, told "ready", then live), re-authenticated in band, and
closed here; the handler only speaks the protocol. Live frames for a socket are held from its registration until
"ready" is written, and during a replay, so a client sees no gap and no duplicate.

Routing: the process holds the channel of each user it has a socket of (broker.hold while the socket is
registered), plus the broadcast and control channels; a socket says "ready" only once its user's channel is
subscribed, and what was published for it between its registration and that moment is read from MongoDB
(`_fill_window`), so nothing sent after a socket registered is missed.

Delivery writes pre-built WebSocket frames straight to each socket's transport: a broadcast is serialized and
framed once, whatever the number of sockets, and no per-socket task or queue exists. The transport's write
buffer is the bounded send queue: a socket whose buffer would pass `ws_send_buffer_bytes` is closed with
SLOW_CLIENT, and its client resumes from the last id it got.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from beanie import PydanticObjectId

from tidings.documents.clock import utcnow
from tidings.documents.ids import id_floor, parse_object_id
from tidings.server.adapters.broker import Broker, Held
from tidings.server.adapters.coalesce import Coalescer, Slots
from tidings.server.adapters.codecs import (
    AUTH_TOPIC,
    NOTIFY_TOPIC,
    USER_TOPIC,
    MalformedMessage,
    decode_auth,
    decode_notifications,
)
from tidings.server.adapters.metrics import Metrics
from tidings.server.adapters.tasks import cancel_and_wait
from tidings.server.realtime.frames import CloseCode, Framed, close_socket, notification_frame
from tidings.server.services.authenticator import Authenticator, Principal
from tidings.server.services.notifications import NotificationService
from tidings.server.settings import Settings

log = logging.getLogger(__name__)

REPLAY_BATCH = 500
# Ids a socket remembers writing before its first resume, so that resume skips them; past this, it stops tracking.
MAX_TRACKED = 64
# How long after a replay the live frames of the notifications it sent are still dropped as duplicates, and how many
# it remembers: a publish follows its insert by milliseconds, so only the newest few can still be in flight.
REPLAYED_MEMORY_SECONDS = 60.0
MAX_REPLAYED_REMEMBERED = 1000
# Notification ids this process has delivered lately: a message published twice (a retried publish) is dropped.
SEEN_MAX = 10_000


class Connection:
    """One authenticated socket."""

    __slots__ = (
        "closing",
        "delivered",
        "expires_at",
        "last_id",
        "opened_at",
        "pending",
        "pending_bytes",
        "replayed",
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
        # When it registered: live delivery covers what was published from then on.
        self.opened_at = utcnow()
        # While replaying from MongoDB, live frames wait here: (id, frame).
        self.pending: list[tuple[str, bytes]] | None = None
        self.pending_bytes = 0
        # Ids written since the socket went live, until its first resume, so the replay skips them; a list, as
        # every idle socket holds one and it is searched at most once.
        self.delivered: list[str] | None = []
        # After a replay: until when, and which of the replayed ids may still arrive live (each notification is
        # stored before it is published, so a replay can send one whose live frame is still on its way).
        self.replayed: tuple[float, frozenset[str]] | None = None
        self.closing = False


class Hub:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        notifications: NotificationService,
        authenticator: Authenticator,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._broker = broker
        self._notifications = notifications
        self._authenticator = authenticator
        # Lists, not sets: one per connected user, and a user has a few sockets at most (ws_max_per_user).
        self._by_user: dict[str, list[Connection]] = {}
        # Every socket, authenticated or not, so shutdown can close them all.
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Reads for sockets (ready's unread count, replays) take one of these slots, so a storm of them is paced
        # and the API keeps its share of MongoDB; while they wait, sockets of one user share one read. Replays go
        # first: a socket that is "ready" is finished before another is started, and its replay reuses the read
        # state that its "ready" read a moment before (RecentReadStates) instead of reading it again.
        read_slots = Slots(settings.replay_concurrency)
        self._unread: Coalescer[PydanticObjectId, int] = Coalescer(
            lambda user: notifications.unread_count(user), read_slots, rank=1
        )
        self._missed: Coalescer[tuple[PydanticObjectId, PydanticObjectId], list[Framed]] = Coalescer(
            self._read_missed, read_slots, rank=0
        )
        broker.subscribe(NOTIFY_TOPIC, self._on_notify)  # broadcasts
        broker.route(USER_TOPIC, self._on_notify)  # the users this process holds sockets of
        broker.subscribe(AUTH_TOPIC, self._on_auth)
        broker.on_connect(self._on_broker_connect)
        broker.on_disconnect(self._on_broker_disconnect)
        # While the subscription is down: per socket, where its catch-up must start (its position when the
        # outage began) and what it was sent meanwhile (local deliveries), so the catch-up neither skips nor
        # repeats. None while the subscription is live.
        self._outage: dict[Connection, tuple[str, set[str]]] | None = None

    # Lifecycle of a socket: track, open (register, "ready", live), re-authenticate, release

    def connections(self) -> int:
        """Authenticated sockets."""
        return sum(len(conns) for conns in self._by_user.values())

    def connections_by_user(self) -> dict[str, int]:
        """Authenticated sockets per user."""
        return {user_id: len(conns) for user_id, conns in self._by_user.items() if conns}

    def connections_of(self, user_id: str) -> int:
        """One user's authenticated sockets."""
        return len(self._by_user.get(user_id, ()))

    def socket_count(self) -> int:
        """Every socket, authenticated or not."""
        return len(self._sockets)

    def routing(self) -> dict[str, Any]:
        """What this process's broker holds and has received, by kind of channel (the gauge reports it)."""
        return {"held": self._broker.held(), "received": dict(self._broker.received)}

    def track(self, ws: web.WebSocketResponse) -> None:
        """From the upgrade on, so that shutdown closes the socket even before it authenticates."""
        self._sockets.add(ws)
        self._metrics.socket_opened()

    def release(self, ws: web.WebSocketResponse, conn: Connection | None) -> None:
        """The handler is done with the socket, however it ended."""
        if conn is not None:
            self.remove(conn)
        if ws in self._sockets:
            self._sockets.discard(ws)
            # No close code: the connection was lost without a close frame (1006, as RFC 6455 names it).
            self._metrics.socket_closed(ws.close_code or 1006)

    async def open(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport, principal: Principal
    ) -> Connection | None:
        """Register an authenticated socket, say "ready" with its unread count, and go live.

        None when its user is at the connection limit (the socket is closed with TOO_MANY_CONNECTIONS). A failure
        before "ready" gives the slot back, so failed attempts never lock a user out.
        """
        conn = Connection(
            ws,
            transport,
            principal.user_id,
            principal.session_id,
            principal.token_version,
            principal.token_expires_at,
            start_id=id_floor(time.time()),
        )
        conn.pending = []  # held until "ready" is written
        subscribed = self._add(conn)
        if subscribed is None:
            await ws.close(code=CloseCode.TOO_MANY_CONNECTIONS, message=b"too many connections for this user")
            return None
        try:
            held = await subscribed
            user_oid = parse_object_id(principal.user_id)
            assert user_oid is not None  # it came from a token this server signed
            # Both reads before "ready": once the client has it, its socket answers at once (pings included).
            if held is Held.NEW:
                unread, missed = await asyncio.gather(self._unread.get(user_oid), self._window(conn, user_oid))
            else:
                unread, missed = await self._unread.get(user_oid), []
            await ws.send_json({"type": "ready", "user_id": principal.user_id, "unread": unread})
            self._fill_window(conn, missed)
        except BaseException:
            self.remove(conn)
            raise
        self.go_live(conn)
        return conn

    async def _read_missed(self, key: tuple[PydanticObjectId, PydanticObjectId]) -> list[Framed]:
        """A batch of what a user missed after an id, each with its frame: made once for all the user's sockets
        that share the read."""
        batch = await self._notifications.after(key[0], key[1], REPLAY_BATCH)
        return [Framed(n, notification_frame(n)) for n in batch]

    async def _window(self, conn: Connection, user_oid: PydanticObjectId) -> list[Framed]:
        """What was published for the user between the socket's registration and its channel's subscription taking
        effect: the direct notifications made since it registered (a subscription confirmed after a read would
        leave a gap; this read starts once it is confirmed).

        Broadcasts have no window (every process holds their channel). The time is the creating process's clock,
        to the millisecond; a notification made before the socket registered is the client's to read (its unread
        count, its inbox, a resume), as it always was.
        """
        after_oid = PydanticObjectId(id_floor(conn.opened_at.timestamp()))
        if not await self._notifications.numbered_since(user_oid, after_oid):
            # Nothing numbered for the user since (one Redis read): nothing published either, as a send numbers
            # first. This spares a reconnect storm a MongoDB read per user.
            return []
        missed: list[Framed] = []
        while True:
            batch = await self._missed.get((user_oid, after_oid))
            for framed in batch:
                notification = framed.notification
                created = datetime.fromisoformat(notification["created_at"])
                if not notification["broadcast"] and (created.replace(tzinfo=created.tzinfo or UTC)) >= conn.opened_at:
                    missed.append(framed)
            if len(batch) < REPLAY_BATCH:
                return missed
            next_oid = parse_object_id(batch[-1].id)
            assert next_oid is not None
            after_oid = next_oid

    def _fill_window(self, conn: Connection, missed: list[Framed]) -> None:
        """Send the window's notifications that are not among the live frames held meanwhile, before those."""
        held = {notification_id for notification_id, _ in conn.pending or ()}
        frames = [(framed.id, framed.frame) for framed in missed if framed.id not in held]
        self._write_all(conn, frames)
        self._remember_replayed(conn, [notification_id for notification_id, _ in frames])

    def reauthenticate(self, conn: Connection, principal: Principal) -> bool:
        """A fresh access token extends the socket past the old one's expiry; a token for another user closes it."""
        if principal.user_id != conn.user_id:
            self.close(conn, CloseCode.FORBIDDEN, "token is for another user")
            return False
        conn.session_id, conn.token_version, conn.expires_at = (
            principal.session_id,
            principal.token_version,
            principal.token_expires_at,
        )
        return True

    def _add(self, conn: Connection) -> Awaitable[Held] | None:
        """Register an authenticated socket and hold its user's channel; None when its user is at the connection
        limit. The awaitable says when the channel is subscribed."""
        conns = self._by_user.setdefault(conn.user_id, [])
        if len(conns) >= self._settings.ws_max_per_user:
            return None
        conns.append(conn)
        if self._outage is not None:
            self._outage[conn] = (conn.last_id, set())
        return self._broker.hold(USER_TOPIC, conn.user_id)

    def go_live(self, conn: Connection) -> None:
        """Send what arrived while the socket was being set up or replayed, then deliver directly."""
        pending, conn.pending, conn.pending_bytes = conn.pending or [], None, 0
        self._write_all(conn, pending)

    def remove(self, conn: Connection) -> None:
        if self._outage is not None:
            self._outage.pop(conn, None)
        conns = self._by_user.get(conn.user_id)
        if conns is not None and conn in conns:
            conns.remove(conn)
            self._broker.release(USER_TOPIC, conn.user_id)
            if not conns:
                del self._by_user[conn.user_id]

    # Delivery

    def _on_notify(self, payload: bytes) -> None:
        try:
            deliveries = decode_notifications(payload)
        except MalformedMessage as exc:
            log.warning("dropped a malformed notification message: %s", exc)
            return
        for recipient, notification in deliveries:
            if notification["id"] in self._seen:
                continue
            self._seen[notification["id"]] = None
            if len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            frame = notification_frame(notification)
            if recipient is None:
                # Broadcasts reach users who existed when it was sent: ids are ordered by creation.
                targets = [
                    conn
                    for user_id, conns in list(self._by_user.items())
                    if user_id < notification["id"]
                    for conn in conns
                ]
            else:
                targets = list(self._by_user.get(recipient, ()))
            for conn in targets:
                self.deliver(conn, notification["id"], frame)
            if targets:
                self._lagged(notification)

    def _lagged(self, notification: dict[str, Any]) -> None:
        """Delivery lag, from the notification's creation to its fan-out here (once per notification)."""
        try:
            created = datetime.fromisoformat(notification["created_at"])
        except (KeyError, TypeError, ValueError):
            return
        self._metrics.delivery_lagged(time.time() - created.timestamp())

    def deliver(self, conn: Connection, notification_id: str, frame: bytes) -> None:
        """A live frame for this socket: held while it is set up or replayed, dropped if a replay sent it."""
        if conn.closing:
            return
        if conn.replayed is not None:
            until, replayed = conn.replayed
            if time.monotonic() > until:
                conn.replayed = None
            elif notification_id in replayed:
                return
        if conn.pending is not None:
            conn.pending.append((notification_id, frame))
            conn.pending_bytes += len(frame)
            if conn.pending_bytes > self._settings.ws_send_buffer_bytes:
                self.close(conn, CloseCode.SLOW_CLIENT, "too far behind; reconnect and resume")
            return
        self._write(conn, notification_id, frame)

    def _write(self, conn: Connection, notification_id: str, frame: bytes) -> None:
        self._write_all(conn, [(notification_id, frame)])

    def _write_all(self, conn: Connection, frames: list[tuple[str, bytes]]) -> None:
        """Write notification frames in one transport write: each write to a socket is a system call, the largest
        cost of a reconnect storm, where every socket gets its replay at once."""
        transport = conn.transport
        if not frames or transport.is_closing():
            return
        data = frames[0][1] if len(frames) == 1 else b"".join(frame for _, frame in frames)
        if transport.get_write_buffer_size() + len(data) > self._settings.ws_send_buffer_bytes:
            self.close(conn, CloseCode.SLOW_CLIENT, "send buffer full; reconnect and resume")
            return
        transport.write(data)
        self._metrics.delivered(len(frames))
        outage = self._outage.get(conn) if self._outage is not None else None
        for notification_id, _ in frames:
            if outage is not None:
                outage[1].add(notification_id)
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
        self._metrics.replayed("catch_up" if held else "resume")
        if not held:
            if user_oid is None or after_oid is None:
                return
            if conn.pending is not None:
                # One replay at a time; overlapping ones (a resume during a catch-up) resync through a reconnect.
                self.close(conn, CloseCode.LOST_SYNC, "lost sync; reconnect and resume")
                return
            conn.pending, conn.pending_bytes = [], 0
        sent, conn.delivered = set(conn.delivered or ()) | skip, None
        replayed: list[str] = []
        try:
            while user_oid is not None and after_oid is not None and not conn.closing:
                batch = await self._missed.get((user_oid, after_oid))
                frames: list[tuple[str, bytes]] = []
                for framed in batch:
                    if framed.id not in sent:
                        frames.append((framed.id, framed.frame))
                        sent.add(framed.id)
                        replayed.append(framed.id)
                self._write_all(conn, frames)
                if len(batch) < REPLAY_BATCH:
                    break
                next_oid = parse_object_id(batch[-1].id)
                assert next_oid is not None
                after_oid = next_oid
            conn.pending = [(nid, frame) for nid, frame in conn.pending or [] if nid not in sent]
        finally:
            self._remember_replayed(conn, replayed)
            self.go_live(conn)

    @staticmethod
    def _remember_replayed(conn: Connection, replayed: list[str]) -> None:
        """Keep the newest replayed ids whose live frames may still come, so that they are not sent twice."""
        horizon = id_floor(time.time() - REPLAYED_MEMORY_SECONDS)
        recent = [nid for nid in replayed[-MAX_REPLAYED_REMEMBERED:] if nid > horizon]
        if conn.replayed is not None and time.monotonic() <= conn.replayed[0]:
            recent.extend(conn.replayed[1])
        conn.replayed = (time.monotonic() + REPLAYED_MEMORY_SECONDS, frozenset(recent)) if recent else None

    # Forced closes

    def close(self, conn: Connection, code: int, message: str) -> None:
        if conn.closing:
            return
        conn.closing = True
        if code == CloseCode.SLOW_CLIENT:
            self._metrics.slow_client_closed()
        self.remove(conn)
        self.spawn(close_socket(conn.ws, conn.transport, code, message, self._settings.ws_close_timeout))

    def _on_auth(self, message: bytes) -> None:
        try:
            change = decode_auth(message)
        except MalformedMessage:
            return  # the authenticator logs it
        if change.kind == "user" and change.key in self._by_user:
            self.spawn(self._recheck_user(change.key))
        elif change.kind == "session":
            for conns in list(self._by_user.values()):
                for conn in list(conns):
                    if conn.session_id == change.key:
                        self.close(conn, CloseCode.BAD_CREDENTIALS, "logged out")

    async def _recheck_user(self, user_id: str, *, sessions: bool = False) -> None:
        """Close the user's sockets whose user was deactivated or revoked (and, with `sessions`, whose session
        was logged out) since they authenticated."""
        state = await self._authenticator.user_state(user_id)
        for conn in list(self._by_user.get(user_id, ())):
            if state is None:
                self.close(conn, CloseCode.FORBIDDEN, "account deleted")
            elif not state.is_active:
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
            await asyncio.sleep(self._settings.ws_token_check_interval)
            now = time.time()
            for conns in list(self._by_user.values()):
                for conn in list(conns):
                    if conn.expires_at <= now:
                        self.close(conn, CloseCode.TOKEN_EXPIRED, "token expired; refresh and reconnect")

    async def shutdown(self) -> None:
        """Close every socket with 1001 (going away), all at once: clients reconnect elsewhere and resume."""
        transports: dict[web.WebSocketResponse, asyncio.WriteTransport] = {}
        close_within = self._settings.ws_close_timeout
        for conns in list(self._by_user.values()):
            for conn in conns:
                conn.closing = True  # nothing is written after the close frame
                transports[conn.ws] = conn.transport
        await asyncio.gather(
            *(
                close_socket(ws, transports.get(ws), CloseCode.GOING_AWAY, "server shutting down", close_within)
                for ws in list(self._sockets)
            )
        )
        await cancel_and_wait(*self._tasks)
        await self._unread.close()
        await self._missed.close()
