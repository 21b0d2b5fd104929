"""A real `tidings serve` process on a free port, with its own database and Redis prefix, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tidings.server.settings import Settings
from tests.conftest import drop_test_data, make_settings

TIDINGS = Path(sys.executable).with_name("tidings")  # the console script next to this interpreter (.venv/bin)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(settings: Settings, port: int, **extra: str) -> dict[str, str]:
    """The environment of a server process (and its CLI) for these settings."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "TIDINGS_ENV": "test",
        "MONGODB_URL": settings.mongodb_url,
        "MONGODB_DB": settings.mongodb_db,
        "REDIS_URL": settings.redis_url or "",
        "REDIS_PREFIX": settings.redis_prefix,
        "JWT_SECRET": settings.jwt_secret,
        "ALLOWED_ORIGINS": f"http://127.0.0.1:{port}",
        "PASSWORD_TIME_COST": "1",
        "PASSWORD_MEMORY_KIB": "1024",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@dataclass
class LiveServer:
    settings: Settings
    port: int
    env: dict[str, str]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def cli(self, *args: str, stdin: str = "") -> str:
        """Run `tidings <args>` against this server's database; return its standard output."""
        process = await asyncio.create_subprocess_exec(
            str(TIDINGS),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
        assert process.returncode == 0, f"tidings {' '.join(args)} failed: {stderr.decode()}"
        return stdout.decode()

    async def create_admin(self, email: str, username: str, password: str) -> None:
        output = await self.cli("create-admin", "--email", email, "--username", username, stdin=password + "\n")
        assert output.strip() == f"created admin {email}", output

    async def register(self, **fields: Any) -> dict[str, Any]:
        """A user, through the public API."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/api/v1/auth/register", json=fields) as response,
        ):
            assert response.status == 201, await response.text()
            user: dict[str, Any] = await response.json()
            return user


async def _wait_ready(server: LiveServer, process: asyncio.subprocess.Process) -> None:
    """Poll /health/ready until it answers 200; fail at once if the process dies."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"the server exited with {process.returncode}:\n{server.log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{server.url}/health/ready") as response:
                    if response.status == 200:
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the server was not ready within {START_TIMEOUT:.0f}s:\n{server.log.read_text()}")
            # Nothing to await: the process gives no signal when it listens, so poll briefly.
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def live_server(log_dir: Path, **overrides: Any) -> AsyncIterator[LiveServer]:
    """Start `tidings serve`, wait until it is ready; on the way out stop it and drop its data."""
    settings = make_settings(**overrides)
    port = free_port()
    server = LiveServer(settings, port, server_env(settings, port), log_dir / f"server-{port}.log")
    try:
        with server.log.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                str(TIDINGS),
                "serve",
                "--port",
                str(port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=server.env,
            )
        try:
            await _wait_ready(server, process)
            yield server
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    process.kill()
                    await process.wait()
    finally:
        await drop_test_data(settings)
