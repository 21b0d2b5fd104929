"""The panel's API keys: the list, a form that makes one (its secret is shown once, on the answer's page), and a
revocation after a confirmation that names the key. The same service as the API (services/api_keys.py)."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web
from marshmallow import ValidationError

from tidings.handlers.admin.cookies import redirect
from tidings.handlers.admin.forms import actor, form_sentences
from tidings.handlers.schemas import CreateApiKeySchema
from tidings.server.adapters.errors import ApiError
from tidings.server.keys import api_keys_key
from tidings.server.services.api_keys import DEFAULT_RATE_LIMIT, SCOPES

# The form's choices of lifetime: (value, label, seconds or None for never).
LIFETIMES: list[tuple[str, str, int | None]] = [
    ("never", "Never expires", None),
    ("1d", "1 day", 86_400),
    ("30d", "30 days", 30 * 86_400),
    ("90d", "90 days", 90 * 86_400),
    ("365d", "1 year", 365 * 86_400),
]
# CreateApiKeySchema's fields, as the form asks for them.
KEY_SENTENCES = {
    "name": "Enter a name of 1 to 100 characters, not only spaces.",
    "scopes": "Choose at least one scope.",
    "expires_in": "Choose how long the key lasts.",
    "rate_limit_per_minute": "Enter a limit of 1 to 100000 requests a minute.",
}


def _context(**values: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "scopes": SCOPES,
        "lifetimes": [(value, label) for value, label, _ in LIFETIMES],
        "form": {"name": "", "scopes": [], "lifetime": "never", "rate_limit": str(DEFAULT_RATE_LIMIT)},
        "error": None,
        "invalid": [],
        "created": None,
        "confirm": None,
    }
    context.update(values)
    return context


async def _page(request: web.Request, status: int = 200, **values: Any) -> web.Response:
    keys = await request.config_dict[api_keys_key].listing()
    return aiohttp_jinja2.render_template("api_keys.html", request, _context(keys=keys, **values), status=status)


async def api_keys(request: web.Request) -> web.Response:
    return await _page(request)


async def create_key(request: web.Request) -> web.Response:
    form = await request.post()
    values: dict[str, Any] = {
        "name": str(form.get("name", "")),
        "scopes": [str(scope) for scope in form.getall("scopes", [])],
        "lifetime": str(form.get("lifetime", "never")),
        "rate_limit": str(form.get("rate_limit", "")).strip(),
    }
    lifetimes = {value: seconds for value, _, seconds in LIFETIMES}
    raw: dict[str, Any] = {"name": values["name"], "scopes": values["scopes"]}
    messages: dict[str, Any] = {}
    if values["lifetime"] not in lifetimes:
        messages["expires_in"] = ["Not a choice."]
    else:
        raw["expires_in"] = lifetimes[values["lifetime"]]
    try:
        raw["rate_limit_per_minute"] = int(values["rate_limit"]) if values["rate_limit"] else DEFAULT_RATE_LIMIT
    except ValueError:
        messages["rate_limit_per_minute"] = ["Not a number."]
    data: dict[str, Any] = {}
    try:
        data = CreateApiKeySchema().load(raw)
    except ValidationError as exc:
        messages.update(exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages})
    if messages:
        invalid = [{"expires_in": "lifetime", "rate_limit_per_minute": "rate_limit"}.get(f, f) for f in messages]
        return await _page(
            request, 422, form=values, error=" ".join(form_sentences(messages, KEY_SENTENCES)), invalid=invalid
        )
    key, secret = await request.config_dict[api_keys_key].create(
        actor(request),
        name=data["name"],
        scopes=data["scopes"],
        expires_in=data["expires_in"],
        rate_limit_per_minute=data["rate_limit_per_minute"],
    )
    # Shown on this page only (the panel's pages are Cache-Control: no-store); a reload does not make another key,
    # as the browser asks before sending a form again, and a new form has a new CSRF-checked POST.
    return await _page(request, 201, created={"id": str(key.id), "name": key.name, "key": secret})


async def revoke_page(request: web.Request) -> web.Response:
    """The confirmation before a revocation, naming the key."""
    try:
        key = await request.config_dict[api_keys_key].get(request.match_info["key_id"])
    except ApiError:
        return aiohttp_jinja2.render_template("not_found.html", request, {"what": "API key"}, status=404)
    return await _page(request, confirm=key.public(None))


async def revoke_key(request: web.Request) -> web.StreamResponse:
    try:
        key = await request.config_dict[api_keys_key].revoke(actor(request), request.match_info["key_id"])
    except ApiError:
        raise redirect(request, "/admin/api-keys", kind="error", text="There is no such API key.") from None
    text = f"The API key {key.name} ({key.prefix}…) was revoked: it is refused from its next request."
    raise redirect(request, "/admin/api-keys", kind="success", text=text)
