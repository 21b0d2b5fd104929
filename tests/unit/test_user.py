"""documents/user.py: the keys uniqueness of emails and usernames is checked on, and the keys user search matches."""

from __future__ import annotations

import pytest

from tidings.documents.user import SEARCH_PREFIX_MAX, email_key, search_keys_for, username_key

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("email", "key"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Alice@Example.COM", "alice@example.com"),
        ("  bob@example.com\t\n", "bob@example.com"),
        ("Straße@Example.de", "strasse@example.de"),
        ("İNFO@example.org", "info@example.org"),
        ("ınfo@example.org", "info@example.org"),
        ("ｉｎｆｏ@ｅｘａｍｐｌｅ.org", "info@example.org"),
        ("user@Bücher.example", "user@xn--bcher-kva.example"),
        ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ("jürgen@example.org", "jürgen@example.org"),
        ("a@b..c", "a@b..c"),
        ("no-at-sign", "no-at-sign"),
    ],
    ids=[
        "unchanged",
        "mixed-case",
        "surrounding-whitespace",
        "sharp-s-folds",
        "dotted-capital-i",
        "dotless-i",
        "fullwidth",
        "idn-domain",
        "punycode-domain",
        "other-accents-kept",
        "invalid-idn-never-raises",
        "not-an-address",
    ],
)
def test_email_key_folds_lookalikes(email: str, key: str) -> None:
    assert email_key(email) == key


def test_ascii_addresses_keep_their_lower_case_keys() -> None:
    """Keys stored before the lookalike policy (plain lower case) are what the policy gives for ASCII."""
    for email in ("Alice.Smith+tag@Example.COM", "x_y-z@sub.example.co.uk"):
        assert email_key(email) == email.lower()


@pytest.mark.parametrize(
    ("username", "key"),
    [
        ("alice", "alice"),
        ("Alice_Smith", "alice_smith"),
        (" \tcarol.x \n", "carol.x"),
        ("Straße", "strasse"),
        ("STRASSE", "strasse"),
    ],
    ids=["unchanged", "mixed-case", "surrounding-whitespace", "sharp-s-folds", "upper-ss"],
)
def test_username_key_strips_and_case_folds(username: str, key: str) -> None:
    assert username_key(username) == key


def test_username_key_makes_sharp_s_and_ss_the_same_name() -> None:
    assert username_key("Straße") == username_key("STRASSE")


def test_search_keys_are_every_prefix_of_both_keys_up_to_the_max() -> None:
    keys = search_keys_for("ada@example.com", "lovelace")
    assert keys[:3] == ["a", "ad", "ada"]
    assert "ada@example.com"[:SEARCH_PREFIX_MAX] in keys
    assert "ada@example.com" in keys  # 15 characters: the whole key
    assert {"l", "lo", "lovelace"} <= set(keys)
    assert all(1 <= len(key) <= SEARCH_PREFIX_MAX for key in keys)
    assert len(keys) == len("ada@example.com") + len("lovelace")


def test_search_keys_stop_at_the_max_and_hold_each_prefix_once() -> None:
    email = "a.very.long.local.part@example.com"
    keys = search_keys_for(email, "a.very")
    assert max(map(len, keys)) == SEARCH_PREFIX_MAX
    assert email[: SEARCH_PREFIX_MAX + 1] not in keys
    assert len(keys) == len(set(keys)) == SEARCH_PREFIX_MAX  # the username's prefixes are the email's
    assert search_keys_for("", "") == []


def test_search_keys_follow_the_keys_not_the_raw_values() -> None:
    keys = search_keys_for(email_key("Straße@Example.de"), username_key("Dora_X"))
    assert {"strasse", "dora_x"} <= set(keys)
    assert "Stra" not in keys
