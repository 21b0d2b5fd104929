"""server/adapters/codecs.py: broker messages round-trip, and anything else is a MalformedMessage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tidings.server.adapters.codecs import (
    AuthChange,
    Delivery,
    MalformedMessage,
    decode_auth,
    decode_notifications,
    encode_auth,
    encode_notifications,
)

pytestmark = pytest.mark.unit

USER_ID = "64b7f0c2a1b2c3d4e5f60718"


@pytest.mark.parametrize(
    "change",
    [
        AuthChange("user", USER_ID),
        AuthChange("session", "0123456789abcdef0123456789abcdef"),
        AuthChange("session", "a:b:c"),
        AuthChange("user", "naïve-ключ"),
        AuthChange("user", ""),
    ],
    ids=["user", "session", "key-with-colons", "non-ascii-key", "empty-key"],
)
def test_auth_change_round_trips(change: AuthChange) -> None:
    assert decode_auth(encode_auth(change)) == change


def test_auth_changes_are_encoded_with_a_kind_prefix() -> None:
    assert encode_auth(AuthChange("user", "42")) == b"u:42"
    assert encode_auth(AuthChange("session", "42")) == b"s:42"


@pytest.mark.parametrize(
    "message",
    [b"", b"u", b"x:42", b"U:42", b"S:42", b"u-42", b":u:42", b"user:42", b'[[null, {"id": "1"}]]'],
    ids=[
        "empty",
        "prefix-only-letter",
        "unknown-kind",
        "upper-u",
        "upper-s",
        "wrong-separator",
        "leading-colon",
        "word-kind",
        "notify-payload",
    ],
)
def test_decode_auth_refuses_a_bad_prefix(message: bytes) -> None:
    with pytest.raises(MalformedMessage, match="not an auth message"):
        decode_auth(message)


def test_decode_auth_refuses_a_key_that_is_not_utf8() -> None:
    with pytest.raises(MalformedMessage):
        decode_auth(b"u:\xff\xfe")


def notification(number: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"{number:024x}", "title": f"title {number}", "body": "b", "read": False, **extra}


@pytest.mark.parametrize(
    "deliveries",
    [
        [],
        [(USER_ID, notification(1))],
        [(None, notification(2))],
        [(USER_ID, notification(3)), (None, notification(4)), ("other", notification(5, data={"k": [1, 2.5]}))],
        [(USER_ID, notification(6, title='émoji 🎉 and "quotes"', data=None))],
    ],
    ids=["empty-batch", "direct", "broadcast", "mixed", "unicode-and-null-data"],
)
def test_notification_batch_round_trips(deliveries: list[Delivery]) -> None:
    assert decode_notifications(encode_notifications(deliveries)) == deliveries


def test_encode_notifications_takes_any_iterable() -> None:
    deliveries = [(USER_ID, notification(1)), (None, notification(2))]
    assert decode_notifications(encode_notifications(iter(deliveries))) == deliveries


@pytest.mark.parametrize(
    "message",
    [b"", b"not json", b"[[null, {", b"\xff\xfe", b"u:" + USER_ID.encode()],
    ids=["empty", "text", "truncated", "not-utf8", "auth-payload"],
)
def test_decode_notifications_refuses_what_is_not_json(message: bytes) -> None:
    with pytest.raises(MalformedMessage, match="not a notification batch"):
        decode_notifications(message)


@pytest.mark.parametrize(
    "batch",
    [{}, {"id": "1"}, "batch", 42, None, True],
    ids=["object", "notification", "string", "number", "null", "bool"],
)
def test_decode_notifications_refuses_what_is_not_a_list(batch: object) -> None:
    with pytest.raises(MalformedMessage, match="is a list"):
        decode_notifications(json.dumps(batch).encode())


@pytest.mark.parametrize(
    "item",
    [
        None,
        "x",
        {"recipient": None, "notification": {"id": "1"}},
        [],
        [None],
        [None, {"id": "1"}, "extra"],
        [42, {"id": "1"}],
        [[USER_ID], {"id": "1"}],
        [None, [{"id": "1"}]],
        [None, "notification"],
        [None, {}],
        [None, {"title": "no id"}],
        [None, {"id": 1}],
        [None, {"id": None}],
    ],
    ids=[
        "null",
        "string",
        "object",
        "empty-list",
        "one-element",
        "three-elements",
        "numeric-recipient",
        "list-recipient",
        "list-notification",
        "string-notification",
        "empty-notification",
        "missing-id",
        "numeric-id",
        "null-id",
    ],
)
def test_decode_notifications_refuses_malformed_deliveries(item: object) -> None:
    """One bad delivery spoils the batch, even after a good one."""
    batch = [[USER_ID, notification(1)], item]
    with pytest.raises(MalformedMessage, match="each delivery"):
        decode_notifications(json.dumps(batch).encode())


def test_decode_notifications_refuses_deeply_nested_json() -> None:
    with pytest.raises(MalformedMessage):
        decode_notifications(b"[" * 100_000 + b"]" * 100_000)
