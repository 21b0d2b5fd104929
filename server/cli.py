"""The `tidings` command: `serve` runs the server, `create-admin` creates or promotes an administrator,
`create-api-key` makes an API key for an application's backend, `worker` runs background jobs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web
from marshmallow import ValidationError

from tidings.handlers.schemas import CreateApiKeySchema, RegisterSchema, error_sentences
from tidings.server.adapters.errors import ApiError
from tidings.server.app import create_app
from tidings.server.keys import accounts_key, api_keys_key
from tidings.server.logs import configure_logging
from tidings.server.runner import run
from tidings.server.settings import Settings, SettingsError

log = logging.getLogger("tidings")


def serve(settings: Settings, host: str, port: int) -> None:
    run(create_app(settings), host, port)


def read_password(stdin_is_tty: bool) -> str:
    """From a prompt on a terminal, else the first line of standard input; never from argv."""
    if stdin_is_tty:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Password (again): "):
            raise SystemExit("The passwords do not match.")
        return password
    return sys.stdin.readline().rstrip("\r\n")


async def work(settings: Settings) -> None:
    """`tidings worker`: the app's start-up without HTTP, consuming jobs (and scheduling the periodic ones) until
    SIGTERM or SIGINT; then running jobs get SHUTDOWN_TIMEOUT to finish, and the others go back to the queue."""
    runner = web.AppRunner(create_app(dataclasses.replace(settings, run_worker=True)))
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("worker started", extra={"concurrency": settings.worker_concurrency})
    try:
        await stop.wait()
    finally:
        log.info("worker stopping")
        await runner.cleanup()


async def create_admin(settings: Settings, email: str, username: str, password: str | None) -> str:
    """Create the account as an admin, or promote (and reactivate) the account with that email.

    Runs the app's start-up without listening, so the same account rules apply as for the API (and no job worker:
    a command that ends at once should not take jobs).
    """
    runner = web.AppRunner(create_app(dataclasses.replace(settings, run_worker=False)))
    await runner.setup()
    try:
        accounts = runner.app[accounts_key]
        user = await accounts.find_by_email(email)
        if user is not None:
            await accounts.update_by_admin(None, user, {"is_admin": True, "is_active": True})
            return f"promoted {user.email} to admin"
        try:
            data = RegisterSchema().load({"email": email, "username": username, "password": password or ""})
        except ValidationError as exc:
            sentences = "\n".join(f"tidings: invalid input: {sentence}" for sentence in error_sentences(exc.messages))
            raise SystemExit(sentences) from None
        user = await accounts.register(**data, is_admin=True)
        return f"created admin {user.email}"
    except ApiError as exc:
        raise SystemExit(f"tidings: {exc.message}") from None
    finally:
        await runner.cleanup()


async def create_api_key(
    settings: Settings, name: str, scopes: Sequence[str], expires_in: int | None, rate_limit: int | None
) -> str:
    """Make an API key through the same service and rules as the API; returns the secret (printed once)."""
    raw: dict[str, object] = {"name": name, "scopes": list(scopes), "expires_in": expires_in}
    if rate_limit is not None:
        raw["rate_limit_per_minute"] = rate_limit
    try:
        data = CreateApiKeySchema().load(raw)
    except ValidationError as exc:
        sentences = "\n".join(f"tidings: invalid input: {sentence}" for sentence in error_sentences(exc.messages))
        raise SystemExit(sentences) from None
    runner = web.AppRunner(create_app(dataclasses.replace(settings, run_worker=False)))  # no jobs: it ends at once
    await runner.setup()
    try:
        _, secret = await runner.app[api_keys_key].create(
            None,
            name=data["name"],
            scopes=data["scopes"],
            expires_in=data["expires_in"],
            rate_limit_per_minute=data["rate_limit_per_minute"],
        )
        return secret
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tidings", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP server")
    serve_parser.add_argument("--host", help="address to listen on (default: TIDINGS_HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port to listen on (default: TIDINGS_PORT or 8080)")
    admin_parser = commands.add_parser(
        "create-admin", help="create an admin, or promote an existing user; the password is read from a prompt or stdin"
    )
    commands.add_parser("worker", help="run background jobs (mail, digests, clean-ups) without serving HTTP")
    admin_parser.add_argument("--email", required=True)
    admin_parser.add_argument("--username", required=True)
    key_parser = commands.add_parser(
        "create-api-key", help="make an API key for an application's backend and print it (shown this once)"
    )
    key_parser.add_argument("--name", required=True)
    key_parser.add_argument(
        "--scope", action="append", required=True, dest="scopes", help="notifications:send or users:read; repeatable"
    )
    key_parser.add_argument("--expires-in", type=int, help="seconds until it expires (at least 60; default: never)")
    key_parser.add_argument("--rate-limit", type=int, help="requests a minute (default 600)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"tidings: {exc}") from None
    configure_logging(settings.log_level)

    if args.command == "serve":
        serve(settings, args.host or settings.host, args.port or settings.port)
    elif args.command == "worker":
        asyncio.run(work(settings))
    elif args.command == "create-admin":
        password = read_password(sys.stdin.isatty())
        print(asyncio.run(create_admin(settings, args.email, args.username, password or None)))
    elif args.command == "create-api-key":
        print(asyncio.run(create_api_key(settings, args.name, args.scopes, args.expires_in, args.rate_limit)))
