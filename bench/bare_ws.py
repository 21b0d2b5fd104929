"""The baseline for the WebSocket benchmark: a bare aiohttp send loop.

    .venv/bin/python bench/bare_ws.py --port 8091

GET /ws accepts any socket (no authentication, no database), sends {"type": "ready"} and keeps it, answering
{"type": "ping"} with {"type": "pong"}. POST /broadcast
with the same JSON body as tidings' POST /api/v1/notifications serializes the notification once and sends that
text to every socket with `await ws.send_str(...)`, one socket after the other, then answers 201. Sockets get the
same options as tidings gives them (heartbeat, frame size limit, no compression), and it listens with tidings'
backlog (LISTEN_BACKLOG, or `--backlog`), so the figures compare.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from datetime import UTC, datetime

import uvloop
from aiohttp import WSMsgType, web

from tidings.server.settings import listen_backlog

sockets_key: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("sockets")
_ids = itertools.count(1)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=25.0, max_msg_size=16 * 1024, compress=False, autoping=True)
    await ws.prepare(request)
    sockets = request.app[sockets_key]
    sockets.add(ws)
    try:
        await ws.send_str('{"type": "ready", "user_id": null, "unread": 0}')
        async for message in ws:
            if message.type is WSMsgType.TEXT and '"ping"' in message.data:
                await ws.send_str('{"type": "pong"}')
    finally:
        sockets.discard(ws)
    return ws


async def broadcast(request: web.Request) -> web.Response:
    body = await request.json()
    notification = {
        "id": f"{next(_ids):024x}",
        "title": body["title"],
        "body": body["body"],
        "data": body.get("data"),
        "created_at": datetime.now(UTC).isoformat(),
        "broadcast": True,
        "read": False,
    }
    text = json.dumps({"type": "notification", "notification": notification})
    sockets = request.app[sockets_key]
    for ws in list(sockets):
        if not ws.closed:
            await ws.send_str(text)
    return web.json_response({"broadcast": True, "notifications": [notification]}, status=201)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app() -> web.Application:
    app = web.Application()
    sockets: set[web.WebSocketResponse] = set()
    app[sockets_key] = sockets
    app.router.add_get("/ws", websocket)
    app.router.add_post("/broadcast", broadcast)
    app.router.add_get("/health/live", live)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--backlog", type=int, default=listen_backlog(os.environ), help="listen queue (LISTEN_BACKLOG)")
    args = parser.parse_args()
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        backlog=args.backlog,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
