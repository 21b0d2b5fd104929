"""A user account."""

import unicodedata
from datetime import datetime
from typing import Annotated, Any

from beanie import Document, Indexed
from pydantic import Field

from tidings.documents.clock import utcnow


def email_key(email: str) -> str:
    """The form of an email address that uniqueness (and login) is checked on, so that lookalikes are one account.

    The local part is NFKC-normalised (fullwidth letters become ASCII) and case-folded ("ß" is "ss"), with the
    Turkish dotted and dotless i folded to "i"; the domain is in its IDNA (punycode) form, so "bücher.de" and
    "xn--bcher-kva.de" are one domain. For ASCII addresses this is plain lower case. Never raises.
    """
    local, at, domain = email.strip().rpartition("@")
    if not at:
        return _fold(email.strip())
    return f"{_fold(local)}@{_domain_key(domain)}"


def _fold(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return folded.replace("\u0131", "i").replace("i\u0307", "i")


def _domain_key(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:  # not a valid IDN: keep a folded form, which no valid address shares
        return _fold(domain)


def username_key(username: str) -> str:
    """The form of a username that uniqueness is checked on (usernames are ASCII letters, digits and "_.-")."""
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
