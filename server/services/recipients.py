"""Who a notification goes to: users named by id, email or username, resolved by one rule for the API and the panel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from beanie import PydanticObjectId

from tidings.documents import User
from tidings.documents.ids import parse_object_id
from tidings.documents.user import email_key, username_key
from tidings.server.adapters.errors import ValidationFailed


async def resolve_recipients(
    *, user_ids: Sequence[str] = (), emails: Sequence[str] = (), usernames: Sequence[str] = ()
) -> list[PydanticObjectId]:
    """The ids of the users named, each once, in the order named (ids, then emails, then usernames).

    Emails and usernames match as uniqueness does (case-insensitively). Raises ValidationFailed naming every
    malformed id and every name that matches no user, by the field it came in.
    """
    wanted_ids = list(dict.fromkeys(user_ids))
    oids = [parse_object_id(user_id) for user_id in wanted_ids]
    malformed = [user_id for user_id, oid in zip(wanted_ids, oids, strict=True) if oid is None]
    if malformed:
        raise ValidationFailed(details={"user_ids": {"malformed": malformed}})
    wanted_emails = list(dict.fromkeys(emails))
    wanted_usernames = list(dict.fromkeys(usernames))
    by_id, by_email, by_username = await asyncio.gather(
        _found({"_id": {"$in": oids}}, oids, lambda user: user.id),
        _found({"email_key": {"$in": [email_key(e) for e in wanted_emails]}}, wanted_emails, lambda u: u.email_key),
        _found(
            {"username_key": {"$in": [username_key(n) for n in wanted_usernames]}},
            wanted_usernames,
            lambda user: user.username_key,
        ),
    )
    found: dict[str, tuple[list[str], list[PydanticObjectId | None]]] = {
        "user_ids": (wanted_ids, [by_id.get(oid) for oid in oids]),
        "emails": (wanted_emails, [by_email.get(email_key(email)) for email in wanted_emails]),
        "usernames": (wanted_usernames, [by_username.get(username_key(name)) for name in wanted_usernames]),
    }
    unknown: dict[str, Any] = {}
    for field, (names, ids) in found.items():
        missing = [name for name, oid in zip(names, ids, strict=True) if oid is None]
        if missing:
            unknown[field] = {"unknown": missing}
    if unknown:
        raise ValidationFailed("Some recipients do not exist.", details=unknown)
    return list(dict.fromkeys(oid for _, ids in found.values() for oid in ids if oid is not None))


async def _found(
    query: dict[str, Any], wanted: Sequence[Any], key: Callable[[User], Any]
) -> dict[Any, PydanticObjectId]:
    """The users matching `query` by `key` (nothing is read when nothing is wanted)."""
    if not wanted:
        return {}
    users = await User.find(query).to_list()
    return {key(user): user.id for user in users if user.id is not None}
