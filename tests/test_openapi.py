"""The OpenAPI document at /api/docs/openapi.json and the Swagger UI at /api/docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import async_playwright

from tests.helpers import API

CHROMIUM = Path("/usr/bin/chromium")  # installed by `make test` (scripts/install-system.sh --browser)
HAVE_CHROMIUM = CHROMIUM.exists()

# The error statuses each accounts & auth endpoint can answer with, and so must document.
EXPECTED_ERRORS: dict[tuple[str, str], set[int]] = {
    ("post", f"{API}/auth/register"): {400, 409, 413, 422},
    ("post", f"{API}/auth/login"): {400, 401, 403, 413, 422, 429},
    ("post", f"{API}/auth/refresh"): {400, 401, 413, 422},
    ("post", f"{API}/auth/logout"): {400, 401, 413, 422},
    ("post", f"{API}/auth/logout-all"): {401},
    ("post", f"{API}/auth/page/login"): {400, 401, 403, 413, 422, 429},
    ("post", f"{API}/auth/page/refresh"): {401, 403},
    ("post", f"{API}/auth/page/logout"): {403},
    ("get", f"{API}/users/me"): {401},
    ("patch", f"{API}/users/me"): {400, 401, 403, 409, 413, 422},
    ("get", f"{API}/users"): {401, 403, 422, 429},
    ("get", f"{API}/users/{{user_id}}"): {401, 403, 404, 422, 429},
    ("patch", f"{API}/users/{{user_id}}"): {400, 401, 403, 404, 409, 413, 422},
    ("delete", f"{API}/users/{{user_id}}"): {401, 403, 404, 409, 422},
}
AUTHENTICATED = {key for key in EXPECTED_ERRORS if 401 in EXPECTED_ERRORS[key] and "/auth/" not in key[1]} | {
    ("post", f"{API}/auth/logout"),
    ("post", f"{API}/auth/logout-all"),
}
# The operations an API key may call (with the right scope), besides an access token: 429 is a key's rate limit.
API_KEY_OPERATIONS = {
    ("get", f"{API}/users"),
    ("get", f"{API}/users/{{user_id}}"),
    ("post", f"{API}/notifications"),
    ("post", f"{API}/notifications/batch"),
}
BEARER_OR_API_KEY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
# The live page's session endpoints that read its refresh cookie.
PAGE_SESSION = {("post", f"{API}/auth/page/refresh"), ("post", f"{API}/auth/page/logout")}
ERROR_REF = {"$ref": "#/components/schemas/ErrorSchema"}


@pytest.fixture
async def spec(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/api/docs/openapi.json")
    assert response.status == 200, await response.text()
    document: dict[str, Any] = await response.json()
    return document


async def test_document_basics(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "tidings API"
    # aiohttp answers HEAD for every GET; the document lists each operation once.
    assert not [path for path, operations in spec["paths"].items() if "head" in operations]
    # Endpoints that take no access token do not say one could be expired or revoked.
    for path in (f"{API}/auth/login", f"{API}/auth/register", f"{API}/auth/refresh"):
        for response in spec["paths"][path]["post"]["responses"].values():
            assert "access token" not in response["description"], (path, response)
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    page_session = spec["components"]["securitySchemes"]["pageSession"]
    assert {key: page_session[key] for key in ("type", "in", "name")} == {
        "type": "apiKey",
        "in": "cookie",
        "name": "tidings_refresh",
    }
    error = spec["components"]["schemas"]["ErrorSchema"]
    assert error["required"] == ["error"]


async def test_every_api_route_is_documented(client: TestClient[Any, Any], spec: dict[str, Any]) -> None:
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith(API) and route.method != "HEAD"
    }
    assert set(EXPECTED_ERRORS) <= routes
    documented = {(method, path) for path, operations in spec["paths"].items() for method in operations}
    missing = routes - documented
    assert not missing, missing


async def test_the_websocket_endpoint_points_to_its_protocol(spec: dict[str, Any]) -> None:
    # OpenAPI 3 cannot describe the messages of a WebSocket: the operation documents the upgrade and its errors.
    operation = spec["paths"][f"{API}/ws"]["get"]
    assert "docs/websocket.md" in operation["description"]
    assert {"101", "401", "403"} <= set(operation["responses"])
    # Marked as an upgrade, which the docs page offers no "Try it out" for; nothing else is.
    assert operation["x-websocket"] is True
    marked = [
        (path, method) for path, ops in spec["paths"].items() for method, op in ops.items() if "x-websocket" in op
    ]
    assert marked == [(f"{API}/ws", "get")]


async def test_the_page_session_endpoints_document_their_csrf_header(spec: dict[str, Any]) -> None:
    for action in ("login", "refresh", "logout"):
        operation = spec["paths"][f"{API}/auth/page/{action}"]["post"]
        (header,) = operation["parameters"]
        assert header["in"] == "header" and header["name"] == "X-Requested-With" and header["required"] is True
        assert "X-Requested-With" in operation["responses"]["403"]["description"]
    refresh = spec["paths"][f"{API}/auth/page/refresh"]["post"]
    assert refresh["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/AccessToken")
    assert "204" in refresh["responses"]
    assert "refresh_token" not in spec["components"]["schemas"]["AccessToken"]["properties"]


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED_ERRORS))
async def test_each_endpoint_documents_its_errors(spec: dict[str, Any], method: str, path: str) -> None:
    operation = spec["paths"][path][method]
    statuses = {int(status) for status in operation["responses"]}
    errors = {status for status in statuses if status >= 400}
    assert errors == EXPECTED_ERRORS[method, path]
    assert statuses - errors, "a success response is documented too"
    for status in errors:
        response = operation["responses"][str(status)]
        assert response["description"]
        assert response["content"]["application/json"]["schema"] == ERROR_REF
    if (method, path) in API_KEY_OPERATIONS:
        assert operation["security"] == BEARER_OR_API_KEY
    elif (method, path) in AUTHENTICATED:
        assert operation["security"] == [{"bearerAuth": []}]
    elif (method, path) in PAGE_SESSION:
        assert operation["security"] == [{"pageSession": []}]
    else:
        assert "security" not in operation


async def test_every_documented_error_uses_the_error_shape(spec: dict[str, Any]) -> None:
    for path, operations in spec["paths"].items():
        if not path.startswith(API):
            continue
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == ERROR_REF, (method, path, status)


async def test_request_schemas_are_the_validating_ones(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]

    def body_schema(method: str, path: str) -> dict[str, Any]:
        ref: str = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema: dict[str, Any] = schemas[ref.rsplit("/", 1)[1]]
        return schema

    register = body_schema("post", f"{API}/auth/register")
    assert set(register["properties"]) == {"email", "username", "password", "full_name"}
    assert set(register["required"]) == {"email", "username", "password"}
    assert register["properties"]["password"]["minLength"] == 8
    assert set(body_schema("patch", f"{API}/users/me")["properties"]) == {
        "email",
        "username",
        "full_name",
        "bio",
        "password",
        "current_password",
        "email_digest",
    }
    admin_patch = body_schema("patch", f"{API}/users/{{user_id}}")
    assert {"is_active", "is_admin"} <= set(admin_patch["properties"])
    parameters = {parameter["name"] for parameter in spec["paths"][f"{API}/users"]["get"]["parameters"]}
    assert parameters == {"q", "before", "limit", "is_active", "is_admin"}
    # Responses never describe a password or its hash.
    for name in ("User", "TokenPair"):
        assert not any("password" in field for field in schemas[name]["properties"]), name


async def test_the_document_states_what_the_server_enforces(spec: dict[str, Any]) -> None:
    """Id formats, required bodies, unknown fields refused, and a notification's audience (the fuzzer relies on it)."""
    schemas = spec["components"]["schemas"]
    object_id = {"type": "string", "pattern": "^[0-9a-fA-F]{24}$"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "produces" not in operation, (method, path)  # Swagger 2 only: not valid in OpenAPI 3
            for parameter in operation.get("parameters", []):
                if parameter["name"] in {"user_id", "notification_id", "before"}:
                    assert parameter["schema"] == object_id, (method, path, parameter)
            if "requestBody" in operation:
                assert operation["requestBody"]["required"] is True, (method, path)
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert schemas[ref.rsplit("/", 1)[1]]["additionalProperties"] is False, (method, path)
    send = schemas["SendNotification"]
    assert send["properties"]["user_ids"]["items"] == object_id
    assert "broadcast: true" in send["description"]
    broadcast, named = send["oneOf"]
    assert broadcast == {"required": ["broadcast"], "properties": {"broadcast": {"enum": [True]}}}
    assert named == {"anyOf": [{"required": [field]} for field in ("user_ids", "emails", "usernames")]}


async def test_swagger_ui_page(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert "/api/docs/openapi.json" in page
    assert "<title>tidings API</title>" in page
    assert "swagger-ui-bundle.js" in page
    assert "plugins: [SwaggerUIBundle.plugins.DownloadUrl, NoTryItOutForWebSockets]" in page
    script = await client.get("/api/docs/static/swagger-ui-bundle.js")
    assert script.status == 200
    assert len(await script.read()) > 100_000


async def test_swagger_ui_renders_in_a_browser(client: TestClient[Any, Any]) -> None:
    """The page's scripts run (its Content-Security-Policy allows them) and it shows the API's operations; the
    WebSocket's operation, opened, has no "Try it out" (a plain GET of it is no upgrade), and the others do."""
    assert HAVE_CHROMIUM, "make test installs chromium; run scripts/install-system.sh --browser"
    blocked: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = await browser.new_page()
            page.on("console", lambda message: blocked.append(message.text) if message.type == "error" else None)
            await page.goto(str(client.make_url("/api/docs")))
            operation = page.locator(".opblock-summary-path", has_text=f"{API}/auth/register")
            await operation.first.wait_for(timeout=15_000)
            assert await page.locator(".opblock").count() >= len(EXPECTED_ERRORS)

            for path, offered in ((f"{API}/ws", False), (f"{API}/auth/register", True)):
                block = page.locator(".opblock").filter(
                    has=page.locator(".opblock-summary-path").get_by_text(path, exact=True)
                )
                await block.locator(".opblock-summary-control").click()
                # The opened operation shows its description (and its responses) either way.
                await block.locator(".opblock-body .responses-wrapper").wait_for(timeout=15_000)
                try_it_out = block.get_by_role("button", name="Try it out")
                assert await try_it_out.count() == (1 if offered else 0), path
        finally:
            await browser.close()
    assert not [message for message in blocked if "Content Security Policy" in message], blocked


async def test_both_security_schemes_and_who_may_call_what(spec: dict[str, Any]) -> None:
    """Bearer JWTs and API keys are both described; exactly the operations a key may call list both, and every
    other authenticated operation lists the JWT alone."""
    api_key = spec["components"]["securitySchemes"]["apiKeyAuth"]
    assert {key: api_key[key] for key in ("type", "scheme")} == {"type": "http", "scheme": "bearer"}
    assert "tdg_" in api_key["bearerFormat"] and "scope" in api_key["description"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            security = operation.get("security")
            if (method, path) in API_KEY_OPERATIONS:
                assert security == BEARER_OR_API_KEY, (method, path)
            elif security is not None:
                assert {"apiKeyAuth": []} not in security, (method, path)
    for path in (f"{API}/notifications", f"{API}/notifications/batch"):
        parameters = spec["paths"][path]["post"]["parameters"]
        [idempotency] = [p for p in parameters if p["name"] == "Idempotency-Key"]
        assert idempotency["in"] == "header" and idempotency["schema"]["maxLength"] == 255
