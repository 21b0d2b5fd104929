"""Access and refresh tokens that must not work: tampered, expired, of the wrong type or algorithm, forged."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId

from tests.conftest import Account, Accounts, AppFactory
from tests.helpers import API, access_claims, b64url, claims_of, error_of, expired, forge, json_of, resign, sign
from tidings.server.settings import Settings

ME = f"{API}/users/me"
REFRESH = f"{API}/auth/refresh"


async def me_with(client: TestClient[Any, Any], token: str) -> int:
    """GET /users/me with this bearer token; a refusal must be the one 401 for tokens."""
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    if response.status != 200:
        error = await error_of(response, 401, "invalid_token")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Traceback" not in error["message"]
    return response.status


@pytest.fixture
async def me(accounts: Accounts) -> Account:
    return await accounts.user()


async def test_the_untouched_token_works(client: TestClient[Any, Any], me: Account) -> None:
    """The control for every test below: only the change each one makes can explain its 401."""
    assert await me_with(client, me.access_token) == 200


@pytest.mark.parametrize("part", [0, 1, 2])
async def test_tampered_token(client: TestClient[Any, Any], me: Account, part: int) -> None:
    pieces = me.access_token.split(".")
    piece = pieces[part]
    # Change one character in the middle of the part (the last one may only carry padding bits).
    middle = len(piece) // 2
    pieces[part] = piece[:middle] + ("A" if piece[middle] != "A" else "B") + piece[middle + 1 :]
    assert await me_with(client, ".".join(pieces)) == 401


async def test_claims_swapped_under_the_old_signature(
    client: TestClient[Any, Any], accounts: Accounts, me: Account
) -> None:
    admin = await accounts.user(admin=True)
    header, _, signature = me.access_token.split(".")
    # Another (admin) user's genuine claims under my genuine signature.
    assert await me_with(client, f"{header}.{admin.access_token.split('.')[1]}.{signature}") == 401
    # My own claims, re-encoded with the subject changed.
    claims = {**claims_of(me.access_token), "sub": admin.id}
    payload = forge({"alg": "HS256", "typ": "JWT"}, claims).split(".")[1]
    assert await me_with(client, f"{header}.{payload}.{signature}") == 401


@pytest.mark.parametrize("token", ["", "x", "a.b", "a.b.c", "a.b.c.d", "...", "eyJ.eyJ.", "Bearer"])
async def test_garbage_tokens(client: TestClient[Any, Any], token: str) -> None:
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    await error_of(response, 401, "invalid_token" if token.strip() else "not_authenticated")


async def test_expired_access_token(client: TestClient[Any, Any], me: Account, settings: Settings) -> None:
    assert await me_with(client, me.access_token) == 200
    assert await me_with(client, expired(me.access_token, settings.jwt_secret)) == 401
    # The same claims with a future expiry, signed the same way, do work: only the expiry was wrong.
    assert await me_with(client, resign(me.access_token, settings.jwt_secret, exp=int(time.time()) + 60)) == 200


async def test_short_lived_access_token_expires(make_client: AppFactory) -> None:
    client, accounts, settings = await make_client(access_token_ttl=1)
    me = await accounts.user()
    claims = claims_of(me.access_token)
    assert claims["exp"] - claims["iat"] == 1
    assert await me_with(client, me.access_token) == 200
    # "A second later": the same token, re-signed with the test secret as it would look after its expiry.
    assert await me_with(client, resign(me.access_token, settings.jwt_secret, exp=claims["iat"] - 1)) == 401
    # Refreshing still gives a working pair with the same short life.
    response = await client.post(REFRESH, json={"refresh_token": me.refresh_token})
    pair = await json_of(response, 200)
    assert pair["expires_in"] == 1
    assert await me_with(client, pair["access_token"]) == 200


async def test_a_token_seen_before_is_refused_once_it_expires(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token already checked (and cached) must still be refused when its time is up: move the clock on (a
    lifetime long enough that a loaded machine cannot expire it for real between the first two checks)."""
    client, accounts, _ = await make_client(access_token_ttl=60)
    me = await accounts.user()
    assert await me_with(client, me.access_token) == 200
    assert await me_with(client, me.access_token) == 200
    expires_at = claims_of(me.access_token)["exp"]
    monkeypatch.setattr(time, "time", lambda: expires_at + 0.5)
    response = await client.get(ME, headers=me.headers)
    error = await error_of(response, 401, "invalid_token")
    assert "expired" in error["message"]


async def test_refresh_token_is_not_an_access_token(client: TestClient[Any, Any], me: Account) -> None:
    assert await me_with(client, me.refresh_token) == 401


async def test_access_token_is_not_a_refresh_token(client: TestClient[Any, Any], me: Account) -> None:
    response = await client.post(REFRESH, json={"refresh_token": me.access_token})
    await error_of(response, 401, "invalid_token")


async def test_refresh_claims_signed_as_access_are_refused(
    client: TestClient[Any, Any], me: Account, settings: Settings
) -> None:
    """A token's type is in its audience; changing only the type marker elsewhere does not help."""
    refresh_as_access = resign(me.refresh_token, settings.jwt_secret, typ="access")
    assert await me_with(client, refresh_as_access) == 401
    access_as_refresh = resign(me.access_token, settings.jwt_secret, typ="refresh")
    response = await client.post(REFRESH, json={"refresh_token": access_as_refresh})
    await error_of(response, 401, "invalid_token")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_refused(client: TestClient[Any, Any], me: Account, alg: str) -> None:
    claims = claims_of(me.access_token)
    assert await me_with(client, forge({"alg": alg, "typ": "JWT"}, claims)) == 401
    assert await me_with(client, forge({"alg": alg, "typ": "JWT"}, claims)[:-1]) == 401
    # And the refresh endpoint refuses an unsigned refresh token the same way.
    response = await client.post(REFRESH, json={"refresh_token": forge({"alg": alg}, claims_of(me.refresh_token))})
    await error_of(response, 401, "invalid_token")


