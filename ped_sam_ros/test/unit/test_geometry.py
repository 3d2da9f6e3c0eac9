"""Partition geometry on SAM's 64x64 token grid."""

import pytest

from ped_sam_ros.core.geometry import (
    ALIGNED_CUTS,
    IMAGE_SIZE,
    Partition,
    PartitionError,
    adjacency_violations,
    aligned_cuts,
    content_shape,
    round_robin_assignment,
    server_shares,
    validate_assignment,
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
    # a quarter each when only an 896x896-pixel (56x56-token) area holds content
    assert server_shares(p, [0, 1, 2, 3], (896, 896)) == pytest.approx([0.25] * 4)


@pytest.mark.parametrize("hw", [(400, 600), (600, 400), (512, 512), (7, 3000), (333, 777), (1080, 1920)])
def test_content_shape_is_sams_own_resize(hw):
    """The content area is what segment_anything's ResizeLongestSide produces for the frame."""
    import numpy as np
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(IMAGE_SIZE).apply_image(np.zeros((*hw, 3), np.uint8))
    assert content_shape(hw) == resized.shape[:2]
    assert max(content_shape(hw)) == IMAGE_SIZE
    with pytest.raises(ValueError, match="positive size"):
        content_shape((0, 5))


def test_tile_content_box_clips_to_the_frame():
    p = Partition.grid(5, 5)
    content = content_shape((400, 600))
    assert content == (683, 1024)
    # top-left tile: all content; tokens 42..56 of rows end at pixel 683 (mid-token); last row all padding
    assert p.tiles[0].content_box(content) == (0, 224, 0, 224)
    assert p.tiles[0].content_pixels(content) == 224 * 224
    assert p.tiles[15].content_box(content) == (672, 683, 0, 224)
    assert p.tiles[20].content_box(content) is None and p.tiles[20].content_pixels(content) == 0
    # the tiles' content boxes cover the content exactly once
    cover = [[0] * content[1] for _ in range(content[0])]
    for t in p:
        box = t.content_box(content)
        if box:
            y0, y1, x0, x1 = box
            for y in range(y0, y1):
                row = cover[y]
                for x in range(x0, x1):
                    row[x] += 1
    assert all(v == 1 for row in cover for v in row)
    assert sum(t.content_pixels(content) for t in p) == content[0] * content[1]


@pytest.mark.parametrize("hw", [(400, 600), (640, 427), (512, 512)])
def test_shares_are_content_pixels_over_the_frame(hw):
    p = Partition.grid(3, 3)
    assign = round_robin_assignment(p, 2)
    content = content_shape(hw)
    shares = server_shares(p, assign, content)
    assert sum(shares) == pytest.approx(1.0)
    for s, share in enumerate(shares):
        mine = sum(t.content_pixels(content) for t in p if assign[t.index] == s)
        assert share == pytest.approx(mine / (content[0] * content[1]))


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
    with pytest.raises(PartitionError, match="4 tiles"):
        validate_assignment(p, [0, 1], 2)
