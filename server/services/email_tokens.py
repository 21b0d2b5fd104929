"""Mailed single-use tokens, and the flows that send and spend them: password reset, address verification and
email change (docs/email.md).

A token is 32 random bytes (URL-safe text); only its SHA-256 is stored, as the `_id` of an EmailToken. Spending a
token deletes it by `_id`, so of two uses at once exactly one wins. A token checks out only while what it was issued
for still holds: a reset's `stamp` is a digest of the password hash then (any password change, by any route, ends
it) and its `nonce` the user's latest reset (a newer reset ends it); a verification's address must still be the
user's, a change's still be the pending one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from tidings.documents import EmailToken, User
from tidings.documents.clock import utcnow
from tidings.documents.email_token import EmailTokenPurpose
from tidings.documents.user import email_key
from tidings.server.adapters.errors import BadRequest, TooManyRequests
from tidings.server.adapters.jobs import Jobs
from tidings.server.adapters.ratelimit import RateLimiter
from tidings.server.services.accounts import AccountService
from tidings.server.services.audit import Actor
from tidings.server.services.outbox import Outbox
from tidings.server.settings import Settings

log = logging.getLogger(__name__)

ISSUE_RESET = "issue_password_reset"
HOUR = 3600
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 200


class InvalidEmailToken(BadRequest):
    code = "invalid_token"
    message = "This link is invalid, expired or was already used."


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def password_stamp(password_hash: str) -> str:
    """What a reset token remembers of the password it replaces: not the hash, a digest of it."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:32]


