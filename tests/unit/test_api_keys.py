"""The pure parts of API keys (server/services/api_keys.py): the key's format, its hash and prefix, scopes."""

from __future__ import annotations

import hashlib

import pytest

from tidings.server.adapters.codecs import AuthChange, decode_auth, encode_auth
from tidings.server.adapters.errors import InsufficientScope
from tidings.server.services.api_keys import (
    SCOPES,
    KeyPrincipal,
    hash_key,
    is_api_key,
    key_scope,
    new_key,
    required_scope,
    shown_prefix,
)

pytestmark = pytest.mark.unit


def test_a_key_is_tdg_and_32_random_bytes_of_url_safe_text() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert key.startswith("tdg_") and is_api_key(key)
        assert len(key) == 4 + 43  # 32 bytes in unpadded base64
        assert set(key[4:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_only_a_hash_and_a_short_prefix_are_kept() -> None:
    key = "tdg_abcdefghIJKLMNOP"
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert shown_prefix(key) == "abcdefgh"
    # A JWT is never mistaken for a key.
    assert not is_api_key("eyJhbGciOiJIUzI1NiJ9.e30.x")


def test_scopes_are_checked_by_the_principal() -> None:
    principal = KeyPrincipal("64b7f0c2a1b2c3d4e5f60718", "ops", frozenset({"users:read"}), 600, None)
    principal.require("users:read")
    with pytest.raises(InsufficientScope):
        principal.require("notifications:send")
    with pytest.raises(InsufficientScope) as refused:
        principal.require(None)
    assert refused.value.status == 403 and refused.value.code == "insufficient_scope"
    assert principal.actor.sender() == {"type": "key", "id": "64b7f0c2a1b2c3d4e5f60718", "name": "ops"}
    assert principal.actor.label == "API key ops"


def test_handlers_name_known_scopes_only() -> None:
    async def handler() -> None: ...

    assert required_scope(handler) is None
    assert required_scope(key_scope("users:read")(handler)) == "users:read"
    with pytest.raises(ValueError, match="unknown API key scope"):
        key_scope("admin")
    assert set(SCOPES) == {"notifications:send", "users:read"}


def test_a_key_revocation_travels_on_the_auth_topic() -> None:
    change = AuthChange("key", "64b7f0c2a1b2c3d4e5f60718")
    assert encode_auth(change) == b"k:64b7f0c2a1b2c3d4e5f60718"
    assert decode_auth(encode_auth(change)) == change
