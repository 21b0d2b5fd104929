"""The caller's own account, and every account for admins."""

from aiohttp import web
from aiohttp_apigami import docs, match_info_schema, querystring_schema, request_schema, response_schema

from tidings.handlers.openapi import BEARER, BEARER_OR_API_KEY, error_responses
from tidings.handlers.schemas import (
    AdminUpdateUserSchema,
    DeleteMeSchema,
    UpdateMeSchema,
    UserIdSchema,
    UserListQuerySchema,
    UserPageSchema,
    UserSchema,
)
from tidings.server.adapters.errors import Forbidden, InvalidToken
from tidings.server.keys import (
    account_email_key,
    accounts_key,
    authenticator_key,
    path_key,
    principal_key,
    validated_key,
)
from tidings.server.services.api_keys import key_scope
from tidings.server.services.audit import Actor
from tidings.server.services.authenticator import admin_required, auth_required


@docs(tags=["users"], summary="The caller's account", security=BEARER, responses=error_responses(401))
@response_schema(UserSchema, 200)
@auth_required
async def get_me(request: web.Request) -> web.Response:
    # Served from the authenticator's cache, which is dropped whenever this user changes.
    profile = await request.app[authenticator_key].profile_json(request[principal_key].user_id)
    if profile is None:  # deleted since the token was checked
        raise InvalidToken()
    return web.Response(body=profile, content_type="application/json")


@docs(
    tags=["users"],
    summary="Change the caller's account",
    description=(
        "Changing email or password requires current_password. A password change ends every session. A new email "
        "takes effect when it confirms: the answer shows it as pending_email, and the old address keeps working "
        "until then. email_digest: false stops unread digests."
    ),
    security=BEARER,
    responses=error_responses(400, 401, 403, 409, 413, 422),
)
@request_schema(UpdateMeSchema)
@response_schema(UserSchema, 200)
@auth_required
async def patch_me(request: web.Request) -> web.Response:
    accounts = request.app[accounts_key]
    changes = request[validated_key].copy()
    current_password = changes.pop("current_password", None)
    user = await accounts.get(request[principal_key].user_id)
    user = await request.app[account_email_key].update_self(user, changes, current_password)
    return web.json_response(user.public())


@docs(
    tags=["users"],
    summary="Delete the caller's account",
    description=(
        "Deletes the account, its sessions and its notifications, and closes its sockets; needs current_password. "
        "The last active administrator cannot delete themselves (409)."
    ),
    security=BEARER,
    responses={204: {"description": "Deleted"}, **error_responses(400, 401, 403, 409, 413, 422)},
)
@request_schema(DeleteMeSchema)
@auth_required
async def delete_me(request: web.Request) -> web.Response:
    accounts = request.app[accounts_key]
    user = await accounts.get(request[principal_key].user_id)
    await accounts.delete_self(user, request[validated_key]["current_password"])
    return web.Response(status=204)


@docs(
    tags=["users"],
    summary="List and search accounts (admins; API keys with users:read)",
    security=BEARER_OR_API_KEY,
    responses=error_responses(401, 403, 422, 429),
)
# put_into=None: into validated_key, where the handler reads it (the decorator's default is "querystring").
@querystring_schema(UserListQuerySchema, put_into=None)
@response_schema(UserPageSchema, 200)
@key_scope("users:read")
@admin_required
async def list_users(request: web.Request) -> web.Response:
    query = request[validated_key]
    page = await request.app[accounts_key].search(
        query=query.get("q"),
        before=query.get("before"),
        limit=query["limit"],
        is_active=query.get("is_active"),
        is_admin=query.get("is_admin"),
    )
    return web.json_response({"items": [user.public() for user in page.items], "next_before": page.next_before})


@docs(
    tags=["users"],
    summary="One account (admins, the user themselves, and API keys with users:read)",
    security=BEARER_OR_API_KEY,
    responses=error_responses(401, 403, 404, 422, 429),
)
@match_info_schema(UserIdSchema, put_into=path_key)  # type: ignore[arg-type]
@response_schema(UserSchema, 200)
@key_scope("users:read")
@auth_required
async def get_user(request: web.Request) -> web.Response:
    user_id = request[path_key]["user_id"]
    principal = request.get(principal_key)  # None for an API key, whose scope the middleware checked
    if principal is not None and not principal.is_admin and user_id != principal.user_id:
        raise Forbidden("You may only read your own account.")
    user = await request.app[accounts_key].get(user_id)
    return web.json_response(user.public())


@docs(
    tags=["users"],
    summary="Change an account, including is_active and is_admin (admin)",
    security=BEARER,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
@match_info_schema(UserIdSchema, put_into=path_key)  # type: ignore[arg-type]
@request_schema(AdminUpdateUserSchema)
@response_schema(UserSchema, 200)
@admin_required
async def patch_user(request: web.Request) -> web.Response:
    accounts = request.app[accounts_key]
    user = await accounts.get(request[path_key]["user_id"])
    actor = Actor.of(request[principal_key])
    user = await accounts.update_by_admin(actor, user, request[validated_key].copy())
    return web.json_response(user.public())


@docs(
    tags=["users"],
    summary="Delete an account (admin)",
    security=BEARER,
    responses={204: {"description": "Deleted"}, **error_responses(401, 403, 404, 409, 422)},
)
@match_info_schema(UserIdSchema, put_into=path_key)  # type: ignore[arg-type]
@admin_required
async def delete_user(request: web.Request) -> web.Response:
    accounts = request.app[accounts_key]
    actor = Actor.of(request[principal_key])
    await accounts.delete(actor, await accounts.get(request[path_key]["user_id"]))
    return web.Response(status=204)
