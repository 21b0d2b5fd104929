"""User accounts: register, change, list, delete; the rules live here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.errors import OperationFailure

from tidings.documents import Session, User
from tidings.documents.clock import utcnow
from tidings.documents.ids import new_id, parse_object_id
from tidings.documents.user import SEARCH_PREFIX_MAX, email_key, search_keys_for, username_key
from tidings.server.adapters.errors import Conflict, Forbidden, NotFound, ValidationFailed
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.pagination import newest_first
from tidings.server.adapters.security import Passwords
from tidings.server.services.audit import Actor, AuditLog
from tidings.server.services.authenticator import Authenticator
from tidings.server.services.notifications import NotificationService
from tidings.server.services.sessions import SessionService

# Fields a user may change about themselves; is_admin and is_active are never among them.
SELF_FIELDS = frozenset({"email", "username", "full_name", "bio", "password", "email_digest"})
ADMIN_FIELDS = (SELF_FIELDS - {"email_digest"}) | {"is_active", "is_admin"}


def change_sentence(field: str, value: Any) -> str:
    """What an administrator's change of `field` means to the user, as a sentence (without its full stop)."""
    if field == "is_admin":
        return "You are now an administrator" if value else "You are no longer an administrator"
    if field == "is_active":
        return "Your account was reactivated" if value else "Your account was deactivated"
    if field == "email":
        return f"Your email address is now {value}"
    if field == "username":
        return f"Your username is now {value}"
    if field == "password":
        return "Your password was changed; sign in with the new one"
    if field == "full_name":
        return "Your name was changed"
    if field == "bio":
        return "Your bio was changed"
    return f"Your {field.replace('_', ' ')} was changed"


@dataclass(frozen=True)
class Page:
    items: list[User]
    next_before: str | None


def search_prefixes(query: str) -> list[str]:
    """The values of `search_keys` that the users matching `query` hold: the folded query, as an email and as a
    username, each cut to SEARCH_PREFIX_MAX characters; usually one. Empty when a folded query is empty: every
    user's keys start with the empty string, so the query narrows nothing."""
    folded = (email_key(query), username_key(query))
    if not all(folded):
        return []
    return list(dict.fromkeys(key[:SEARCH_PREFIX_MAX] for key in folded))


def merge_newest_first(pages: Sequence[tuple[list[User], str | None]], limit: int) -> tuple[list[User], bool]:
    """One page from several first pages of `newest_first` (each of at most `limit` users, newest first): the
    newest `limit` users among them, each once, and whether more follow."""
    by_id = {user.id: user for users, _ in pages for user in users}
    ordered = sorted(by_id.values(), key=lambda user: str(user.id), reverse=True)  # hex sorts as the ids do
    more = len(ordered) > limit or any(next_before is not None for _, next_before in pages)
    return ordered[:limit], more


