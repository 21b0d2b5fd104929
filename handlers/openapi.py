"""The OpenAPI 3 document and Swagger UI, generated from the schemas that validate requests."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from string import Template
from typing import Any, NoReturn

import marshmallow as m
from aiohttp import web
from aiohttp_apigami import AiohttpApiSpec
from aiohttp_apigami.constants import APISPEC_PARSER
from aiohttp_apigami.swagger_ui import SWAGGER_UI_STATIC_FILES
from apispec import BasePlugin
from webargs.aiohttpparser import AIOHTTPParser, is_json_request
from webargs.core import missing

from tidings.handlers.json_input import InvalidJson, NulInJson, parse_json
from tidings.handlers.nul import nul_errors
from tidings.handlers.schemas import MAX_RECIPIENTS, ErrorSchema, SendNotificationSchema
from tidings.server.adapters.errors import BadRequest, ValidationFailed
from tidings.server.keys import validated_key

_ERROR_DESCRIPTIONS = {
    400: "Malformed request (for example invalid JSON)",
    401: "Missing, invalid, expired or revoked access token",
    403: "Authenticated but not allowed",
    404: "Not found",
    409: "Conflicts with existing data",
    413: "Request body too large",
    422: "The request does not match the schema",
    429: "Rate limited; see Retry-After",
}

BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
# The operations an application's backend may call with an API key (services/api_keys.py), each also open to an
# admin's access token: either scheme is enough.
BEARER_OR_API_KEY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
API_KEY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "tdg_ API key",
    "description": (
        "An API key made by an admin (POST /api/v1/api-keys): `Authorization: Bearer tdg_...`. It may call only the "
        "operations that list this scheme, and only with the scope each names: notifications:send or users:read."
    ),
}
IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    "description": (
        "1 to 255 printable ASCII characters, scoped to the caller. The same key with the same body within "
        "IDEMPOTENCY_TTL answers the first response again (with `Idempotent-Replayed: true`), and nothing is sent "
        "twice; with another body, 422 idempotency_key_reused; while the first is still running, it waits for it "
        "or answers 409 idempotency_key_in_use."
    ),
}
# The live page's refresh cookie (handlers/auth.py), which the browser sends to /api/v1/auth/page/ only.
PAGE_SESSION: list[dict[str, list[str]]] = [{"pageSession": []}]
PAGE_SESSION_SCHEME = {
    "type": "apiKey",
    "in": "cookie",
    "name": "tidings_refresh",
    "description": "HttpOnly: set by POST /api/v1/auth/page/login; a browser sends it, no script can.",
}

# Operations that are WebSocket upgrades: Swagger UI cannot open a socket, so it offers no "Try it out" for them
# (the x-websocket extension, read by the NO_TRY_IT_OUT plugin of the docs page below).
WEBSOCKET_PATHS = frozenset({"/api/v1/ws"})
WEBSOCKET_EXTENSION = "x-websocket"

# SendNotificationSchema.one_audience, in words and in JSON Schema (OpenAPI 3.0.3): broadcast: true, or named
# recipients, not both (both oneOf branches would match) and not neither (none would). The total it cannot state.
# (Not the schema's Meta.description: with one, apispec 6 leaves out additionalProperties: false.)
SEND_AUDIENCE: dict[str, Any] = {
    "description": (
        "The audience is named recipients or everyone, never both: user_ids, emails and/or usernames (each "
        f"non-empty if given, together 1 to {MAX_RECIPIENTS} recipients), or broadcast: true."
    ),
    "oneOf": [
        {"required": ["broadcast"], "properties": {"broadcast": {"enum": [True]}}},
        {"anyOf": [{"required": ["user_ids"]}, {"required": ["emails"]}, {"required": ["usernames"]}]},
    ],
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int, dict[str, Any]]:
    """Documented error responses, all in the one error shape; `s401="..."` describes a status otherwise."""
    return {
        status: {"description": descriptions.get(f"s{status}", _ERROR_DESCRIPTIONS[status]), "schema": "ErrorSchema"}
        for status in statuses
    }


class Parser(AIOHTTPParser):
    """webargs' parser with tidings' errors: 400 for a body that is not JSON, 422 for schema mismatches, and 422
    for a NUL anywhere in the body, the query string or the path (handlers/nul.py), before the schema sees them.

    The request locations tidings' handlers declare are json, querystring and match_info: each loader checks."""

    async def load_json(self, req: web.Request, schema: m.Schema) -> Any:
        if not req.body_exists:
            return missing
        if not is_json_request(req):
            raise BadRequest("The body must be JSON (Content-Type: application/json).")
        body = await req.read()
        if not body:
            return missing
        try:
            text = body.decode(req.charset or "utf-8")
        except LookupError:
            raise BadRequest("The body is not JSON we can read: its charset is unknown; send UTF-8.") from None
        except UnicodeDecodeError:
            raise BadRequest("The body is not valid JSON: it is not text in its charset.") from None
        try:
            return parse_json(text)
        except NulInJson as exc:
            raise ValidationFailed(details=exc.errors) from None
        except InvalidJson as exc:
            raise BadRequest(f"The body is not valid JSON: {exc}.") from None

    def load_querystring(self, req: web.Request, schema: m.Schema) -> Any:
        _refuse_nul(req.query)
        return super().load_querystring(req, schema)

    def load_match_info(self, req: web.Request, schema: m.Schema) -> Any:
        _refuse_nul(req.match_info)
        return super().load_match_info(req, schema)

    def _handle_invalid_json_error(self, error: Exception, req: web.Request, *args: Any, **kwargs: Any) -> NoReturn:
        raise BadRequest("The body is not valid JSON.")

    def handle_error(self, error: m.ValidationError, req: web.Request, schema: m.Schema, **kwargs: Any) -> NoReturn:
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1:
            # webargs nests messages under the location ("json", "querystring"); one location needs no nesting.
            (messages,) = messages.values()
        raise ValidationFailed(details=messages)


