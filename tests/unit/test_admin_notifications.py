"""handlers/admin/notifications.py: the panel's recipients box, split into names."""

from __future__ import annotations

import pytest

from tidings.handlers.admin.notifications import _names

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("alice", ["alice"]),
        ("alice,bob", ["alice", "bob"]),
        ("alice\nbob", ["alice", "bob"]),
        ("alice\r\nbob\r\n", ["alice", "bob"]),
        ("alice, bob@example.com\ncarol", ["alice", "bob@example.com", "carol"]),
        ("  alice  ,\t bob \n", ["alice", "bob"]),
    ],
    ids=["one", "commas", "new-lines", "crlf-from-a-textarea", "mixed", "whitespace"],
)
def test_names_are_split_on_commas_and_new_lines(text: str, names: list[str]) -> None:
    assert _names(text) == names


@pytest.mark.parametrize("text", ["", " ", ",", ",,\n,", "\n\n", " , \r\n , "], ids=repr)
def test_blank_text_names_nobody(text: str) -> None:
    assert _names(text) == []


def test_blanks_between_names_are_skipped() -> None:
    assert _names("alice,,\n\n, ,bob") == ["alice", "bob"]


def test_each_name_once_in_first_seen_order() -> None:
    assert _names("bob, alice\nbob,carol, alice ") == ["bob", "alice", "carol"]


def test_names_differing_in_case_are_kept_for_the_lookup_to_match() -> None:
    assert _names("Alice,alice") == ["Alice", "alice"]


def test_at_most_1000_names() -> None:
    names = _names(",".join(f"user{n}" for n in range(1500)))
    assert names == [f"user{n}" for n in range(1000)]


def test_the_cap_counts_distinct_names() -> None:
    """1200 entries with duplicates, but only 1000 distinct names: none is dropped."""
    text = "\n".join(f"user{n % 1000}" for n in range(1200))
    assert _names(text) == [f"user{n}" for n in range(1000)]
