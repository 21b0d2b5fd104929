"""Login sessions: log in, rotate refresh tokens, detect their re-use, log out, revoke."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from beanie import PydanticObjectId
from pymongo.results import UpdateResult

from tidings.documents import Session, User
from tidings.documents.ids import parse_object_id
from tidings.documents.user import email_key
from tidings.server.adapters.errors import Forbidden, InvalidCredentials, InvalidToken, TooManyRequests
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.metrics import Metrics
from tidings.server.adapters.ratelimit import RateLimiter
from tidings.server.adapters.security import InvalidTokenError, Passwords, Tokens
from tidings.server.services.authenticator import Authenticator, require_admin
from tidings.server.settings import Settings


class EmailNotVerified(Forbidden):
    code = "email_not_verified"
    message = "Confirm your email address first: follow the link in the mail sent to it."


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int

    def body(self) -> dict[str, str | int]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
        }

    def access_body(self) -> dict[str, str | int]:
        """The pair without its refresh token: what the live page reads (its refresh token travels in a cookie)."""
        return {"access_token": self.access_token, "token_type": "bearer", "expires_in": self.expires_in}


@dataclass(frozen=True)
class SessionService:
    settings: Settings
    passwords: Passwords
    tokens: Tokens
    limiter: RateLimiter
    authenticator: Authenticator
    locks: Locks
    metrics: Metrics

    async def login(self, email: str, password: str, address: str, user_agent: str | None) -> TokenPair:
        """Check the password (rate-limited per account and per address) and open a session."""
        user = await self._check_password(email, password, address)
        if self.settings.require_verified_email and not user.email_verified:
            raise EmailNotVerified()
        session_id, refresh_jti = await self._open(user, user_agent, self.settings.refresh_token_ttl)
        return self._pair(user, session_id, refresh_jti)

    async def login_panel(self, email: str, password: str, address: str, user_agent: str | None) -> str:
        """Like login, for the admin panel: admins only; returns the session cookie's token."""
        user = await self._check_password(email, password, address)
        require_admin(user.is_admin, "The admin panel is for administrators only.")
        session_id, _ = await self._open(user, user_agent, self.settings.panel_session_ttl)
        return self.tokens.issue("panel", user_id=str(user.id), session_id=session_id, version=user.token_version)

    async def _check_password(self, email: str, password: str, address: str) -> User:
        try:
            user = await self._verify(email, password, address)
        except TooManyRequests:
            self.metrics.login("rate_limited")
            raise
        except InvalidCredentials:
            self.metrics.login("bad_credentials")
            raise
        self.metrics.login("ok")
        return user

    async def _verify(self, email: str, password: str, address: str) -> User:
        """The one login rule (docs/security.md, "Login limits"): failures are limited per account and per address,
        every attempt only by a much higher per-address ceiling, so that many people behind one address (an office
        behind NAT, every client behind a proxy) can all log in while guessing stays stopped."""
        key = email_key(email)
        # Hashed, so rate-limit keys never hold an address or email in clear text.
        account_key = "login:account:" + hashlib.sha256(key.encode()).hexdigest()[:32]
        address_digest = hashlib.sha256(address.encode()).hexdigest()[:32]
        address_key, failures_key = "login:address:" + address_digest, "login:address-failures:" + address_digest
        settings, window = self.settings, self.settings.login_window_seconds
        attempts, retry_after = await self.limiter.hit(address_key, window)
        if attempts > settings.login_attempts_per_address:
            raise TooManyRequests(retry_after, "Too many login attempts from this address; try again later.")
        failures, retry_after = await self.limiter.peek(failures_key)
        if failures >= settings.login_failures_per_address:
            raise TooManyRequests(retry_after, "Too many failed logins from this address; try again later.")
        failures, retry_after = await self.limiter.peek(account_key)
        if failures >= settings.login_attempts_per_account:
            raise TooManyRequests(retry_after, "Too many failed logins for this account; try again later.")

        user = await User.find_one(User.email_key == key)
        matches, needs_rehash = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not matches:
            await self.limiter.hit(account_key, window)
            await self.limiter.hit(failures_key, window)
            raise InvalidCredentials()
        if not user.is_active:
            raise Forbidden("This account is deactivated.")
        await self.limiter.reset(account_key)
        if needs_rehash:
            new_hash = await self.passwords.hash(password)
            async with self.locks.hold(f"user:{user.id}"):
                await User.find_one({"_id": user.id}).update({"$set": {"password_hash": new_hash}})
        return user

    async def _open(self, user: User, user_agent: str | None, ttl: int) -> tuple[str, str]:
        """Store a new session; return its id and its first refresh jti."""
        assert user.id is not None
        refresh_jti = uuid.uuid4().hex
        session = Session(
            user_id=user.id,
            refresh_jti=refresh_jti,
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
            user_agent=(user_agent or "")[:200] or None,
        )
        await session.insert()
        return str(session.id), refresh_jti

    def _pair(self, user: User, session_id: str, refresh_jti: str) -> TokenPair:
        user_id, version = str(user.id), user.token_version
        return TokenPair(
            access_token=self.tokens.issue("access", user_id=user_id, session_id=session_id, version=version),
            refresh_token=self.tokens.issue(
                "refresh", user_id=user_id, session_id=session_id, version=version, jti=refresh_jti
            ),
            expires_in=self.tokens.ttl["access"],
        )

    async def refresh(self, refresh_token: str, *, rotate: bool = True) -> TokenPair:
        """Exchange a refresh token for a new pair. A token that was already rotated revokes its whole family.

        Without `rotate` (the live page's HttpOnly cookie, docs/security.md) only the access token is new: the
        refresh token stays the session's current one, checked the same way, so that a copy of it rotated through
        the JSON API turns the page's next use into a reuse, which ends the session.
        """
        try:
            claims = self.tokens.decode("refresh", refresh_token)
        except InvalidTokenError:
            raise InvalidToken("The refresh token is invalid or expired.") from None
        session_id, user_id = parse_object_id(claims.session_id), parse_object_id(claims.user_id)
        if session_id is None or user_id is None:
            raise InvalidToken("The refresh token is invalid or expired.")
        user = await User.get(user_id)
        if user is None or not user.is_active or user.token_version != claims.version:
            raise InvalidToken("The refresh token is no longer valid.")
        new_jti = uuid.uuid4().hex if rotate else claims.jti
        now = datetime.now(UTC)
        # Compare-and-set on the current jti, under the session's lock (FerretDB's updates are not atomic on
        # their own): of two uses of one token exactly one rotates, and the other revokes the family. A session
        # ends at its expiry, although the refresh tokens rotated later expire after it. Matched, not modified:
        # without rotation only last_used_at changes, and two uses within its millisecond change nothing.
        async with self.locks.hold(f"session:{session_id}"):
            result = await Session.find_one(
                {
                    "_id": session_id,
                    "user_id": user_id,
                    "refresh_jti": claims.jti,
                    "revoked_at": None,
                    "expires_at": {"$gt": now},
                }
            ).update({"$set": {"refresh_jti": new_jti, "last_used_at": now}})
        if isinstance(result, UpdateResult) and result.matched_count == 1:
            pair = self._pair(user, claims.session_id, new_jti)
            return pair if rotate else replace(pair, refresh_token=refresh_token)
        await self.revoke(session_id)
        raise InvalidToken("The refresh token was already used; this session is revoked.")

    async def logout(self, refresh_token: str, caller_user_id: str, caller_session_id: str) -> None:
        """End the caller's session and the session of the given refresh token, if it is the caller's."""
        await self.end(refresh_token, owner=caller_user_id)
        await self.revoke(parse_object_id(caller_session_id))

    async def end(self, refresh_token: str, *, owner: str | None = None) -> None:
        """End the session a refresh token belongs to (with `owner`, only if it is that user's). A token this
        server did not sign, or one past its expiry, ends nothing: its session cannot be refreshed anyway. A token
        that was rotated away still names its session, which ends, as a reuse in `refresh` would end it."""
        try:
            claims = self.tokens.decode("refresh", refresh_token)
        except InvalidTokenError:
            return
        if owner is None or claims.user_id == owner:
            await self.revoke(parse_object_id(claims.session_id))

    async def revoke(self, session_id: PydanticObjectId | None) -> None:
        if session_id is None:
            return
        async with self.locks.hold(f"session:{session_id}"):
            await Session.find_one({"_id": session_id, "revoked_at": None}).update(
                {"$set": {"revoked_at": datetime.now(UTC)}}
            )
        await self.authenticator.session_revoked(str(session_id))

    async def revoke_all(self, user_id: PydanticObjectId) -> None:
        """End every session and token of a user: logout everywhere, password change, deactivation."""
        # The version bump kills every outstanding token at once; revoking the sessions stops refreshes too.
        async with self.locks.hold(f"user:{user_id}"):
            await User.find_one({"_id": user_id}).update({"$inc": {"token_version": 1}})
        await Session.find({"user_id": user_id, "revoked_at": None}).update({"$set": {"revoked_at": datetime.now(UTC)}})
        await self.authenticator.user_changed(str(user_id))

    async def active_count(self, user: User) -> int:
        return await Session.find(
            {"user_id": user.id, "revoked_at": None, "expires_at": {"$gt": datetime.now(UTC)}}
        ).count()

    async def delete_expired(self) -> int:
        """Remove sessions past their expiry (FerretDB has no TTL indexes, so this runs periodically)."""
        result = await Session.find({"expires_at": {"$lt": datetime.now(UTC)}}).delete()
        return result.deleted_count if result is not None else 0
