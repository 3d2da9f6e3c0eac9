"""Balanced token-aligned layouts for real frame shapes (core/layout.py)."""

import itertools

import pytest

from ped_sam_ros.core.geometry import (
    ALIGNED_CUTS,
    PATCH_SIZE,
    Partition,
    PartitionError,
    adjacency_violations,
    content_shape,
    server_shares,
    validate_assignment,
)
from ped_sam_ros.core.layout import (
    best_assignment,
    best_layout,
    boxes_whole,
    candidate_cuts,
    fixed_grid_layout,
    layout_for_frame,
)

FOUR_THREE = content_shape((480, 640))  # 768 x 1024
SIXTEEN_NINE = content_shape((720, 1280))  # 576 x 1024


def _check_valid(lay, k):
    assert lay.partition.is_aligned
    assert set(lay.partition.row_cuts + lay.partition.col_cuts) <= set(ALIGNED_CUTS)
    assert len(lay.assignment) == len(lay.partition) and all(0 <= s < k for s in lay.assignment)
    assert lay.shares == pytest.approx(server_shares(lay.partition, list(lay.assignment), lay.content_hw))
    assert sum(lay.shares) == pytest.approx(1.0)


@pytest.mark.parametrize("content,k", [(FOUR_THREE, 4), (FOUR_THREE, 9), (FOUR_THREE, 16), (SIXTEEN_NINE, 4)])
def test_real_frames_get_balanced_shares_without_adjacent_tiles(content, k):
    lay = best_layout(content, k)
    _check_valid(lay, k)
    assert lay.max_share <= 1.15 / k
    assert not adjacency_violations(lay.partition, list(lay.assignment))
    # the pipeline's own policy check accepts it at that bound
    validate_assignment(lay.partition, list(lay.assignment), k, max_share=1.15 / k, content_hw=content)
    assert lay.optimal


@pytest.mark.parametrize(
    "content,k",
    [(FOUR_THREE, 4), (FOUR_THREE, 9), (FOUR_THREE, 16), (SIXTEEN_NINE, 4), (SIXTEEN_NINE, 9), (SIXTEEN_NINE, 16)],
)
def test_balanced_layout_beats_the_fixed_square_grid(content, k):
    fixed = fixed_grid_layout(content, k)
    lay = best_layout(content, k)
    assert lay.max_share < fixed.max_share


def test_sixteen_nine_at_sixteen_servers_is_limited_by_the_largest_aligned_tile():
    lay = best_layout(SIXTEEN_NINE, 16)
    # 36 content token rows: at most 3 x 5 = 15 aligned tiles, the largest 14 x 14 tokens
    assert lay.num_tiles == 15
    assert lay.max_share == pytest.approx(14 * 14 * PATCH_SIZE**2 / (576 * 1024))
    assert sum(1 for s in lay.shares if s == 0) == 1


def test_cuts_in_the_padding_are_not_considered():
    assert candidate_cuts(576) == (14, 28)  # 36 tokens of content
    assert candidate_cuts(768) == (14, 28, 42)
    assert candidate_cuts(1024) == ALIGNED_CUTS
    for k in (2, 4, 9):
        lay = best_layout(SIXTEEN_NINE, k)
        assert all(c * PATCH_SIZE < 576 for c in lay.partition.row_cuts)


def _brute_force(partition, k, content_hw):
    tiles = partition.tiles
    sizes = [t.content_pixels(content_hw) for t in tiles]
    best = None
    for assign in itertools.product(range(k), repeat=len(tiles)):
        if adjacency_violations(partition, assign):
            continue
        loads = [0] * k
        for t, s in enumerate(assign):
            loads[s] += sizes[t]
        best = max(loads) if best is None else min(best, max(loads))
    return best


@pytest.mark.parametrize(
    "rows,cols,k", [((28,), (14, 28, 42), 3), ((14, 28), (28,), 2), ((14,), (14, 42), 4), ((14, 28), (14, 28), 3)]
)
def test_branch_and_bound_matches_brute_force(rows, cols, k):
    part = Partition(rows, cols)
    assign, load, finished = best_assignment(part, k, SIXTEEN_NINE)
    assert finished
    assert load == _brute_force(part, k, SIXTEEN_NINE)
    assert not adjacency_violations(part, assign)


def test_no_assignment_when_adjacency_cannot_be_avoided():
    part = Partition((28,), (28,))  # 2x2 grid: every tile has two neighbours
    assign, _, finished = best_assignment(part, 1, SIXTEEN_NINE)  # one server: adjacency is allowed
    assert assign == [0, 0, 0, 0] and finished
    # a line of three tiles on two servers must alternate: 0 1 0
    line = Partition((), (14, 28))
    assign, _, _ = best_assignment(line, 2, SIXTEEN_NINE)
    assert assign[0] == assign[2] != assign[1]


def test_max_share_is_enforced_with_the_reason():
    with pytest.raises(PartitionError, match="above the limit"):
        best_layout(FOUR_THREE, 4, max_share=0.2)
    assert best_layout(FOUR_THREE, 4, max_share=0.26).max_share <= 0.26


def test_allowing_adjacency_never_hurts():
    for k in (3, 4, 6):
        assert best_layout(SIXTEEN_NINE, k, allow_adjacent=True).max_share <= best_layout(SIXTEEN_NINE, k).max_share


def test_one_server_gets_the_whole_frame():
    lay = best_layout(FOUR_THREE, 1)
    assert lay.num_tiles == 1 and lay.shares == (pytest.approx(1.0),)


def test_layout_for_frame_applies_sams_resize():
    assert layout_for_frame((480, 640), 4).content_hw == FOUR_THREE
    with pytest.raises(PartitionError):
        best_layout((0, 1024), 4)


def test_avoid_boxes_cuts_a_face_that_the_plain_layout_leaves_whole():
    plain = best_layout(FOUR_THREE, 4)
    # a 100 px face in the middle of one of the plain layout's tiles
    r0, c0 = plain.partition.tiles[0].row0, plain.partition.tiles[0].col0
    y, x = r0 * PATCH_SIZE + 150, c0 * PATCH_SIZE + 150
    face = (x, y, x + 100, y + 100)
    assert boxes_whole(plain.partition, [face]) == 1
    adaptive = best_layout(FOUR_THREE, 4, avoid_boxes=[face], share_slack=1.10)
    assert adaptive.boxes_whole < 1
    assert adaptive.max_share <= plain.max_share * 1.10 + 1e-9
    assert not adjacency_violations(adaptive.partition, list(adaptive.assignment))


def test_boxes_whole_counts_boxes_no_cut_crosses():
    part = Partition((14,), (28,))
    inside = (10, 10, 100, 100)
    across_col = (28 * PATCH_SIZE - 5, 10, 28 * PATCH_SIZE + 5, 20)
    touching = (0, 0, 28 * PATCH_SIZE, 14 * PATCH_SIZE)  # ends exactly on the cuts: still whole
    assert boxes_whole(part, [inside, across_col, touching]) == 2
