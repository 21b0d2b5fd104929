"""A real `tidings serve` process on a free port, with its own database and Redis prefix, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import make_settings
from tests.launcher import Isolation, ServerProcess, free_port, run_cli, settings_env
from tidings.server.settings import Settings


@dataclass
class LiveServer:
    settings: Settings
    process: ServerProcess

    @property
    def url(self) -> str:
        return self.process.url

    async def cli(self, *args: str, stdin: str = "") -> str:
        """Run `tidings <args>` against this server's database; return its standard output."""
        result = await run_cli(self.process.env, *args, stdin=stdin.encode())
        assert result.code == 0, f"tidings {' '.join(args)} failed: {result.stderr}"
        return result.stdout

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


@contextlib.asynccontextmanager
async def live_server(log_dir: Path, **overrides: Any) -> AsyncIterator[LiveServer]:
    """Start `tidings serve`, wait until it is ready; on the way out stop it and drop its data."""
    settings = make_settings(**overrides)
    port = free_port()
    env = settings_env(settings, origins=f"http://127.0.0.1:{port}")
    process = ServerProcess(f"server-{port}", env, log_dir, port=port)
    try:
        await process.launch()
        try:
            yield LiveServer(settings, process)
        finally:
            await asyncio.to_thread(process.stop)
    finally:
        await Isolation.of(settings).adrop()
