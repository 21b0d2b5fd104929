"""server/adapters/security.py: JWTs that must and must not decode, and argon2id password checks."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import jwt
import pytest
from argon2 import PasswordHasher

from tests.helpers import claims_of, forge, sign
from tidings.server.adapters import security
from tidings.server.adapters.security import (
    AUDIENCES,
    ISSUER,
    REQUIRED_CLAIMS,
    InvalidTokenError,
    Passwords,
    Tokens,
    TokenType,
)
from tidings.server.settings import Settings

pytestmark = pytest.mark.unit

# 64 bytes: long enough for HS512 too, so signing with it below raises no key-length warning.
SECRET = "unit-secret-" + "x" * 52
KINDS: list[TokenType] = ["access", "refresh", "panel"]
USER_ID = "64b7f0c2a1b2c3d4e5f60718"
SESSION_ID = "64b7f0c2a1b2c3d4e5f60719"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "jwt_secret": SECRET,
        "password_time_cost": 1,
        "password_memory_kib": 1024,
    }
    values.update(overrides)
    return Settings(**values).checked()


class ShiftedClock:
    """Stands in for the `time` module of security.py: time() is the real time moved by `offset` seconds."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(settings())


def issue(tokens: Tokens, kind: TokenType = "access", **kwargs: Any) -> str:
    return tokens.issue(kind, user_id=USER_ID, session_id=SESSION_ID, version=3, **kwargs)


def valid_claims(kind: TokenType = "access") -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCES[kind],
        "sub": USER_ID,
        "sid": SESSION_ID,
        "jti": "j" * 32,
        "ver": 0,
        "iat": now,
        "exp": now + 60,
    }


# Tokens


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_decodes_as_its_own_type(tokens: Tokens, kind: TokenType) -> None:
    before = int(time.time())
    claims = tokens.decode(kind, issue(tokens, kind, jti="the-jti"))
    after = time.time()
    assert (claims.user_id, claims.session_id, claims.jti, claims.version) == (USER_ID, SESSION_ID, "the-jti", 3)
    assert before <= claims.issued_at <= after
    assert claims.expires_at - claims.issued_at == tokens.ttl[kind]


def test_each_type_lives_as_long_as_its_setting(tokens: Tokens) -> None:
    configured = settings()
    assert tokens.ttl == {
        "access": configured.access_token_ttl,
        "refresh": configured.refresh_token_ttl,
        "panel": configured.panel_session_ttl,
    }


def test_the_token_is_hs256_with_issuer_and_audience(tokens: Tokens) -> None:
    token = issue(tokens, "refresh")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = claims_of(token)
    assert (claims["iss"], claims["aud"]) == ("tidings", "tidings:refresh")
    assert set(claims) == set(REQUIRED_CLAIMS)


def test_every_token_gets_its_own_jti(tokens: Tokens) -> None:
    jtis = {tokens.decode("access", issue(tokens)).jti for _ in range(20)}
    assert len(jtis) == 20
    assert all(len(jti) == 32 and int(jti, 16) >= 0 for jti in jtis)


@pytest.mark.parametrize(("issued", "expected"), [p for p in itertools.permutations(KINDS, 2)])
def test_a_token_of_one_type_is_refused_as_another(tokens: Tokens, issued: TokenType, expected: TokenType) -> None:
    """Audience separation: e.g. an access token is never a refresh token nor a panel session."""
    with pytest.raises(InvalidTokenError, match=r"(?i)audience"):
        tokens.decode(expected, issue(tokens, issued))


def test_an_expired_token_is_refused(tokens: Tokens, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "time", ShiftedClock(-(tokens.ttl["access"] + 5)))
    token = issue(tokens)
    with pytest.raises(InvalidTokenError, match="expired"):
        tokens.decode("access", token)


