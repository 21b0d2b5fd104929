"""Checks access tokens on every request: fast from a per-process cache, yet revocation is immediate.

What a request needs: a valid signature and expiry (a pure function of the token, cached by token string),
and that neither its session nor its user was revoked or deactivated since (cached per session and per user,
dropped on every change by an invalidation message through the broker). The cache is only trusted while the
broker's subscription is live; while it is down every request reads MongoDB.

Reads of a user or a session go through a Coalescer (server/adapters/coalesce.py) with `read_slots` slots: after a
restart, the sockets of one user that reconnect together share one read of the user and one of the session, and a
storm's reads are paced. A caller joins a read that waits for a slot, or one in flight that no invalidation has
overtaken yet (the cache would have given it that result a moment later); while the broker is down, only a waiting
one. A read that an invalidation overtook answers the callers who asked before it but is not cached, and nobody joins
it any more.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from tidings.documents import Session, User
from tidings.documents.ids import parse_object_id
from tidings.server.adapters.broker import Broker
from tidings.server.adapters.coalesce import Coalescer, Slots
from tidings.server.adapters.codecs import AUTH_TOPIC, AuthChange, MalformedMessage, decode_auth, encode_auth
from tidings.server.adapters.errors import Forbidden, InvalidToken
from tidings.server.adapters.security import Claims, InvalidTokenError, Tokens, TokenType

log = logging.getLogger(__name__)

Role = Literal["user", "admin"]
AUTH_ROLE_ATTR = "__tidings_role__"
Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])
Derived = TypeVar("Derived")
# Reads of users and sessions in flight at once per process: enough to keep MongoDB busy, few enough that a storm's
# reads queue here (where the sockets of one user share one) rather than in the driver's pool, past MONGODB_TIMEOUT.
READ_SLOTS = 32


def auth_required(handler: Handler) -> Handler:
    """Mark a handler as needing a valid access token; the auth middleware enforces it."""
    setattr(handler, AUTH_ROLE_ATTR, "user")
    return handler


def admin_required(handler: Handler) -> Handler:
    """Mark a handler as needing an admin's access token."""
    setattr(handler, AUTH_ROLE_ATTR, "admin")
    return handler


def require_admin(is_admin: bool, message: str = "Administrators only.") -> None:
    """The one admin check, for the API, the panel and the panel's login."""
    if not is_admin:
        raise Forbidden(message)


def required_role(handler: object) -> Role | None:
    role: Role | None = getattr(handler, AUTH_ROLE_ATTR, None)
    return role


@dataclass(frozen=True, slots=True)
class UserState:
    """What authentication needs to know about a user."""

    is_active: bool
    is_admin: bool
    token_version: int
    email: str
    username: str = ""

    @classmethod
    def of(cls, user: User) -> UserState:
        return cls(user.is_active, user.is_admin, user.token_version, user.email, user.username)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: str
    session_id: str
    is_admin: bool
    email: str
    token_expires_at: float
    token_version: int
    username: str = ""


def _public_json(user: User) -> bytes:
    return json.dumps(user.public()).encode()


