"""server/adapters/errors.py: each error's status, code, JSON body and headers."""

from __future__ import annotations

import pytest

from tidings.server.adapters.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidCredentials,
    InvalidToken,
    NotAuthenticated,
    NotFound,
    TooManyRequests,
    ValidationFailed,
)

pytestmark = pytest.mark.unit

BEARER = 'Bearer realm="tidings"'


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ApiError, 400, "bad_request"),
        (BadRequest, 400, "bad_request"),
        (ValidationFailed, 422, "validation_error"),
        (NotAuthenticated, 401, "not_authenticated"),
        (InvalidToken, 401, "invalid_token"),
        (InvalidCredentials, 401, "invalid_credentials"),
        (Forbidden, 403, "forbidden"),
        (NotFound, 404, "not_found"),
        (Conflict, 409, "conflict"),
    ],
)
def test_status_code_and_default_message(error: type[ApiError], status: int, code: str) -> None:
    raised = error()
    assert (raised.status, raised.code) == (status, code)
    assert raised.message == error.message
    assert raised.message
    assert str(raised) == raised.message
    assert raised.body() == {"error": {"code": code, "message": error.message}}


def test_too_many_requests_status_and_code() -> None:
    raised = TooManyRequests(30)
    assert (raised.status, raised.code) == (429, "rate_limited")
    assert raised.message == TooManyRequests.message


def test_body_has_no_details_key_when_there_are_none() -> None:
    assert "details" not in NotFound().body()["error"]


@pytest.mark.parametrize("details", [{"email": ["Taken."]}, ["one"], "text", 0, False, {}], ids=repr)
def test_body_carries_any_details_given_even_falsy_ones(details: object) -> None:
    assert ValidationFailed(details=details).body() == {
        "error": {"code": "validation_error", "message": ValidationFailed.message, "details": details}
    }


def test_a_message_replaces_the_default() -> None:
    raised = Conflict("That email is taken.")
    assert str(raised) == raised.message == "That email is taken."
    assert raised.body()["error"]["message"] == "That email is taken."
    assert Conflict.message == "This conflicts with existing data."


def test_headers_default_to_empty_and_are_not_shared() -> None:
    first, second = Forbidden(), Forbidden()
    first.headers["X-Test"] = "1"
    assert second.headers == {}
    assert BadRequest(headers={"X-A": "b"}).headers == {"X-A": "b"}


@pytest.mark.parametrize("error", [NotAuthenticated, InvalidToken, InvalidCredentials])
def test_401s_carry_a_bearer_challenge(error: type[NotAuthenticated]) -> None:
    assert error().headers == {"WWW-Authenticate": BEARER}
    assert error("custom").headers == {"WWW-Authenticate": BEARER}


def test_401_challenge_is_a_fresh_dict_each_time() -> None:
    first = NotAuthenticated()
    first.headers["WWW-Authenticate"] = "changed"
    assert NotAuthenticated().headers == {"WWW-Authenticate": BEARER}


def test_401_headers_can_be_overridden() -> None:
    assert NotAuthenticated(headers={"X-Other": "1"}).headers == {"X-Other": "1"}


@pytest.mark.parametrize(("retry_after", "header"), [(30, "30"), (1, "1"), (0, "1"), (-5, "1"), (3600, "3600")])
def test_retry_after_header_is_at_least_one_second(retry_after: int, header: str) -> None:
    raised = TooManyRequests(retry_after)
    assert raised.headers == {"Retry-After": header}
    assert raised.details == {"retry_after": retry_after}


def test_too_many_requests_takes_a_message() -> None:
    raised = TooManyRequests(5, "Too many login attempts from this address; try again later.")
    assert raised.body() == {
        "error": {
            "code": "rate_limited",
            "message": "Too many login attempts from this address; try again later.",
            "details": {"retry_after": 5},
        }
    }
