"""What the panel's pages share: page size, the acting admin, and errors written for people."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tidings.handlers.schemas import error_sentences
from tidings.server.keys import principal_key
from tidings.server.services.audit import Actor

PAGE_SIZE = 25


def actor(request: web.Request) -> Actor:
    """The admin acting through the panel."""
    return Actor.of(request[principal_key])


def errors_text(messages: Any) -> str:
    """Validation messages (nested dicts and lists) as one line."""
    return "; ".join(error_sentences(messages))
