"""The pure parts of inbox pages: page arithmetic, and the process's own counters (Redis's script does the same)."""

from __future__ import annotations

from typing import cast

import pytest
from beanie import PydanticObjectId

from tidings.documents.notification import INBOX_PAGE_SIZE, inbox_page_key, page_of_key
from tidings.server.adapters.locks import Locks
from tidings.server.adapters.numbering import MemoryInboxNumbering, id_above
from tidings.server.services.inbox_pages import InboxPages, pages_for, restart_value

pytestmark = pytest.mark.unit


def test_page_keys_round_trip() -> None:
    user = PydanticObjectId("65f000000000000000000001")
    for page in (-3, -1, 0, 7, 12345):
        assert page_of_key(inbox_page_key(user, page)) == page
    assert inbox_page_key(user, -1) == "65f000000000000000000001:-1"


def test_a_lost_counter_restarts_on_the_page_above_every_opened_one() -> None:
    assert restart_value(None) + 1 == 0  # no page yet: numbering starts at page 0
    assert (restart_value(-1) + 1) // INBOX_PAGE_SIZE == 0  # after the backfill's pages
    assert (restart_value(4) + 1) == 5 * INBOX_PAGE_SIZE  # the first number of page 5


def test_pages_to_read_hold_the_limit_and_one_more() -> None:
    assert pages_for(1) == 2
    assert pages_for(INBOX_PAGE_SIZE) == 2
    assert pages_for(INBOX_PAGE_SIZE + 1) == 3
    assert pages_for(201) == -(-201 // INBOX_PAGE_SIZE) + 1


def test_id_above_is_the_next_id_with_carry() -> None:
    assert id_above("65f000000000000000000001") == "65f000000000000000000002"
    assert id_above("65f0000000000000000000ff") == "65f000000000000000000100"
    assert id_above("65f00000000000ffffffffff") == "65f000000000010000000000"
    assert len(id_above("0" * 24)) == 24


async def test_memory_numbering_orders_ids_by_number_and_starts_missing() -> None:
    numbering = MemoryInboxNumbering(capacity=2)
    assert await numbering.assign([("u1", "65f000000000000000000005")]) == [None]
    assert await numbering.current("u1") is None
    await numbering.start_after("u1", 24)
    await numbering.start_after("u1", 99)  # another process started it first: kept
    newer, older = "65f000000000000000000009", "65f000000000000000000003"
    assert await numbering.assign([("u1", newer), ("u1", older)]) == [(25, newer), (26, id_above(newer))]
    assert await numbering.current("u1") == 26
    assert await numbering.newest("u1") == id_above(newer)
    await numbering.start_after("u2", -1)
    await numbering.start_after("u3", -1)  # past capacity: the least recently used counter goes
    assert await numbering.current("u1") is None
    assert await numbering.assign([("u3", older)]) == [(0, older)]


async def test_numbered_since_says_whether_a_send_may_have_reached_the_user_since_an_id() -> None:
    numbering = MemoryInboxNumbering()
    pages = InboxPages(numbering, cast(Locks, None))
    user, before, after = PydanticObjectId(), "65f000000000000000000005", "65f000000000000000000009"
    assert await pages.numbered_since(user, PydanticObjectId(after))  # no counter: unknown, so yes
    await numbering.start_after(str(user), -1)
    assert await pages.numbered_since(user, PydanticObjectId(after))  # a counter that numbered nothing yet
    await numbering.assign([(str(user), before)])
    assert not await pages.numbered_since(user, PydanticObjectId(after))
    assert await pages.numbered_since(user, PydanticObjectId(before))
