"""handlers/admin/cookies.py: a flash message survives its cookie, and a junk cookie is no message."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tidings.handlers.admin.cookies import COOKIE_PATH, FLASH_COOKIE, flash, take_flash
from tidings.server.keys import settings_key
from tidings.server.settings import Settings

pytestmark = pytest.mark.unit


def app() -> web.Application:
    panel = web.Application()
    panel[settings_key] = Settings(environment="test", jwt_secret="x" * 40)
    return panel


def request_with(cookie: str | None) -> web.Request:
    headers = {"Cookie": f"{FLASH_COOKIE}={cookie}"} if cookie is not None else None
    return make_mocked_request("GET", "/admin/users", headers=headers, app=app())


def flashed(kind: str, text: str) -> str:
    """The Set-Cookie value `flash` writes, exactly as it goes on the wire."""
    response = web.Response()
    flash(response, make_mocked_request("POST", "/admin/users", app=app()), kind, text)
    return response.cookies[FLASH_COOKIE].coded_value


def encoded(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode()


@pytest.mark.parametrize("kind", ["success", "error"])
@pytest.mark.parametrize(
    "text",
    ["Saved.", "", "a", "ab", "abc", 'Ünïcödé ✓ "quoted"; semi=colon, comma', "x" * 500],
    ids=["plain", "empty", "pad-2", "pad-1", "pad-0", "unicode-and-cookie-specials", "500-chars"],
)
def test_a_flash_message_round_trips_through_its_cookie(kind: str, text: str) -> None:
    assert take_flash(request_with(flashed(kind, text))) == {"kind": kind, "text": text}


def test_the_flash_cookie_is_short_lived_and_panel_only() -> None:
    response = web.Response()
    flash(response, make_mocked_request("POST", "/admin", app=app()), "success", "ok")
    morsel = response.cookies[FLASH_COOKIE]
    assert (morsel["max-age"], morsel["path"], morsel["samesite"]) == ("60", COOKIE_PATH, "Strict")
    assert morsel["httponly"] is True
    assert not morsel["secure"]


def test_the_flash_cookie_is_secure_in_production() -> None:
    response = web.Response()
    production = web.Application()
    production[settings_key] = Settings(environment="production", jwt_secret="x" * 40)
    flash(response, make_mocked_request("POST", "/admin", app=production), "success", "ok")
    assert response.cookies[FLASH_COOKIE]["secure"] is True


def test_no_cookie_is_no_message() -> None:
    assert take_flash(request_with(None)) is None


def test_long_text_is_cut_to_500_characters() -> None:
    raw = encoded(json.dumps({"kind": "error", "text": "y" * 5000}).encode())
    assert take_flash(request_with(raw)) == {"kind": "error", "text": "y" * 500}


def test_a_non_string_text_is_shown_as_a_string() -> None:
    assert take_flash(request_with(encoded(b'{"kind": "success", "text": 42}'))) == {"kind": "success", "text": "42"}


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "!!!!",
        "abc",
        encoded(b"not json"),
        encoded(b"\xff\xfe\xfd"),
        encoded(b'["success", "text"]'),
        encoded(b'"success"'),
        encoded(b"null"),
        encoded(b'{"text": "no kind"}'),
        encoded(b'{"kind": "info", "text": "unknown kind"}'),
        encoded(b'{"kind": "SUCCESS", "text": "case matters"}'),
        encoded(b'{"kind": null, "text": "x"}'),
    ],
    ids=[
        "empty",
        "not-base64",
        "bad-padding",
        "not-json",
        "not-utf8",
        "json-list",
        "json-string",
        "json-null",
        "no-kind",
        "unknown-kind",
        "upper-case-kind",
        "null-kind",
    ],
)
def test_a_junk_cookie_is_no_message(raw: str) -> None:
    assert take_flash(request_with(raw)) is None


@pytest.mark.parametrize("kind", [b"[]", b"{}"], ids=["list-kind", "object-kind"])
def test_a_cookie_with_an_unhashable_kind_is_no_message(kind: bytes) -> None:
    assert take_flash(request_with(encoded(b'{"kind": ' + kind + b', "text": "x"}'))) is None


def test_a_cookie_with_deeply_nested_json_is_no_message() -> None:
    assert take_flash(request_with(encoded(b"[" * 1000))) is None
