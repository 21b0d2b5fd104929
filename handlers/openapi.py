"""The OpenAPI 3 document and Swagger UI, generated from the schemas that validate requests."""

from __future__ import annotations

from typing import Any, NoReturn

import marshmallow as m
from aiohttp import web
from aiohttp_apigami import AiohttpApiSpec
from aiohttp_apigami.constants import APISPEC_PARSER
from webargs.aiohttpparser import AIOHTTPParser, is_json_request
from webargs.core import missing

from tidings.handlers.json_input import InvalidJson, parse_json
from tidings.handlers.schemas import ErrorSchema
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


def error_responses(*statuses: int) -> dict[int, dict[str, Any]]:
    """Documented error responses, all in the one error shape."""
    return {status: {"description": _ERROR_DESCRIPTIONS[status], "schema": "ErrorSchema"} for status in statuses}


class Parser(AIOHTTPParser):
    """webargs' parser with tidings' errors: 400 for a body that is not JSON, 422 for schema mismatches."""

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
        except InvalidJson as exc:
            raise BadRequest(f"The body is not valid JSON: {exc}.") from None

    def _handle_invalid_json_error(self, error: Exception, req: web.Request, *args: Any, **kwargs: Any) -> NoReturn:
        raise BadRequest("The body is not valid JSON.")

    def handle_error(self, error: m.ValidationError, req: web.Request, schema: m.Schema, **kwargs: Any) -> NoReturn:
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1:
            # webargs nests messages under the location ("json", "querystring"); one location needs no nesting.
            (messages,) = messages.values()
        raise ValidationFailed(details=messages)


def setup_openapi(app: web.Application) -> None:
    spec = AiohttpApiSpec(
        title="tidings",
        version="0.1.0",
        openapi_version="3.0.3",
        url="/api/docs/openapi.json",
        swagger_path="/api/docs",
        static_path="/api/docs/static",
        request_data_name=validated_key,  # type: ignore[arg-type]  # a typed RequestKey works where a str is expected
        info={"description": "Accounts, JWT auth and real-time notifications. Errors share one shape: ErrorSchema."},
    )
    spec.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.spec.components.schema("ErrorSchema", schema=ErrorSchema)
    spec.register(app)
    app[APISPEC_PARSER] = Parser()
