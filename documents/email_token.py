"""Single-use tokens sent by email: password reset, address verification, email change."""

from datetime import datetime
from typing import Literal

from beanie import Document, PydanticObjectId
from pydantic import Field

from tidings.documents.clock import utcnow

EmailTokenPurpose = Literal["reset", "verify", "change"]


class EmailToken(Document):
    """Stored only as the SHA-256 of the token, which is the `_id`: a token is found (and spent, by deleting it)
    by `_id` alone, the one lookup every backend serves by an index. A token checks out only while what it was
    issued for still holds: `email` is still the address to prove, and, for a reset, `stamp` still matches the
    user's password hash and `nonce` the user's latest reset (server/services/email_tokens.py)."""

    id: str = Field(alias="_id")  # type: ignore[assignment]
    purpose: EmailTokenPurpose
    user_id: PydanticObjectId
    email: str
    expires_at: datetime
    stamp: str = ""
    nonce: str = ""
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "email_tokens"
