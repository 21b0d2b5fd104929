"""API keys: made by admins for an application's backends; checked on every request that carries one.

A key is "tdg_" and 32 random bytes in URL-safe text; only its SHA-256 is stored (documents/api_key.py). A request
with `Authorization: Bearer tdg_...` is authenticated here, not by the Authenticator: its principal is a key, which
may call only the endpoints its scopes allow (`@key_scope` on the handler); any other endpoint answers 403
insufficient_scope.

Checks are cached per process for at most CACHE_SECONDS, and only while the broker's subscription is live: a
revocation drops the key from every process's cache through the broker's `auth` topic (AuthChange "key"), and
while Redis is down every request reads MongoDB. A read that a revocation overtook is not cached.

Each key is rate-limited per minute in Redis (shared by every process); while Redis is down, per process, so that
keys keep working through an outage. `last_used_at` is written at most once a minute per key (a per-process gate,
then a shared one in the rate limiter), to a document of its own (ApiKeyUsage).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from beanie import PydanticObjectId, SortDirection
from redis.exceptions import RedisError

from tidings.documents import ApiKey, ApiKeyUsage
from tidings.documents.api_key import KEY_PREFIX, SHOWN_PREFIX_LENGTH
from tidings.documents.clock import utcnow
from tidings.documents.ids import new_id, parse_object_id
from tidings.server.adapters.broker import Broker
from tidings.server.adapters.codecs import AUTH_TOPIC, AuthChange, MalformedMessage, decode_auth, encode_auth
from tidings.server.adapters.db import upsert
from tidings.server.adapters.errors import InsufficientScope, InvalidToken, NotFound, TooManyRequests
from tidings.server.adapters.ratelimit import MemoryRateLimiter, RateLimiter
from tidings.server.services.audit import Actor, AuditLog

log = logging.getLogger(__name__)

# Every scope a key may hold, and what it allows.
SCOPES: dict[str, str] = {
    "notifications:send": "POST /api/v1/notifications and /api/v1/notifications/batch",
    "users:read": "GET /api/v1/users and GET /api/v1/users/{id}",
}
SECRET_BYTES = 32
MIN_EXPIRES_IN = 60
DEFAULT_RATE_LIMIT = 600
# How long a process trusts a key it checked (while the broker is live; a revocation drops it at once).
CACHE_SECONDS = 5.0
CACHE_ENTRIES = 10_000
USAGE_WINDOW = 60  # seconds between writes of last_used_at
RATE_WINDOW = 60
KEY_SCOPE_ATTR = "__tidings_key_scope__"
Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def key_scope(scope: str) -> Callable[[Handler], Handler]:
    """Let API keys holding `scope` call this handler (which is also @auth_required or @admin_required)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown API key scope {scope!r}")

    def mark(handler: Handler) -> Handler:
        setattr(handler, KEY_SCOPE_ATTR, scope)
        return handler

    return mark


def required_scope(handler: object) -> str | None:
    scope: str | None = getattr(handler, KEY_SCOPE_ATTR, None)
    return scope


def is_api_key(token: str) -> bool:
    """Whether a bearer token is an API key (rather than a JWT, which never starts so)."""
    return token.startswith(KEY_PREFIX)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def shown_prefix(key: str) -> str:
    return key[len(KEY_PREFIX) : len(KEY_PREFIX) + SHOWN_PREFIX_LENGTH]


