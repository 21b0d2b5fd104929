"""A user account."""

import unicodedata
from datetime import datetime
from typing import Annotated, Any, ClassVar

from beanie import Document, Indexed
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from tidings.documents.clock import today_number, utcnow

# The longest prefix of a user's email and username key that `search_keys` holds: a longer query is narrowed by its
# first SEARCH_PREFIX_MAX characters, then checked in full.
SEARCH_PREFIX_MAX = 16


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


def search_keys_for(email_key: str, username_key: str) -> list[str]:
    """What user search matches by equality: every prefix (1 to SEARCH_PREFIX_MAX characters) of both keys, once.

    An equality on an array field matches the arrays that contain the value, on MongoDB as on FerretDB (which
    pushes it down to its backend), so `{search_keys: prefix}` finds the users whose email or username key starts
    with `prefix`, by an index.
    """
    prefixes = (key[:length] for key in (email_key, username_key) for length in range(1, SEARCH_PREFIX_MAX + 1))
    return list(dict.fromkeys(prefix for prefix in prefixes if prefix))


class User(Document):
    email: str
    username: str
    # Lower-cased copies under unique indexes make uniqueness case-insensitive without collations,
    # which FerretDB lacks; they also serve lookups by email and username.
    email_key: Annotated[str, Indexed(unique=True)]
    username_key: Annotated[str, Indexed(unique=True)]
    # search_keys_for(email_key, username_key), written wherever either key changes; older documents get it (and
    # created_day) from a migration at start-up (server/services/migrations.py).
    search_keys: list[str] = Field(default_factory=list)
    password_hash: str
    full_name: str | None = None
    bio: str | None = None
    is_active: bool = True
    is_admin: bool = False
    # Bumped whenever every existing token of this user must stop working (password change, deactivation).
    token_version: int = 0
    # Email (server/services/email_tokens.py): whether `email` was proven, the address a change waits to prove,
    # the latest password reset (an older reset's token no longer checks out), and the unread digest's opt-in.
    email_verified: bool = False
    pending_email: str | None = None
    reset_nonce: str = ""
    email_digest: bool = True
    digest_sent_at: datetime | None = None
    created_at: Annotated[datetime, Indexed()] = Field(default_factory=utcnow)
    # created_at's UTC day (documents/clock.py day_number): the dashboard counts a day's new users by equality.
    created_day: int = Field(default_factory=today_number)
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "users"
        use_state_management = True
        indexes: ClassVar = [
            # User search: equality on one prefix (multikey), newest first (docs/scaling.md).
            IndexModel([("search_keys", ASCENDING), ("_id", DESCENDING)]),
            # The dashboard's counts; the filters of the user list, newest first.
            IndexModel([("created_day", ASCENDING)]),
            IndexModel([("is_active", ASCENDING), ("_id", DESCENDING)]),
            IndexModel([("is_admin", ASCENDING), ("_id", DESCENDING)]),
        ]

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
            "email_verified": self.email_verified,
            "pending_email": self.pending_email,
            "email_digest": self.email_digest,
            "created_at": self.created_at.isoformat(timespec="milliseconds"),
            "updated_at": self.updated_at.isoformat(timespec="milliseconds"),
        }
