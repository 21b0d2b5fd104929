"""Every message the broker carries between processes: its topic, and how it is encoded and decoded.

Two topics. `auth` carries invalidations of cached user, session and API key state, "u:<user id>", "s:<session id>"
or "k:<API key id>".
`auth` is the control channel every process holds. `notify`, which every process holds too, carries broadcasts;
`notify:u` is routed, a channel per user (`notify:u:<user id>`) held only by the processes with a socket of that
user, and carries that user's notifications. Both carry a batch of stored notifications as JSON,
[[recipient id or null, public notification], ...].
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

AUTH_TOPIC = "auth"
NOTIFY_TOPIC = "notify"
USER_TOPIC = "notify:u"

AuthKind = Literal["user", "session", "key"]
_AUTH_PREFIXES: dict[AuthKind, bytes] = {"user": b"u:", "session": b"s:", "key": b"k:"}
_AUTH_KINDS: dict[bytes, AuthKind] = {prefix: kind for kind, prefix in _AUTH_PREFIXES.items()}

# A notification as clients see it; `recipient` None is a broadcast.
Delivery = tuple[str | None, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class AuthChange:
    """A user changed (state, rights, tokens), a session or an API key was revoked: caches of it must go."""

    kind: AuthKind
    key: str


class MalformedMessage(ValueError):
    """A broker message that no tidings process sent."""


def encode_auth(change: AuthChange) -> bytes:
    return _AUTH_PREFIXES[change.kind] + change.key.encode()


def decode_auth(message: bytes) -> AuthChange:
    kind = _AUTH_KINDS.get(message[:2])
    if kind is None:
        raise MalformedMessage(f"not an auth message: {message[:40]!r}")
    try:
        return AuthChange(kind, message[2:].decode())
    except UnicodeDecodeError:
        raise MalformedMessage(f"an auth message whose key is not text: {message[:40]!r}") from None


def encode_notifications(deliveries: Iterable[Delivery]) -> bytes:
    return json.dumps([[recipient, notification] for recipient, notification in deliveries]).encode()


def route_notifications(deliveries: Iterable[Delivery]) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The broadcasts' message (None without any) for NOTIFY_TOPIC, and one message per recipient for USER_TOPIC."""
    broadcasts: list[Delivery] = []
    by_user: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        if delivery[0] is None:
            broadcasts.append(delivery)
        else:
            by_user.setdefault(delivery[0], []).append(delivery)
    return (
        encode_notifications(broadcasts) if broadcasts else None,
        [(user_id, encode_notifications(batch)) for user_id, batch in by_user.items()],
    )


def decode_notifications(message: bytes) -> list[Delivery]:
    try:
        batch = json.loads(message)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"not a notification batch: {exc!r:.100}") from None
    if not isinstance(batch, list):
        raise MalformedMessage("a notification batch is a list")
    deliveries: list[Delivery] = []
    for item in batch:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and (item[0] is None or isinstance(item[0], str))
            and isinstance(item[1], dict)
            and isinstance(item[1].get("id"), str)
        ):
            raise MalformedMessage("each delivery is [recipient id or null, notification with an id]")
        deliveries.append((item[0], item[1]))
    return deliveries
