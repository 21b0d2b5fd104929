"""handlers/schemas.py: what requests are accepted, and the errors of those that are not."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from tidings.handlers.schemas import (
    MAX_RECIPIENTS,
    AdminUpdateUserSchema,
    RegisterSchema,
    SendNotificationSchema,
    UpdateMeSchema,
    UserIdSchema,
    error_sentences,
)

pytestmark = pytest.mark.unit

ID = "64b7f0c2a1b2c3d4e5f60718"
AUDIENCE_ERROR = "Give user_ids, emails or usernames, or broadcast: true."


def ids(count: int) -> list[str]:
    return [f"{number:024x}" for number in range(1, count + 1)]


def errors(schema: Any, data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        schema.load(data)
    messages = caught.value.messages
    assert isinstance(messages, dict)
    return messages


def send(**fields: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = SendNotificationSchema().load({"title": "Hello", "body": "World", **fields})
    return loaded


def send_errors(**fields: Any) -> dict[str, Any]:
    return errors(SendNotificationSchema(), {"title": "Hello", "body": "World", **fields})


# SendNotificationSchema


def test_send_to_user_ids_fills_the_defaults() -> None:
    assert send(user_ids=[ID]) == {
        "title": "Hello",
        "body": "World",
        "data": None,
        "user_ids": [ID],
        "emails": [],
        "usernames": [],
        "broadcast": False,
    }


def test_send_lower_cases_ids() -> None:
    assert send(user_ids=[ID.upper()])["user_ids"] == [ID]


@pytest.mark.parametrize("bad", ["", "abc", ID[:-1], "g" * 24, 42, None], ids=repr)
def test_send_refuses_a_malformed_id(bad: object) -> None:
    messages = send_errors(user_ids=[ID, bad])
    assert list(messages) == ["user_ids"]
    assert 1 in messages["user_ids"]
    assert 0 not in messages["user_ids"]


def test_send_broadcast_alone() -> None:
    loaded = send(broadcast=True)
    assert (loaded["broadcast"], loaded["user_ids"], loaded["emails"], loaded["usernames"]) == (True, [], [], [])


@pytest.mark.parametrize(
    "recipients",
    [{"emails": ["a@example.com"]}, {"usernames": ["alice"]}, {"user_ids": [ID], "emails": ["a@example.com"]}],
    ids=["emails", "usernames", "ids-and-emails"],
)
def test_send_to_named_recipients(recipients: dict[str, list[str]]) -> None:
    """Ids, emails and usernames may be given together: they name one audience."""
    loaded = send(**recipients)
    assert loaded["broadcast"] is False
    for field, names in recipients.items():
        assert loaded[field] == names


@pytest.mark.parametrize(
    "recipients",
    [{"user_ids": [ID]}, {"emails": ["a@example.com"]}, {"usernames": ["alice"]}],
    ids=["user_ids", "emails", "usernames"],
)
def test_send_refuses_broadcast_with_named_recipients(recipients: dict[str, list[str]]) -> None:
    assert send_errors(broadcast=True, **recipients) == {"_schema": [AUDIENCE_ERROR]}


@pytest.mark.parametrize("extra", [{}, {"broadcast": False}], ids=["nothing", "broadcast-false"])
def test_send_needs_a_recipient(extra: dict[str, Any]) -> None:
    assert send_errors(**extra) == {"_schema": [AUDIENCE_ERROR]}


@pytest.mark.parametrize("field", ["user_ids", "emails", "usernames"])
def test_send_refuses_an_empty_list(field: str) -> None:
    assert field in send_errors(**{field: []})


def test_send_takes_up_to_1000_recipients() -> None:
    assert MAX_RECIPIENTS == 1000
    assert len(send(user_ids=ids(1000))["user_ids"]) == 1000


def test_send_refuses_1001_ids() -> None:
    assert "user_ids" in send_errors(user_ids=ids(1001))


def test_send_refuses_more_than_1000_recipients_across_lists() -> None:
    messages = send_errors(
        user_ids=ids(400),
        emails=[f"user{n}@example.com" for n in range(400)],
        usernames=[f"user{n}" for n in range(201)],
    )
    assert messages == {"_schema": ["At most 1000 recipients in one send."]}


@pytest.mark.parametrize("value", ["true", 1, "yes", None], ids=repr)
def test_send_broadcast_must_be_a_json_boolean(value: object) -> None:
    assert "broadcast" in send_errors(broadcast=value)


def test_send_refuses_unknown_fields() -> None:
    assert send_errors(user_ids=[ID], priority="high") == {"priority": ["Unknown field."]}


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"title": ""}, "title"), ({"title": "x" * 201}, "title"), ({"body": "x" * 5001}, "body")],
    ids=["empty-title", "long-title", "long-body"],
)
def test_send_title_and_body_lengths(fields: dict[str, str], field: str) -> None:
    assert field in send_errors(user_ids=[ID], **fields)


def test_send_takes_data_with_short_keys_only() -> None:
    assert send(user_ids=[ID], data={"k": [1, {"x": None}]})["data"] == {"k": [1, {"x": None}]}
    assert "data" in send_errors(user_ids=[ID], data={"k" * 101: 1})


def test_user_id_path_lower_cases_and_refuses_malformed_ids() -> None:
    assert UserIdSchema().load({"user_id": ID.upper()}) == {"user_id": ID}
    assert errors(UserIdSchema(), {"user_id": "nope"}) == {"user_id": ["Not a valid id."]}


# RegisterSchema


def register(**fields: Any) -> dict[str, Any]:
    return {"email": "alice@example.com", "username": "alice_1", "password": "correct horse", **fields}


def test_register_accepts_a_valid_account() -> None:
    assert RegisterSchema().load(register()) == {**register(), "full_name": None}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@" + "b" * 250 + ".com"}, "email"),
        ({"username": "ab"}, "username"),
        ({"username": "a" * 33}, "username"),
        ({"username": "has space"}, "username"),
        ({"username": "al@ce"}, "username"),
        ({"password": "short"}, "password"),
        ({"password": "x" * 129}, "password"),
        ({"full_name": "x" * 101}, "full_name"),
        ({"is_admin": True}, "is_admin"),
    ],
    ids=[
        "bad-email",
        "long-email",
        "short-username",
        "long-username",
        "space-in-username",
        "at-in-username",
        "short-password",
        "long-password",
        "long-name",
        "unknown-is_admin",
    ],
)
def test_register_refuses(fields: dict[str, Any], field: str) -> None:
    assert field in errors(RegisterSchema(), register(**fields))


@pytest.mark.parametrize("field", ["email", "username", "password"])
def test_register_requires(field: str) -> None:
    data = register()
    del data[field]
    assert errors(RegisterSchema(), data) == {field: ["Missing data for required field."]}


def test_register_never_dumps_the_password() -> None:
    assert "password" not in RegisterSchema().dump(register())


# UpdateMeSchema and AdminUpdateUserSchema


@pytest.mark.parametrize("data", [{}, {"current_password": "secret"}], ids=["empty", "current-password-only"])
def test_update_me_needs_something_to_change(data: dict[str, Any]) -> None:
    assert errors(UpdateMeSchema(), data) == {"_schema": ["Nothing to change."]}


@pytest.mark.parametrize(
    "data",
    [{"bio": None}, {"full_name": "Alice"}, {"password": "new password", "current_password": "old"}],
    ids=["clear-bio", "name", "password"],
)
def test_update_me_accepts_a_change(data: dict[str, Any]) -> None:
    assert UpdateMeSchema().load(data) == data


@pytest.mark.parametrize(
    "data",
    [{"username": "ab"}, {"is_admin": True}, {"bio": "x" * 1001}, {"email": "nope"}],
    ids=["short-username", "self-promotion", "long-bio", "bad-email"],
)
def test_update_me_refuses(data: dict[str, Any]) -> None:
    assert set(errors(UpdateMeSchema(), data)) == set(data)


@pytest.mark.parametrize("value", ["true", 1, 0, None], ids=repr)
def test_admin_update_takes_json_booleans_only(value: object) -> None:
    assert "is_active" in errors(AdminUpdateUserSchema(), {"is_active": value})
    assert AdminUpdateUserSchema().load({"is_active": False}) == {"is_active": False}


@pytest.mark.parametrize(
    ("raw", "loaded"), [("  Ada  ", "Ada"), ("   ", None), ("", None), ("\tA B\n", "A B"), (None, None)]
)
def test_names_and_bios_are_stripped_and_blank_is_null(raw: str | None, loaded: str | None) -> None:
    data = UpdateMeSchema().load({"full_name": raw, "bio": raw})
    assert data == {"full_name": loaded, "bio": loaded}


def test_a_blank_title_is_refused_and_a_title_is_stripped() -> None:
    with pytest.raises(ValidationError) as refused:
        SendNotificationSchema().load({"title": "   ", "body": "b", "broadcast": True})
    assert "title" in refused.value.messages_dict
    assert SendNotificationSchema().load({"title": " T ", "body": "b", "broadcast": True})["title"] == "T"


def test_validation_messages_read_as_one_sentence_each() -> None:
    messages = {
        "email": ["Not a valid email address."],
        "password": ["Shorter than minimum length 8.", "Second message."],
        "user_ids": {"1": ["Not a valid id."]},
        "_schema": ["Nothing to change."],
    }
    assert error_sentences(messages) == [
        "email: Not a valid email address.",
        "password: Shorter than minimum length 8.",
        "password: Second message.",
        "user_ids.1: Not a valid id.",
        "Nothing to change.",
    ]
