"""Register, log in, refresh, log out."""

from aiohttp import web
from aiohttp_apigami import docs, request_schema, response_schema

from tidings.documents.ids import parse_object_id
from tidings.handlers.credentials import client_address
from tidings.handlers.openapi import BEARER, error_responses
from tidings.handlers.schemas import LoginSchema, RefreshSchema, RegisterSchema, TokenPairSchema, UserSchema
from tidings.server.keys import accounts_key, principal_key, sessions_key, validated_key
from tidings.server.services.authenticator import auth_required


@docs(tags=["auth"], summary="Create an account", responses=error_responses(400, 409, 413, 422))
@request_schema(RegisterSchema)
@response_schema(UserSchema, 201)
async def register(request: web.Request) -> web.Response:
    data = request[validated_key]
    user = await request.app[accounts_key].register(**data)
    return web.json_response(user.public(), status=201)


@docs(
    tags=["auth"],
    summary="Log in with email and password",
    responses=error_responses(400, 401, 403, 413, 422, 429, s401="Email or password is incorrect"),
)
@request_schema(LoginSchema)
@response_schema(TokenPairSchema, 200)
async def login(request: web.Request) -> web.Response:
    data = request[validated_key]
    pair = await request.app[sessions_key].login(
        data["email"], data["password"], client_address(request), request.headers.get("User-Agent")
    )
    return web.json_response(pair.body())


@docs(
    tags=["auth"],
    summary="Rotate a refresh token",
    responses=error_responses(400, 401, 413, 422, s401="The refresh token is invalid, expired or already used"),
)
@request_schema(RefreshSchema)
@response_schema(TokenPairSchema, 200)
async def refresh(request: web.Request) -> web.Response:
    pair = await request.app[sessions_key].refresh(request[validated_key]["refresh_token"])
    return web.json_response(pair.body())


@docs(
    tags=["auth"],
    summary="Log out: the refresh token and the calling access token stop working",
    security=BEARER,
    responses={204: {"description": "Logged out"}, **error_responses(400, 401, 413, 422)},
)
@request_schema(RefreshSchema)
@auth_required
async def logout(request: web.Request) -> web.Response:
    principal = request[principal_key]
    await request.app[sessions_key].logout(
        request[validated_key]["refresh_token"], principal.user_id, principal.session_id
    )
    return web.Response(status=204)


@docs(
    tags=["auth"],
    summary="Log out everywhere: every token of the caller stops working",
    security=BEARER,
    responses={204: {"description": "Logged out everywhere"}, **error_responses(401)},
)
@auth_required
async def logout_all(request: web.Request) -> web.Response:
    user_id = parse_object_id(request[principal_key].user_id)
    assert user_id is not None  # it came from a token this server signed
    await request.app[sessions_key].revoke_all(user_id)
    return web.Response(status=204)
