"""Partition geometry on SAM's 64x64 token grid."""

import pytest

from ped_sam_ros.core.geometry import (
    ALIGNED_CUTS, Partition, PartitionError, adjacency_violations, aligned_cuts, round_robin_assignment,
    server_shares, validate_assignment,
)


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 2), (3, 3), (4, 3), (5, 5), (1, 5), (2, 4)])
def test_aligned_grids_tile_the_grid_on_window_boundaries(rows, cols):
    p = Partition.grid(rows, cols)
    assert p.shape == (rows, cols) and p.is_aligned
    covered = [[0] * 64 for _ in range(64)]
    for w in p:
        assert w.is_aligned
        for r in range(w.row0, w.row1):
            for c in range(w.col0, w.col1):
                covered[r][c] += 1
    assert all(v == 1 for row in covered for v in row)
    assert set(p.row_cuts + p.col_cuts) <= set(ALIGNED_CUTS)


def test_two_parts_prefer_the_balanced_cut():
    assert aligned_cuts(2) == (28,)
    assert aligned_cuts(4) == (14, 28, 42)
    assert aligned_cuts(5) == ALIGNED_CUTS


def test_impossible_grid_is_refused_with_reason():
    with pytest.raises(PartitionError, match="only 5 windows"):
        Partition.grid(6, 2)
    with pytest.raises(PartitionError):
        Partition.grid(0, 2)
    with pytest.raises(PartitionError, match="ROWSxCOLS"):
        Partition.parse("two by two")


def test_free_cuts_are_marked_unaligned():
    p = Partition.grid(2, 2, aligned=False)
    assert p.row_cuts == (32,) and not p.is_aligned and p.name == "2x2-free"
    assert Partition.grid(7, 7, aligned=False).shape == (7, 7)


def test_window_pixels_and_shares():
    p = Partition.grid(2, 2)
    w = p.tiles[3]
    assert (w.row0, w.row1, w.col0, w.col1) == (28, 64, 28, 64)
    assert w.pixel_box == (448, 1024, 448, 1024)
    shares = server_shares(p, [0, 1, 2, 3])
    assert shares == pytest.approx([28 * 28 / 4096, 28 * 36 / 4096, 36 * 28 / 4096, 36 * 36 / 4096])
    assert sum(shares) == pytest.approx(1.0)
    # a quarter each when only a 56x56-token image area is valid
    assert server_shares(p, [0, 1, 2, 3], valid_tokens=(56, 56)) == pytest.approx([0.25] * 4)


@pytest.mark.parametrize("grid,n", [((2, 2), 2), ((2, 2), 4), ((3, 3), 2), ((4, 3), 3), ((5, 5), 3)])
def test_default_assignment_never_gives_a_server_adjacent_windows(grid, n):
    p = Partition.grid(*grid)
    a = round_robin_assignment(p, n)
    assert not adjacency_violations(p, a)
    assert set(a) == set(range(n))
    validate_assignment(p, a, n)


def test_policy_refuses_adjacent_windows_and_large_shares():
    p = Partition.grid(2, 2)
    with pytest.raises(PartitionError, match="adjacent"):
        validate_assignment(p, [0, 0, 1, 1], 2)
    validate_assignment(p, [0, 0, 1, 1], 2, allow_adjacent=True)
    validate_assignment(p, [0, 0, 0, 0], 1)  # one server: adjacency cannot be avoided
    with pytest.raises(PartitionError, match="above the limit"):
        validate_assignment(p, [0, 1, 1, 0], 2, max_share=0.4)
    with pytest.raises(PartitionError, match="only 2 exist"):
        validate_assignment(p, [0, 1, 2, 0], 2)
    with pytest.raises(PartitionError, match="4 windows"):
        validate_assignment(p, [0, 1], 2)
