"""A user's notifications, and sending them (admin)."""

from aiohttp import web
from aiohttp_apigami import docs, request_schema, response_schema
from beanie import PydanticObjectId

from tidings.handlers.openapi import BEARER, error_responses
from tidings.handlers.schemas import (
    NotificationIdSchema,
    NotificationListQuerySchema,
    NotificationPageSchema,
    SendNotificationSchema,
    SentSchema,
    UnreadCountSchema,
)
from tidings.server.keys import notifications_key, principal_key, validated_key
from tidings.server.services.audit import Actor
from tidings.server.services.authenticator import admin_required, auth_required


def caller_id(request: web.Request) -> PydanticObjectId:
    return PydanticObjectId(request[principal_key].user_id)


@docs(
    tags=["notifications"],
    summary="Send a notification to users, or broadcast it (admin)",
    description="Stored before the response: once this answers 201 the notification is never lost.",
    security=BEARER,
    responses=error_responses(400, 401, 403, 413, 422),
)
@request_schema(SendNotificationSchema)
@response_schema(SentSchema, 201)
@admin_required
async def send(request: web.Request) -> web.Response:
    data = request[validated_key]
    sent = await request.app[notifications_key].send(
        title=data["title"],
        body=data["body"],
        data=data["data"],
        user_ids=data["user_ids"],
        emails=data["emails"],
        usernames=data["usernames"],
        broadcast=data["broadcast"],
        sender=Actor.of(request[principal_key]),
    )
    body = {"broadcast": data["broadcast"], "notifications": [n.public(read=False) for n in sent]}
    return web.json_response(body, status=201)


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
