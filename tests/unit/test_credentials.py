"""handlers/credentials.py: the bearer token a request carries, and the address it comes from."""

from __future__ import annotations

from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tidings.handlers.credentials import bearer_token, client_address
from tidings.server.keys import settings_key
from tidings.server.settings import Settings

pytestmark = pytest.mark.unit

PEER = "198.51.100.7"


def transport(peer: str | None) -> mock.Mock:
    """A transport whose socket's peer is `peer` (None: no peer, as for a closed or Unix socket)."""
    fake = mock.Mock()
    fake.get_extra_info.side_effect = lambda key, default=None: (peer, 40000) if key == "peername" and peer else default
    return fake


def request(headers: dict[str, str] | None = None, *, trust: bool = False, peer: str | None = PEER) -> web.Request:
    app = web.Application()
    app[settings_key] = Settings(environment="test", jwt_secret="x" * 40, trust_forwarded_for=trust)
    return make_mocked_request("GET", "/api/v1/users/me", headers=headers, app=app, transport=transport(peer))


# bearer_token


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_case_insensitive(scheme: str) -> None:
    assert bearer_token(request({"Authorization": f"{scheme} abc.def.ghi"})) == "abc.def.ghi"


def test_no_authorization_header_is_no_token() -> None:
    assert bearer_token(request()) is None


@pytest.mark.parametrize(
    "value",
    ["Basic dXNlcjpwYXNz", "Token abc", "Bearerabc", "abc.def.ghi", "Bearer:abc", "Bearer\tabc"],
    ids=["basic", "token", "no-space", "bare-token", "colon", "tab"],
)
def test_another_scheme_is_no_token(value: str) -> None:
    assert bearer_token(request({"Authorization": value})) is None


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer ", "Bearer    "], ids=["empty", "scheme", "space", "spaces"])
def test_an_empty_token_is_no_token(value: str) -> None:
    assert bearer_token(request({"Authorization": value})) is None


@pytest.mark.parametrize("value", ["Bearer   abc  ", "Bearer  abc", "Bearer abc \t"], ids=["both", "before", "after"])
def test_spaces_around_the_token_are_dropped(value: str) -> None:
    assert bearer_token(request({"Authorization": value})) == "abc"


# client_address


def test_without_trust_the_socket_peer_is_the_address() -> None:
    assert client_address(request()) == PEER


def test_without_trust_x_forwarded_for_is_ignored() -> None:
    """Otherwise anyone could pick the address their login attempts are counted under."""
    assert client_address(request({"X-Forwarded-For": "203.0.113.1"})) == PEER


@pytest.mark.parametrize(
    ("forwarded", "address"),
    [
        ("203.0.113.1", "203.0.113.1"),
        ("10.0.0.1, 203.0.113.1", "203.0.113.1"),
        ("spoofed, 10.0.0.1,203.0.113.9 ", "203.0.113.9"),
        ("203.0.113.1, ", "203.0.113.1"),
        ("2001:db8::1", "2001:db8::1"),
    ],
    ids=["one-hop", "two-hops", "spoofed-first-hops", "trailing-comma", "ipv6"],
)
def test_with_trust_the_last_forwarded_hop_is_the_address(forwarded: str, address: str) -> None:
    """The trusted proxy appends the address it saw; earlier hops are whatever the client sent."""
    assert client_address(request({"X-Forwarded-For": forwarded}, trust=True)) == address


@pytest.mark.parametrize("headers", [{}, {"X-Forwarded-For": ""}, {"X-Forwarded-For": " , ,"}], ids=repr)
def test_with_trust_but_no_hops_the_socket_peer_is_the_address(headers: dict[str, str]) -> None:
    assert client_address(request(headers, trust=True)) == PEER


def test_without_a_peer_the_address_is_unknown() -> None:
    assert client_address(request(peer=None)) == "unknown"
