"""POST /auth/register, /auth/login, /auth/refresh, /auth/logout and /auth/logout-all, and the live page's session
(/auth/page/login, /auth/page/refresh and /auth/page/logout, whose refresh token is a cookie)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from http.cookies import Morsel, SimpleCookie
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId

from tests.conftest import PASSWORD, Account, Accounts, AppFactory
from tests.helpers import API, claims_of, error_of, expired, json_of
from tidings.documents import Session, User
from tidings.server.settings import Settings

REGISTER = f"{API}/auth/register"
LOGIN = f"{API}/auth/login"
REFRESH = f"{API}/auth/refresh"
LOGOUT = f"{API}/auth/logout"
LOGOUT_ALL = f"{API}/auth/logout-all"
ME = f"{API}/users/me"
PAGE = f"{API}/auth/page"
COOKIE = "tidings_refresh"
FROM_PAGE = {"X-Requested-With": "tidings"}

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
PUBLIC_FIELDS = {
    "id",
    "email",
    "username",
    "full_name",
    "bio",
    "is_active",
    "is_admin",
    "email_verified",
    "pending_email",
    "email_digest",
    "created_at",
    "updated_at",
}


def new_user(**fields: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    return {"email": f"reg-{tag}@example.com", "username": f"reg_{tag}", "password": PASSWORD, **fields}


async def can_log_in(client: TestClient[Any, Any], email: str, password: str = PASSWORD) -> bool:
    response = await client.post(LOGIN, json={"email": email, "password": password})
    assert response.status in (200, 401), await response.text()
    return response.status == 200


async def me_status(client: TestClient[Any, Any], access_token: str) -> int:
    response = await client.get(ME, headers={"Authorization": f"Bearer {access_token}"})
    if response.status == 401:
        await error_of(response, 401, "invalid_token")
    return response.status


async def refresh(client: TestClient[Any, Any], refresh_token: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(REFRESH, json={"refresh_token": refresh_token})
    body: dict[str, Any] = await response.json()
    return response.status, body


# Register


async def test_register_returns_the_public_user(client: TestClient[Any, Any]) -> None:
    data = new_user(full_name="Ada Lovelace")
    response = await client.post(REGISTER, json=data)
    body = await json_of(response, 201)
    assert set(body) == PUBLIC_FIELDS
    assert body["email"] == data["email"]
    assert body["username"] == data["username"]
    assert body["full_name"] == "Ada Lovelace"
    assert body["bio"] is None
    assert body["is_active"] is True
    assert body["is_admin"] is False
    assert PydanticObjectId(body["id"])
    for stamp in ("created_at", "updated_at"):
        assert TIMESTAMP.fullmatch(body[stamp]), body[stamp]
    # What a later read returns, to the millisecond.
    user = await User.get(PydanticObjectId(body["id"]))
    assert user is not None
    assert datetime.fromisoformat(body["created_at"]) == user.created_at


async def test_register_without_full_name(client: TestClient[Any, Any]) -> None:
    body = await json_of(await client.post(REGISTER, json=new_user()), 201)
    assert body["full_name"] is None


async def test_password_is_stored_as_an_argon2id_hash(client: TestClient[Any, Any]) -> None:
    body = await json_of(await client.post(REGISTER, json=new_user()), 201)
    user = await User.get(PydanticObjectId(body["id"]))
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


@pytest.mark.parametrize("field", ["email", "username"])
async def test_register_duplicate_is_409_case_insensitively(client: TestClient[Any, Any], field: str) -> None:
    first = new_user(email="Dup.Person@Example.com", username="Dup_Person")
    await json_of(await client.post(REGISTER, json=first), 201)
    second = new_user()
    second[field] = first[field].upper() if field == "email" else first[field].lower()
    error = await error_of(await client.post(REGISTER, json=second), 409, "conflict")
    assert error["details"] == {"field": field}
    # The loser was not stored under its other, free value either.
    other = "username" if field == "email" else "email"
    third = new_user(**{other: second[other]})
    await json_of(await client.post(REGISTER, json=third), 201)


@pytest.mark.parametrize("variant", [str, str.upper], ids=["identical", "case-variant"])
async def test_register_race_yields_one_201_and_one_409(client: TestClient[Any, Any], variant: Any) -> None:
    data = new_user()
    twin = {**data, "email": variant(data["email"]), "username": variant(data["username"])}
    responses = await asyncio.gather(client.post(REGISTER, json=data), client.post(REGISTER, json=twin))
    statuses = sorted(response.status for response in responses)
    assert statuses == [201, 409], [await response.text() for response in responses]
    loser = next(response for response in responses if response.status == 409)
    error = await error_of(loser, 409, "conflict")
    assert error["details"]["field"] in {"email", "username"}
    assert await User.find({"email_key": data["email"].lower()}).count() == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": "a" * 250 + "@example.com"}, "email"),
        ({"username": "ab"}, "username"),
        ({"username": "a" * 33}, "username"),
        ({"username": "has space"}, "username"),
        ({"username": "semi;colon"}, "username"),
        ({"password": "short12"}, "password"),
        ({"password": "p" * 129}, "password"),
        ({"full_name": "n" * 101}, "full_name"),
        ({"email": 12345}, "email"),
        ({"username": ["list"]}, "username"),
        ({"password": 1234567890}, "password"),
        ({"full_name": 7}, "full_name"),
        ({"email": None}, "email"),
    ],
)
async def test_register_rejects_invalid_input(
    client: TestClient[Any, Any], changes: dict[str, Any], field: str
) -> None:
    data = new_user(**changes)
    error = await error_of(await client.post(REGISTER, json=data), 422, "validation_error")
    assert set(error["details"]) == {field}
    assert await User.find_all().count() == 0


@pytest.mark.parametrize("missing", ["email", "username", "password"])
async def test_register_requires_each_field(client: TestClient[Any, Any], missing: str) -> None:
    data = new_user()
    del data[missing]
    error = await error_of(await client.post(REGISTER, json=data), 422, "validation_error")
    assert error["details"] == {missing: ["Missing data for required field."]}


@pytest.mark.parametrize("password", ["p" * 8, "p" * 128, "pässwörd ünïcode ✓"])
async def test_register_accepts_passwords_within_bounds(client: TestClient[Any, Any], password: str) -> None:
    data = new_user(password=password)
    await json_of(await client.post(REGISTER, json=data), 201)
    assert await can_log_in(client, data["email"], password)


@pytest.mark.parametrize("extra", [{"is_admin": True}, {"is_active": False}, {"token_version": 5}, {"id": "x"}])
async def test_register_refuses_mass_assignment(client: TestClient[Any, Any], extra: dict[str, Any]) -> None:
    data = new_user(**extra)
    error = await error_of(await client.post(REGISTER, json=data), 422, "validation_error")
    assert error["details"] == {name: ["Unknown field."] for name in extra}
    assert not await can_log_in(client, data["email"])
    # Nothing was stored: the same email and username are still free.
    body = await json_of(
        await client.post(REGISTER, json=new_user(email=data["email"], username=data["username"])), 201
    )
    assert body["is_admin"] is False
    assert body["is_active"] is True


@pytest.mark.parametrize("field", ["email", "username", "password", "full_name"])
@pytest.mark.parametrize("operator", [{"$gt": ""}, {"$ne": None}, {"$regex": ".*"}])
async def test_register_refuses_operator_objects(
    client: TestClient[Any, Any], field: str, operator: dict[str, Any]
) -> None:
    error = await error_of(await client.post(REGISTER, json=new_user(**{field: operator})), 422, "validation_error")
    assert list(error["details"]) == [field]
    assert await User.find_all().count() == 0


# Login


async def test_login_returns_a_token_pair(client: TestClient[Any, Any], accounts: Accounts, settings: Settings) -> None:
    user = await accounts.register()
    response = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    body = await json_of(response, 200)
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl
    access, refresh_ = claims_of(body["access_token"]), claims_of(body["refresh_token"])
    assert access["sub"] == refresh_["sub"] == user["id"]
    assert access["sid"] == refresh_["sid"]
    assert access["jti"] != refresh_["jti"]
    assert access["aud"] != refresh_["aud"]
    assert access["exp"] - access["iat"] == settings.access_token_ttl
    assert refresh_["exp"] - refresh_["iat"] == settings.refresh_token_ttl
    me = await json_of(await client.get(ME, headers={"Authorization": f"Bearer {body['access_token']}"}), 200)
    assert me["id"] == user["id"]


async def test_each_login_is_a_new_session(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.register()
    first, second = await accounts.login(user["email"]), await accounts.login(user["email"])
    assert claims_of(first["access_token"])["sid"] != claims_of(second["access_token"])["sid"]


async def test_login_email_is_case_insensitive(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.register()
    response = await client.post(LOGIN, json={"email": user["email"].upper(), "password": PASSWORD})
    body = await json_of(response, 200)
    assert claims_of(body["access_token"])["sub"] == user["id"]


async def test_unknown_email_and_wrong_password_look_the_same(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.register()
    wrong_password = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD + "!"})
    unknown_email = await client.post(LOGIN, json={"email": "nobody@example.com", "password": PASSWORD})
    first = await error_of(wrong_password, 401, "invalid_credentials")
    second = await error_of(unknown_email, 401, "invalid_credentials")
    assert first == second
    assert wrong_password.headers["WWW-Authenticate"] == unknown_email.headers["WWW-Authenticate"]


async def test_login_is_case_sensitive_on_the_password(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.register()
    response = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD.upper()})
    await error_of(response, 401, "invalid_credentials")


async def test_deactivated_user_cannot_log_in(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.register()
    response = await client.patch(f"{API}/users/{user['id']}", json={"is_active": False}, headers=admin.headers)
    await json_of(response, 200)
    right = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    error = await error_of(right, 403, "forbidden")
    assert "deactivated" in error["message"]
    # A wrong password says nothing about the account's state.
    wrong = await client.post(LOGIN, json={"email": user["email"], "password": "wrong password"})
    await error_of(wrong, 401, "invalid_credentials")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": {"$gt": ""}, "password": PASSWORD}, "email"),
        ({"email": {"$ne": "x"}, "password": {"$ne": "x"}}, None),
        ({"email": "someone@example.com", "password": {"$gt": ""}}, "password"),
        ({"email": "someone@example.com"}, "password"),
        ({"password": PASSWORD}, "email"),
        ({"email": "someone@example.com", "password": "p" * 129}, "password"),
        ({"email": "e" * 255, "password": PASSWORD}, "email"),
        ({"email": "someone@example.com", "password": PASSWORD, "remember": True}, "remember"),
    ],
)
async def test_login_refuses_bad_input(
    client: TestClient[Any, Any], accounts: Accounts, body: dict[str, Any], field: str | None
) -> None:
    await accounts.register(email="someone@example.com")
    error = await error_of(await client.post(LOGIN, json=body), 422, "validation_error")
    if field is None:
        assert set(error["details"]) == {"email", "password"}
    else:
        assert list(error["details"]) == [field]


async def test_login_rate_limited_per_account(make_client: AppFactory) -> None:
    client, accounts, settings = await make_client(login_attempts_per_account=3, login_window_seconds=60)
    victim = await accounts.register()
    bystander = await accounts.register()
    for _ in range(3):
        response = await client.post(LOGIN, json={"email": victim["email"], "password": "wrong password"})
        await error_of(response, 401, "invalid_credentials")
    # Even the right password is refused now, with the same answer for any spelling of the email.
    for email in (victim["email"], victim["email"].upper()):
        response = await client.post(LOGIN, json={"email": email, "password": PASSWORD})
        error = await error_of(response, 429, "rate_limited")
        retry_after = int(response.headers["Retry-After"])
        assert 1 <= retry_after <= settings.login_window_seconds
        assert error["details"] == {"retry_after": retry_after}
        assert "account" in error["message"]
    # Another account from the same address is not affected.
    await accounts.login(bystander["email"])


async def test_unknown_accounts_are_rate_limited_too(make_client: AppFactory) -> None:
    client, _, _ = await make_client(login_attempts_per_account=2)
    for status in (401, 401, 429):
        response = await client.post(LOGIN, json={"email": "ghost@example.com", "password": PASSWORD})
        await error_of(response, status, "invalid_credentials" if status == 401 else "rate_limited")


async def test_successful_login_resets_the_account_failures(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(login_attempts_per_account=3)
    user = await accounts.register()
    for _ in range(2):
        for _ in range(2):
            response = await client.post(LOGIN, json={"email": user["email"], "password": "wrong password"})
            await error_of(response, 401, "invalid_credentials")
        await accounts.login(user["email"])


async def test_login_rate_limited_per_address(make_client: AppFactory) -> None:
    client, accounts, settings = await make_client(login_attempts_per_address=4, login_window_seconds=120)
    user = await accounts.register()
    for index in range(4):
        response = await client.post(LOGIN, json={"email": f"nobody{index}@example.com", "password": PASSWORD})
        await error_of(response, 401, "invalid_credentials")
    response = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    error = await error_of(response, 429, "rate_limited")
    assert "address" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= settings.login_window_seconds


async def test_many_accounts_log_in_from_one_address(make_client: AppFactory) -> None:
    # An office behind NAT, or every client behind a proxy without TRUST_FORWARDED_FOR: one address, many people.
    client, accounts, settings = await make_client()
    assert settings.login_failures_per_address == 30  # the defaults, not a raised limit
    assert settings.login_attempts_per_address >= 200
    users = [await accounts.register() for _ in range(200)]
    for user in users:
        response = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
        await json_of(response, 200)


async def test_failures_from_one_address_are_stopped_across_accounts(make_client: AppFactory) -> None:
    # Guessing one password over many accounts (credential stuffing) is stopped by the address's failures, which
    # successful logins in between neither reset nor hide.
    client, accounts, settings = await make_client(login_failures_per_address=5, login_window_seconds=120)
    insider, victim = await accounts.register(), await accounts.register()
    for index in range(5):
        await accounts.login(insider["email"])
        response = await client.post(LOGIN, json={"email": f"guess{index}@example.com", "password": "Summer2026!"})
        await error_of(response, 401, "invalid_credentials")
    for email in (victim["email"], insider["email"]):
        response = await client.post(LOGIN, json={"email": email, "password": PASSWORD})
        error = await error_of(response, 429, "rate_limited")
        assert "failed logins from this address" in error["message"]
        assert 1 <= int(response.headers["Retry-After"]) <= settings.login_window_seconds


async def test_the_ceiling_counts_every_attempt_from_an_address(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(login_attempts_per_address=3)
    user = await accounts.register()
    for _ in range(3):
        await accounts.login(user["email"])
    response = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    error = await error_of(response, 429, "rate_limited")
    assert "login attempts from this address" in error["message"]


@pytest.mark.parametrize("trusted", [False, True])
async def test_forwarded_for_is_only_believed_when_trusted(make_client: AppFactory, trusted: bool) -> None:
    client, accounts, _ = await make_client(login_attempts_per_address=2, trust_forwarded_for=trusted)
    user = await accounts.register()
    for hop in ("10.0.0.1", "10.0.0.1"):
        response = await client.post(
            LOGIN, json={"email": user["email"], "password": PASSWORD}, headers={"X-Forwarded-For": hop}
        )
        await json_of(response, 200)
    # A third attempt from a new (claimed) address: only a trusted proxy's header gives it a fresh budget.
    response = await client.post(
        LOGIN, json={"email": user["email"], "password": PASSWORD}, headers={"X-Forwarded-For": "1.2.3.4, 10.0.0.2"}
    )
    if trusted:
        await json_of(response, 200)
    else:
        await error_of(response, 429, "rate_limited")


# Refresh


async def test_refresh_rotates_the_pair(client: TestClient[Any, Any], accounts: Accounts, settings: Settings) -> None:
    me = await accounts.user()
    status, body = await refresh(client, me.refresh_token)
    assert status == 200, body
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl
    assert body["refresh_token"] != me.refresh_token
    old, new = claims_of(me.refresh_token), claims_of(body["refresh_token"])
    assert new["sid"] == old["sid"]
    assert new["jti"] != old["jti"]
    assert await me_status(client, body["access_token"]) == 200
    # The new refresh token can be rotated in turn.
    status, again = await refresh(client, body["refresh_token"])
    assert status == 200, again


async def test_refresh_reuse_revokes_the_whole_family(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    other_session = await accounts.login(me.email)
    status, rotated = await refresh(client, me.refresh_token)
    assert status == 200, rotated
    assert await me_status(client, rotated["access_token"]) == 200

    response = await client.post(REFRESH, json={"refresh_token": me.refresh_token})
    await error_of(response, 401, "invalid_token")

    # Everything of that family is dead: the rotated pair and the original access token.
    response = await client.post(REFRESH, json={"refresh_token": rotated["refresh_token"]})
    await error_of(response, 401, "invalid_token")
    assert await me_status(client, rotated["access_token"]) == 401
    assert await me_status(client, me.access_token) == 401
    # Another session of the same user lives on.
    assert await me_status(client, other_session["access_token"]) == 200
    status, body = await refresh(client, other_session["refresh_token"])
    assert status == 200, body


async def test_concurrent_uses_of_one_refresh_token(client: TestClient[Any, Any], accounts: Accounts) -> None:
    """Several uses of one refresh token at once: at most one rotates, and the family ends revoked either way."""
    user = await accounts.register()
    for _ in range(5):
        tokens = await accounts.login(user["email"])
        responses = await asyncio.gather(
            *(client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]}) for _ in range(3))
        )
        statuses = sorted(response.status for response in responses)
        assert statuses in ([200, 401, 401], [401, 401, 401]), statuses
        for response in responses:
            if response.status == 401:
                await error_of(response, 401, "invalid_token")
            else:
                pair = await response.json()
                # The other uses were re-uses: the winner's tokens were revoked with the family.
                assert await me_status(client, pair["access_token"]) == 401
                assert (await refresh(client, pair["refresh_token"]))[0] == 401
        assert await me_status(client, tokens["access_token"]) == 401


async def test_refresh_refuses_an_access_token(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    response = await client.post(REFRESH, json={"refresh_token": me.access_token})
    await error_of(response, 401, "invalid_token")
    # The session itself is unharmed.
    status, body = await refresh(client, me.refresh_token)
    assert status == 200, body


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
async def test_refresh_refuses_garbage(client: TestClient[Any, Any], token: str) -> None:
    response = await client.post(REFRESH, json={"refresh_token": token})
    await error_of(response, 401, "invalid_token")


async def test_refresh_refuses_an_expired_refresh_token(
    client: TestClient[Any, Any], accounts: Accounts, settings: Settings
) -> None:
    me = await accounts.user()
    response = await client.post(REFRESH, json={"refresh_token": expired(me.refresh_token, settings.jwt_secret)})
    await error_of(response, 401, "invalid_token")


async def test_refresh_refuses_an_expired_session(client: TestClient[Any, Any], accounts: Accounts) -> None:
    """A session ends at its expiry even while its newest refresh token (rotated later) has not expired yet."""
    me = await accounts.user()
    sid = PydanticObjectId(claims_of(me.refresh_token)["sid"])
    await Session.find_one({"_id": sid}).update({"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}})
    response = await client.post(REFRESH, json={"refresh_token": me.refresh_token})
    await error_of(response, 401, "invalid_token")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "refresh_token"),
        ({"refresh_token": {"$ne": ""}}, "refresh_token"),
        ({"refresh_token": 1}, "refresh_token"),
        ({"refresh_token": "x" * 2049}, "refresh_token"),
        ({"refresh_token": "x", "user_id": "y"}, "user_id"),
    ],
)
async def test_refresh_refuses_bad_input(client: TestClient[Any, Any], body: dict[str, Any], field: str) -> None:
    error = await error_of(await client.post(REFRESH, json=body), 422, "validation_error")
    assert list(error["details"]) == [field]


# Logout


async def test_logout_ends_the_session_and_its_caller(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    other = await accounts.login(me.email)
    assert await me_status(client, me.access_token) == 200  # cached before the logout: must not survive it

    response = await client.post(LOGOUT, json={"refresh_token": me.refresh_token}, headers=me.headers)
    assert response.status == 204, await response.text()
    assert await response.read() == b""

    assert await me_status(client, me.access_token) == 401
    response = await client.post(REFRESH, json={"refresh_token": me.refresh_token})
    await error_of(response, 401, "invalid_token")
    # The other session keeps working, access and refresh.
    assert await me_status(client, other["access_token"]) == 200
    status, body = await refresh(client, other["refresh_token"])
    assert status == 200, body


async def test_logout_with_another_sessions_refresh_token_ends_both(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    me = await accounts.user()
    second = await accounts.login(me.email)
    third = await accounts.login(me.email)
    response = await client.post(LOGOUT, json={"refresh_token": second["refresh_token"]}, headers=me.headers)
    assert response.status == 204
    assert await me_status(client, me.access_token) == 401
    assert await me_status(client, second["access_token"]) == 401
    assert (await refresh(client, second["refresh_token"]))[0] == 401
    assert (await refresh(client, me.refresh_token))[0] == 401
    assert await me_status(client, third["access_token"]) == 200


async def test_logout_cannot_end_another_users_session(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me, victim = await accounts.user(), await accounts.user()
    response = await client.post(LOGOUT, json={"refresh_token": victim.refresh_token}, headers=me.headers)
    assert response.status == 204
    assert await me_status(client, victim.access_token) == 200
    status, body = await refresh(client, victim.refresh_token)
    assert status == 200, body


async def test_logout_with_an_invalid_refresh_token_still_ends_the_caller(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    me = await accounts.user()
    response = await client.post(LOGOUT, json={"refresh_token": "garbage"}, headers=me.headers)
    assert response.status == 204
    assert await me_status(client, me.access_token) == 401
    assert (await refresh(client, me.refresh_token))[0] == 401


async def test_logout_needs_an_access_token(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    response = await client.post(LOGOUT, json={"refresh_token": me.refresh_token})
    await error_of(response, 401, "not_authenticated")
    # Presenting the refresh token as the bearer does not work either.
    response = await client.post(
        LOGOUT, json={"refresh_token": me.refresh_token}, headers={"Authorization": f"Bearer {me.refresh_token}"}
    )
    await error_of(response, 401, "invalid_token")
    assert await me_status(client, me.access_token) == 200


@pytest.mark.parametrize("body", [{}, {"refresh_token": {"$gt": ""}}, {"refresh_token": "x", "all": True}])
async def test_logout_refuses_bad_input(client: TestClient[Any, Any], accounts: Accounts, body: dict[str, Any]) -> None:
    me = await accounts.user()
    await error_of(await client.post(LOGOUT, json=body, headers=me.headers), 422, "validation_error")
    assert await me_status(client, me.access_token) == 200


async def test_logout_all_ends_every_session(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    other = await accounts.login(me.email)
    bystander = await accounts.user()
    assert await me_status(client, other["access_token"]) == 200

    response = await client.post(LOGOUT_ALL, headers=me.headers)
    assert response.status == 204, await response.text()

    for access in (me.access_token, other["access_token"]):
        assert await me_status(client, access) == 401
    for token in (me.refresh_token, other["refresh_token"]):
        assert (await refresh(client, token))[0] == 401
    assert await me_status(client, bystander.access_token) == 200
    # Logging in again works.
    fresh = await accounts.login(me.email)
    assert await me_status(client, fresh["access_token"]) == 200


async def test_logout_all_needs_an_access_token(client: TestClient[Any, Any]) -> None:
    await error_of(await client.post(LOGOUT_ALL), 401, "not_authenticated")


async def test_a_fresh_account_helper_login_works(client: TestClient[Any, Any], accounts: Accounts) -> None:
    """The fixtures themselves: a user made by `accounts` is a real, logged-in, non-admin user."""
    me: Account = await accounts.user()
    body = await json_of(await client.get(ME, headers=me.headers), 200)
    assert body["id"] == me.id
    assert body["is_admin"] is False
    admin = await accounts.user(admin=True)
    body = await json_of(await client.get(ME, headers=admin.headers), 200)
    assert body["is_admin"] is True


@pytest.mark.parametrize(
    ("first", "lookalike"),
    [
        ("straße@example.com", "STRASSE@example.com"),
        ("info@example.org", "İNFO@example.org"),
        ("info@example.org", "ınfo@example.org"),
        ("info@example.org", "ｉｎｆｏ@example.org"),
        ("user@bücher.example", "user@xn--bcher-kva.example"),
        ("user@xn--bcher-kva.example", "USER@BÜCHER.example"),
    ],
)
async def test_lookalike_emails_are_one_account(client: TestClient[Any, Any], first: str, lookalike: str) -> None:
    """Emails that read the same are one account (docs/security.md states the policy), and either logs in."""
    response = await client.post(REGISTER, json={"email": first, "username": "first_one", "password": PASSWORD})
    assert response.status == 201, await response.text()
    again = await client.post(REGISTER, json={"email": lookalike, "username": "second_one", "password": PASSWORD})
    error = await error_of(again, 409, "conflict")
    assert error["details"] == {"field": "email"}
    login = await client.post(LOGIN, json={"email": lookalike, "password": PASSWORD})
    assert login.status == 200, await login.text()


# The live page's session: the refresh token in an HttpOnly cookie


async def page_post(
    client: TestClient[Any, Any],
    action: str,
    *,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
    json: Any = None,
) -> ClientResponse:
    """POST /auth/page/<action> as the page sends it (X-Requested-With), with exactly the cookie given."""
    client.session.cookie_jar.clear()  # each request carries the cookie its test names, and no other
    sent = {**FROM_PAGE, **(headers or {})}
    if cookie is not None:
        sent["Cookie"] = f"{COOKIE}={cookie}"
    return await client.post(f"{PAGE}/{action}", json=json, headers=sent)


def set_cookie(response: ClientResponse) -> tuple[str, Morsel[str]]:
    """The one Set-Cookie header of a response, raw and parsed."""
    headers = response.headers.getall("Set-Cookie", [])
    assert len(headers) == 1, headers
    return headers[0], SimpleCookie(headers[0])[COOKIE]


async def page_login(client: TestClient[Any, Any], email: str) -> tuple[str, str]:
    """Log in as the page does: the access token and the cookie's refresh token."""
    response = await page_post(client, "login", json={"email": email, "password": PASSWORD})
    body = await json_of(response, 200)
    return body["access_token"], set_cookie(response)[1].value


