"""API keys for an application's backends: create (the secret is shown once), list and revoke (admin)."""

from aiohttp import web
from aiohttp_apigami import docs, match_info_schema, request_schema, response_schema

from tidings.handlers.openapi import BEARER, error_responses
from tidings.handlers.schemas import ApiKeyIdSchema, ApiKeyListSchema, CreateApiKeySchema, CreatedApiKeySchema
from tidings.server.keys import api_keys_key, path_key, principal_key, validated_key
from tidings.server.services.audit import Actor
from tidings.server.services.authenticator import admin_required


@docs(
    tags=["api keys"],
    summary="Create an API key (admin)",
    description=(
        "The response's `key` is the secret, shown this once: only its SHA-256 is stored. Send it as "
        "`Authorization: Bearer tdg_...`. Scopes: notifications:send, users:read."
    ),
    security=BEARER,
    responses=error_responses(400, 401, 403, 413, 422),
)
@request_schema(CreateApiKeySchema)
@response_schema(CreatedApiKeySchema, 201)
@admin_required
async def create(request: web.Request) -> web.Response:
    data = request[validated_key]
    key, secret = await request.app[api_keys_key].create(
        Actor.of(request[principal_key]),
        name=data["name"],
        scopes=data["scopes"],
        expires_in=data["expires_in"],
        rate_limit_per_minute=data["rate_limit_per_minute"],
    )
    body = {
        "id": str(key.id),
        "name": key.name,
        "scopes": key.scopes,
        "key": secret,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "rate_limit_per_minute": key.rate_limit_per_minute,
    }
    # Never stored, so never in a cache either.
    return web.json_response(body, status=201, headers={"Cache-Control": "no-store"})


@docs(
    tags=["api keys"],
    summary="Every API key, newest first, without secrets (admin)",
    security=BEARER,
    responses=error_responses(401, 403),
)
@response_schema(ApiKeyListSchema, 200)
@admin_required
async def list_keys(request: web.Request) -> web.Response:
    return web.json_response({"items": await request.app[api_keys_key].listing()})


@docs(
    tags=["api keys"],
    summary="Revoke an API key (admin)",
    description="The key's next request, on any process, answers 401. Revoking a revoked key changes nothing.",
    security=BEARER,
    responses={204: {"description": "Revoked"}, **error_responses(401, 403, 404, 422)},
)
@match_info_schema(ApiKeyIdSchema, put_into=path_key)  # type: ignore[arg-type]
@admin_required
async def revoke(request: web.Request) -> web.Response:
    await request.app[api_keys_key].revoke(Actor.of(request[principal_key]), request[path_key]["key_id"])
    return web.Response(status=204)
