"""The pure parts of idempotent requests (server/services/idempotency.py): the header's rule, record ids and
fingerprints."""

from __future__ import annotations

import pytest

from tidings.server.adapters.errors import ValidationFailed
from tidings.server.services.idempotency import check_key, fingerprint, record_id
from tidings.server.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("key", ["a", "order-42", " spaced out ", "~" * 255, "".join(chr(c) for c in range(32, 127))])
def test_printable_ascii_keys_of_1_to_255_characters_are_accepted(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "new\nline", "caf\u00e9", "\x7f", "nul\x00"])
def test_other_keys_are_a_422_naming_the_header(key: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        check_key(key)
    assert refused.value.status == 422 and "Idempotency-Key" in refused.value.details


def test_records_are_scoped_per_caller() -> None:
    assert record_id("user:1", "k") == record_id("user:1", "k")
    assert len({record_id("user:1", "k"), record_id("key:1", "k"), record_id("user:2", "k")}) == 3
    assert len(record_id("user:1", "k")) == 64


def test_a_fingerprint_ignores_key_order_but_not_values_or_the_operation() -> None:
    body = {"title": "t", "user_ids": ["a", "b"], "data": {"x": 1, "y": 2}}
    reordered = {"data": {"y": 2, "x": 1}, "user_ids": ["a", "b"], "title": "t"}
    assert fingerprint("send", body) == fingerprint("send", reordered)
    assert fingerprint("send", body) != fingerprint("send", {**body, "user_ids": ["b", "a"]})
    assert fingerprint("send", body) != fingerprint("send_batch", body)


def test_the_ttl_is_a_setting() -> None:
    secret = {"JWT_SECRET": "s" * 40, "TIDINGS_ENV": "test"}
    assert Settings.from_env(secret).idempotency_ttl == 86_400
    assert Settings.from_env({**secret, "IDEMPOTENCY_TTL": "3600"}).idempotency_ttl == 3600
    with pytest.raises(SettingsError, match="IDEMPOTENCY_TTL"):
        Settings.from_env({**secret, "IDEMPOTENCY_TTL": "0"})
