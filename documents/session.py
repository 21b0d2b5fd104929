"""A login session: one refresh-token family, rotated on every refresh."""

from datetime import datetime
from typing import Annotated

from beanie import Document, Indexed, PydanticObjectId
from pydantic import Field

from tidings.documents.clock import utcnow


class Session(Document):
    user_id: Annotated[PydanticObjectId, Indexed()]
    # The jti of the only refresh token of this family that may still be used.
    refresh_jti: str
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime = Field(default_factory=utcnow)
    # FerretDB has no TTL indexes: a background task deletes expired sessions by this field.
    expires_at: Annotated[datetime, Indexed()]
    revoked_at: datetime | None = None
    user_agent: str | None = None

    class Settings:
        name = "sessions"
