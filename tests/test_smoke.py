from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Accounts


async def test_register_login_me(client: TestClient[Any, Any], accounts: Accounts) -> None:
    me = await accounts.user()
    response = await client.get("/api/v1/users/me", headers=me.headers)
    assert response.status == 200
    body = await response.json()
    assert body["email"] == me.email
    assert "password_hash" not in body
