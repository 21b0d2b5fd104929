"""Reading JSON from clients: strict, so that nothing a client sends can surface later as a 500 or a 503.

Python's json module accepts NaN and Infinity (not JSON), turns 1e309 into infinity, raises ValueError past
4,300 digits in an integer and RecursionError on deep nesting, and keeps lone surrogates ("\\udc00") that no
UTF-8 encoder (BSON's included) can write. Here each of these is refused as invalid JSON. A string (or key) holding
the NUL character, which PostgreSQL cannot store (handlers/nul.py), is refused too, with where it is: NulInJson.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tidings.handlers.nul import nul_errors


class InvalidJson(ValueError):
    """The text is not JSON that tidings can store; the message says why, for the client."""


class NulInJson(InvalidJson):
    """Valid JSON, but some strings or keys hold the NUL character: `errors` says where (handlers/nul.py), for a
    validation error naming the fields. A caller that only catches InvalidJson refuses it as invalid JSON."""

    def __init__(self, errors: dict[str | int, Any]) -> None:
        super().__init__("a string holds the NUL character")
        self.errors = errors


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson("numbers must be finite")
    return value


def _not_json(name: str) -> Any:
    raise InvalidJson(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_not_json)


def parse_json(text: str) -> Any:
    """The value `text` holds, or InvalidJson (NulInJson when the JSON is valid but holds a NUL)."""
    try:
        value = _DECODER.decode(text)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        raise InvalidJson(str(exc).partition(":")[0] or "malformed") from None
    # A surrogate can only come from a \u escape (decoded text never holds one), so most bodies skip this check.
    if "\\ud" in text or "\\uD" in text:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidJson("a string holds a lone surrogate (not Unicode text)") from None
    # Likewise a NUL: the strict decoder refuses a raw one (a control character), so only "\u0000" can make one.
    if "\\u0000" in text:
        errors = nul_errors(value)
        if errors:
            raise NulInJson(errors)
    return value
