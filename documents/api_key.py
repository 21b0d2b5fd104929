"""API keys: credentials made for machines (an application's backends), each with scopes and a rate limit.

Only the SHA-256 of a key's secret is stored; the secret itself is shown once, when the key is made. How recently a
key was used lives in a document of its own (ApiKeyUsage), so that the frequent write of `last_used_at` never races
with a revocation (FerretDB applies an update as read-modify-write, and two at once can lose one).
"""

from datetime import datetime
from typing import Annotated, Any

from beanie import Document, Indexed, PydanticObjectId
from pydantic import Field

from tidings.documents.clock import utcnow

# Every key reads "tdg_" and then its secret, so that secret scanners can spot one.
KEY_PREFIX = "tdg_"
# How many characters of the secret (after KEY_PREFIX) a listing shows, to tell keys apart.
SHOWN_PREFIX_LENGTH = 8


class ApiKey(Document):
    name: str
    scopes: list[str]
    # The hex SHA-256 of the whole key ("tdg_..."): authentication reads the key by it (an equality FerretDB pushes
    # down, served by an index there too: scripts/ferretdb/indexer.go).
    key_hash: Annotated[str, Indexed(unique=True)]
    # The first SHOWN_PREFIX_LENGTH characters after "tdg_": what a listing shows of the key.
    prefix: str
    rate_limit_per_minute: int
    created_by_id: PydanticObjectId | None = None
    created_by_email: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    class Settings:
        name = "api_keys"

    def public(self, last_used_at: datetime | None) -> dict[str, Any]:
        """What listings show: never the secret, nor its hash."""
        return {
            "id": str(self.id),
            "name": self.name,
            "scopes": list(self.scopes),
            "prefix": self.prefix,
            "created_by": {"id": str(self.created_by_id), "email": self.created_by_email}
            if self.created_by_id
            else None,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "last_used_at": last_used_at.isoformat() if last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "rate_limit_per_minute": self.rate_limit_per_minute,
        }


class ApiKeyUsage(Document):
    """When a key was last used (its id is the key's id); written at most once a minute per key and process."""

    id: PydanticObjectId
    last_used_at: datetime

    class Settings:
        name = "api_key_usage"
