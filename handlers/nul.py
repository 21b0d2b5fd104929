"""The NUL character (U+0000) in what a client sends: refused, as invalid input, wherever it is.

PostgreSQL cannot store U+0000 in text, so FerretDB on its PostgreSQL backend fails any command whose strings hold
one (SQLSTATE 22P05, an InternalError to pymongo): a NUL that reached MongoDB would answer 503, and would never be
stored anyway. So no string a client sends may hold one, and each channel checks what it received with `nul_errors`
before anything else reads it: JSON (bodies and WebSocket messages, in `handlers/json_input.py`), the query string
and path of API requests (`handlers/openapi.py`'s parser), and the panel's paths, queries and forms (`refuse_nul` in
`handlers/admin/forms.py`).

Pure code: no aiohttp, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NUL = "\x00"
NUL_MESSAGE = "Must not contain the NUL character."
# A body is at most MAX_BODY_BYTES, but every "\u0000" in it is a place to report: the first ones say enough.
MAX_REPORTED = 100

_BAD_KEY = object()  # stands, on the stack, for a key that holds a NUL: reported under that key's "key"
# A place in the value: (key or index, the place of its container), None at the top; built only for what is reported.
_Place = tuple[str | int, "_Place"] | None


def nul_errors(value: Any) -> dict[str | int, Any]:
    """Where `value` holds a NUL, as validation messages nested the way marshmallow nests them (by key and list
    index, down to the string): {"data": {"tags": {0: [NUL_MESSAGE]}}}; a key that holds one is reported as
    marshmallow's Dict reports a bad key, {"data": {"a\\x00": {"key": [NUL_MESSAGE]}}} (its value is not looked
    into). A string at the top is reported under "_schema". Empty when there is no NUL.

    `value` is what a client sent, already parsed: JSON (dicts, lists, strings, numbers, ...), or the fields of a
    query string, a form or a path (any Mapping, a MultiDict's repeated keys included; values that are not strings,
    such as uploaded files, are skipped). Iterative, so no depth is too deep; at most MAX_REPORTED places are
    reported, in the order they appear.
    """
    errors: dict[str | int, Any] = {}
    reported = 0
    stack: list[tuple[Any, _Place]] = [(value, None)]
    while stack and reported < MAX_REPORTED:
        item, place = stack.pop()
        if item is _BAD_KEY or (isinstance(item, str) and NUL in item):
            _report(errors, place)
            reported += 1
        elif isinstance(item, Mapping):
            children: list[tuple[Any, _Place]] = []
            for key, child in item.items():
                if isinstance(key, str) and NUL in key:
                    children.append((_BAD_KEY, ("key", (key, place))))
                else:
                    children.append((child, (key, place)))
            stack.extend(reversed(children))  # popped in the order they appear
        elif isinstance(item, list | tuple):
            stack.extend((child, (index, place)) for index, child in reversed(list(enumerate(item))))
    return errors


def _report(errors: dict[str | int, Any], place: _Place) -> None:
    path: list[str | int] = []
    while place is not None:
        key, place = place
        path.append(key)
    path.reverse()
    if not path:
        path = ["_schema"]
    node = errors
    for key in path[:-1]:
        node = node.setdefault(key, {})
    messages = node.setdefault(path[-1], [])
    if NUL_MESSAGE not in messages:  # a repeated query parameter: one message
        messages.append(NUL_MESSAGE)
