"""Requests that aiohttp's HTTP parser refuses before any app code runs (an over-long header line, a garbled request
line) get the API's JSON error, an X-Request-ID and the security headers, from both ways tidings is served: `tidings
serve` and gunicorn (server/runner.py). The log has one line for each, no traceback."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher import HOST, Isolation, ServerProcess, free_port, server_env

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).with_name("gunicorn")
JWT_SECRET = "refused-requests-test-secret-" + "s" * 40

LONG_HEADER = b"GET /health/live HTTP/1.1\r\nHost: tidings.test\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n"
GARBAGE = b"\x01\x02 this is not HTTP\r\n\r\n"


def exchange(port: int, data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send `data` on a fresh connection, read until the server closes it: status line, headers, body."""
    with socket.create_connection((HOST, port), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):  # the server closes the connection after its answer
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status_line, headers, body


def assert_refused_as_json(port: int, data: bytes) -> None:
    status_line, headers, body = exchange(port, data)
    assert status_line.split()[1] == "400", status_line
    assert headers["content-type"].startswith("application/json"), headers
    assert len(headers["x-request-id"]) == 32, headers
    assert headers["x-content-type-options"] == "nosniff", headers
    assert headers["x-frame-options"] == "DENY", headers
    assert headers["connection"] == "close", headers
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request", error
    assert error["message"].startswith("The request is not valid HTTP: "), error
    assert len(error["message"]) < 300, error  # aiohttp's reason quotes the request; not all 10,000 bytes of it


def assert_both_refused(server: ServerProcess) -> None:
    server.start()
    try:
        server.wait_ready()
        assert_refused_as_json(server.port, LONG_HEADER)
        assert_refused_as_json(server.port, GARBAGE)
        server.check_alive()
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log
    assert '"level": "ERROR"' not in log, log
    # server/logs.py: the over-long header is one INFO line; aiohttp logs a bad method on a first request at DEBUG.
    assert log.count("malformed request refused") == 1, log


@pytest.fixture
def isolation() -> Iterator[Isolation]:
    isolation = Isolation.new("test", "refused")
    yield isolation
    isolation.drop()


def test_tidings_serve_answers_refused_requests_with_the_json_error(isolation: Isolation, tmp_path: Path) -> None:
    env = server_env(isolation, jwt_secret=JWT_SECRET, log_level="INFO")
    assert_both_refused(ServerProcess("serve", env, tmp_path))


def test_gunicorn_answers_refused_requests_with_the_json_error(isolation: Isolation, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(
        isolation,
        jwt_secret=JWT_SECRET,
        log_level="INFO",
        TIDINGS_HOST=HOST,
        TIDINGS_PORT=str(port),
        WEB_CONCURRENCY="1",
    )
    argv = [str(GUNICORN), "-c", str(ROOT / "gunicorn.conf.py")]
    assert_both_refused(ServerProcess("gunicorn", env, tmp_path, argv=argv, port=port, cwd=ROOT))