async def test_page_login_keeps_the_refresh_token_in_an_httponly_cookie(
    client: TestClient[Any, Any], accounts: Accounts, settings: Settings
) -> None:
    user = await accounts.register()
    response = await page_post(client, "login", json={"email": user["email"], "password": PASSWORD})
    body = await json_of(response, 200)
    # The body has no refresh token: no script on the page ever holds one.
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl
    assert await me_status(client, body["access_token"]) == 200
    raw, cookie = set_cookie(response)
    assert claims_of(cookie.value)["aud"] == "tidings:refresh"
    assert claims_of(cookie.value)["sid"] == claims_of(body["access_token"])["sid"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == PAGE  # sent to the page's session endpoints only
    assert cookie["max-age"] == str(settings.refresh_token_ttl)
    assert not cookie["secure"]  # development and tests run on plain http
    assert "HttpOnly" in raw and "SameSite=Strict" in raw and f"Path={PAGE};" in raw + ";"


async def test_page_cookie_is_secure_in_production(make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(environment="production")
    user = await accounts.register()
    response = await page_post(client, "login", json={"email": user["email"], "password": PASSWORD})
    await json_of(response, 200)
    raw, cookie = set_cookie(response)
    assert cookie["secure"] is True
    assert "Secure" in raw


async def test_the_json_api_sets_no_cookie(client: TestClient[Any, Any], accounts: Accounts) -> None:
    """API clients keep their tokens in the body, as before; the page's cookie means nothing to /auth/refresh."""
    user = await accounts.register()
    response = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    pair = await json_of(response, 200)
    assert "refresh_token" in pair
    assert "Set-Cookie" not in response.headers
    _, cookie = await page_login(client, user["email"])
    response = await client.post(REFRESH, json={}, headers={"Cookie": f"{COOKIE}={cookie}"})
    await error_of(response, 422, "validation_error")
    status, body = await refresh(client, pair["refresh_token"])
    assert status == 200, body


async def test_page_refresh_gives_an_access_token_and_keeps_the_cookie(
    client: TestClient[Any, Any], accounts: Accounts, settings: Settings
) -> None:
    """The page's tabs share one cookie and a reload may cut off a refresh's answer: the cookie's refresh token is
    not rotated, so no use of it ever races another. Each use is checked like a rotation."""
    user = await accounts.register()
    access, cookie = await page_login(client, user["email"])
    response = await page_post(client, "refresh", cookie=cookie)
    body = await json_of(response, 200)
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["expires_in"] == settings.access_token_ttl
    assert body["access_token"] != access
    assert claims_of(body["access_token"])["sid"] == claims_of(cookie)["sid"]
    assert await me_status(client, body["access_token"]) == 200
    assert "Set-Cookie" not in response.headers
    # Many at once (tabs, reloads): every one works, and the session lives on.
    responses = await asyncio.gather(*(page_post(client, "refresh", cookie=cookie) for _ in range(5)))
    assert [response.status for response in responses] == [200] * 5
    await json_of(await page_post(client, "refresh", cookie=cookie), 200)
    session = await Session.get(PydanticObjectId(claims_of(cookie)["sid"]))
    assert session is not None and session.revoked_at is None and session.last_used_at is not None


async def test_a_copied_cookie_rotated_through_the_api_ends_the_session(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    """Someone who copied the cookie's token and rotated it through /auth/refresh: the page's next use is a reuse,
    which ends the session, for the copy too."""
    user = await accounts.register()
    access, cookie = await page_login(client, user["email"])
    status, stolen = await refresh(client, cookie)
    assert status == 200, stolen
    await error_of(await page_post(client, "refresh", cookie=cookie), 401, "invalid_token")
    assert await me_status(client, access) == 401
    assert await me_status(client, stolen["access_token"]) == 401
    assert (await refresh(client, stolen["refresh_token"]))[0] == 401


async def test_page_login_ends_the_session_whose_cookie_it_replaces(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    first, second = await accounts.register(), await accounts.register()
    access, cookie = await page_login(client, first["email"])
    response = await page_post(client, "login", cookie=cookie, json={"email": second["email"], "password": PASSWORD})
    await json_of(response, 200)
    assert claims_of(set_cookie(response)[1].value)["sub"] == second["id"]
    assert await me_status(client, access) == 401
    await error_of(await page_post(client, "refresh", cookie=cookie), 401, "invalid_token")


async def test_page_refresh_without_a_cookie_has_nothing_to_refresh(client: TestClient[Any, Any]) -> None:
    response = await page_post(client, "refresh")
    assert response.status == 204, await response.text()
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("cookie", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.x", "%E2%9C%93"])
async def test_page_refresh_refuses_and_clears_a_bad_cookie(client: TestClient[Any, Any], cookie: str) -> None:
    response = await page_post(client, "refresh", cookie=cookie)
    await error_of(response, 401, "invalid_token")
    raw, cleared = set_cookie(response)
    assert cleared.value == "" and cleared["max-age"] == "0" and cleared["path"] == PAGE, raw


async def test_a_revoked_sessions_cookie_gets_401(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.register()
    access, cookie = await page_login(client, user["email"])
    response = await client.post(LOGOUT_ALL, headers={"Authorization": f"Bearer {access}"})
    assert response.status == 204, await response.text()
    response = await page_post(client, "refresh", cookie=cookie)
    await error_of(response, 401, "invalid_token")
    assert set_cookie(response)[1]["max-age"] == "0"


async def test_an_expired_page_session_gets_401(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.register()
    _, cookie = await page_login(client, user["email"])
    sid = PydanticObjectId(claims_of(cookie)["sid"])
    await Session.find_one({"_id": sid}).update({"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}})
    await error_of(await page_post(client, "refresh", cookie=cookie), 401, "invalid_token")


async def test_page_logout_ends_the_session_and_clears_the_cookie(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    user = await accounts.register()
    access, cookie = await page_login(client, user["email"])
    other_access, _ = await page_login(client, user["email"])
    assert await me_status(client, access) == 200
    response = await page_post(client, "logout", cookie=cookie)
    assert response.status == 204, await response.text()
    raw, cleared = set_cookie(response)
    assert cleared.value == "" and cleared["max-age"] == "0" and cleared["path"] == PAGE, raw
    assert await me_status(client, access) == 401
    await error_of(await page_post(client, "refresh", cookie=cookie), 401, "invalid_token")
    # Another session (another browser) of the same user goes on.
    assert await me_status(client, other_access) == 200
    # Logging out without a session, or with a bad cookie, still clears it.
    for stale in (None, "garbage", cookie):
        response = await page_post(client, "logout", cookie=stale)
        assert response.status == 204, await response.text()
        assert set_cookie(response)[1]["max-age"] == "0"


@pytest.mark.parametrize("action", ["login", "refresh", "logout"])
@pytest.mark.parametrize(
    "headers",
    [
        {"X-Requested-With": ""},  # the header missing (page_post's is overridden away)
        {"X-Requested-With": "tidings", "Origin": "https://evil.example"},
        {"X-Requested-With": "tidings", "Origin": "null"},
    ],
    ids=["no-header", "foreign-origin", "null-origin"],
)
async def test_the_page_session_refuses_cross_site_requests(
    client: TestClient[Any, Any], accounts: Accounts, action: str, headers: dict[str, str]
) -> None:
    """CSRF: without the custom header (which no cross-site form can send), or from a foreign Origin, the cookie
    is neither used nor changed, and login does not even check the password (a wrong one is refused as CSRF)."""
    user = await accounts.register()
    access, cookie = await page_login(client, user["email"])
    body = {"email": user["email"], "password": "wrong password"} if action == "login" else None
    response = await page_post(client, action, cookie=cookie, headers=headers, json=body)
    error = await error_of(response, 403, "forbidden")
    assert "page" in error["message"]
    assert "Set-Cookie" not in response.headers
    # The session is untouched: the access token works, and the cookie is still the current refresh token.
    assert await me_status(client, access) == 200
    response = await page_post(client, "refresh", cookie=cookie)
    await json_of(response, 200)


async def test_the_page_session_accepts_its_own_origin(
    client: TestClient[Any, Any], accounts: Accounts, settings: Settings
) -> None:
    user = await accounts.register()
    _, cookie = await page_login(client, user["email"])
    response = await page_post(client, "refresh", cookie=cookie, headers={"Origin": settings.allowed_origins[0]})
    await json_of(response, 200)


async def test_page_login_errors_are_the_apis(client: TestClient[Any, Any], accounts: Accounts) -> None:
    user = await accounts.register()
    response = await page_post(client, "login", json={"email": user["email"], "password": "wrong password"})
    await error_of(response, 401, "invalid_credentials")
    assert "Set-Cookie" not in response.headers
    error = await error_of(await page_post(client, "login", json={"email": user["email"]}), 422, "validation_error")
    assert list(error["details"]) == ["password"]