def test_a_token_issued_a_little_earlier_is_still_valid(tokens: Tokens, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the expiry test: only the expiry explains its refusal."""
    monkeypatch.setattr(security, "time", ShiftedClock(-(tokens.ttl["access"] - 30)))
    assert tokens.decode("access", issue(tokens)).user_id == USER_ID


@pytest.mark.parametrize("part", [0, 1, 2], ids=["header", "payload", "signature"])
def test_a_tampered_token_is_refused(tokens: Tokens, part: int) -> None:
    pieces = issue(tokens).split(".")
    middle = len(pieces[part]) // 2
    pieces[part] = pieces[part][:middle] + ("A" if pieces[part][middle] != "A" else "B") + pieces[part][middle + 1 :]
    with pytest.raises(InvalidTokenError):
        tokens.decode("access", ".".join(pieces))


def test_claims_changed_under_the_old_signature_are_refused(tokens: Tokens) -> None:
    token = issue(tokens)
    header, _, signature = token.split(".")
    payload = forge({"alg": "HS256", "typ": "JWT"}, {**claims_of(token), "sub": "another-user"}).split(".")[1]
    with pytest.raises(InvalidTokenError, match="Signature"):
        tokens.decode("access", f"{header}.{payload}.{signature}")


def test_a_token_signed_with_another_secret_is_refused(tokens: Tokens) -> None:
    other = Tokens(settings(jwt_secret="another-secret-" + "y" * 49))
    with pytest.raises(InvalidTokenError, match="Signature"):
        tokens.decode("access", issue(other))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("signature", [b"", b"x"], ids=["unsigned", "junk-signature"])
def test_an_alg_none_token_is_refused(tokens: Tokens, alg: str, signature: bytes) -> None:
    forged = forge({"alg": alg, "typ": "JWT"}, valid_claims(), signature)
    with pytest.raises(InvalidTokenError):
        tokens.decode("access", forged)


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_the_algorithm_is_pinned_even_with_the_right_secret(tokens: Tokens, algorithm: str) -> None:
    with pytest.raises(InvalidTokenError, match="alg value is not allowed"):
        tokens.decode("access", sign(SECRET, valid_claims(), algorithm))


def test_a_hand_signed_token_with_every_claim_is_accepted(tokens: Tokens) -> None:
    """The control for the claim tests below."""
    claims = tokens.decode("access", sign(SECRET, valid_claims()))
    assert (claims.user_id, claims.version) == (USER_ID, 0)


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_every_claim_is_required(tokens: Tokens, claim: str) -> None:
    claims = valid_claims()
    del claims[claim]
    with pytest.raises(InvalidTokenError):
        tokens.decode("access", sign(SECRET, claims))


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", 42), ("sid", ["s"]), ("jti", 7), ("ver", "1"), ("ver", True), ("ver", 1.0), ("iss", "someone-else")],
    ids=["int-sub", "list-sid", "int-jti", "string-ver", "bool-ver", "float-ver", "foreign-issuer"],
)
def test_malformed_claims_are_refused(tokens: Tokens, claim: str, value: Any) -> None:
    with pytest.raises(InvalidTokenError):
        tokens.decode("access", sign(SECRET, {**valid_claims(), claim: value}))


@pytest.mark.parametrize("token", ["", "x", "a.b", "a.b.c", "a.b.c.d", "..."])
def test_garbage_is_an_invalid_token(tokens: Tokens, token: str) -> None:
    with pytest.raises(InvalidTokenError):
        tokens.decode("access", token)


def test_the_secret_is_prepared_once_not_for_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyJWT's key preparation (encoding, PEM/SSH/DER/JWK checks) runs when Tokens is built, not per token."""
    prepared: list[str | bytes] = []
    original = jwt.algorithms.HMACAlgorithm.prepare_key

    def spy(self: jwt.algorithms.HMACAlgorithm, key: str | bytes) -> bytes:
        prepared.append(key)
        return original(self, key)

    hand_signed = sign(SECRET, valid_claims())  # before the spy: PyJWT's own encode prepares the key each time
    monkeypatch.setattr(jwt.algorithms.HMACAlgorithm, "prepare_key", spy)
    tokens = Tokens(settings())
    assert prepared == [SECRET]
    for kind in KINDS:
        assert tokens.decode(kind, issue(tokens, kind)).user_id == USER_ID
    assert tokens.decode("access", hand_signed).version == 0
    assert prepared == [SECRET]


def test_a_secret_pyjwt_refuses_is_refused_when_tokens_are_built() -> None:
    """As PyJWT refuses it per token (an asymmetric key as an HMAC secret), but at start-up."""
    pem = "-----BEGIN PUBLIC KEY-----\n" + "A" * 64 + "\n-----END PUBLIC KEY-----\n"
    with pytest.raises(jwt.InvalidKeyError):
        Tokens(settings(jwt_secret=pem))


def test_tokens_leave_pyjwt_itself_as_it_was(tokens: Tokens) -> None:
    """Tokens has a PyJWT of its own: the module's functions keep every algorithm and check the key as before."""
    token = issue(tokens)
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCES["access"], issuer=ISSUER)
    assert payload["sub"] == USER_ID
    assert jwt.decode(sign(SECRET, valid_claims(), "HS512"), SECRET, algorithms=["HS512"], audience=AUDIENCES["access"])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-" + "y" * 49, algorithms=["HS256"], audience=AUDIENCES["access"])


