"""server/adapters/pagination.py: the `before` cursor of a page is an id, or the client's error; the range it adds
keeps the other conditions' equalities at the top level."""

from __future__ import annotations

from typing import Any

import pytest
from beanie import PydanticObjectId

from tidings.server.adapters.errors import ValidationFailed
from tidings.server.adapters.pagination import older_than, parse_cursor

pytestmark = pytest.mark.unit

HEX = "64b7f0c2a1b2c3d4e5f60718"


def test_no_cursor_is_the_first_page() -> None:
    assert parse_cursor(None) is None


@pytest.mark.parametrize("before", [HEX, HEX.upper()], ids=["lower", "upper"])
def test_a_valid_cursor_is_its_object_id(before: str) -> None:
    assert parse_cursor(before) == PydanticObjectId(HEX)


@pytest.mark.parametrize("before", ["", "null", "abc", HEX[:-1], HEX + "a", "g" * 24, " " + HEX], ids=repr)
def test_a_malformed_cursor_is_a_422_on_before(before: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_cursor(before)
    assert caught.value.status == 422
    assert caught.value.details == {"before": ["Not a valid id."]}
    assert caught.value.body()["error"]["details"] == {"before": ["Not a valid id."]}


OID = PydanticObjectId(HEX)


def test_older_than_puts_the_range_beside_top_level_equalities() -> None:
    conditions = {"search_keys": "ali", "is_active": True}
    assert older_than(conditions, OID) == {"search_keys": "ali", "is_active": True, "_id": {"$lt": OID}}
    assert conditions == {"search_keys": "ali", "is_active": True}  # not changed
    assert older_than({}, OID) == {"_id": {"$lt": OID}}


def test_older_than_keeps_operators_at_the_top_level() -> None:
    either = {"$or": [{"a": 1}, {"b": 2}]}
    assert older_than({"search_keys": "x", **either}, OID) == {"search_keys": "x", **either, "_id": {"$lt": OID}}


def test_older_than_uses_and_when_the_conditions_already_constrain_the_id() -> None:
    conditions: dict[str, Any] = {"recipient_id": None, "_id": {"$gt": OID}}
    assert older_than(conditions, OID) == {"$and": [conditions, {"_id": {"$lt": OID}}]}
