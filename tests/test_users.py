"""/users/me and the admin's /users endpoints: every role, every change, every kind of bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from beanie import PydanticObjectId
from bson import ObjectId
from pymongo import AsyncMongoClient

from tests.conftest import PASSWORD, Account, Accounts, AppFactory, make_settings
from tests.helpers import API, error_of, json_of
from tests.realtime import expect_close, ready, send
from tidings.documents import Notification, Session
from tidings.documents.clock import day_number
from tidings.documents.user import SEARCH_PREFIX_MAX, search_keys_for
from tidings.server.keys import audit_key
from tidings.server.services.migrations import MIGRATIONS, USER_KEYS, run_migrations

ME = f"{API}/users/me"
USERS = f"{API}/users"
LOGIN = f"{API}/auth/login"
REFRESH = f"{API}/auth/refresh"
NEW_PASSWORD = "a brand new passphrase"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me_of(client: TestClient[Any, Any], account: Account) -> dict[str, Any]:
    body: dict[str, Any] = await json_of(await client.get(ME, headers=account.headers), 200)
    return body


async def refused(client: TestClient[Any, Any], access_token: str, refresh_token: str) -> None:
    """Both tokens of a session stop working."""
    await error_of(await client.get(ME, headers=bearer(access_token)), 401, "invalid_token")
    await error_of(await client.post(REFRESH, json={"refresh_token": refresh_token}), 401, "invalid_token")


async def login_status(client: TestClient[Any, Any], email: str, password: str = PASSWORD) -> int:
    response = await client.post(LOGIN, json={"email": email, "password": password})
    await response.read()
    return response.status


async def admin_patch(
    client: TestClient[Any, Any], admin: Account, user_id: str, body: dict[str, Any], status: int = 200
) -> dict[str, Any]:
    response = await client.patch(f"{USERS}/{user_id}", json=body, headers=admin.headers)
    if status == 200:
        result: dict[str, Any] = await json_of(response, 200)
        return result
    return await error_of(response, status, {403: "forbidden", 409: "conflict", 422: "validation_error"}[status])


# GET /users/me


async def test_me(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user(full_name="Grace Hopper")
    body = await me_of(client, me)
    assert body["id"] == me.id
    assert body["email"] == me.email
    assert body["username"] == me.username
    assert body["full_name"] == "Grace Hopper"
    assert body["is_admin"] is False
    assert body["is_active"] is True


async def test_me_needs_a_token(client: TestClient[Any, Any]) -> None:
    await error_of(await client.get(ME), 401, "not_authenticated")
    await error_of(await client.patch(ME, json={"bio": "x"}), 401, "not_authenticated")


# PATCH /users/me


async def test_patch_me_profile(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    before = await me_of(client, me)  # cached by the server now: the change must still show at once
    response = await client.patch(ME, json={"full_name": "New Name", "bio": "Hello."}, headers=me.headers)
    body = await json_of(response, 200)
    assert body["full_name"] == "New Name"
    assert body["bio"] == "Hello."
    assert datetime.fromisoformat(body["updated_at"]) > datetime.fromisoformat(before["updated_at"])
    assert await me_of(client, me) == body
    response = await client.patch(ME, json={"full_name": None, "bio": None}, headers=me.headers)
    body = await json_of(response, 200)
    assert body["full_name"] is None
    assert body["bio"] is None
    assert await me_of(client, me) == body


async def test_patch_me_username(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    body = await json_of(await client.patch(ME, json={"username": "new.name-1"}, headers=me.headers), 200)
    assert body["username"] == "new.name-1"
    assert (await me_of(client, me))["username"] == "new.name-1"
    # Changing only the case of one's own username is not a conflict with oneself.
    body = await json_of(await client.patch(ME, json={"username": "NEW.Name-1"}, headers=me.headers), 200)
    assert body["username"] == "NEW.Name-1"


@pytest.mark.parametrize("body", [{}, {"current_password": PASSWORD}])
async def test_patch_me_needs_a_change(client: TestClient[Any, Any], accounts: Accounts, body: dict[str, Any]) -> None:
    me = await accounts.user()
    error = await error_of(await client.patch(ME, json=body, headers=me.headers), 422, "validation_error")
    assert error["details"] == {"_schema": ["Nothing to change."]}


async def test_patch_me_email_needs_the_current_password(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    new_email = "renamed-" + me.email
    error = await error_of(
        await client.patch(ME, json={"email": new_email}, headers=me.headers), 422, "validation_error"
    )
    assert "current_password" in error["details"]
    response = await client.patch(ME, json={"email": new_email, "current_password": "not it!"}, headers=me.headers)
    await error_of(response, 403, "forbidden")
    assert (await me_of(client, me))["email"] == me.email

    # The new address takes effect when it confirms (tests/test_verify_email.py); the old one works meanwhile.
    response = await client.patch(ME, json={"email": new_email, "current_password": PASSWORD}, headers=me.headers)
    body = await json_of(response, 200)
    assert (body["email"], body["pending_email"]) == (me.email, new_email)
    assert (await me_of(client, me))["pending_email"] == new_email  # the session lives on
    assert await login_status(client, me.email) == 200
    assert await login_status(client, new_email) == 401


async def test_patch_me_password_needs_the_current_password(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    error = await error_of(
        await client.patch(ME, json={"password": NEW_PASSWORD}, headers=me.headers), 422, "validation_error"
    )
    assert "current_password" in error["details"]
    response = await client.patch(
        ME, json={"password": NEW_PASSWORD, "current_password": "wrong!!"}, headers=me.headers
    )
    await error_of(response, 403, "forbidden")
    assert await login_status(client, me.email, NEW_PASSWORD) == 401
    assert (await me_of(client, me))["id"] == me.id


async def test_password_change_ends_every_session(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    other = await accounts.login(me.email)
    bystander = await accounts.user()
    await me_of(client, me)  # cached: the change must still be seen at once

    response = await client.patch(ME, json={"password": NEW_PASSWORD, "current_password": PASSWORD}, headers=me.headers)
    assert (await json_of(response, 200))["id"] == me.id

    await refused(client, me.access_token, me.refresh_token)
    await refused(client, other["access_token"], other["refresh_token"])
    assert await login_status(client, me.email, PASSWORD) == 401
    assert await login_status(client, me.email, NEW_PASSWORD) == 200
    await me_of(client, bystander)


@pytest.mark.parametrize("field", ["email", "username"])
async def test_patch_me_to_a_taken_value_is_409(client: TestClient[Any, Any], accounts: Accounts, field: str) -> None:
    me, other = await accounts.user(), await accounts.user()
    taken = getattr(other, field).upper()
    body: dict[str, Any] = {field: taken, "current_password": PASSWORD}
    error = await error_of(await client.patch(ME, json=body, headers=me.headers), 409, "conflict")
    assert error["details"] == {"field": field}
    assert (await me_of(client, me))[field] == getattr(me, field)
    # Nothing half-written: the account still logs in with its old email and keeps its username.
    assert await login_status(client, me.email) == 200


@pytest.mark.parametrize("field", ["is_admin", "is_active", "token_version", "password_hash", "id", "created_at"])
async def test_patch_me_refuses_mass_assignment(client: TestClient[Any, Any], accounts: Accounts, field: str) -> None:
    me = await accounts.user()
    value: Any = {"is_admin": True, "is_active": False, "token_version": 7}.get(field, "x")
    response = await client.patch(ME, json={field: value, "full_name": "Sneaky"}, headers=me.headers)
    error = await error_of(response, 422, "validation_error")
    assert error["details"] == {field: ["Unknown field."]}
    body = await me_of(client, me)
    assert body["is_admin"] is False
    assert body["is_active"] is True
    assert body["full_name"] is None
    await error_of(await client.get(USERS, headers=me.headers), 403, "forbidden")


@pytest.mark.parametrize("field", ["email", "username", "full_name", "bio", "password", "current_password"])
@pytest.mark.parametrize("operator", [{"$gt": ""}, {"$set": {"is_admin": True}}])
async def test_patch_me_refuses_operator_objects(
    client: TestClient[Any, Any], accounts: Accounts, field: str, operator: dict[str, Any]
) -> None:
    me = await accounts.user()
    body = {"bio": "x", field: operator} if field == "current_password" else {field: operator}
    error = await error_of(await client.patch(ME, json=body, headers=me.headers), 422, "validation_error")
    assert list(error["details"]) == [field]
    after = await me_of(client, me)
    assert after["bio"] is None
    assert after["is_admin"] is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("full_name", "n" * 101),
        ("bio", "b" * 1001),
        ("username", "u" * 33),
        ("email", "e" * 250 + "@example.com"),
        ("password", "p" * 129),
        ("password", "short"),
        ("current_password", "c" * 129),
        ("bio", 42),
        ("full_name", ["a"]),
    ],
)
async def test_patch_me_refuses_bad_values(
    client: TestClient[Any, Any], accounts: Accounts, field: str, value: Any
) -> None:
    me = await accounts.user()
    body = {"bio": "x", field: value} if field == "current_password" else {field: value}
    error = await error_of(await client.patch(ME, json=body, headers=me.headers), 422, "validation_error")
    assert list(error["details"]) == [field]
    assert (await me_of(client, me))["bio"] is None


async def test_patch_me_accepts_limits(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    body = await json_of(
        await client.patch(ME, json={"full_name": "n" * 100, "bio": "b" * 1000}, headers=me.headers), 200
    )
    assert len(body["full_name"]) == 100
    assert len(body["bio"]) == 1000


# GET /users/{id}


async def test_get_user_by_role(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me, other, admin = await accounts.user(), await accounts.user(), await accounts.user(admin=True)
    path = f"{USERS}/{me.id}"
    await error_of(await client.get(path), 401, "not_authenticated")
    body = await json_of(await client.get(path, headers=me.headers), 200)
    assert body == await me_of(client, me)
    # An uppercase spelling of the same id is the same id.
    upper = await json_of(await client.get(f"{USERS}/{me.id.upper()}", headers=me.headers), 200)
    assert upper["id"] == me.id
    await error_of(await client.get(path, headers=other.headers), 403, "forbidden")
    assert (await json_of(await client.get(path, headers=admin.headers), 200))["id"] == me.id


async def test_get_unknown_user(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me, admin = await accounts.user(), await accounts.user(admin=True)
    path = f"{USERS}/{PydanticObjectId()}"
    await error_of(await client.get(path, headers=admin.headers), 404, "not_found")
    # A non-admin learns nothing about which ids exist.
    await error_of(await client.get(path, headers=me.headers), 403, "forbidden")


@pytest.mark.parametrize(
    "user_id", ["nope", "123", "0" * 23, "0" * 25, "g" * 24, "%24gt", "me%20", "null", "%5B%5D", "0x" + "0" * 22]
)
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_malformed_user_ids_are_422(
    client: TestClient[Any, Any], accounts: Accounts, user_id: str, method: str
) -> None:
    admin = await accounts.user(admin=True)
    body = {"bio": "x"} if method == "PATCH" else None
    response = await client.request(method, f"{USERS}/{user_id}", json=body, headers=admin.headers)
    error = await error_of(response, 422, "validation_error")
    assert error["details"] == {"user_id": ["Not a valid id."]}


async def test_malformed_id_checks_come_after_authentication(client: TestClient[Any, Any]) -> None:
    await error_of(await client.get(f"{USERS}/nope"), 401, "not_authenticated")


async def test_an_operator_object_in_the_path_matches_no_route(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin = await accounts.user(admin=True)
    response = await client.get(f"{USERS}/%7B%22%24gt%22%3A%22%22%7D", headers=admin.headers)
    await error_of(response, 404, "not_found")


# GET /users


async def list_users(client: TestClient[Any, Any], admin: Account, **params: Any) -> dict[str, Any]:
    query = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in params.items()}
    body: dict[str, Any] = await json_of(await client.get(USERS, params=query, headers=admin.headers), 200)
    assert set(body) == {"items", "next_before"}
    return body


async def test_list_users_by_role(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me, admin = await accounts.user(), await accounts.user(admin=True)
    await error_of(await client.get(USERS), 401, "not_authenticated")
    await error_of(await client.get(USERS, headers=me.headers), 403, "forbidden")
    body = await list_users(client, admin)
    assert [item["id"] for item in body["items"]] == [admin.id, me.id]
    assert body["next_before"] is None


async def test_list_users_pagination(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    ids = [(await accounts.register())["id"] for _ in range(6)]
    newest_first = [*reversed(ids), admin.id]
    seen: list[str] = []
    before: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} if before is None else {"limit": 3, "before": before}
        body = await list_users(client, admin, **params)
        pages += 1
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        before = body["next_before"]
        if before is None:
            break
        assert before == body["items"][-1]["id"]
    assert seen == newest_first
    assert pages == 3
    # An exact fit ends without an empty extra page.
    body = await list_users(client, admin, limit=7)
    assert len(body["items"]) == 7
    assert body["next_before"] is None
    body = await list_users(client, admin, limit=1, before=ids[0])
    assert [item["id"] for item in body["items"]] == [admin.id]
    assert body["next_before"] is None


async def test_list_users_search(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True, email="boss@example.org", username="the_boss")
    alice = await accounts.register(email="Alice.Smith@Example.com", username="wonderland")
    bob = await accounts.register(email="bob@example.com", username="Alicorn")
    carol = await accounts.register(email="carol@example.com", username="a.c-1")
    await accounts.register(email="abc@example.com", username="abc_1")

    async def search(q: str) -> set[str]:
        return {item["id"] for item in (await list_users(client, admin, q=q))["items"]}

    assert await search("ali") == {alice["id"], bob["id"]}  # email prefix, username prefix
    assert await search("ALICE.s") == {alice["id"]}
    assert await search("wONDER") == {alice["id"]}
    assert await search("lice") == set()  # a prefix, not a substring
    assert await search("a.c") == {carol["id"]}  # the dot is literal
    assert await search(".*") == set()
    assert await search("^b") == set()
    assert await search("the_boss") == {admin.id}
    assert await search("  bob") == {bob["id"]}
    # Each field is matched in the form its uniqueness is checked on: emails lowercased, usernames casefolded.
    strasse = await accounts.register(email="Straße@example.com", username="dora")
    assert await search("STRAßE") == {strasse["id"]}


async def test_list_users_search_by_search_keys(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True, email="boss@example.org", username="the_boss")
    long_email = "Marguerite.Yourcenar.Academie@Example.fr"  # longer than SEARCH_PREFIX_MAX when folded
    marguerite = await accounts.register(email=long_email, username="Hadrian")
    twin = await accounts.register(email="marguerite.yourcenar.x@example.fr", username="zeno")

    async def search(q: str, **params: Any) -> list[str]:
        return [item["id"] for item in (await list_users(client, admin, q=q, **params))["items"]]

    assert await search("MARGUERITE") == [twin["id"], marguerite["id"]]  # email prefix, newest first
    assert await search("hadr") == [marguerite["id"]]  # username prefix, case folded
    assert len("marguerite.yourcenar.") > SEARCH_PREFIX_MAX
    assert await search("Marguerite.Yourcenar.A") == [marguerite["id"]]  # longer than the stored prefixes
    assert await search("marguerite.yourcenar.academie@example.fr") == [marguerite["id"]]
    assert await search("marguerite.yourcenar.academie@example.frx") == []
    assert await search("marguerite.yourcenar.y") == []
    assert await search("hadrian") == [marguerite["id"]]
    assert await search("hadrianus") == []
    # An email or a username change moves the user's search keys with it.
    await admin_patch(client, admin, marguerite["id"], {"email": "mya@example.fr", "username": "Memoirs"})
    assert await search("MARGUERITE") == [twin["id"]]
    assert await search("hadr") == []
    assert await search("mya@") == [marguerite["id"]]
    assert await search("memo") == [marguerite["id"]]
    assert await search("m") == [twin["id"], marguerite["id"]]
    assert await search("m", is_active=True, is_admin=False) == [twin["id"], marguerite["id"]]
    assert await search("m", is_admin=True) == []


async def test_list_users_search_pages(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True, email="boss@example.org", username="the_boss")
    ids = [
        (await accounts.register(email=f"pager{n}@example.com", username=f"leaf_with_a_long_stem_{n}"))["id"]
        for n in range(5)
    ]
    await accounts.register(email="other@example.com", username="pagan")  # "pag", not "page"
    stalk = await accounts.register(email="stem@example.com", username="leaf_with_a_long_stalk")  # 16 in common
    assert len("leaf_with_a_long_s") > SEARCH_PREFIX_MAX
    # A prefix of the emails, of the usernames, one longer than the stored prefixes, and one whose email form
    # ("page", NFKC) and username form (fullwidth, casefolded only) differ, so two prefixes are looked up.
    for q in ("PAGE", "leaf_with", "LEAF_WITH_A_LONG_STEM_", "\uff30age"):
        seen: list[str] = []
        before: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2} if before is None else {"limit": 2, "before": before}
            body = await list_users(client, admin, q=q, **params)
            seen += [item["id"] for item in body["items"]]
            before = body["next_before"]
            if before is None:
                break
            assert before == body["items"][-1]["id"]
        expected = [*reversed(ids)]
        assert seen == ([stalk["id"], *expected] if q == "leaf_with" else expected), q
    body = await list_users(client, admin, q="page", limit=5)
    assert body["next_before"] is None  # an exact fit ends without an empty page
    body = await list_users(client, admin, q="page", limit=10, before=ids[2])
    assert [item["id"] for item in body["items"]] == [ids[1], ids[0]]


async def test_users_stored_without_search_keys_get_them_at_start_up(make_client: AppFactory) -> None:
    settings = make_settings()
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(settings.mongodb_url, tz_aware=True)
    try:
        users = mongo[settings.mongodb_db]["users"]
        old = {
            "_id": ObjectId(),
            "email": "Old.Timer@Example.com",
            "username": "Veteran",
            "email_key": "old.timer@example.com",
            "username_key": "veteran",
            "password_hash": "x",
            "is_active": True,
            "is_admin": False,
            "token_version": 0,
            "created_at": datetime(2020, 5, 17, 12, tzinfo=UTC),
            "updated_at": datetime(2020, 5, 17, 12, tzinfo=UTC),
        }
        await users.insert_one(old)
        client, accounts, _ = await make_client(mongodb_db=settings.mongodb_db, redis_prefix=settings.redis_prefix)
        admin = await accounts.user(admin=True, email="boss@example.org", username="the_boss")
        found = await list_users(client, admin, q="OLD.T")
        assert [item["id"] for item in found["items"]] == [str(old["_id"])]
        assert [item["id"] for item in (await list_users(client, admin, q="vet"))["items"]] == [str(old["_id"])]
        stored = await users.find_one({"_id": old["_id"]})
        assert stored is not None
        assert stored["search_keys"] == search_keys_for("old.timer@example.com", "veteran")
        assert stored["created_day"] == day_number(datetime(2020, 5, 17, tzinfo=UTC))
        marker = await mongo[settings.mongodb_db][MIGRATIONS].find_one({"_id": USER_KEYS})
        assert marker is not None
        assert marker["changed"] == 1
        # Later starts read the marker and nothing else: a user stored without keys now stays so.
        later = {**old, "_id": ObjectId(), "email_key": "later@example.com", "username_key": "later"}
        await users.insert_one(later)
        await run_migrations(mongo[settings.mongodb_db])
        assert "search_keys" not in (await users.find_one({"_id": later["_id"]}) or {})
    finally:
        await mongo.close()


async def test_list_users_filters(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    active = await accounts.register()
    inactive = await accounts.register()
    await admin_patch(client, admin, inactive["id"], {"is_active": False})
    assert {i["id"] for i in (await list_users(client, admin, is_active=False))["items"]} == {inactive["id"]}
    assert {i["id"] for i in (await list_users(client, admin, is_active=True))["items"]} == {admin.id, active["id"]}
    assert {i["id"] for i in (await list_users(client, admin, is_admin=True))["items"]} == {admin.id}
    both = await list_users(client, admin, is_admin=False, is_active=True)
    assert {i["id"] for i in both["items"]} == {active["id"]}
    searched = await list_users(client, admin, q=inactive["email"][:8], is_active=True)
    assert searched["items"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("before=nope", "before"),
        ("before=" + "z" * 24, "before"),
        ("is_active=maybe", "is_active"),
        ("is_admin=2", "is_admin"),
        ("q=", "q"),
        ("q=" + "q" * 101, "q"),
        ("q[$gt]=", "q[$gt]"),
        ("q[$regex]=.*", "q[$regex]"),
        ("is_admin[$ne]=true", "is_admin[$ne]"),
        ("sort=email", "sort"),
    ],
)
async def test_list_users_refuses_bad_queries(
    client: TestClient[Any, Any], accounts: Accounts, query: str, field: str
) -> None:
    admin = await accounts.user(admin=True)
    response = await client.get(f"{USERS}?{query}", headers=admin.headers)
    error = await error_of(response, 422, "validation_error")
    assert list(error["details"]) == [field]


# PATCH /users/{id}


async def test_admin_patch_profile_shows_at_once_in_the_targets_me(
    client: TestClient[Any, Any], accounts: Accounts
) -> None:
    admin, target = await accounts.user(admin=True), await accounts.user()
    await me_of(client, target)  # now cached by the server
    body = await admin_patch(
        client, admin, target.id, {"full_name": "Set By Admin", "bio": "bio", "username": "renamed"}
    )
    assert body["full_name"] == "Set By Admin"
    me = await me_of(client, target)
    assert me == body
    assert me["username"] == "renamed"


async def test_admin_patch_email_and_password(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, target = await accounts.user(admin=True), await accounts.user()
    new_email = "moved-" + target.email
    body = await admin_patch(client, admin, target.id, {"email": new_email})
    assert body["email"] == new_email
    assert (await me_of(client, target))["email"] == new_email
    await admin_patch(client, admin, target.id, {"password": NEW_PASSWORD})
    await refused(client, target.access_token, target.refresh_token)
    assert await login_status(client, new_email, PASSWORD) == 401
    assert await login_status(client, new_email, NEW_PASSWORD) == 200
    # The admin's own session is untouched.
    await me_of(client, admin)


async def test_promotion_and_demotion_apply_at_once(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, target = await accounts.user(admin=True), await accounts.user()
    await error_of(await client.get(USERS, headers=target.headers), 403, "forbidden")
    assert (await admin_patch(client, admin, target.id, {"is_admin": True}))["is_admin"] is True
    await list_users(client, target)  # the same token, now an admin's
    assert (await me_of(client, target))["is_admin"] is True
    assert (await admin_patch(client, admin, target.id, {"is_admin": False}))["is_admin"] is False
    await error_of(await client.get(USERS, headers=target.headers), 403, "forbidden")
    assert (await me_of(client, target))["is_admin"] is False


async def test_deactivation_ends_every_session_at_once(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, target = await accounts.user(admin=True), await accounts.user()
    other = await accounts.login(target.email)
    await me_of(client, target)  # cached

    body = await admin_patch(client, admin, target.id, {"is_active": False})
    assert body["is_active"] is False

    await refused(client, target.access_token, target.refresh_token)
    await refused(client, other["access_token"], other["refresh_token"])
    assert await login_status(client, target.email) == 403
    # Every authenticated endpoint refuses the old token.
    for method, path, json in [
        ("GET", ME, None),
        ("PATCH", ME, {"bio": "x"}),
        ("GET", f"{USERS}/{target.id}", None),
        ("POST", f"{API}/auth/logout", {"refresh_token": target.refresh_token}),
        ("POST", f"{API}/auth/logout-all", None),
        ("GET", USERS, None),
    ]:
        response = await client.request(method, path, json=json, headers=target.headers)
        await error_of(response, 401, "invalid_token")

    # Reactivated: logging in works again, but the old tokens stay dead.
    assert (await admin_patch(client, admin, target.id, {"is_active": True}))["is_active"] is True
    await refused(client, target.access_token, target.refresh_token)
    assert await login_status(client, target.email) == 200


@pytest.mark.parametrize("field", ["email", "username"])
async def test_admin_patch_to_a_taken_value_is_409(
    client: TestClient[Any, Any], accounts: Accounts, field: str
) -> None:
    admin, target, other = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    error = await admin_patch(client, admin, target.id, {field: getattr(other, field).upper()}, status=409)
    assert error["details"] == {"field": field}
    assert (await me_of(client, target))[field] == getattr(target, field)
    assert await login_status(client, target.email) == 200


async def test_admin_patch_refusals(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, me, other = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    await error_of(await client.patch(f"{USERS}/{me.id}", json={"bio": "x"}), 401, "not_authenticated")
    # A user cannot use the admin endpoint, not even on themselves.
    for target in (me, other, admin):
        response = await client.patch(f"{USERS}/{target.id}", json={"is_admin": True}, headers=me.headers)
        await error_of(response, 403, "forbidden")
    assert (await me_of(client, me))["is_admin"] is False
    response = await client.patch(f"{USERS}/{PydanticObjectId()}", json={"bio": "x"}, headers=admin.headers)
    await error_of(response, 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "_schema"),
        ({"is_active": "false"}, "is_active"),
        ({"is_admin": 1}, "is_admin"),
        ({"is_admin": None}, "is_admin"),
        ({"token_version": 0}, "token_version"),
        ({"password_hash": "x"}, "password_hash"),
        ({"email": {"$gt": ""}}, "email"),
        ({"username": {"$ne": None}}, "username"),
        ({"full_name": {"$gt": ""}}, "full_name"),
        ({"bio": {"$gt": ""}}, "bio"),
        ({"password": {"$gt": ""}}, "password"),
        ({"bio": "b" * 1001}, "bio"),
        ({"username": "bad name"}, "username"),
    ],
)
async def test_admin_patch_refuses_bad_input(
    client: TestClient[Any, Any], accounts: Accounts, body: dict[str, Any], field: str
) -> None:
    admin, target = await accounts.user(admin=True), await accounts.user()
    error = await admin_patch(client, admin, target.id, body, status=422)
    assert list(error["details"]) == [field]
    after = await me_of(client, target)
    assert (after["is_admin"], after["is_active"], after["bio"]) == (False, True, None)


async def test_last_admin_cannot_leave(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    await accounts.user()
    for change in ({"is_admin": False}, {"is_active": False}, {"is_admin": False, "is_active": False}):
        error = await admin_patch(client, admin, admin.id, change, status=409)
        assert "administrator" in error["message"]
    await error_of(await client.delete(f"{USERS}/{admin.id}", headers=admin.headers), 409, "conflict")
    body = await me_of(client, admin)
    assert (body["is_admin"], body["is_active"]) == (True, True)
    # Other changes to oneself are fine.
    assert (await admin_patch(client, admin, admin.id, {"bio": "still here", "is_admin": True}))["bio"] == "still here"


async def test_an_inactive_admin_does_not_count(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, second = await accounts.user(admin=True), await accounts.user(admin=True)
    await admin_patch(client, admin, second.id, {"is_active": False})
    await admin_patch(client, admin, admin.id, {"is_admin": False}, status=409)


async def test_an_admin_may_leave_when_another_remains(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, second = await accounts.user(admin=True), await accounts.user(admin=True)
    assert (await admin_patch(client, admin, admin.id, {"is_admin": False}))["is_admin"] is False
    await error_of(await client.get(USERS, headers=admin.headers), 403, "forbidden")
    # Now `second` is the last one.
    await admin_patch(client, second, second.id, {"is_active": False}, status=409)


# DELETE /users/{id}


async def test_delete_user(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, target = await accounts.user(admin=True), await accounts.user()
    other = await accounts.login(target.email)
    await me_of(client, target)  # cached

    response = await client.delete(f"{USERS}/{target.id}", headers=admin.headers)
    assert response.status == 204, await response.text()
    assert await response.read() == b""

    await refused(client, target.access_token, target.refresh_token)
    await refused(client, other["access_token"], other["refresh_token"])
    await error_of(await client.get(f"{USERS}/{target.id}", headers=admin.headers), 404, "not_found")
    await error_of(await client.delete(f"{USERS}/{target.id}", headers=admin.headers), 404, "not_found")
    assert await login_status(client, target.email) == 401
    # The email and username are free again.
    again = await accounts.register(email=target.email, username=target.username)
    assert again["id"] != target.id


async def test_delete_user_refusals(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, me, other = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    await error_of(await client.delete(f"{USERS}/{other.id}"), 401, "not_authenticated")
    for target in (other, me, admin):
        await error_of(await client.delete(f"{USERS}/{target.id}", headers=me.headers), 403, "forbidden")
    await me_of(client, other)
    await me_of(client, me)


async def test_an_admin_may_delete_another_admin(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin, second = await accounts.user(admin=True), await accounts.user(admin=True)
    assert (await client.delete(f"{USERS}/{second.id}", headers=admin.headers)).status == 204
    await error_of(await client.get(ME, headers=second.headers), 401, "invalid_token")
    # ... and then is the last one.
    await error_of(await client.delete(f"{USERS}/{admin.id}", headers=admin.headers), 409, "conflict")


# Roles across every endpoint


async def test_permission_matrix(client: TestClient[Any, Any], accounts: Accounts) -> None:
    """anonymous / user / other user / admin / deactivated user on every /users endpoint."""
    admin, me, other = await accounts.user(admin=True), await accounts.user(), await accounts.user()
    gone = await accounts.user()
    await admin_patch(client, admin, gone.id, {"is_active": False})

    roles: dict[str, dict[str, str]] = {
        "anonymous": {},
        "user": me.headers,
        "other": other.headers,
        "admin": admin.headers,
        "deactivated": gone.headers,
    }
    mine = f"{USERS}/{me.id}"
    endpoints: list[tuple[str, str, Any, dict[str, int]]] = [
        ("GET", ME, None, {"user": 200, "other": 200, "admin": 200}),
        ("PATCH", ME, {"bio": "b"}, {"user": 200, "other": 200, "admin": 200}),
        ("GET", USERS, None, {"user": 403, "other": 403, "admin": 200}),
        ("GET", mine, None, {"user": 200, "other": 403, "admin": 200}),
        ("PATCH", mine, {"full_name": "F"}, {"user": 403, "other": 403, "admin": 200}),
        ("DELETE", mine, None, {"user": 403, "other": 403, "admin": 204}),
    ]
    for method, path, body, allowed in endpoints:
        for role, headers in roles.items():
            expected = allowed.get(role, 401)
            response = await client.request(method, path, json=body, headers=headers)
            text = await response.text()
            assert response.status == expected, (method, path, role, text)
            if expected == 401:
                await error_of(response, 401, "not_authenticated" if role == "anonymous" else "invalid_token")
            elif expected == 403:
                await error_of(response, 403, "forbidden")
            else:
                assert "password" not in text.lower()


async def test_a_user_deletes_their_own_account(client: TestClient[Any, Any], accounts: Accounts) -> None:
    """With current_password: the account, its sessions and notifications are gone, its socket is closed, its
    tokens and password stop working, and the deletion is in the audit log."""
    admin, me = await accounts.user(admin=True), await accounts.user()
    await send(client, admin, user_ids=[me.id])
    await send(client, admin, broadcast=True)
    async with client.ws_connect(f"{API}/ws", headers=me.headers) as ws:
        await ready(ws)
        for body in ({}, {"current_password": "not it at all"}):
            refused = await client.delete(ME, json=body, headers=me.headers)
            assert refused.status in (403, 422), await refused.text()
        assert (await client.get(ME, headers=me.headers)).status == 200
        response = await client.delete(ME, json={"current_password": me.password}, headers=me.headers)
        assert response.status == 204, await response.text()
        await expect_close(ws, 4403)
    await error_of(await client.get(ME, headers=me.headers), 401, "invalid_token")
    login = await client.post(f"{API}/auth/login", json={"email": me.email, "password": me.password})
    await error_of(login, 401, "invalid_credentials")
    await error_of(await client.get(f"{API}/users/{me.id}", headers=admin.headers), 404, "not_found")
    user_id = PydanticObjectId(me.id)
    assert await Notification.find({"recipient_id": user_id}).count() == 0
    assert await Session.find({"user_id": user_id}).count() == 0
    entries = (await client.app[audit_key].page(limit=10)).items
    assert any(entry.action == "user.deleted_self" and entry.target_id == user_id for entry in entries)


async def test_the_last_active_admin_cannot_delete_themselves(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    response = await client.delete(ME, json={"current_password": admin.password}, headers=admin.headers)
    await error_of(response, 409, "conflict")
    assert (await client.get(ME, headers=admin.headers)).status == 200
    other = await accounts.user(admin=True)
    response = await client.delete(ME, json={"current_password": admin.password}, headers=admin.headers)
    assert response.status == 204, await response.text()
    assert (await client.get(ME, headers=other.headers)).status == 200
