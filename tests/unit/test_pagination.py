"""server/adapters/pagination.py: the `before` cursor of a page is an id, or the client's error."""

from __future__ import annotations

import pytest
from beanie import PydanticObjectId

from tidings.server.adapters.errors import ValidationFailed
from tidings.server.adapters.pagination import parse_cursor

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
