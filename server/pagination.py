"""Keyset pagination on _id, newest first: ObjectIds sort by creation, so `before` is an index range, not a skip."""

from __future__ import annotations

from typing import Any, TypeVar

from beanie import Document, SortDirection

from server.authenticator import parse_object_id
from server.errors import ValidationFailed

DocumentType = TypeVar("DocumentType", bound=Document)


async def newest_first(
    model: type[DocumentType], conditions: dict[str, Any], *, before: str | None, limit: int
) -> tuple[list[DocumentType], str | None]:
    """One page of `model` matching `conditions`, and the `before` of the next page (None on the last)."""
    if before is not None:
        oid = parse_object_id(before)
        if oid is None:
            raise ValidationFailed(details={"before": ["Not a valid id."]})
        conditions = {"$and": [conditions, {"_id": {"$lt": oid}}]} if conditions else {"_id": {"$lt": oid}}
    found = await model.find(conditions).sort([("_id", SortDirection.DESCENDING)]).limit(limit + 1).to_list()
    if len(found) <= limit:
        return found, None
    return found[:limit], str(found[limit - 1].id)
