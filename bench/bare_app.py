"""The baseline for the auth benchmark: a bare aiohttp app returning a constant JSON, with uvloop, no middlewares
and no access log.

    .venv/bin/python bench/bare_app.py --port 8090
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

# About the size of a /users/me body.
BODY = (
    b'{"id": "6650f0c2a1b2c3d4e5f60718", "email": "hot@bench.example.com", "username": "hot", "full_name": null, '
    b'"bio": null, "is_active": true, "is_admin": false, "created_at": "2026-05-09T07:35:25.123000+00:00", '
    b'"updated_at": "2026-05-09T07:35:25.123000+00:00"}'
)


async def constant(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", constant)
    app.router.add_get("/api/v1/users/me", constant)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
