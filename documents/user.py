"""A user account."""

from datetime import datetime
from typing import Annotated, Any

from beanie import Document, Indexed
from pydantic import Field

from tidings.documents.clock import utcnow


def email_key(email: str) -> str:
    """The form of an email address that uniqueness is checked on."""
    return email.strip().lower()


def username_key(username: str) -> str:
    """The form of a username that uniqueness is checked on."""
    return username.strip().casefold()


class User(Document):
    email: str
    username: str
    # Lower-cased copies under unique indexes make uniqueness case-insensitive without collations,
    # which FerretDB lacks; they also serve prefix search.
    email_key: Annotated[str, Indexed(unique=True)]
    username_key: Annotated[str, Indexed(unique=True)]
    password_hash: str
    full_name: str | None = None
    bio: str | None = None
    is_active: bool = True
    is_admin: bool = False
    # Bumped whenever every existing token of this user must stop working (password change, deactivation).
    token_version: int = 0
    created_at: Annotated[datetime, Indexed()] = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "users"
        use_state_management = True

    def public(self) -> dict[str, Any]:
        """The user as clients see it: never a hash, never the token version."""
        return {
            "id": str(self.id),
            "email": self.email,
            "username": self.username,
            "full_name": self.full_name,
            "bio": self.bio,
            "is_active": self.is_active,
            "is_admin": self.is_admin,
            "created_at": self.created_at.isoformat(timespec="milliseconds"),
            "updated_at": self.updated_at.isoformat(timespec="milliseconds"),
        }
