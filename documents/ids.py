"""Document ids: parsing a client's id, and making ids ordered by creation across processes."""

from __future__ import annotations

import os
import threading
import time

from beanie import PydanticObjectId
from bson.errors import InvalidId

_id_lock = threading.Lock()
_last_id_prefix = 0


def parse_object_id(value: object) -> PydanticObjectId | None:
    """The ObjectId that `value` spells (24 hexadecimal characters), or None."""
    if not isinstance(value, str):
        return None
    try:
        return PydanticObjectId(value)
    except (InvalidId, TypeError, ValueError):
        return None


def id_floor(seconds: float) -> str:
    """The lowest id of that second, as 24 hex digits: what str(ObjectId.from_datetime(...)) gives, without the
    datetime arithmetic (a socket's start position, made for every socket of a reconnect storm)."""
    return f"{int(seconds):08x}0000000000000000"


def new_id() -> PydanticObjectId:
    """An ObjectId ordered by creation to the microsecond, across processes, and strictly within one.

    bson's ObjectIds order by the second, then by a random value per process: ids two processes made in the same
    second sort by process, not by creation, and "everything after X" (resume, catch-up) would skip or reorder
    them. Users get their ids here too, as a broadcast reaches the users whose id is older than its own.
    Layout: 4 bytes of seconds (generation_time still works), 3 of microseconds, 2 of a counter, 3 random.
    """
    global _last_id_prefix
    now = time.time_ns() // 1000
    with _id_lock:
        prefix = max((now // 1_000_000) << 40 | (now % 1_000_000) << 16, _last_id_prefix + 1)
        _last_id_prefix = prefix
    return PydanticObjectId(prefix.to_bytes(9, "big") + os.urandom(3))