async def test_forged_rs256_token_is_refused(client: TestClient[Any, Any], me: Account) -> None:
    """An RS256 token from an attacker's own key pair (a random 2048-bit signature stands in for it)."""
    token = forge({"alg": "RS256", "typ": "JWT"}, claims_of(me.access_token), os.urandom(256))
    assert await me_with(client, token) == 401


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256", "PS256", "HS384", "HS512"])
async def test_algorithm_is_pinned_even_with_a_valid_hmac(
    client: TestClient[Any, Any], me: Account, settings: Settings, alg: str
) -> None:
    """HS/RS confusion: a header naming another algorithm over an HMAC made with the real secret.

    HS256 is the control: the same construction with the right algorithm is accepted.
    """
    header = b64url(f'{{"alg":"{alg}","typ":"JWT"}}'.encode())
    payload = me.access_token.split(".")[1]
    signing_input = f"{header}.{payload}".encode()
    digest = {"HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(alg, hashlib.sha256)
    signature = hmac.new(settings.jwt_secret.encode(), signing_input, digest).digest()
    expected = 200 if alg == "HS256" else 401
    assert await me_with(client, f"{header}.{payload}.{b64url(signature)}") == expected


@pytest.mark.parametrize("key", ["wrong-secret-" + "y" * 40, "", "test-secret-" + "x" * 39])
async def test_hs256_with_the_wrong_key_is_refused(client: TestClient[Any, Any], me: Account, key: str) -> None:
    claims = claims_of(me.access_token)
    header = b64url(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{me.access_token.split('.')[1]}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert await me_with(client, f"{signing_input}.{b64url(signature)}") == 401
    assert await me_with(client, forge({"alg": "HS256", "typ": "JWT"}, claims, os.urandom(32))) == 401


@pytest.mark.parametrize("claim", ["sub", "sid", "jti", "ver", "exp", "iat", "aud", "iss"])
async def test_every_claim_is_required(
    client: TestClient[Any, Any], me: Account, settings: Settings, claim: str
) -> None:
    assert await me_with(client, resign(me.access_token, settings.jwt_secret, **{claim: None})) == 401


@pytest.mark.parametrize(
    "changes",
    [
        {"iss": "someone-else"},
        {"aud": "tidings:admin"},
        {"aud": ["tidings:refresh"]},
        {"ver": "0"},
        {"ver": True},
        {"ver": 0.0},
        {"sub": 12345},
        {"sid": ["x"]},
        {"jti": 1},
        {"sub": "not-an-object-id"},
        {"sid": "not-an-object-id"},
        {"nbf": 4102444800},
        {"iat": "yesterday"},
    ],
)
async def test_malformed_claims_are_refused(
    client: TestClient[Any, Any], me: Account, settings: Settings, changes: dict[str, Any]
) -> None:
    assert await me_with(client, resign(me.access_token, settings.jwt_secret, **changes)) == 401


async def test_validly_signed_token_for_an_unknown_user(client: TestClient[Any, Any], settings: Settings) -> None:
    claims = access_claims(str(PydanticObjectId()), str(PydanticObjectId()))
    assert await me_with(client, sign(settings.jwt_secret, claims)) == 401


async def test_validly_signed_token_for_an_unknown_session(
    client: TestClient[Any, Any], me: Account, settings: Settings
) -> None:
    token = resign(me.access_token, settings.jwt_secret, sid=str(PydanticObjectId()))
    assert await me_with(client, token) == 401


async def test_validly_signed_token_with_another_users_session(
    client: TestClient[Any, Any], accounts: Accounts, me: Account, settings: Settings
) -> None:
    admin = await accounts.user(admin=True)
    token = resign(me.access_token, settings.jwt_secret, sub=admin.id)
    assert await me_with(client, token) == 401
    token = resign(admin.access_token, settings.jwt_secret, sid=claims_of(me.access_token)["sid"])
    assert await me_with(client, token) == 401


async def test_validly_signed_token_with_another_version(
    client: TestClient[Any, Any], me: Account, settings: Settings
) -> None:
    assert await me_with(client, resign(me.access_token, settings.jwt_secret, ver=1)) == 401
    assert await me_with(client, resign(me.access_token, settings.jwt_secret, ver=-1)) == 401


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "JWT abc"],
)
async def test_missing_or_foreign_authorization_header(client: TestClient[Any, Any], header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await client.get(ME, headers=headers)
    error = await error_of(response, 401, "not_authenticated")
    assert "bearer" in error["message"].lower()
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tidings"'


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_bearer_scheme_is_case_insensitive(client: TestClient[Any, Any], me: Account, scheme: str) -> None:
    response = await client.get(ME, headers={"Authorization": f"{scheme} {me.access_token}"})
    assert (await json_of(response, 200))["id"] == me.id


async def test_token_is_not_taken_from_the_query_string(client: TestClient[Any, Any], me: Account) -> None:
    response = await client.get(ME, params={"access_token": me.access_token})
    await error_of(response, 401, "not_authenticated")
