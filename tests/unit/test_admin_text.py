"""handlers/admin/text.py: counts with their nouns, and audit details as lines a person reads."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.handlers.admin.text import detail_lines, noun, plural

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("count", "text"), [(0, "0 admins"), (1, "1 admin"), (2, "2 admins"), (1000, "1000 admins")])
def test_a_count_takes_the_noun_of_its_number(count: int, text: str) -> None:
    assert plural(count, "admin") == text


def test_an_irregular_plural_is_given() -> None:
    assert plural(1, "person", "people") == "1 person"
    assert plural(3, "person", "people") == "3 people"
    assert noun(1, "admin") == "admin"
    assert noun(-1, "admin") == "admins"


@pytest.mark.parametrize(
    ("details", "lines"),
    [
        ({}, []),
        ({"changes": {"is_admin": True}}, ["is_admin: true"]),
        ({"changes": {"is_active": False, "full_name": "Ada"}}, ["is_active: false", "full_name: Ada"]),
        ({"changes": {"bio": None}}, ["bio: none"]),
        ({"recipients": 2}, ["recipients: 2"]),
        ({"audience": "everyone"}, ["audience: everyone"]),
        ({"fields": ["email", "username"]}, ["fields: email, username"]),
        ({"fields": []}, ["fields: none"]),
        ({"outer": {"inner": 1, "deeper": {"x": "y"}}}, ["outer.inner: 1", "outer.deeper.x: y"]),
        ({"outer": {"changes": {"a": 1}}}, ["outer.changes.a: 1"]),
    ],
    ids=[
        "nothing",
        "a-change",
        "two-changes-in-order",
        "a-null",
        "a-number",
        "a-word",
        "a-list",
        "an-empty-list",
        "nested",
        "changes-only-unwrapped-at-the-top",
    ],
)
def test_details_are_key_value_lines(details: dict[str, Any], lines: list[str]) -> None:
    assert detail_lines(details) == lines


def test_details_never_read_as_json() -> None:
    for line in detail_lines({"changes": {"is_admin": True, "email": "a@example.com"}, "recipients": 1}):
        assert not set(line) & set('{}[]"'), line
