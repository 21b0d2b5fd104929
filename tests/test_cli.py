"""`tidings create-admin`, run as a real subprocess against the test's own database and Redis prefix."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import PASSWORD, Accounts
from tests.helpers import API, error_of, json_of
from tests.launcher import CliResult, run_cli, settings_env
from tidings.server.settings import Settings

TIMEOUT = 30
ADMIN_PASSWORD = "  admin pass phrase  "  # spaces at both ends are part of the password


async def tidings(settings: Settings, *args: str, stdin: bytes = b"", **env: str) -> CliResult:
    return await run_cli(settings_env(settings, **env), *args, stdin=stdin, time_limit=TIMEOUT)


async def create_admin(settings: Settings, email: str, username: str, stdin: bytes) -> CliResult:
    return await tidings(settings, "create-admin", "--email", email, "--username", username, stdin=stdin)


async def login(client: TestClient[Any, Any], email: str, password: str) -> dict[str, str]:
    response = await client.post(f"{API}/auth/login", json={"email": email, "password": password})
    tokens: dict[str, str] = await json_of(response, 200)
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_create_admin(client: TestClient[Any, Any], settings: Settings) -> None:
    result = await create_admin(settings, "Root@Example.com", "root", (ADMIN_PASSWORD + "\n").encode())
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "created admin Root@Example.com"
    assert ADMIN_PASSWORD.strip() not in result.stdout + result.stderr

    headers = await login(client, "root@example.com", ADMIN_PASSWORD)
    me = await json_of(await client.get(f"{API}/users/me", headers=headers), 200)
    assert (me["email"], me["username"], me["is_admin"], me["is_active"]) == ("Root@Example.com", "root", True, True)
    page = await json_of(await client.get(f"{API}/users", headers=headers), 200)
    assert [user["id"] for user in page["items"]] == [me["id"]]
    # The password is exactly the line that was piped, spaces included, without its line ending.
    response = await client.post(f"{API}/auth/login", json={"email": me["email"], "password": ADMIN_PASSWORD.strip()})
    await error_of(response, 401, "invalid_credentials")


async def test_windows_line_ending_is_not_part_of_the_password(
    client: TestClient[Any, Any], settings: Settings
) -> None:
    result = await create_admin(settings, "crlf@example.com", "crlf", b"crlf password\r\nsecond line\n")
    assert result.code == 0, result.stderr
    await login(client, "crlf@example.com", "crlf password")


async def test_create_admin_promotes_an_existing_user_at_once(
    client: TestClient[Any, Any], accounts: Accounts, settings: Settings
) -> None:
    user = await accounts.user()
    await error_of(await client.get(f"{API}/users", headers=user.headers), 403, "forbidden")  # cached as non-admin

    result = await create_admin(settings, user.email.upper(), "ignored_name", b"ignored password\n")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == f"promoted {user.email} to admin"

    # The running server hears of the change through Redis: the same token is an admin's now.
    await json_of(await client.get(f"{API}/users", headers=user.headers), 200)
    me = await json_of(await client.get(f"{API}/users/me", headers=user.headers), 200)
    assert (me["is_admin"], me["username"]) == (True, user.username)
    # Promotion leaves the password alone.
    await login(client, user.email, PASSWORD)
    response = await client.post(f"{API}/auth/login", json={"email": user.email, "password": "ignored password"})
    await error_of(response, 401, "invalid_credentials")


async def test_create_admin_twice(client: TestClient[Any, Any], settings: Settings) -> None:
    first = await create_admin(settings, "twice@example.com", "twice", b"first password\n")
    assert first.code == 0, first.stderr
    second = await create_admin(settings, "twice@example.com", "twice", b"second password\n")
    assert second.code == 0, second.stderr
    assert second.stdout.strip() == "promoted twice@example.com to admin"
    headers = await login(client, "twice@example.com", "first password")
    assert (await json_of(await client.get(f"{API}/users/me", headers=headers), 200))["is_admin"] is True


async def test_create_admin_reactivates_a_deactivated_user(
    client: TestClient[Any, Any], accounts: Accounts, settings: Settings
) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.register()
    response = await client.patch(f"{API}/users/{user['id']}", json={"is_active": False}, headers=admin.headers)
    await json_of(response, 200)
    response = await client.post(f"{API}/auth/login", json={"email": user["email"], "password": PASSWORD})
    await error_of(response, 403, "forbidden")

    result = await create_admin(settings, user["email"], user["username"], b"")
    assert result.code == 0, result.stderr
    headers = await login(client, user["email"], PASSWORD)
    me = await json_of(await client.get(f"{API}/users/me", headers=headers), 200)
    assert (me["is_admin"], me["is_active"]) == (True, True)


async def test_the_password_is_never_taken_from_argv(client: TestClient[Any, Any], settings: Settings) -> None:
    result = await tidings(
        settings,
        "create-admin",
        "--email",
        "argv@example.com",
        "--username",
        "argv",
        "--password",
        "argv password",
        stdin=b"stdin password\n",
    )
    assert result.code == 2
    assert "unrecognized arguments: --password" in result.stderr
    response = await client.post(f"{API}/auth/login", json={"email": "argv@example.com", "password": "stdin password"})
    await error_of(response, 401, "invalid_credentials")


async def test_create_admin_refuses_bad_input(client: TestClient[Any, Any], settings: Settings) -> None:
    for stdin in (b"", b"short\n", b"x" * 129 + b"\n"):
        result = await create_admin(settings, "bad@example.com", "bad", stdin)
        assert result.code == 1, (stdin, result)
        assert "invalid input" in result.stderr, result.stderr
        assert "password" in result.stderr
        # A sentence per field, never a Python dict.
        assert "{" not in result.stderr and "[" not in result.stderr, result.stderr
    result = await create_admin(settings, "not-an-email", "bad", b"long enough password\n")
    assert result.code == 1
    assert "email" in result.stderr
    result = await create_admin(settings, "bad@example.com", "no spaces allowed", b"long enough password\n")
    assert result.code == 1
    assert "username" in result.stderr
    response = await client.post(f"{API}/auth/login", json={"email": "bad@example.com", "password": "x" * 129})
    await error_of(response, 422, "validation_error")
    response = await client.post(
        f"{API}/auth/login", json={"email": "bad@example.com", "password": "long enough password"}
    )
    await error_of(response, 401, "invalid_credentials")


async def test_create_admin_with_a_taken_username(
    client: TestClient[Any, Any], accounts: Accounts, settings: Settings
) -> None:
    user = await accounts.register()
    result = await create_admin(settings, "new@example.com", user["username"].upper(), b"long enough password\n")
    assert result.code == 1
    assert "username is already taken" in result.stderr
    response = await client.post(
        f"{API}/auth/login", json={"email": "new@example.com", "password": "long enough password"}
    )
    await error_of(response, 401, "invalid_credentials")


async def test_cli_refuses_unsafe_settings(settings: Settings) -> None:
    result = await tidings(
        settings, "create-admin", "--email", "a@example.com", "--username", "a", TIDINGS_ENV="production", JWT_SECRET=""
    )
    assert result.code == 1
    assert "JWT_SECRET must be set" in result.stderr
    result = await tidings(settings, "create-admin", "--email", "a@example.com", "--username", "a", TIDINGS_PORT="x")
    assert result.code == 1
    assert "TIDINGS_PORT must be an integer" in result.stderr
