"""handlers/nul.py and its use by the JSON parser: a NUL anywhere in what a client sends is found, and said where."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from multidict import MultiDict, MultiDictProxy

from tidings.handlers.json_input import InvalidJson, NulInJson, parse_json
from tidings.handlers.nul import MAX_REPORTED, NUL_MESSAGE, nul_errors
from tidings.handlers.schemas import error_sentences

pytestmark = pytest.mark.unit

BAD = [NUL_MESSAGE]


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        "",
        "plain text, ünïcödé and \u2400 (the symbol for NUL, not NUL)",
        {"email": "ada@example.com", "data": {"a": [1, 2.5, True, None, {"b": "c"}]}},
        {"\\u0000": "\\u0000"},  # a backslash and "u0000": six characters, no NUL
        0,
        None,
    ],
)
def test_no_nul_no_errors(value: Any) -> None:
    assert nul_errors(value) == {}


def test_every_string_field_is_named() -> None:
    body = {"email": "a\x00@example.com", "password": "\x00", "full_name": "Ada", "limit": 5}
    assert nul_errors(body) == {"email": BAD, "password": BAD}


def test_nested_values_are_named_by_key_and_index_at_any_depth() -> None:
    body = {
        "title": "ok",
        "data": {"a": {"b": "x\x00y"}, "tags": ["fine", "\x00", {"deep": ["\x00"]}]},
        "usernames": ["ada", "b\x00b"],
    }
    assert nul_errors(body) == {
        "data": {"a": {"b": BAD}, "tags": {1: BAD, 2: {"deep": {0: BAD}}}},
        "usernames": {1: BAD},
    }


def test_a_key_with_a_nul_is_reported_as_a_bad_key_and_its_value_not_looked_into() -> None:
    body = {"data": {"ok": 1, "k\x00": "v\x00", "nested": {"\x00": {"x": "\x00"}}}, "\x00": 1}
    assert nul_errors(body) == {
        "data": {"k\x00": {"key": BAD}, "nested": {"\x00": {"key": BAD}}},
        "\x00": {"key": BAD},
    }


def test_a_string_at_the_top_is_schema_wide() -> None:
    assert nul_errors("\x00") == {"_schema": BAD}
    assert nul_errors(["a", "\x00"]) == {1: BAD}


def test_a_multidict_repeated_key_is_one_message_and_files_are_skipped() -> None:
    query = MultiDictProxy(MultiDict([("q", "a\x00"), ("q", "\x00b"), ("before", "x"), ("file", object())]))
    assert nul_errors(query) == {"q": BAD}
    assert nul_errors(MultiDictProxy(MultiDict([("q\x00", "1")]))) == {"q\x00": {"key": BAD}}


def test_no_depth_is_too_deep() -> None:
    deep: Any = "\x00"
    for _ in range(100_000):  # far past Python's recursion limit
        deep = {"d": deep}
    errors: Any = nul_errors(deep)
    for _ in range(100_000):
        errors = errors["d"]
    assert errors == BAD


def test_places_are_reported_in_order_and_at_most_max_reported() -> None:
    body = {"items": ["ok", *["\x00"] * (MAX_REPORTED * 50)]}
    started = time.monotonic()
    errors = nul_errors(body)
    assert time.monotonic() - started < 1
    assert list(errors["items"]) == list(range(1, MAX_REPORTED + 1))


# parse_json: the check every JSON a client sends goes through


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ('{"email": "\\u0000", "password": "x"}', {"email": BAD}),
        ('{"data": {"a": [{"b": "x\\u0000"}]}}', {"data": {"a": {0: {"b": BAD}}}}),
        ('{"data": {"k\\u0000": 1}}', {"data": {"k\x00": {"key": BAD}}}),
        ('"\\u0000"', {"_schema": BAD}),
        ('{"type": "read", "id": "\\u0000"}', {"id": BAD}),
    ],
)
def test_parse_json_refuses_a_nul_and_says_where(text: str, errors: dict[str, Any]) -> None:
    with pytest.raises(NulInJson) as caught:
        parse_json(text)
    assert caught.value.errors == errors
    assert isinstance(caught.value, InvalidJson)  # a caller that only knows InvalidJson refuses it too


def test_parse_json_keeps_an_escaped_backslash_before_u0000() -> None:
    assert parse_json('{"path": "C:\\\\u0000"}') == {"path": "C:\\u0000"}


def test_a_raw_nul_is_not_json_at_all() -> None:
    with pytest.raises(InvalidJson) as caught:
        parse_json('{"email": "\x00"}')
    assert not isinstance(caught.value, NulInJson)


def test_deep_json_with_a_nul_is_refused_not_crashed() -> None:
    depth = 900  # below the decoder's nesting limit
    text = '{"a": ' * depth + '"\\u0000"' + "}" * depth
    with pytest.raises(NulInJson):
        parse_json(text)
    assert json.loads(text.replace("\\u0000", "ok"))  # the same text without the NUL is fine


def test_sentences_name_the_field_without_writing_a_nul() -> None:
    errors = nul_errors({"email": "\x00", "data": {"k\x00": 1}})
    assert error_sentences(errors) == [
        "email: Must not contain the NUL character.",
        "data.k\\u0000.key: Must not contain the NUL character.",
    ]