def _refuse_nul(fields: Mapping[str, Any]) -> None:
    """422 naming each query parameter or path part that holds a NUL (handlers/nul.py)."""
    errors = nul_errors(fields)
    if errors:
        raise ValidationFailed(details=errors)


class OperationsAsServed(BasePlugin):
    """Each operation as the server treats it, where apigami says otherwise: every request body is required (each
    request schema has a required field or refuses to change nothing, so a request without one is a 422), no
    Swagger 2 `produces` (apigami's @docs adds it, and no valid OpenAPI 3 operation has one), no HEAD twin of
    each GET, and a WebSocket upgrade marked as one (x-websocket: true)."""

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if operations:
            operations.pop("head", None)  # aiohttp adds a HEAD route for every GET; documenting each twice is noise
        for operation in (operations or {}).values():
            operation.pop("produces", None)
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            if path in WEBSOCKET_PATHS:
                operation[WEBSOCKET_EXTENSION] = True


def setup_openapi(app: web.Application) -> None:
    spec = AiohttpApiSpec(
        title="tidings API",
        version="0.1.0",
        openapi_version="3.0.3",
        url="/api/docs/openapi.json",
        # Swagger UI is served by swagger_page below, under its own title; apigami only serves its static files.
        swagger_path=None,
        static_path="/api/docs/static",
        request_data_name=validated_key,  # type: ignore[arg-type]  # a typed RequestKey works where a str is expected
        info={"description": "Accounts, JWT auth and real-time notifications. Errors share one shape: ErrorSchema."},
    )
    spec.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.spec.components.security_scheme("pageSession", PAGE_SESSION_SCHEME)
    spec.spec.components.security_scheme("apiKeyAuth", API_KEY_SCHEME)
    spec.spec.components.schema("ErrorSchema", schema=ErrorSchema)
    # Registered ahead of its operation (under the name apigami would give it) to add what marshmallow cannot say.
    spec.spec.components.schema("SendNotification", SEND_AUDIENCE, schema=SendNotificationSchema)
    # apispec runs every plugin's operation_helper once apigami's path_helper has built the operation.
    spec.spec.plugins = (*spec.spec.plugins, OperationsAsServed())
    spec.register(app)
    app.router.add_static("/api/docs/static", SWAGGER_UI_STATIC_FILES)
    app.router.add_get("/api/docs", swagger_page)
    app[APISPEC_PARSER] = Parser()


# A Swagger UI plugin: no "Try it out" for an operation marked x-websocket (its request would be a plain GET, which
# the server refuses with a 400: it is not an upgrade). Swagger UI asks the spec selector allowTryItOutFor(path,
# method) of every operation; it answers true unless a plugin wraps it, as this one does.
NO_TRY_IT_OUT = (
    "const NoTryItOutForWebSockets = () => ({statePlugins: {spec: {wrapSelectors: {"
    "allowTryItOutFor: (original, system) => (state, path, method) => "
    f'!system.specSelectors.specJson().getIn(["paths", path, method, "{WEBSOCKET_EXTENSION}"]) '
    "&& original(state, path, method)}}}});"
)
_APIGAMI_PLUGINS = "plugins: [\n          SwaggerUIBundle.plugins.DownloadUrl\n        ],"
_PLUGINS = "plugins: [SwaggerUIBundle.plugins.DownloadUrl, NoTryItOutForWebSockets],"


@functools.cache
def _swagger_page() -> str:
    """Swagger UI's page as aiohttp-apigami ships it, titled "tidings API", pointed at our document, and with the
    NO_TRY_IT_OUT plugin."""
    template = Template((SWAGGER_UI_STATIC_FILES / "index.html").read_text(encoding="utf-8"))
    page = template.substitute(path="/api/docs/openapi.json", static="/api/docs/static", layout="StandaloneLayout")
    if _APIGAMI_PLUGINS not in page or "window.onload" not in page:
        raise RuntimeError("aiohttp-apigami's Swagger UI page changed: update handlers/openapi.py")
    page = page.replace(_APIGAMI_PLUGINS, _PLUGINS).replace("window.onload", f"{NO_TRY_IT_OUT}\n    window.onload", 1)
    return page.replace("<title>Swagger UI</title>", "<title>tidings API</title>")


async def swagger_page(request: web.Request) -> web.Response:
    """GET /api/docs: Swagger UI."""
    return web.Response(text=_swagger_page(), content_type="text/html")
