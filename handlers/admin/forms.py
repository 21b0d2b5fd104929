"""What the panel's pages share: page size, the acting admin, errors written for people, and the one check of
every field the panel receives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from tidings.handlers.nul import nul_errors
from tidings.handlers.schemas import MAX_RECIPIENTS, error_sentences
from tidings.server.keys import principal_key
from tidings.server.services.audit import Actor

PAGE_SIZE = 25
# Requests that change nothing: pages. Every other request is an action, with a form.
_PAGE_METHODS = frozenset({"GET", "HEAD"})


def actor(request: web.Request) -> Actor:
    """The admin acting through the panel."""
    return Actor.of(request[principal_key])


# For a field the form has no sentence of its own for: a person is never shown a field's internal name.
UNKNOWN_FIELD = "Part of the form was not accepted: check it and try again."


def form_sentences(messages: Mapping[str, Any], sentences: Mapping[str, str]) -> list[str]:
    """A schema's validation messages as the form's own sentences: `sentences` says, by field name, what a person
    should do about that field, in the order the form asks; every field in error gives its sentence once."""
    said = [sentence for field, sentence in sentences.items() if field in messages]
    if any(field not in sentences for field in messages):
        said.append(UNKNOWN_FIELD)
    return list(dict.fromkeys(said))


# The send forms (the notifications page, a user's page) by SendNotificationSchema's fields, in the form's order.
SEND_SENTENCES = {
    "_schema": "Choose who receives it: chosen users or everyone.",
    "user_ids": f"Enter at least one user (up to {MAX_RECIPIENTS}).",
    "title": "Enter a title of 1 to 200 characters, not only spaces.",
    "body": "Keep the message to 5000 characters or fewer.",
}


def unknown_names_sentence(names: list[str]) -> str:
    return f"No user found for: {', '.join(names)}."


@web.middleware
async def refuse_nul(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A NUL in the path, the query or an action's form (a login, a search, a send, a user's action) is refused
    with a 422 page naming the fields, before any page reads them: PostgreSQL cannot store it (handlers/nul.py).

    It runs after the panel's gate (an admin session and CSRF come first) and its template context (the page is
    the panel's own): create_admin_app places it."""
    errors: dict[str | int, Any] = {}
    sources: list[Any] = [request.match_info, request.query]
    if request.method not in _PAGE_METHODS:
        sources.append(await request.post())  # aiohttp keeps it for the page
    for fields in sources:
        errors.update(nul_errors(fields))
    if not errors:
        return await handler(request)
    context = {"errors": error_sentences(errors), "back": _form_page(request)}
    return aiohttp_jinja2.render_template("invalid_input.html", request, context, status=422)


def _form_page(request: web.Request) -> str:
    """The page a request came from, for a link back to it: a page itself, or, for an action of its own (POST
    /admin/users/<id>/notify), the page it belongs to. Without its query, and never a path that holds a NUL."""
    path = request.rel_url.raw_path
    resource = request.match_info.route.resource
    if request.method not in _PAGE_METHODS and not any(route.method == "GET" for route in resource or ()):
        path = path.rpartition("/")[0]
    return path if path.startswith("/admin/") and "%00" not in path else "/admin/"
