"""Recording and reading the audit log; services call `record` for every administrative change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from beanie import PydanticObjectId, SortDirection
from bson import ObjectId

from tidings.documents import AuditEntry, User
from tidings.documents.ids import parse_object_id
from tidings.documents.user import email_key, username_key
from tidings.server.adapters.pagination import parse_cursor
from tidings.server.services.authenticator import Principal

# Every action the services record, and what it means to a person reading the log.
ACTIONS: dict[str, str] = {
    "user.registered": "an account was created",
    "user.updated": "an admin changed an account",
    "user.password_set": "an admin set an account's password",
    "user.sessions_revoked": "an admin ended an account's sessions",
    "user.password_reset": "a user reset their password from a mailed link",
    "user.password_reset_sent": "an admin sent a password reset link",
    "job.retried": "an admin queued a dead-lettered job again",
    "job.discarded": "an admin discarded a job",
    "user.deleted": "an admin deleted an account",
    "user.deleted_self": "a user deleted their own account",
    "notification.sent": "a notification was sent",
    "api_key.created": "an admin created an API key",
    "api_key.revoked": "an admin revoked an API key",
}
# What the log's "who" filter takes for changes made by no admin (sign-ups, the command line).
SYSTEM = "system"


SenderType = Literal["user", "key"]


@dataclass(frozen=True)
class Actor:
    """Who makes a change: an admin through the API or the panel, an API key (which only sends), or None for the
    system and the CLI."""

    id: PydanticObjectId
    # A user's email; None for an API key.
    email: str | None
    kind: SenderType = "user"
    # A user's username, or the key's name.
    name: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        """The authenticated admin making a request; its email came with its authentication, so no query here."""
        return cls(PydanticObjectId(principal.user_id), principal.email, "user", principal.username or None)

    @classmethod
    def key(cls, key_id: PydanticObjectId, name: str) -> Actor:
        return cls(key_id, None, "key", name)

    @property
    def label(self) -> str:
        """How the audit log and the panel name it: a user's email, or "API key <name>"."""
        return (self.email or "") if self.kind == "user" else f"API key {self.name}"

    def sender(self) -> dict[str, Any]:
        """The `sender` of what it sends, as notifications' JSON shows it."""
        return {"type": self.kind, "id": str(self.id), "name": self.name}


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditEntry]
    next_before: str | None


@dataclass(frozen=True)
class AuditFilter:
    """Which entries a page of the log shows; every field is optional.

    `actor`: a user's email, username or id, or SYSTEM; an email no user has any more matches the email recorded.
    `target`: a user's email, username or id, another id (a send's), or a label as recorded (a send's title, a
    deleted user's email). `since` and `until`: the entries made at or after, and before, these moments.
    """

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def _user_id(name: str) -> PydanticObjectId | None:
    """The id of the user `name` names (an email, a username, matched as uniqueness does, or an id), or None."""
    if "@" in name:
        user = await User.find_one({"email_key": email_key(name)})
    else:
        user = await User.find_one({"username_key": username_key(name)})
    return user.id if user is not None else parse_object_id(name)


async def conditions_for(chosen: AuditFilter) -> dict[str, Any]:
    """The equalities that select the chosen entries, each on one field at the top level (FerretDB pushes those
    down to its backend; a range or null is applied after them)."""
    conditions: dict[str, Any] = {}
    if chosen.action:
        conditions["action"] = chosen.action
    if chosen.actor:
        if chosen.actor.strip().lower() == SYSTEM:
            conditions["actor_id"] = None
        elif (actor_id := await _user_id(chosen.actor)) is not None:
            conditions["actor_id"] = actor_id
        else:
            conditions["actor_email"] = chosen.actor
    if chosen.target:
        if (target_id := await _user_id(chosen.target)) is not None:
            conditions["target_id"] = target_id
        else:
            conditions["target_label"] = chosen.target
    return conditions


def id_range(since: datetime | None, until: datetime | None, before: PydanticObjectId | None) -> dict[str, Any]:
    """The `_id` range of entries made from `since` up to `until`, older than the cursor `before`: ids begin with
    their second of creation, so a moment's smallest id bounds them."""
    bounds: dict[str, Any] = {}
    if since is not None:
        bounds["$gte"] = ObjectId.from_datetime(since)
    uppers = [oid for oid in (before, ObjectId.from_datetime(until) if until is not None else None) if oid is not None]
    if uppers:
        bounds["$lt"] = min(uppers)
    return bounds


def _entry(
    actor: Actor | None,
    action: str,
    target_id: PydanticObjectId | None,
    target_label: str | None,
    details: dict[str, Any] | None,
) -> AuditEntry:
    return AuditEntry(
        actor_id=actor.id if actor else None,
        actor_email=actor.label if actor else None,
        action=action,
        target_id=target_id,
        target_label=target_label,
        details=details or {},
    )


class AuditLog:
    async def record(
        self,
        actor: Actor | None,
        action: str,
        *,
        target_id: PydanticObjectId | None = None,
        target_label: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        await _entry(actor, action, target_id, target_label, details).insert()

    async def record_many(
        self,
        actor: Actor | None,
        action: str,
        targets: Sequence[tuple[PydanticObjectId | None, str | None, dict[str, Any] | None]],
    ) -> None:
        """One action on several targets (target id, label, details), in one write: a batch of sends."""
        await AuditEntry.insert_many([_entry(actor, action, *target) for target in targets])

    async def page(self, *, before: str | None = None, limit: int = 50, chosen: AuditFilter | None = None) -> AuditPage:
        """Newest first, keyset-paginated on _id, narrowed to the `chosen` entries. A malformed `before` raises
        ValidationFailed."""
        cursor = parse_cursor(before)
        chosen = chosen or AuditFilter()
        conditions = await conditions_for(chosen)
        # The range beside the equalities, never under an $and: they stay pushed down.
        bounds = id_range(chosen.since, chosen.until, cursor)
        if bounds:
            conditions["_id"] = bounds
        found = await AuditEntry.find(conditions).sort([("_id", SortDirection.DESCENDING)]).limit(limit + 1).to_list()
        if len(found) <= limit:
            return AuditPage(found, None)
        return AuditPage(found[:limit], str(found[limit - 1].id))
