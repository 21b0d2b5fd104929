"""GET /health/live and /health/ready, with MongoDB or Redis really unreachable (cut off behind a TCP proxy)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import MONGODB_URL, REDIS_URL, AppFactory, drop_test_data, make_settings
from tests.helpers import API, TcpProxy
from tidings.server.app import create_app
from tidings.server.settings import Settings


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def mongo_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(*host_port(MONGODB_URL, 27017))
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(*host_port(REDIS_URL, 6379))
    await proxy.start()
    yield proxy
    await proxy.stop()


async def ready(client: TestClient[Any, Any], status: int) -> dict[str, Any]:
    response = await client.get("/health/ready")
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    assert "X-Request-ID" in response.headers
    return body


async def test_live(client: TestClient[Any, Any]) -> None:
    response = await client.get("/health/live")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_ready_when_everything_answers(client: TestClient[Any, Any]) -> None:
    assert await ready(client, 200) == {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}


async def test_ready_without_redis_checks_only_mongodb(make_client: AppFactory) -> None:
    client, _, _ = await make_client(redis_url=None)
    assert await ready(client, 200) == {"status": "ok", "checks": {"mongodb": "ok"}}


async def test_ready_is_503_naming_redis_when_redis_is_gone(redis_proxy: TcpProxy, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0")
    assert await ready(client, 200) == {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}

    await redis_proxy.stop()
    body = await ready(client, 503)
    assert body["status"] == "unavailable"
    assert body["checks"]["mongodb"] == "ok"
    assert body["checks"]["redis"].startswith("failed: ")
    # Liveness is not readiness: the process is still up.
    assert (await client.get("/health/live")).status == 200
    # A login needs Redis (rate limits): it fails closed, in the one error shape, never with a stack trace.
    response = await client.post(f"{API}/auth/login", json={"email": "a@example.com", "password": "whatever1"})
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    error = (await response.json())["error"]
    assert error["code"] == "service_unavailable"
    assert "Traceback" not in error["message"]

    await redis_proxy.start()  # same port: Redis is back
    assert await ready(client, 200) == {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}
    me = await accounts.user()  # logging in works again
    assert (await client.get(f"{API}/users/me", headers=me.headers)).status == 200


async def test_ready_is_503_naming_mongodb_when_mongodb_is_gone(mongo_proxy: TcpProxy, make_client: AppFactory) -> None:
    client, accounts, _ = await make_client(mongodb_url=f"mongodb://127.0.0.1:{mongo_proxy.port}")
    assert await ready(client, 200) == {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}

    await mongo_proxy.stop()
    body = await ready(client, 503)
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["mongodb"].startswith("failed: ")
    assert (await client.get("/health/live")).status == 200

    await mongo_proxy.start()
    assert await ready(client, 200) == {"status": "ok", "checks": {"mongodb": "ok", "redis": "ok"}}
    await accounts.register()


async def starts(settings: Settings) -> None:
    """Start the app as a server would; always clean up what was started."""
    server = TestServer(create_app(settings))
    try:
        await server.start_server()
    finally:
        await server.close()


async def test_startup_gives_up_on_an_unreachable_redis() -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{closed_port()}/0", startup_timeout=0.3)
    try:
        with pytest.raises(RuntimeError, match="Redis did not answer"):
            await starts(settings)
    finally:
        await drop_test_data(dataclasses.replace(settings, redis_url=None))  # MongoDB was set up before Redis