def _limit_key(kind: str, value: str) -> str:
    # Hashed, so rate-limit keys never hold an address or email in clear text.
    return f"{kind}:" + hashlib.sha256(value.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class EmailTokens:
    """Issue and spend tokens; no flow logic."""

    async def issue(
        self, purpose: EmailTokenPurpose, user: User, *, email: str, ttl: int, stamp: str = "", nonce: str = ""
    ) -> str:
        assert user.id is not None
        token = secrets.token_urlsafe(TOKEN_BYTES)
        await EmailToken(
            id=token_hash(token),
            purpose=purpose,
            user_id=user.id,
            email=email,
            expires_at=utcnow() + timedelta(seconds=ttl),
            stamp=stamp,
            nonce=nonce,
        ).insert()
        return token

    async def spend(self, token: str, purposes: tuple[EmailTokenPurpose, ...]) -> tuple[EmailToken, User]:
        """Delete the token and return it with its user; InvalidEmailToken (400) when it is malformed, unknown,
        used, expired or for another purpose."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidEmailToken()
        collection = EmailToken.get_pymongo_collection()
        raw = await collection.find_one_and_delete({"_id": token_hash(token)})
        if raw is None:
            raise InvalidEmailToken()
        stored = EmailToken.model_validate(raw)
        if stored.purpose not in purposes or stored.expires_at <= utcnow():
            raise InvalidEmailToken()
        user = await User.get(stored.user_id)
        if user is None or not user.is_active:
            raise InvalidEmailToken()
        return stored, user

    async def delete_expired(self) -> int:
        """Tokens nobody used (a small collection: one document per mail in flight)."""
        result = await EmailToken.find({"expires_at": {"$lt": utcnow()}}).delete()
        return result.deleted_count if result is not None else 0


@dataclass(frozen=True)
class AccountEmail:
    """Password reset, verification, email change."""

    settings: Settings
    tokens: EmailTokens
    accounts: AccountService
    outbox: Outbox
    jobs: Jobs
    limiter: RateLimiter

    def register(self) -> None:
        self.jobs.register(ISSUE_RESET, self.issue_reset)

    def _link(self, path: str, token: str) -> str:
        return f"{self.settings.public_url}{path}?{urlencode({'token': token})}"

    # Password reset

    async def request_reset(self, email: str, address: str) -> None:
        """The same for unknown, inactive and real accounts: count the request, queue a job, answer 202. The job
        looks the account up, so the answer's time does not depend on it either."""
        per_address, retry = await self.limiter.hit(_limit_key("reset:address", address), HOUR)
        if per_address > self.settings.password_reset_per_address:
            raise TooManyRequests(retry, "Too many password resets from this address; try again later.")
        per_email, retry = await self.limiter.hit(_limit_key("reset:email", email_key(email)), HOUR)
        if per_email > self.settings.password_reset_per_email:
            raise TooManyRequests(retry, "Too many password resets for this email; try again later.")
        await self.jobs.enqueue(ISSUE_RESET, email=email.strip())

    async def issue_reset(self, email: str) -> None:
        """The job: a token and its mail, for an active account only. A newer reset ends the older tokens."""
        user = await self.accounts.find_by_email(email)
        if user is None or not user.is_active:
            return
        nonce = secrets.token_urlsafe(12)
        await self.accounts.set_reset_nonce(user, nonce)
        ttl = self.settings.password_reset_ttl
        token = await self.tokens.issue(
            "reset", user, email=user.email, ttl=ttl, stamp=password_stamp(user.password_hash), nonce=nonce
        )
        await self.outbox.send(
            "password_reset",
            to=user.email,
            subject="Reset your tidings password",
            context={"user": _who(user), "link": self._link("/reset-password", token), "minutes": ttl // 60},
        )

    async def send_reset_by_admin(self, actor: Actor, user: User) -> None:
        """From the panel: the same job as a user's request (no rate limit), audited."""
        await self.jobs.enqueue(ISSUE_RESET, email=user.email)
        await self.accounts.audit.record(actor, "user.password_reset_sent", target_id=user.id, target_label=user.email)

    async def confirm_reset(self, token: str, password: str) -> None:
        stored, user = await self.tokens.spend(token, ("reset",))
        checks_out = (
            hmac.compare_digest(stored.stamp, password_stamp(user.password_hash))
            and hmac.compare_digest(stored.nonce, user.reset_nonce)
            and email_key(stored.email) == user.email_key
        )
        if not checks_out:
            raise InvalidEmailToken()
        user = await self.accounts.reset_password(user, password)
        await self.outbox.send(
            "password_changed",
            to=user.email,
            subject="Your tidings password was changed",
            context={"user": _who(user), "link": f"{self.settings.public_url}/reset-password"},
        )

    # Verification and email change

    async def send_verification(self, user: User) -> None:
        token = await self.tokens.issue("verify", user, email=user.email, ttl=self.settings.email_verification_ttl)
        await self.outbox.send(
            "verify_email",
            to=user.email,
            subject="Confirm your email address for tidings",
            context={"user": _who(user), "link": self._link("/verify-email", token), "change": False},
        )

    async def update_self(self, user: User, changes: dict[str, Any], current_password: str | None) -> User:
        """PATCH /users/me: as AccountService.update_self; a new email waits for its confirmation, with a link
        to the new address and a notice to the old one."""
        user = await self.accounts.update_self(user, changes, current_password)
        if "email" in changes and user.pending_email is not None:
            await self._send_change(user)
        return user

    async def _send_change(self, user: User) -> None:
        assert user.pending_email is not None
        token = await self.tokens.issue(
            "change", user, email=user.pending_email, ttl=self.settings.email_verification_ttl
        )
        await self.outbox.send(
            "verify_email",
            to=user.pending_email,
            subject="Confirm your new email address for tidings",
            context={"user": _who(user), "link": self._link("/verify-email", token), "change": True},
        )
        await self.outbox.send(
            "email_change_requested",
            to=user.email,
            subject="A change of your tidings email address was requested",
            context={"user": _who(user), "new_email": user.pending_email},
        )

    async def resend(self, user: User) -> None:
        """POST /auth/verify-email/resend: the pending change's link again, or the verification's."""
        per_user, retry = await self.limiter.hit(_limit_key("verify:resend", str(user.id)), HOUR)
        if per_user > self.settings.verify_email_resend_per_hour:
            raise TooManyRequests(retry, "Too many verification mails; try again later.")
        if user.pending_email is not None:
            await self._send_change(user)
        elif not user.email_verified:
            await self.send_verification(user)

    async def verify(self, token: str) -> User:
        """POST /auth/verify-email: the address the token was sent to is proven."""
        stored, user = await self.tokens.spend(token, ("verify", "change"))
        if stored.purpose == "verify":
            if email_key(stored.email) != user.email_key:
                raise InvalidEmailToken()
            return await self.accounts.confirm_email(user, user.email)
        if user.pending_email is None or email_key(user.pending_email) != email_key(stored.email):
            raise InvalidEmailToken()
        old = user.email
        user = await self.accounts.confirm_email(user, stored.email)
        await self.outbox.send(
            "email_changed",
            to=old,
            subject="Your tidings email address was changed",
            context={"user": _who(user), "new_email": user.email},
        )
        return user


def _who(user: User) -> str:
    return user.full_name or user.username
