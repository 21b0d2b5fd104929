"""A user's notifications, and sending them (admins, and API keys with notifications:send), one or a batch."""

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, request_schema, response_schema
from beanie import PydanticObjectId
from marshmallow import ValidationError

from tidings.handlers.credentials import acting, caller
from tidings.handlers.openapi import BEARER, BEARER_OR_API_KEY, IDEMPOTENCY_KEY_PARAMETER, error_responses
from tidings.handlers.schemas import (
    BatchSendSchema,
    BatchSentSchema,
    NotificationIdSchema,
    NotificationListQuerySchema,
    NotificationPageSchema,
    SendNotificationSchema,
    SentSchema,
    UnreadCountSchema,
)
from tidings.server.adapters.errors import ApiError, ValidationFailed
from tidings.server.keys import idempotency_key, notifications_key, principal_key, validated_key
from tidings.server.services.api_keys import key_scope
from tidings.server.services.audit import Actor
from tidings.server.services.authenticator import admin_required, auth_required
from tidings.server.services.idempotency import HEADER, check_key, fingerprint
from tidings.server.services.notifications import SendRequest

_SEND_403 = "Not an admin, or an API key without notifications:send (insufficient_scope)"


def caller_id(request: web.Request) -> PydanticObjectId:
    return PydanticObjectId(request[principal_key].user_id)


Result = tuple[int, dict[str, Any]]


async def _send_one(request: web.Request, data: dict[str, Any], sender: Actor) -> dict[str, Any]:
    """One validated send, through the one service path; its 201 body."""
    sent = await request.app[notifications_key].send(
        title=data["title"],
        body=data["body"],
        data=data["data"],
        user_ids=data["user_ids"],
        emails=data["emails"],
        usernames=data["usernames"],
        broadcast=data["broadcast"],
        sender=sender,
    )
    return {"broadcast": data["broadcast"], "notifications": [n.public(read=False) for n in sent]}


async def _answer(request: web.Request, operation: str, work: Callable[[], Awaitable[Result]]) -> web.Response:
    """Do `work`, once per Idempotency-Key when the request carries one (services/idempotency.py)."""
    raw = request.headers.get(HEADER)
    if raw is None:
        status, body = await work()
        return web.json_response(body, status=status)
    key = check_key(raw)
    outcome = await request.app[idempotency_key].run(
        caller(request), key, fingerprint(operation, request[validated_key]), work
    )
    response = web.Response(text=outcome.body, status=outcome.status, content_type="application/json")
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@docs(
    tags=["notifications"],
    summary="Send a notification to users, or broadcast it (admins; API keys with notifications:send)",
    description=(
        "Stored before the response: once this answers 201 the notification is never lost. With an "
        "Idempotency-Key, a retry answers the first response again and sends nothing twice."
    ),
    security=BEARER_OR_API_KEY,
    parameters=[IDEMPOTENCY_KEY_PARAMETER],
    responses=error_responses(400, 401, 403, 409, 413, 422, 429, s403=_SEND_403),
)
@request_schema(SendNotificationSchema)
@response_schema(SentSchema, 201)
@key_scope("notifications:send")
@admin_required
async def send(request: web.Request) -> web.Response:
    data, sender = request[validated_key], acting(request)

    async def work() -> Result:
        return 201, await _send_one(request, data, sender)

    return await _answer(request, "send", work)


def _failed(exc: ApiError) -> dict[str, Any]:
    return {"status": exc.status, **exc.body()}


def _request(data: dict[str, Any]) -> SendRequest:
    fields = ("title", "body", "data", "user_ids", "emails", "usernames", "broadcast")
    return SendRequest(**{field: data[field] for field in fields})


async def _send_batch(request: web.Request, items: list[dict[str, Any]], sender: Actor) -> list[dict[str, Any]]:
    """Each item checked by the single send's schema, and the valid ones sent together (send_many); a bad item fails
    only itself. One result per item, in order."""
    results: list[dict[str, Any] | None] = []
    valid: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, SendNotificationSchema().load(item)))
            results.append(None)
        except ValidationError as exc:
            results.append(_failed(ValidationFailed("The item does not match the schema.", details=exc.messages)))
    outcomes = await request.app[notifications_key].send_many([_request(data) for _, data in valid], sender)
    for (index, data), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, ApiError):
            results[index] = _failed(outcome)
        else:
            results[index] = {
                "status": 201,
                "broadcast": data["broadcast"],
                "notifications": [n.public(read=False) for n in outcome],
            }
    return [result for result in results if result is not None]


@docs(
    tags=["notifications"],
    summary="Send up to 100 notifications at once (admins; API keys with notifications:send)",
    description=(
        "Each item is what POST /api/v1/notifications takes, checked and sent on its own: the answer (200) has one "
        'result per item, in order, {"status": 201, "broadcast", "notifications"} or {"status": 4xx, "error"}; a '
        "bad item fails only itself. The sends are stored together: far cheaper than a request each. An "
        "Idempotency-Key covers the whole batch."
    ),
    security=BEARER_OR_API_KEY,
    parameters=[IDEMPOTENCY_KEY_PARAMETER],
    responses=error_responses(400, 401, 403, 409, 413, 422, 429, s403=_SEND_403),
)
@request_schema(BatchSendSchema)
@response_schema(BatchSentSchema, 200)
@key_scope("notifications:send")
@admin_required
async def send_batch(request: web.Request) -> web.Response:
    items, sender = request[validated_key]["notifications"], acting(request)

    async def work() -> Result:
        return 200, {"results": await _send_batch(request, items, sender)}

    return await _answer(request, "send_batch", work)


@docs(
    tags=["notifications"],
    summary="The caller's notifications, newest first",
    security=BEARER,
    responses=error_responses(401, 422),
)
# Not querystring_schema: it would put the data under the string key "querystring", not validated_key.
@request_schema(NotificationListQuerySchema, location="querystring")
@response_schema(NotificationPageSchema, 200)
@auth_required
async def list_own(request: web.Request) -> web.Response:
    query = request[validated_key]
    page = await request.app[notifications_key].inbox(
        caller_id(request), before=query.get("before"), limit=query["limit"], unread=query["unread"]
    )
    return web.json_response({"items": page.items, "next_before": page.next_before})


@docs(
    tags=["notifications"],
    summary="How many of the caller's notifications are unread",
    security=BEARER,
    responses=error_responses(401),
)
@response_schema(UnreadCountSchema, 200)
@auth_required
async def unread_count(request: web.Request) -> web.Response:
    return web.json_response({"unread": await request.app[notifications_key].unread_count(caller_id(request))})


@docs(
    tags=["notifications"],
    summary="Mark one of the caller's notifications read",
    security=BEARER,
    responses={204: {"description": "Marked read"}, **error_responses(401, 404, 422)},
)
@request_schema(NotificationIdSchema, location="match_info")  # into validated_key, as the handler reads
@auth_required
async def mark_read(request: web.Request) -> web.Response:
    await request.app[notifications_key].mark_read(caller_id(request), request[validated_key]["notification_id"])
    return web.Response(status=204)


@docs(
    tags=["notifications"],
    summary="Mark all of the caller's notifications read",
    security=BEARER,
    responses={204: {"description": "All marked read"}, **error_responses(401)},
)
@auth_required
async def mark_all_read(request: web.Request) -> web.Response:
    await request.app[notifications_key].mark_all_read(caller_id(request))
    return web.Response(status=204)