@dataclass(frozen=True, slots=True)
class KeyPrincipal:
    """An authenticated API key: the caller of a request made with it."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int
    expires_at: float | None  # epoch seconds

    @property
    def actor(self) -> Actor:
        return Actor.key(PydanticObjectId(self.key_id), self.name)

    def require(self, scope: str | None) -> None:
        """403 insufficient_scope unless the key holds `scope` (None: no key may call the endpoint)."""
        if scope is None:
            raise InsufficientScope("API keys cannot call this endpoint.")
        if scope not in self.scopes:
            raise InsufficientScope(f"This API key lacks the scope {scope}.")

    @classmethod
    def of(cls, key: ApiKey) -> KeyPrincipal:
        return cls(
            str(key.id),
            key.name,
            frozenset(key.scopes),
            key.rate_limit_per_minute,
            key.expires_at.timestamp() if key.expires_at else None,
        )


@dataclass(frozen=True, slots=True)
class _Cached:
    principal: KeyPrincipal
    key_hash: str
    until: float  # monotonic


class ApiKeys:
    def __init__(self, broker: Broker, limiter: RateLimiter, audit: AuditLog) -> None:
        self._broker = broker
        self._limiter = limiter
        # Counts while Redis is down, per process: keys keep working, each process within the key's limit.
        self._fallback = MemoryRateLimiter()
        self._audit = audit
        self._cache: dict[str, _Cached] = {}  # key hash -> what was read
        self._generation = 0
        self._usage_written: dict[str, float] = {}  # key id -> monotonic time of this process's last write
        broker.subscribe(AUTH_TOPIC, self._on_message)
        broker.on_connect(self.clear)
        broker.on_disconnect(self.clear)

    # Managing keys

    async def create(
        self,
        actor: Actor | None,
        *,
        name: str,
        scopes: Sequence[str],
        expires_in: int | None = None,
        rate_limit_per_minute: int = DEFAULT_RATE_LIMIT,
    ) -> tuple[ApiKey, str]:
        """Make a key; returns it and its secret, which is never available again."""
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {sorted(SCOPES)}")
        if expires_in is not None and expires_in < MIN_EXPIRES_IN:
            raise ValueError(f"expires_in must be at least {MIN_EXPIRES_IN} seconds")
        secret = new_key()
        now = utcnow()
        key = ApiKey(
            id=new_id(),
            name=name,
            scopes=list(dict.fromkeys(scopes)),
            key_hash=hash_key(secret),
            prefix=shown_prefix(secret),
            rate_limit_per_minute=rate_limit_per_minute,
            created_by_id=actor.id if actor else None,
            created_by_email=actor.email if actor else None,
            created_at=now,
            expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
        )
        await key.insert()
        await self._audit.record(
            actor,
            "api_key.created",
            target_id=key.id,
            target_label=name,
            details={"scopes": key.scopes, "prefix": key.prefix},
        )
        return key, secret

    async def listing(self) -> list[dict[str, Any]]:
        """Every key, newest first, with when it was last used; never a secret. Keys are few (made by hand): one
        read of each collection."""
        keys = await ApiKey.find_all().sort([("_id", SortDirection.DESCENDING)]).to_list()
        usage = {u.id: u.last_used_at for u in await ApiKeyUsage.find_all().to_list()}
        return [key.public(usage.get(key.id)) for key in keys]  # type: ignore[arg-type]

    async def get(self, key_id: str) -> ApiKey:
        oid = parse_object_id(key_id)
        key = await ApiKey.get(oid) if oid is not None else None
        if key is None:
            raise NotFound("No such API key.")
        return key

    async def revoke(self, actor: Actor | None, key_id: str) -> ApiKey:
        """Revoke a key: its next request, on any process, answers 401. Revoking a revoked key changes nothing."""
        key = await self.get(key_id)
        if key.revoked_at is not None:
            return key
        # Revocation is the only update of an ApiKey (its use is recorded elsewhere), so none can race with it.
        await key.set({ApiKey.revoked_at: utcnow()})
        await self._invalidate(str(key.id))
        await self._audit.record(
            actor, "api_key.revoked", target_id=key.id, target_label=key.name, details={"prefix": key.prefix}
        )
        return key

    # Authentication

    async def authenticate(self, token: str) -> KeyPrincipal:
        """The key `token` is, if it stands (known, not revoked, not expired) and is within its rate limit; else
        InvalidToken (401) or TooManyRequests (429)."""
        digest = hash_key(token)
        principal = self._cached(digest)
        if principal is None:
            principal = await self._read(digest)
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise InvalidToken("The API key has expired.")
        await self._count(principal)
        await self._note_use(principal)
        return principal

    def _cached(self, digest: str) -> KeyPrincipal | None:
        if not self._broker.connected:
            return None
        entry = self._cache.get(digest)
        if entry is None:
            return None
        if entry.until <= time.monotonic() or not hmac.compare_digest(entry.key_hash, digest):
            self._cache.pop(digest, None)
            return None
        return entry.principal

    async def _read(self, digest: str) -> KeyPrincipal:
        generation = self._generation
        key = await ApiKey.find_one({"key_hash": digest})
        # The index found it by the hash; the comparison that accepts it takes the same time whatever it holds.
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            raise InvalidToken("The API key is not valid.")
        if key.revoked_at is not None:
            raise InvalidToken("The API key was revoked.")
        principal = KeyPrincipal.of(key)
        if self._broker.connected and generation == self._generation:
            if len(self._cache) >= CACHE_ENTRIES:
                for stale in list(self._cache)[: CACHE_ENTRIES // 10]:
                    del self._cache[stale]
            self._cache[digest] = _Cached(principal, digest, time.monotonic() + CACHE_SECONDS)
        return principal

    async def _count(self, principal: KeyPrincipal) -> None:
        name = f"api_key:{principal.key_id}"
        try:
            count, retry_after = await self._limiter.hit(name, RATE_WINDOW)
        except RedisError as exc:
            log.warning("API key rate limit counted in this process while Redis is unavailable: %s", exc)
            count, retry_after = await self._fallback.hit(name, RATE_WINDOW)
        if count > principal.rate_limit_per_minute:
            raise TooManyRequests(
                retry_after, f"This API key's limit of {principal.rate_limit_per_minute} requests a minute is reached."
            )

    async def _note_use(self, principal: KeyPrincipal) -> None:
        """Write last_used_at at most once a minute: once per process, then once across processes (the first to
        count in the shared window writes)."""
        now = time.monotonic()
        written = self._usage_written.get(principal.key_id)
        if written is not None and now - written < USAGE_WINDOW:
            return
        self._usage_written[principal.key_id] = now
        try:
            first, _ = await self._limiter.hit(f"api_key_used:{principal.key_id}", USAGE_WINDOW)
        except RedisError:
            first = 1  # without Redis each process writes once a minute
        if first != 1:
            return
        try:
            await upsert(
                ApiKeyUsage.get_pymongo_collection(),
                PydanticObjectId(principal.key_id),
                {"$set": {"last_used_at": utcnow()}},
            )
        except Exception as exc:  # the request goes on: usage is a hint, not a rule
            log.warning("could not record an API key's use: %s", exc)

    # Invalidation, as the Authenticator's (services/authenticator.py)

    async def _invalidate(self, key_id: str) -> None:
        change = AuthChange("key", key_id)
        self._forget(change)
        try:
            await self._broker.publish(AUTH_TOPIC, encode_auth(change))
        except Exception as exc:
            # Other processes lost Redis too, and so do not trust their caches.
            log.warning("could not publish an API key revocation: %s", exc)

    def _on_message(self, message: bytes) -> None:
        try:
            change = decode_auth(message)
        except MalformedMessage:
            self.clear()
            return
        if change.kind == "key":
            self._forget(change)

    def _forget(self, change: AuthChange) -> None:
        self._generation += 1
        for digest, entry in list(self._cache.items()):
            if entry.principal.key_id == change.key:
                del self._cache[digest]

    def clear(self) -> None:
        self._generation += 1
        self._cache.clear()
