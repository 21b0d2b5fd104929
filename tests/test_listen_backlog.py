"""LISTEN_BACKLOG: the listen queue of `tidings serve` (server/runner.py) and of gunicorn (gunicorn.conf.py), which a
reconnect storm of thousands of sockets overflows at aiohttp's default of 128."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher import HOST, Isolation, ServerProcess, free_port, server_env

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).with_name("gunicorn")
JWT_SECRET = "listen-backlog-test-secret-" + "s" * 40
SS = shutil.which("ss")

pytestmark = pytest.mark.skipif(SS is None, reason="needs ss (iproute2) to read a listening socket's backlog")


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def backlog_of(port: int) -> int:
    """ss shows a listening socket's backlog as its Send-Q."""
    assert SS is not None
    columns = subprocess.run(  # noqa: S603 - a fixed command line
        [SS, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(columns[2])


def backlog_served(server: ServerProcess) -> int:
    server.start()
    try:
        server.wait_ready()
        return backlog_of(server.port)
    finally:
        server.stop()


@pytest.fixture
def isolation() -> Iterator[Isolation]:
    isolation = Isolation.new("test", "backlog")
    yield isolation
    isolation.drop()


@pytest.mark.parametrize("configured", [None, "1000"], ids=["default", "set"])
def test_tidings_serve_listens_with_the_backlog(isolation: Isolation, tmp_path: Path, configured: str | None) -> None:
    env = server_env(isolation, jwt_secret=JWT_SECRET)
    if configured is not None:
        env["LISTEN_BACKLOG"] = configured
    expected = min(4096, somaxconn()) if configured is None else int(configured)  # the kernel caps it
    assert backlog_served(ServerProcess("serve", env, tmp_path)) == expected


def test_gunicorn_listens_with_the_backlog(isolation: Isolation, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(
        isolation,
        jwt_secret=JWT_SECRET,
        TIDINGS_HOST=HOST,
        TIDINGS_PORT=str(port),
        WEB_CONCURRENCY="1",
        LISTEN_BACKLOG="1000",
    )
    argv = [str(GUNICORN), "-c", str(ROOT / "gunicorn.conf.py")]
    server = ServerProcess("gunicorn", env, tmp_path, argv=argv, port=port, cwd=ROOT)
    assert backlog_served(server) == 1000
