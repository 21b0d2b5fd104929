"""Helpers shared by the tests: the error shape, hand-made tokens and a TCP proxy that can simulate an outage."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any

import jwt
from aiohttp import ClientResponse
from prometheus_client.parser import text_string_to_metric_families

from tidings.server.adapters.security import AUDIENCES, ISSUER

API = "/api/v1"


async def error_of(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert the response is the one JSON error shape with this status and code; return its "error" object."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", response.content_type
    body = json.loads(text)
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) <= {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"], error
    assert "X-Request-ID" in response.headers
    return error


async def json_of(response: ClientResponse, status: int) -> Any:
    """Assert the status and return the JSON body, which never holds a password hash."""
    text = await response.text()
    assert response.status == status, text
    assert_no_secrets(text)
    return json.loads(text)


def assert_no_secrets(text: str) -> None:
    assert "password" not in text.lower(), text
    assert "$argon2" not in text, text
    assert "token_version" not in text, text


def claims_of(token: str) -> dict[str, Any]:
    """The claims of one of our tokens, without checking them."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT put together by hand: any header, any claims, any signature bytes."""
    parts = (json.dumps(header).encode(), json.dumps(claims).encode())
    return ".".join([*(b64url(part) for part in parts), b64url(signature)])


def sign(secret: str, claims: dict[str, Any], algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def resign(token: str, secret: str, **changes: Any) -> str:
    """The same token's claims with `changes` applied (a value of None drops the claim), signed with `secret`."""
    claims = {**claims_of(token), **changes}
    return sign(secret, {key: value for key, value in claims.items() if value is not None})


def expired(token: str, secret: str) -> str:
    """The same claims, correctly signed, but issued an hour ago and expired a second ago."""
    now = int(time.time())
    return resign(token, secret, iat=now - 3600, exp=now - 1)


def access_claims(user_id: str, session_id: str, version: int = 0) -> dict[str, Any]:
    """Well-formed claims of an access token, as the server would issue them."""
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCES["access"],
        "sub": user_id,
        "sid": session_id,
        "jti": "f" * 32,
        "ver": version,
        "iat": now,
        "exp": now + 600,
    }


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a real service, so a test can cut the service off (and bring it back)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection: to its clients the service is gone."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(upstream_writer)
        try:
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        finally:
            for end in (writer, upstream_writer):
                end.close()
                self._writers.discard(end)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """A /metrics answer's samples, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
