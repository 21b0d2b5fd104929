"""GET /metrics: the Prometheus text format, for a scraper on the same host or one that holds METRICS_TOKEN.

Not public: it tells who is connected and how much is sent. Allowed from loopback when no proxy forwarded the
request (a proxy on the same host makes every client look local, so its forwarding headers count as "not local"),
or with `Authorization: Bearer $METRICS_TOKEN` from anywhere. Not in the OpenAPI document: it is for operators.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress

from aiohttp import web

from tidings.handlers.credentials import bearer_token
from tidings.server.adapters.errors import Forbidden, NotFound
from tidings.server.adapters.metrics import CONTENT_TYPE
from tidings.server.keys import metrics_key, settings_key

_FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


async def metrics(request: web.Request) -> web.Response:
    settings = request.app[settings_key]
    if not settings.metrics:
        raise NotFound()
    if not (_holds_token(request, settings.metrics_token) or _is_local(request)):
        raise Forbidden("Metrics are readable from loopback, or with the metrics token.")
    body = await asyncio.to_thread(request.app[metrics_key].exposition)  # reads files under gunicorn
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE  # with its version parameter, which content_type= refuses
    response.headers["Cache-Control"] = "no-store"
    return response


def _holds_token(request: web.Request, token: str) -> bool:
    given = bearer_token(request)
    return bool(token) and given is not None and hmac.compare_digest(given.encode(), token.encode())


def _is_local(request: web.Request) -> bool:
    if any(name in request.headers for name in _FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:  # a Unix socket: no address
        return False