# Passwords


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


@pytest.fixture
def passwords(executor: ThreadPoolExecutor) -> Passwords:
    return Passwords(settings(), executor)


async def test_a_hash_verifies_its_password(passwords: Passwords) -> None:
    hashed = await passwords.hash("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert "m=1024,t=1,p=1" in hashed
    assert await passwords.verify(hashed, "correct horse battery") == (True, False)


async def test_hashes_are_salted(passwords: Passwords) -> None:
    assert await passwords.hash("same password") != await passwords.hash("same password")


@pytest.mark.parametrize("wrong", ["correct horse batterY", "correct horse battery ", "", "x" * 128])
async def test_a_wrong_password_does_not_verify(passwords: Passwords, wrong: str) -> None:
    hashed = await passwords.hash("correct horse battery")
    assert await passwords.verify(hashed, wrong) == (False, False)


@pytest.mark.parametrize("bad_hash", ["", "plain-text", "$argon2id$v=19$m=1024,t=1,p=1$garbage", "$2b$12$abc"])
async def test_a_malformed_hash_does_not_verify(passwords: Passwords, bad_hash: str) -> None:
    assert await passwords.verify(bad_hash, "anything") == (False, False)


async def test_no_hash_burns_an_argon2_verification_and_fails(
    passwords: Passwords, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown email costs one real verification (against the dummy hash), so timing does not tell."""
    verified: list[str | bytes] = []
    original = PasswordHasher.verify

    def spy(self: PasswordHasher, hash: str | bytes, password: str | bytes) -> Literal[True]:
        verified.append(hash)
        return original(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", spy)
    assert await passwords.verify(None, "correct horse battery") == (False, False)
    assert len(verified) == 1
    assert isinstance(verified[0], str)
    assert verified[0].startswith("$argon2id$")


async def test_no_hash_fails_even_when_the_password_matches_the_dummy(passwords: Passwords) -> None:
    passwords._dummy_hash = await passwords.hash("guessed")
    assert await passwords.verify(None, "guessed") == (False, False)


async def test_a_hash_with_other_parameters_verifies_and_needs_a_rehash(executor: ThreadPoolExecutor) -> None:
    old = Passwords(settings(password_time_cost=2), executor)
    current = Passwords(settings(), executor)
    hashed = await old.hash("correct horse battery")
    assert await current.verify(hashed, "correct horse battery") == (True, True)
    assert await current.verify(hashed, "wrong") == (False, False)
