"""Keyset pagination on _id, newest first: ObjectIds sort by creation, so `before` is an index range, not a skip."""

from __future__ import annotations

from typing import Any, TypeVar

from beanie import Document, PydanticObjectId, SortDirection

from tidings.documents.ids import parse_object_id
from tidings.server.adapters.errors import ValidationFailed

DocumentType = TypeVar("DocumentType", bound=Document)


def parse_cursor(before: str | None) -> PydanticObjectId | None:
    """The `before` of a page: None for the first page; anything but an id is the client's error (422)."""
    if before is None:
        return None
    oid = parse_object_id(before)
    if oid is None:
        raise ValidationFailed(details={"before": ["Not a valid id."]})
    return oid


def older_than(conditions: dict[str, Any], oid: PydanticObjectId) -> dict[str, Any]:
    """`conditions` narrowed to ids below `oid`.

    The range goes beside the other fields at the top level, so that their equalities stay top-level ones:
    FerretDB pushes only those down to its backend, and under an `$and` nothing is. Only when `conditions`
    already constrain `_id` are both put under `$and`. `conditions` is not changed.
    """
    if "_id" in conditions:
        return {"$and": [conditions, {"_id": {"$lt": oid}}]}
    return {**conditions, "_id": {"$lt": oid}}


async def newest_first(
    model: type[DocumentType], conditions: dict[str, Any], *, before: str | None, limit: int
) -> tuple[list[DocumentType], str | None]:
    """One page of `model` matching `conditions`, and the `before` of the next page (None on the last)."""
    oid = parse_cursor(before)
    if oid is not None:
        conditions = older_than(conditions, oid)
    found = await model.find(conditions).sort([("_id", SortDirection.DESCENDING)]).limit(limit + 1).to_list()
    if len(found) <= limit:
        return found, None
    return found[:limit], str(found[limit - 1].id)
