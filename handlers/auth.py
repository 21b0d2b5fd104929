"""Register, log in, refresh, log out; and the live page's session, whose refresh token is a cookie."""

from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, request_schema, response_schema

from tidings.documents.ids import parse_object_id
from tidings.handlers.credentials import client_address, refuse_foreign_origin
from tidings.handlers.openapi import BEARER, PAGE_SESSION, error_responses
from tidings.handlers.schemas import (
    AccessTokenSchema,
    LoginSchema,
    RefreshSchema,
    RegisterSchema,
    TokenPairSchema,
    UserSchema,
)
from tidings.server.adapters.errors import Forbidden, InvalidToken
from tidings.server.keys import (
    account_email_key,
    accounts_key,
    principal_key,
    sessions_key,
    settings_key,
    validated_key,
)
from tidings.server.services.authenticator import auth_required
from tidings.server.services.sessions import TokenPair

# The live page's session (docs/security.md): its refresh token is kept in an HttpOnly, SameSite=Strict cookie that
# the browser sends to these endpoints only (the cookie's path), and each of them answers only the page itself.
PAGE_AUTH_PATH = "/api/v1/auth/page"
REFRESH_COOKIE = "tidings_refresh"
PAGE_HEADER = "X-Requested-With"
_PAGE_PARAMETERS: list[dict[str, Any]] = [
    {
        "in": "header",
        "name": PAGE_HEADER,
        "required": True,
        "schema": {"type": "string", "minLength": 1, "example": "tidings"},
        "description": "Any value: a header no cross-site form can send (the live page sends `tidings`).",
    }
]
_S403_PAGE = f"Not sent by the page: no {PAGE_HEADER} header, or an Origin not in ALLOWED_ORIGINS"


@docs(tags=["auth"], summary="Create an account", responses=error_responses(400, 409, 413, 422))
@request_schema(RegisterSchema)
@response_schema(UserSchema, 201)
async def register(request: web.Request) -> web.Response:
    data = request[validated_key]
    user = await request.app[accounts_key].register(**data)
    await request.app[account_email_key].send_verification(user)
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


def _from_the_page(request: web.Request) -> None:
    """Refuse what another site could make a browser send with the page's cookie (CSRF). SameSite=Strict keeps the
    cookie off cross-site requests already; besides, a custom header cannot be sent cross-site without a CORS
    preflight (which this server never grants), and an Origin, which browsers send with every POST, must be ours."""
    if not request.headers.get(PAGE_HEADER, "").strip():
        raise Forbidden(f"Only the tidings page may use its session: send the {PAGE_HEADER} header.")
    refuse_foreign_origin(request, "This Origin may not use the page's session.")


def _signed_in(request: web.Request, pair: TokenPair) -> web.Response:
    """The access token for the page's memory; the refresh token into its cookie, out of the page's reach."""
    response = web.json_response(pair.access_body())
    settings = request.config_dict[settings_key]
    response.set_cookie(
        REFRESH_COOKIE,
        pair.refresh_token,
        max_age=settings.refresh_token_ttl,  # the refresh token's own lifetime
        path=PAGE_AUTH_PATH,
        httponly=True,
        samesite="Strict",
        secure=settings.secure_cookies,
    )
    return response


def _drop_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(REFRESH_COOKIE, path=PAGE_AUTH_PATH)


@docs(
    tags=["auth"],
    summary="Log in the live page: the access token in the body, the refresh token in an HttpOnly cookie",
    description=(
        f"For the page at / only (docs/security.md). Sets the `{REFRESH_COOKIE}` cookie (HttpOnly, SameSite=Strict, "
        f"Path={PAGE_AUTH_PATH}, Secure in production), which {PAGE_AUTH_PATH}/refresh and /logout read. API clients "
        "use /auth/login, whose answer carries both tokens."
    ),
    parameters=_PAGE_PARAMETERS,
    responses=error_responses(400, 401, 403, 413, 422, 429, s401="Email or password is incorrect", s403=_S403_PAGE),
)
@request_schema(LoginSchema)
@response_schema(AccessTokenSchema, 200)
async def page_login(request: web.Request) -> web.Response:
    _from_the_page(request)
    data = request[validated_key]
    sessions = request.app[sessions_key]
    pair = await sessions.login(
        data["email"], data["password"], client_address(request), request.headers.get("User-Agent")
    )
    replaced = request.cookies.get(REFRESH_COOKIE)
    if replaced:  # one page session per browser: the one whose cookie this replaces ends
        await sessions.end(replaced)
    return _signed_in(request, pair)


@docs(
    tags=["auth"],
    summary="A new access token for the live page, from its cookie",
    description=(
        "The cookie keeps its refresh token (the page's tabs share it, and a reload must not race the answer of "
        "the last one), which must still be the session's current one: if a copy of it was rotated through "
        "/auth/refresh, this use ends the session. Without the cookie there is nothing to refresh: 204. A cookie "
        "that no longer works is cleared."
    ),
    parameters=_PAGE_PARAMETERS,
    security=PAGE_SESSION,
    responses={
        204: {"description": "No page session: no cookie came with the request"},
        **error_responses(401, 403, s401="The session is expired, revoked or its token already used", s403=_S403_PAGE),
    },
)
@response_schema(AccessTokenSchema, 200)
async def page_refresh(request: web.Request) -> web.Response:
    _from_the_page(request)
    token = request.cookies.get(REFRESH_COOKIE)
    if not token:
        return web.Response(status=204)
    try:
        pair = await request.app[sessions_key].refresh(token, rotate=False)
    except InvalidToken as exc:
        # The one error shape, with the dead cookie cleared, so that a reload shows the login form at once.
        response = web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        _drop_cookie(response)
        return response
    return web.json_response(pair.access_body())


@docs(
    tags=["auth"],
    summary="Log out the live page: its session ends and its cookie is cleared",
    parameters=_PAGE_PARAMETERS,
    security=PAGE_SESSION,
    responses={
        204: {"description": "Logged out (also when there was no session)"},
        **error_responses(403, s403=_S403_PAGE),
    },
)
async def page_logout(request: web.Request) -> web.Response:
    _from_the_page(request)
    token = request.cookies.get(REFRESH_COOKIE)
    if token:
        await request.app[sessions_key].end(token)
    response = web.Response(status=204)
    _drop_cookie(response)
    return response
