"""The panel's words: counts with their nouns ("1 admin", "2 admins") and audit details as lines a person reads.

Pure code: the templates use these as Jinja filters (handlers/admin/app.py)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def noun(count: int, singular: str, plural: str | None = None) -> str:
    """The noun for `count` things: `singular` for exactly one, else `plural` (by default `singular` + "s")."""
    return singular if count == 1 else (plural or f"{singular}s")


def plural(count: int, singular: str, plural: str | None = None) -> str:
    """A count with its noun: "1 admin", "0 admins", "2 users"."""
    return f"{count} {noun(count, singular, plural)}"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ", ".join(_value(item) for item in value) or "none"
    return str(value)


def _lines(details: Mapping[str, Any], prefix: str) -> Iterator[str]:
    for key, value in details.items():
        if isinstance(value, Mapping):
            # What an update changed is the entry's content: its fields are listed as they are, not under "changes".
            yield from _lines(value, "" if key == "changes" and not prefix else f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}: {_value(value)}"


def detail_lines(details: Mapping[str, Any]) -> list[str]:
    """An audit entry's details as "key: value" lines: {"changes": {"is_admin": True}} is "is_admin: true";
    {"recipients": 2} is "recipients: 2"; a nested mapping's keys follow its own: "key.inner: value"."""
    return list(_lines(details, ""))
