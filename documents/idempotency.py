"""Idempotency records: the first response to a request made with an `Idempotency-Key`, kept for replays.

The record's `_id` is derived from the caller and the key (services/idempotency.py), so claiming a key is an insert
under a unique `_id`: the one write that is safe when two processes race, on FerretDB too (which applies updates as
read-modify-write), and one FerretDB serves by its primary key. Records expire: a read finds an expired one by its
`expires_at` and deletes it, and a periodic sweep deletes the rest (FerretDB v1 has no TTL indexes).
"""

from datetime import datetime
from typing import Literal

from beanie import Document
from pydantic import Field

from tidings.documents.clock import utcnow

IdempotencyState = Literal["pending", "done"]


class IdempotencyRecord(Document):
    id: str  # type: ignore[assignment]
    # The SHA-256 of what was asked (the endpoint and its body): the same key with another request is refused.
    fingerprint: str
    state: IdempotencyState = "pending"
    # Who claimed it (a random token per request), so that only its claimant completes or releases it.
    owner: str
    # A claim whose request has run longer than this without finishing is abandoned (its process stopped).
    lease_until: datetime
    status: int | None = None
    # The response's JSON, as it was sent.
    body: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime

    class Settings:
        name = "idempotency"
