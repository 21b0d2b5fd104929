"""server/services/accounts.py: the search_keys values a user search looks up, and how their pages merge."""

from __future__ import annotations

import pytest
from beanie import PydanticObjectId

from tidings.documents import User
from tidings.documents.user import SEARCH_PREFIX_MAX
from tidings.server.services.accounts import merge_newest_first, search_prefixes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("query", "prefixes"),
    [
        ("ali", ["ali"]),
        ("  ALIce.S ", ["alice.s"]),
        ("STRAßE", ["strasse"]),
        ("bob@EXAMPLE", ["bob@example"]),
        ("a" * (SEARCH_PREFIX_MAX + 5), ["a" * SEARCH_PREFIX_MAX]),
        ("ｉnfo", ["info", "ｉnfo"]),  # NFKC for emails, casefold alone for usernames
        ("İ", ["i", "i̇"]),
        ("   ", []),
    ],
    ids=["plain", "case-and-space", "sharp-s", "domain", "too-long", "fullwidth", "dotted-capital-i", "blank"],
)
def test_search_prefixes_are_the_folded_query_as_email_and_username(query: str, prefixes: list[str]) -> None:
    assert search_prefixes(query) == prefixes


def user(oid: PydanticObjectId) -> User:
    made: User = User.model_construct(id=oid)  # no database needed
    return made


IDS = sorted((PydanticObjectId() for _ in range(6)), reverse=True)  # newest first


def test_merge_takes_the_newest_of_both_pages_each_once() -> None:
    first = ([user(IDS[0]), user(IDS[2]), user(IDS[4])], None)
    second = ([user(IDS[1]), user(IDS[2])], None)
    merged, more = merge_newest_first([first, second], limit=3)
    assert [u.id for u in merged] == IDS[:3]
    assert more  # IDS[4] is left for the next page
    merged, more = merge_newest_first([first, second], limit=4)
    assert [u.id for u in merged] == [IDS[0], IDS[1], IDS[2], IDS[4]]
    assert not more


def test_merge_has_more_when_any_page_had_more() -> None:
    merged, more = merge_newest_first([([user(IDS[0])], str(IDS[0])), ([], None)], limit=1)
    assert [u.id for u in merged] == [IDS[0]]
    assert more
    assert merge_newest_first([([], None)], limit=5) == ([], False)
