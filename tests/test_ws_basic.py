"""Notifications over REST and a WebSocket in one process."""

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Accounts


async def test_notification_reaches_socket_and_inbox(client: TestClient[Any, Any], accounts: Accounts) -> None:
    admin = await accounts.user(admin=True)
    user = await accounts.user()
    async with client.ws_connect("/api/v1/ws", headers=user.headers) as ws:
        ready = await ws.receive_json()
        assert ready == {"type": "ready", "user_id": user.id, "unread": 0}
        response = await client.post(
            "/api/v1/notifications", json={"title": "Hi", "body": "there", "user_ids": [user.id]}, headers=admin.headers
        )
        assert response.status == 201, await response.text()
        sent = (await response.json())["notifications"][0]
        message = await ws.receive_json(timeout=5)
        assert message == {"type": "notification", "notification": sent}
    response = await client.get("/api/v1/notifications/unread-count", headers=user.headers)
    assert await response.json() == {"unread": 1}