class Authenticator:
    """Turns an access token into a Principal, or raises InvalidToken."""

    def __init__(
        self, tokens: Tokens, broker: Broker, max_entries: int = 100_000, read_slots: int = READ_SLOTS
    ) -> None:
        self._tokens = tokens
        self._broker = broker
        self._max_entries = max_entries
        # Per token type, so a token decoded as one type is never found in the cache as another.
        self._claims: dict[TokenType, dict[str, Claims]] = {"access": {}, "panel": {}}
        self._users: dict[str, UserState] = {}
        # The public JSON of GET /users/me, only for the users who asked for it (a socket's user never pays).
        self._profiles: dict[str, bytes] = {}
        self._sessions: dict[str, float] = {}  # live session id -> its expiry
        # Bumped by every invalidation, so a read that raced with one is not cached.
        self._generation = 0
        slots = Slots(read_slots)
        self._user_reads: Coalescer[str, tuple[int, User | None]] = Coalescer(
            self._read_user, slots, epoch=self._read_epoch
        )
        self._session_reads: Coalescer[str, tuple[int, Session | None]] = Coalescer(
            self._read_session, slots, epoch=self._read_epoch
        )
        broker.subscribe(AUTH_TOPIC, self._on_message)
        broker.on_connect(self.clear)
        broker.on_disconnect(self.clear)

    async def authenticate(self, token: str, kind: TokenType = "access", *, remember: bool = True) -> Principal:
        """Check an access token (or the panel's session token) and that its session and user still stand.

        `remember=False` for a token checked once (a WebSocket's): caching it would only hold its bytes.
        """
        cache = self._claims[kind]
        claims = cache.get(token)
        if claims is None:
            try:
                claims = self._tokens.decode(kind, token)
            except InvalidTokenError:
                raise InvalidToken() from None
            if remember:
                self._remember(cache, token, claims)
        if claims.expires_at <= time.time():
            cache.pop(token, None)
            raise InvalidToken("The token has expired.")
        # Cache hits are read inline (the same reads user_state and session_live make first): no coroutine per
        # request for what needs no I/O.
        user = self._users.get(claims.user_id) if self._broker.connected else None
        if user is None:
            user = await self.user_state(claims.user_id)
        if user is None or not user.is_active or user.token_version != claims.version:
            raise InvalidToken()
        session_expires_at = self._sessions.get(claims.session_id) if self._broker.connected else None
        if session_expires_at is not None:
            live = session_expires_at > time.time()
        else:
            live = await self.session_live(claims.session_id, claims.user_id)
        if not live:
            raise InvalidToken()
        return Principal(
            claims.user_id,
            claims.session_id,
            user.is_admin,
            user.email,
            claims.expires_at,
            claims.version,
            user.username,
        )

    async def user_state(self, user_id: str) -> UserState | None:
        return await self._derived_from_user(self._users, user_id, UserState.of)

    async def profile_json(self, user_id: str) -> bytes | None:
        """The user's public JSON (GET /users/me); None if the user is gone."""
        return await self._derived_from_user(self._profiles, user_id, _public_json)

    async def _derived_from_user(
        self, cache: dict[str, Derived], user_id: str, derive: Callable[[User], Derived]
    ) -> Derived | None:
        """What `derive` makes of the user record, from `cache` while nothing about the user changed."""
        cached = cache.get(user_id) if self._broker.connected else None
        if cached is not None:
            return cached
        if parse_object_id(user_id) is None:
            return None
        generation, user = await self._user_reads.get(user_id)
        if user is None:
            return None
        value = derive(user)
        if self._broker.connected and generation == self._generation:
            self._remember(cache, user_id, value)
        return value

    # The shared reads. Each returns the generation from when it started: only a read that no invalidation overtook
    # may fill a cache.

    def _read_epoch(self) -> int | None:
        """A read in flight may be joined while this is what it was when the read started: while the cache could
        have held its result. None (never) while the broker is down, as nothing would say that it went stale."""
        return self._generation if self._broker.connected else None

    async def _read_user(self, user_id: str) -> tuple[int, User | None]:
        generation, oid = self._generation, parse_object_id(user_id)
        return generation, await User.get(oid) if oid is not None else None

    async def _read_session(self, session_id: str) -> tuple[int, Session | None]:
        generation, oid = self._generation, parse_object_id(session_id)
        # By _id alone: FerretDB pushes only {_id: value} down to its storage, and scans the collection for any
        # other filter; the rest is checked by the caller.
        return generation, await Session.get(oid) if oid is not None else None

    async def session_live(self, session_id: str, user_id: str) -> bool:
        now = time.time()
        expires_at = self._sessions.get(session_id) if self._broker.connected else None
        if expires_at is not None:
            return expires_at > now
        oid, uid = parse_object_id(session_id), parse_object_id(user_id)
        if oid is None or uid is None:
            return False
        generation, session = await self._session_reads.get(session_id)
        if session is None or session.user_id != uid or session.revoked_at is not None:
            return False
        expiry = session.expires_at.timestamp()
        if self._broker.connected and generation == self._generation:
            self._remember(self._sessions, session_id, expiry)
        return expiry > now

    def _remember(self, cache: dict[str, Any], key: str, value: Any) -> None:
        if len(cache) >= self._max_entries:
            # Insertion order approximates age; dropping the oldest tenth keeps this O(1) amortised.
            for stale in list(cache)[: self._max_entries // 10 or 1]:
                del cache[stale]
        cache[key] = value

    # Invalidation: called after the database changed, here and (through the broker) in every other process.

    async def user_changed(self, user_id: str) -> None:
        await self._invalidate(AuthChange("user", user_id))

    async def session_revoked(self, session_id: str) -> None:
        await self._invalidate(AuthChange("session", session_id))

    async def _invalidate(self, change: AuthChange) -> None:
        self._forget(change)
        try:
            await self._broker.publish(AUTH_TOPIC, encode_auth(change))
        except Exception as exc:
            # Other processes lost Redis too and so do not trust their caches; nothing is served stale.
            log.warning("could not publish an auth invalidation: %s", exc)

    def _on_message(self, message: bytes) -> None:
        try:
            change = decode_auth(message)
        except MalformedMessage:
            # Not ours, so nothing to forget, but any cache may be stale: drop them all.
            log.warning("malformed auth message; clearing the caches")
            self.clear()
            return
        self._forget(change)

    def _forget(self, change: AuthChange) -> None:
        self._generation += 1
        if change.kind == "user":
            self._users.pop(change.key, None)
            self._profiles.pop(change.key, None)
        elif change.kind == "session":
            self._sessions.pop(change.key, None)

    def clear(self) -> None:
        self._generation += 1
        self._users.clear()
        self._profiles.clear()
        self._sessions.clear()
