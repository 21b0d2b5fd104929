"""Fixtures: every test gets its own database and Redis key prefix on the real FerretDB/MongoDB and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

# The services' URLs are the launcher's; tests import them from here too.
from tests.launcher import MONGODB_URL as MONGODB_URL
from tests.launcher import REDIS_URL as REDIS_URL
from tests.launcher import Isolation
from tidings.server.app import create_app
from tidings.server.settings import Settings

PASSWORD = "correct horse battery"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def make_settings(**overrides: Any) -> Settings:
    """Settings for one test: a fresh database and Redis prefix, and cheap password hashing."""
    unique = uuid.uuid4().hex[:12]
    values: dict[str, Any] = {
        "environment": "test",
        "mongodb_url": MONGODB_URL,
        "mongodb_db": f"tidings_test_{unique}",
        "redis_url": REDIS_URL,
        "redis_prefix": f"test:{unique}:",
        "jwt_secret": "test-secret-" + "x" * 40,
        "password_time_cost": 1,
        "password_memory_kib": 1024,
        "access_log": False,
    }
    values.update(overrides)
    return Settings(**values).checked()


async def drop_test_data(settings: Settings) -> None:
    await Isolation.of(settings).adrop()


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    settings = make_settings()
    yield settings
    await drop_test_data(settings)


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings))


@dataclass
class Account:
    """A registered user and a fresh login."""

    id: str
    email: str
    username: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Accounts:
    """Makes users (and admins) through the real API."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.count = 0

    async def register(self, **fields: Any) -> dict[str, Any]:
        self.count += 1
        body = {
            "email": f"user{self.count}-{uuid.uuid4().hex[:6]}@example.com",
            "username": f"user{self.count}_{uuid.uuid4().hex[:6]}",
            "password": PASSWORD,
            **fields,
        }
        response = await self.client.post("/api/v1/auth/register", json=body)
        assert response.status == 201, await response.text()
        user: dict[str, Any] = await response.json()
        return {**user, "password": body["password"]}

    async def login(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert response.status == 200, await response.text()
        tokens: dict[str, Any] = await response.json()
        return tokens

    async def user(self, *, admin: bool = False, **fields: Any) -> Account:
        user = await self.register(**fields)
        if admin:
            from tidings.documents import User
            from tidings.documents.ids import parse_object_id

            # The first admin comes from the CLI in real life; here, straight from the database.
            found = await User.get(parse_object_id(user["id"]))
            assert found is not None
            await found.set({User.is_admin: True})
        tokens = await self.login(user["email"], user["password"])
        return Account(
            user["id"],
            user["email"],
            user["username"],
            user["password"],
            tokens["access_token"],
            tokens["refresh_token"],
        )


@pytest.fixture
def accounts(client: TestClient[Any, Any]) -> Accounts:
    return Accounts(client)


AppFactory = Callable[..., Awaitable[tuple[TestClient[Any, Any], Accounts, Settings]]]


@pytest.fixture
async def make_client(aiohttp_client: ClientFactory) -> AsyncIterator[AppFactory]:
    """For a test that needs its own settings (make_settings overrides): a client, its Accounts and settings.

    Beanie binds documents to one database per process, so a test uses either this or `client`, never both.
    """
    made: list[Settings] = []

    async def make(**overrides: Any) -> tuple[TestClient[Any, Any], Accounts, Settings]:
        settings = make_settings(**overrides)
        made.append(settings)
        client = await aiohttp_client(create_app(settings))
        return client, Accounts(client), settings

    yield make
    for settings in made:
        await drop_test_data(settings)
