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

# Lookups by _id, email_key or username_key (each under an index, on MongoDB and FerretDB alike).
LOOKUP_ONE_BY_ONE = 1000
LOOKUP_CONCURRENCY = 100


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
        _found("_id", list(dict.fromkeys(oid for oid in oids if oid is not None)), lambda user: user.id),
        _found("email_key", list(dict.fromkeys(map(email_key, wanted_emails))), lambda user: user.email_key),
        _found("username_key", list(dict.fromkeys(map(username_key, wanted_usernames))), lambda u: u.username_key),
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


async def _found(field: str, values: Sequence[Any], key: Callable[[User], Any]) -> dict[Any, PydanticObjectId]:
    """The ids of the users whose `field` is one of `values`, by `key` (nothing is read when nothing is wanted).

    Up to LOOKUP_ONE_BY_ONE values, one equality per value, LOOKUP_CONCURRENCY at a time: FerretDB pushes an
    equality down to its backend's index, where `$in` decodes the whole collection. More than that, one `$in`.
    """
    if not values:
        return {}
    if len(values) > LOOKUP_ONE_BY_ONE:
        users = await User.find({field: {"$in": list(values)}}).to_list()
    else:
        users = []
        for start in range(0, len(values), LOOKUP_CONCURRENCY):
            chunk = values[start : start + LOOKUP_CONCURRENCY]
            found = await asyncio.gather(*(User.find_one({field: value}) for value in chunk))
            users += [user for user in found if user is not None]
    return {key(user): user.id for user in users if user.id is not None}
