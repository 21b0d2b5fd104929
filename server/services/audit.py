"""Recording and reading the audit log; services call `record` for every administrative change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from beanie import PydanticObjectId

from tidings.documents import AuditEntry
from tidings.server.adapters.pagination import newest_first
from tidings.server.services.authenticator import Principal


@dataclass(frozen=True)
class Actor:
    """Who makes a change: an admin through the API or the panel, or None for the system and the CLI."""

    id: PydanticObjectId
    email: str

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        """The authenticated admin making a request; its email came with its authentication, so no query here."""
        return cls(PydanticObjectId(principal.user_id), principal.email)


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditEntry]
    next_before: str | None


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
        await AuditEntry(
            actor_id=actor.id if actor else None,
            actor_email=actor.email if actor else None,
            action=action,
            target_id=target_id,
            target_label=target_label,
            details=details or {},
        ).insert()

    async def page(self, *, before: str | None = None, limit: int = 50) -> AuditPage:
        entries, next_before = await newest_first(AuditEntry, {}, before=before, limit=limit)
        return AuditPage(entries, next_before)
