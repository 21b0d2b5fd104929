"""The pure parts of read counts: read-alls as a difference array over broadcast numbers, in pages."""

from __future__ import annotations

import random

import pytest

from tidings.documents.notification import BROADCAST_PAGE_SIZE
from tidings.server.services.read_counts import (
    apply_changes,
    apply_totals,
    coverage_points,
    folded_coverage,
    page_changes,
    unfolded_coverage,
)
from tidings.server.settings import Settings, SettingsError

pytestmark = pytest.mark.unit

SIZE = BROADCAST_PAGE_SIZE


def readers(seq: int, ranges: list[tuple[int, int]]) -> int:
    """What every count must equal: the read-alls covering broadcast `seq`."""
    return sum(1 for first, end in ranges if first <= seq < end)


def fold(ranges: list[tuple[int, int]]) -> tuple[list[int], dict[int, list[int]]]:
    """Summary totals and page difference arrays after folding `ranges`, as the fold writes them."""
    changes = page_changes(ranges)
    pages = {page: apply_changes([], offsets) for page, offsets in changes.items()}
    totals = apply_totals([], {page: sum(offsets.values()) for page, offsets in changes.items()})
    return totals, pages


def test_a_read_all_is_two_points() -> None:
    assert coverage_points(3, 7) == ((3, 1), (7, -1))


def test_changes_land_on_the_pages_of_their_points() -> None:
    assert page_changes([(3, 7)]) == {0: {3: 1, 7: -1}}
    assert page_changes([(SIZE - 1, SIZE + 2)]) == {0: {SIZE - 1: 1}, 1: {2: -1}}
    # Changes that cancel out, and empty ranges, write nothing.
    assert page_changes([(1, 5), (5, 9), (1, 9)]) == {0: {1: 2, 9: -2}}
    assert page_changes([(4, 4), (9, 2)]) == {}


def test_totals_grow_to_the_highest_page() -> None:
    assert apply_totals([1], {3: 2, 0: -1}) == [0, 0, 0, 2]
    assert apply_changes([0] * SIZE, {0: 1, SIZE - 1: -1})[:2] == [1, 0]
    assert apply_changes([], {2: 5}) == [0, 0, 5] + [0] * (SIZE - 3)


def test_a_point_query_is_a_prefix_sum_over_two_documents() -> None:
    ranges = [(0, 3), (2, SIZE + 1), (SIZE, 3 * SIZE), (2 * SIZE + 5, 2 * SIZE + 6)]
    totals, pages = fold(ranges)
    for seq in range(4 * SIZE):
        page = seq // SIZE
        assert folded_coverage(seq, totals, pages.get(page, [])) == readers(seq, ranges), seq


def test_unfolded_tallies_count_by_the_documents_that_lack_them() -> None:
    # One tally folded into the summary but not yet into its page (a fold stopped between the two updates).
    tally = (5, 2 * SIZE + 1, 2 * SIZE + 3)  # slot 5, broadcasts 2*SIZE+1 and 2*SIZE+2
    seq = 2 * SIZE + 2
    assert unfolded_coverage(seq, [tally], summary_slot=5, page_slot=4) == 1
    assert unfolded_coverage(seq, [tally], summary_slot=4, page_slot=5) == 0
    assert unfolded_coverage(seq, [tally], summary_slot=5, page_slot=5) == 0
    # A range from an earlier page: its +1 is the summary's, its -1 the page's.
    spanning = (7, SIZE - 1, 2 * SIZE + 1)
    assert unfolded_coverage(2 * SIZE, [spanning], summary_slot=6, page_slot=6) == 1
    assert unfolded_coverage(2 * SIZE + 1, [spanning], summary_slot=6, page_slot=6) == 0
    assert unfolded_coverage(2 * SIZE + 1, [spanning], summary_slot=7, page_slot=6) == -1


@pytest.mark.parametrize("seed", range(20))
def test_folded_plus_unfolded_is_exact_at_every_split(seed: int) -> None:
    """Whatever part of the tallies the summary and each page hold, counter + tallies above it is exact."""
    rng = random.Random(seed)
    tallies = []
    for slot in range(12):
        first = rng.randrange(0, 4 * SIZE)
        tallies.append((slot, first, first + rng.randrange(1, 3 * SIZE)))
    ranges = [(first, end) for _, first, end in tallies]
    summary_slot, page_slots = rng.randrange(-1, 12), {page: rng.randrange(-1, 12) for page in range(8)}
    totals, _ = fold([(first, end) for slot, first, end in tallies if slot <= summary_slot])
    for seq in range(0, 7 * SIZE, 7):
        page = seq // SIZE
        _, pages = fold([(first, end) for slot, first, end in tallies if slot <= page_slots[page]])
        count = folded_coverage(seq, totals, pages.get(page, [])) + unfolded_coverage(
            seq, tallies, summary_slot=summary_slot, page_slot=page_slots[page]
        )
        assert count == readers(seq, ranges), (seq, summary_slot, page_slots[page])


def test_the_fold_interval_is_a_setting() -> None:
    secret = {"JWT_SECRET": "s" * 32}
    assert Settings.from_env(secret).read_count_fold_interval == 2.0
    assert Settings.from_env({**secret, "READ_COUNT_FOLD_INTERVAL": "0.5"}).read_count_fold_interval == 0.5
    with pytest.raises(SettingsError):
        Settings.from_env({**secret, "READ_COUNT_FOLD_INTERVAL": "0"})