@dataclass(frozen=True)
class AccountService:
    passwords: Passwords
    sessions: SessionService
    authenticator: Authenticator
    notifications: NotificationService
    audit: AuditLog
    locks: Locks

    async def register(
        self, *, email: str, username: str, password: str, full_name: str | None = None, is_admin: bool = False
    ) -> User:
        user = User(
            email=email.strip(),
            username=username.strip(),
            email_key=email_key(email),
            username_key=username_key(username),
            search_keys=search_keys_for(email_key(email), username_key(username)),
            password_hash=await self.passwords.hash(password),
            full_name=full_name,
            is_admin=is_admin,
            # From the notifications' clock, after the hash: a broadcast reaches users whose id is older than its.
            id=new_id(),
        )
        await self._unique_write(user, user.insert)
        await self.audit.record(None, "user.registered", target_id=user.id, target_label=user.email)
        return user

    async def get(self, user_id: str) -> User:
        oid = parse_object_id(user_id)
        user = await User.get(oid) if oid is not None else None
        if user is None:
            raise NotFound("No such user.")
        return user

    async def find_by_email(self, email: str) -> User | None:
        return await User.find_one(User.email_key == email_key(email))

    async def update_self(self, user: User, changes: dict[str, Any], current_password: str | None) -> User:
        """A user changes their own profile; email and password changes need the current password."""
        if not changes.keys() <= SELF_FIELDS:
            raise ValidationFailed(details={field: ["Unknown field."] for field in changes.keys() - SELF_FIELDS})
        if {"email", "password"} & changes.keys():
            if current_password is None:
                raise ValidationFailed(
                    "Changing email or password requires current_password.",
                    details={"current_password": ["Missing data for required field."]},
                )
            matches, _ = await self.passwords.verify(user.password_hash, current_password)
            if not matches:
                raise Forbidden("current_password is incorrect.")
        if "email" in changes and email_key(changes["email"]) != user.email_key:
            # A new address takes effect when it confirms (server/services/email_tokens.py); the old one keeps
            # working meanwhile. Taken now: 409 now; taken before it confirms: 409 then.
            changes = {**changes}
            pending = changes.pop("email").strip()
            if await User.find_one(User.email_key == email_key(pending)):
                raise Conflict("This email is already taken.", details={"field": "email"})
            changes["pending_email"] = pending
        return await self._apply(user, changes)

    async def confirm_email(self, user: User, email: str) -> User:
        """`email` proved itself: it becomes (or stays) the login, verified; a pending change ends. 409 when
        another account took the address meanwhile (the unique index on email_key decides, under concurrency)."""
        changes: dict[str, Any] = {"email_verified": True, "pending_email": None}
        if email_key(email) != user.email_key:
            changes["email"] = email
        return await self._apply(user, changes)

    async def reset_password(self, user: User, password: str) -> User:
        """A password reset from a mailed link: every session of the user ends (tokens and sockets, on every
        process), and the user is told in the app."""
        user = await self._apply(user, {"password": password})
        assert user.id is not None
        await self.audit.record(
            Actor(user.id, user.email), "user.password_reset", target_id=user.id, target_label=user.email
        )
        await self.notifications.notice(
            user.id,
            title="Your password was reset",
            body="Your password was reset from a link sent to your email address; every session was signed out.",
            data={"event": "account_changed", "fields": ["password"]},
            actor=None,
        )
        return user

    async def set_reset_nonce(self, user: User, nonce: str) -> None:
        """A newer password reset: the tokens of the earlier ones no longer check out."""
        async with self.locks.hold(f"user:{user.id}"):
            await User.find_one({"_id": user.id}).update({"$set": {"reset_nonce": nonce}})
        user.reset_nonce = nonce

    async def update_by_admin(self, actor: Actor | None, user: User, changes: dict[str, Any]) -> User:
        if not changes.keys() <= ADMIN_FIELDS:
            raise ValidationFailed(details={field: ["Unknown field."] for field in changes.keys() - ADMIN_FIELDS})
        if changes.get("is_active") is False or changes.get("is_admin") is False:
            async with self._admin_count_held(user):
                user = await self._apply(user, changes)
        else:
            user = await self._apply(user, changes)
        shown = {k: v for k, v in changes.items() if k != "password"}
        await self.audit.record(
            actor, "user.updated", target_id=user.id, target_label=user.email, details={"changes": shown}
        )
        assert user.id is not None
        sentences = [change_sentence(field, value) for field, value in sorted(changes.items())]
        await self.notifications.notice(
            user.id,
            title=sentences[0] if len(sentences) == 1 else "An administrator changed your account",
            body=" ".join(f"{sentence}." for sentence in sentences),
            data={"event": "account_changed", "fields": sorted(changes)},
            actor=actor,
        )
        return user

    async def set_password(self, actor: Actor | None, user: User, password: str) -> User:
        """An admin sets a user's password: hashed in the thread pool, every session of the user ends (their
        tokens and sockets with them), and the user is told."""
        user = await self._apply(user, {"password": password})
        assert user.id is not None
        await self.audit.record(
            actor,
            "user.password_set",
            target_id=user.id,
            target_label=user.email,
            details={"sessions": "all ended"},
        )
        await self.notifications.notice(
            user.id,
            title=change_sentence("password", None),
            body=f"{change_sentence('password', None)}.",
            data={"event": "account_changed", "fields": ["password"]},
            actor=actor,
        )
        return user

    async def delete(self, actor: Actor | None, user: User) -> None:
        """An admin deletes an account."""
        await self._erase(user)
        await self.audit.record(actor, "user.deleted", target_id=user.id, target_label=user.email)

    async def delete_self(self, user: User, current_password: str) -> None:
        """A user deletes their own account, proving it with their password; the last active admin may not."""
        assert user.id is not None
        matches, _ = await self.passwords.verify(user.password_hash, current_password)
        if not matches:
            raise Forbidden("current_password is incorrect.")
        await self._erase(user)
        await self.audit.record(
            Actor(user.id, user.email), "user.deleted_self", target_id=user.id, target_label=user.email
        )

    async def _erase(self, user: User) -> None:
        """The account, its sessions and its notifications; its tokens and sockets end on every process."""
        assert user.id is not None
        async with self._admin_count_held(user):
            await Session.find({"user_id": user.id}).delete()
            await user.delete()
        await self.authenticator.user_changed(str(user.id))
        await self.notifications.forget_user(user.id)

    async def revoke_sessions(self, actor: Actor | None, user: User) -> None:
        """An admin ends every session of a user."""
        assert user.id is not None
        await self.sessions.revoke_all(user.id)
        await self.audit.record(actor, "user.sessions_revoked", target_id=user.id, target_label=user.email)

    async def search(
        self,
        *,
        query: str | None = None,
        before: str | None = None,
        limit: int = 50,
        is_active: bool | None = None,
        is_admin: bool | None = None,
    ) -> Page:
        """Newest first, keyset-paginated on _id; `query` matches the start of the email or the username.

        Each field is matched in the form its uniqueness is checked on (email_key, username_key). The users are
        found by equality on `search_keys` (index: search_keys, _id), which FerretDB pushes down to its backend.
        """
        conditions: dict[str, Any] = {}
        if is_active is not None:
            conditions["is_active"] = is_active
        if is_admin is not None:
            conditions["is_admin"] = is_admin
        prefixes = search_prefixes(query) if query else []
        if not prefixes:
            users, next_before = await newest_first(User, conditions, before=before, limit=limit)
            return Page(users, next_before)
        assert query is not None
        folded = (email_key(query), username_key(query))
        if len(prefixes) > 1 or any(len(key) > SEARCH_PREFIX_MAX for key in folded):
            # A prefix found in search_keys may come from the other field, or be only the start of the query.
            conditions["$or"] = [
                {"email_key": {"$regex": "^" + re.escape(folded[0])}},
                {"username_key": {"$regex": "^" + re.escape(folded[1])}},
            ]
        # The equality stays at the top level of the filter: under $and or $or, FerretDB would not push it down.
        pages = await asyncio.gather(
            *(
                newest_first(User, {"search_keys": prefix, **conditions}, before=before, limit=limit)
                for prefix in prefixes
            )
        )
        users, more = merge_newest_first(pages, limit)
        return Page(users, str(users[-1].id) if more else None)

    async def _apply(self, user: User, changes: dict[str, Any]) -> User:
        assert user.id is not None
        update: dict[str, Any] = {k: v for k, v in changes.items() if k not in {"password", "email", "username"}}
        if "email" in changes:
            update["email"] = changes["email"].strip()
            update["email_key"] = email_key(changes["email"])
            # An address set by an admin is not proven; one confirmed by its link is (confirm_email).
            same = update["email_key"] == user.email_key
            update["email_verified"] = bool(changes.get("email_verified", user.email_verified and same))
            update["pending_email"] = None
        if "username" in changes:
            update["username"] = changes["username"].strip()
            update["username_key"] = username_key(changes["username"])
        if {"email", "username"} & changes.keys():
            update["search_keys"] = search_keys_for(
                update.get("email_key", user.email_key), update.get("username_key", user.username_key)
            )
        if "password" in changes:
            update["password_hash"] = await self.passwords.hash(changes["password"])
        revokes = "password" in changes or (changes.get("is_active") is False and user.is_active)
        update["updated_at"] = utcnow()
        for field, value in update.items():
            setattr(user, field, value)
        async with self.locks.hold(f"user:{user.id}"):
            await self._unique_write(user, lambda: User.find_one({"_id": user.id}).update({"$set": update}))
        if revokes:
            await self.sessions.revoke_all(user.id)
            user.token_version += 1
        else:
            await self.authenticator.user_changed(str(user.id))
        return user

    @contextlib.asynccontextmanager
    async def _admin_count_held(self, leaving: User) -> AsyncIterator[None]:
        """Around a change that may take an admin away: refuse it if no other active admin would be left.

        One lock for all such changes, so two admins demoting each other at once cannot both succeed.
        """
        async with self.locks.hold("active-admins"):
            if leaving.is_admin and leaving.is_active:
                await self._keep_an_admin(leaving)
            yield

    async def _keep_an_admin(self, leaving: User) -> None:
        """Refuse a change that would leave no active admin."""
        others = await User.find({"is_admin": True, "is_active": True, "_id": {"$ne": leaving.id}}).count()
        if others == 0:
            raise Conflict("This would leave no active administrator.")

    async def _unique_write(self, user: User, write: Callable[[], Awaitable[Any]]) -> None:
        """Run a write guarded by the unique indexes and turn a violation into 409 naming the field.

        MongoDB reports E11000 (DuplicateKeyError); FerretDB reports an update's violation as a generic
        error, and neither is relied on to name the index: the conflicting field is looked up instead.
        """
        try:
            await write()
        except OperationFailure:
            field = await self._taken_field(user)
            if field is None:
                raise
            raise Conflict(f"This {field} is already taken.", details={"field": field}) from None

    @staticmethod
    async def _taken_field(user: User) -> str | None:
        others: dict[str, Any] = {"_id": {"$ne": user.id}} if user.id is not None else {}
        if await User.find({"email_key": user.email_key, **others}).count():
            return "email"
        if await User.find({"username_key": user.username_key, **others}).count():
            return "username"
        return None
