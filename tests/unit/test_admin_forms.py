"""The panel's forms in plain language (handlers/admin/forms.py, users.py) and the audit log's filters
(handlers/admin/audit.py, server/services/audit.py): pure code, no database."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from beanie import PydanticObjectId
from bson import ObjectId
from marshmallow import ValidationError
from multidict import MultiDict

from tidings.handlers.admin.audit import parse_filters
from tidings.handlers.admin.forms import SEND_SENTENCES, UNKNOWN_FIELD, form_sentences, unknown_names_sentence
from tidings.handlers.admin.users import PASSWORD_SENTENCES
from tidings.handlers.schemas import AdminUpdateUserSchema, SendNotificationSchema
from tidings.server.services.audit import ACTIONS, AuditFilter, id_range

pytestmark = pytest.mark.unit

SERVICES = Path(__file__).resolve().parents[2] / "server" / "services"
# What a person must never read: the schemas' field names and marshmallow's own messages.
INTERNAL = ("user_ids", "emails", "usernames", "broadcast", "_schema", "Length must be", "Missing data")


def send_errors(raw: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        SendNotificationSchema().load(raw)
    messages: dict[str, Any] = caught.value.messages  # type: ignore[assignment]
    return messages


@pytest.mark.parametrize(
    ("raw", "sentences"),
    [
        ({"title": "T", "body": "", "user_ids": []}, ["Enter at least one user (up to 1000)."]),
        ({"title": " ", "body": "", "user_ids": []}, [SEND_SENTENCES["user_ids"], SEND_SENTENCES["title"]]),
        ({"title": "T", "body": "x" * 5001, "broadcast": True}, ["Keep the message to 5000 characters or fewer."]),
        ({"title": "T", "body": "", "broadcast": False}, ["Choose who receives it: chosen users or everyone."]),
    ],
    ids=["no-user", "no-user-and-a-blank-title", "too-long", "no-audience"],
)
def test_send_errors_are_the_forms_sentences(raw: dict[str, Any], sentences: list[str]) -> None:
    said = form_sentences(send_errors(raw), SEND_SENTENCES)
    assert said == sentences
    for sentence in said:
        assert not any(name in sentence for name in INTERNAL), sentence


def test_a_field_without_a_sentence_is_never_named() -> None:
    said = form_sentences({"secret_field": ["Unknown field."], "title": ["x"]}, SEND_SENTENCES)
    assert said == [SEND_SENTENCES["title"], UNKNOWN_FIELD]
    assert "secret_field" not in " ".join(said)


def test_unknown_names_are_listed() -> None:
    assert unknown_names_sentence(["ghost", "nobody@example.com"]) == "No user found for: ghost, nobody@example.com."


@pytest.mark.parametrize("password", ["", "short", "x" * 129])
def test_password_errors_say_the_rule(password: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AdminUpdateUserSchema().load({"password": password})
    messages: dict[str, Any] = caught.value.messages  # type: ignore[assignment]
    assert form_sentences(messages, PASSWORD_SENTENCES) == ["Enter a password of 8 to 128 characters."]


def test_every_action_recorded_has_a_meaning() -> None:
    """ACTIONS (the audit page's list) names every action a service records."""
    recorded = set()
    for module in SERVICES.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "record" and len(node.args) >= 2:
                action = node.args[1]
                assert isinstance(action, ast.Constant), f"{module.name}: an action that is not a literal"
                recorded.add(action.value)
    assert recorded
    assert recorded <= ACTIONS.keys(), recorded - ACTIONS.keys()


def test_filters_are_read_as_whole_utc_days() -> None:
    query = MultiDict(
        {"actor": " ada@example.com ", "action": "user.updated", "target": "", "from": "2026-01-10", "to": "2026-01-11"}
    )
    values, chosen, errors = parse_filters(query)
    assert errors == []
    assert values == {
        "actor": "ada@example.com",
        "action": "user.updated",
        "target": "",
        "from": "2026-01-10",
        "to": "2026-01-11",
    }
    assert chosen == AuditFilter(
        actor="ada@example.com",
        action="user.updated",
        target=None,
        since=datetime(2026, 1, 10, tzinfo=UTC),
        until=datetime(2026, 1, 12, tzinfo=UTC),
    )
    assert parse_filters(MultiDict()) == (dict.fromkeys(values, ""), AuditFilter(), [])


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"from": "10/01/2026"}, "From: enter a date as year-month-day, for example 2026-12-31."),
        ({"to": "2026-02-30"}, "To: enter a date as year-month-day, for example 2026-12-31."),
        ({"from": "2026-01-02", "to": "2026-01-01"}, "To is before From: choose a To date on or after the From date."),
        ({"action": "drop.tables"}, "Action: choose one from the list."),
    ],
)
def test_filters_that_cannot_be_read(query: dict[str, str], error: str) -> None:
    assert parse_filters(MultiDict(query))[2] == [error]


def test_names_are_cut_to_an_emails_length() -> None:
    values, chosen, _ = parse_filters(MultiDict({"actor": "a" * 1000}))
    assert len(values["actor"]) == 254
    assert chosen.actor == "a" * 254


def test_the_id_range_of_a_time_range_and_a_cursor() -> None:
    since, until = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 12, tzinfo=UTC)
    assert id_range(None, None, None) == {}
    assert id_range(since, until, None) == {"$gte": ObjectId.from_datetime(since), "$lt": ObjectId.from_datetime(until)}
    # The cursor and the end of the range: the lower bound wins.
    inside = PydanticObjectId(ObjectId.from_datetime(datetime(2026, 1, 11, tzinfo=UTC)))
    assert id_range(since, until, inside) == {"$gte": ObjectId.from_datetime(since), "$lt": inside}
    later = PydanticObjectId(ObjectId.from_datetime(datetime(2027, 1, 1, tzinfo=UTC)))
    assert id_range(None, until, later) == {"$lt": ObjectId.from_datetime(until)}
