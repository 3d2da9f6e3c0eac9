"""Partition geometry on SAM's token grid.

SAM's ViT encoder sees a 1024x1024 input as a 64x64 grid of 16x16-pixel tokens, and
its window-attention blocks cut that grid into 14x14-token windows starting at the
top-left corner (the grid is padded to 70x70 at the bottom/right).  A partition
of the grid into rows x cols rectangles reproduces SAM's window blocks exactly
when every cut lies on a multiple of 14 tokens ("aligned" cuts); other cuts
are allowed for comparison but change the result.

The part of a tile that holds image content is one idea with one home: SAM resizes a
frame to longest side 1024 (:func:`content_shape`, SAM's own rule) and pads it at the
bottom/right, so a tile's content is its pixel box clipped to that shape
(:meth:`Tile.content_box`).  Server shares, the edge's crops and the byte and exposure
figures of the evaluation all derive from that box.

Plain Python at import time: no torch, no network (:func:`content_shape` imports
segment_anything's resize rule when first called).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

PATCH_SIZE = 16  # pixels per token side
TOKEN_GRID = 64  # tokens per side of the 1024 input
WINDOW_SIZE = 14  # tokens per side of SAM's attention windows
IMAGE_SIZE = PATCH_SIZE * TOKEN_GRID  # 1024

# Cut positions (in tokens) that keep SAM's attention windows whole.
ALIGNED_CUTS: Tuple[int, ...] = tuple(range(WINDOW_SIZE, TOKEN_GRID, WINDOW_SIZE))  # 14, 28, 42, 56
MAX_ALIGNED_PARTS = len(ALIGNED_CUTS) + 1  # 5


class PartitionError(ValueError):
    """A partition that cannot be built (impossible grid or bad cuts)."""


@dataclass(frozen=True)
class Tile:
    """One rectangle of the token grid, served by one remote server.

    Token coordinates are half-open: rows ``[row0, row1)``, cols ``[col0, col1)``.
    """

    index: int
    grid_row: int
    grid_col: int
    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def token_shape(self) -> Tuple[int, int]:
        return (self.row1 - self.row0, self.col1 - self.col0)

    @property
    def num_tokens(self) -> int:
        h, w = self.token_shape
        return h * w

    @property
    def pixel_box(self) -> Tuple[int, int, int, int]:
        """(y0, y1, x0, x1) in pixels of the padded 1024x1024 model input."""
        return (
            self.row0 * PATCH_SIZE,
            self.row1 * PATCH_SIZE,
            self.col0 * PATCH_SIZE,
            self.col1 * PATCH_SIZE,
        )

    @property
    def pixel_shape(self) -> Tuple[int, int]:
        h, w = self.token_shape
        return (h * PATCH_SIZE, w * PATCH_SIZE)

    @property
    def is_aligned(self) -> bool:
        """True when the tile starts on SAM's 14-token window grid.

        The end only has to be aligned or reach the grid's edge (SAM pads there).
        """
        ok_start = self.row0 % WINDOW_SIZE == 0 and self.col0 % WINDOW_SIZE == 0
        ok_end = all(e % WINDOW_SIZE == 0 or e == TOKEN_GRID for e in (self.row1, self.col1))
        return ok_start and ok_end

    def content_box(self, content_hw: Tuple[int, int]) -> Optional[Tuple[int, int, int, int]]:
        """(y0, y1, x0, x1): the tile's pixels that hold image content in a frame resized to
        ``content_hw`` (see :func:`content_shape`), i.e. exactly what the edge sends for it;
        None when the tile lies entirely in SAM's bottom/right padding."""
        y0, y1, x0, x1 = self.pixel_box
        h, w = content_hw
        y1, x1 = min(y1, int(h)), min(x1, int(w))
        if y1 <= y0 or x1 <= x0:
            return None
        return y0, y1, x0, x1

    def content_pixels(self, content_hw: Tuple[int, int]) -> int:
        """Number of content pixels in the tile (0 when it is all padding)."""
        box = self.content_box(content_hw)
        if box is None:
            return 0
        y0, y1, x0, x1 = box
        return (y1 - y0) * (x1 - x0)

    def is_adjacent(self, other: Tile) -> bool:
        """True when the two tiles share an edge (not just a corner)."""
        rows_touch = self.row1 == other.row0 or other.row1 == self.row0
        cols_touch = self.col1 == other.col0 or other.col1 == self.col0
        rows_overlap = self.row0 < other.row1 and other.row0 < self.row1
        cols_overlap = self.col0 < other.col1 and other.col0 < self.col1
        return (rows_touch and cols_overlap) or (cols_touch and rows_overlap)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "grid": [self.grid_row, self.grid_col],
            "rows": [self.row0, self.row1],
            "cols": [self.col0, self.col1],
        }


def _check_cuts(cuts: Sequence[int], axis: str) -> Tuple[int, ...]:
    cuts = tuple(int(c) for c in cuts)
    if any(c <= 0 or c >= TOKEN_GRID for c in cuts):
        raise PartitionError(f"{axis} cuts {list(cuts)} must lie strictly between 0 and {TOKEN_GRID}")
    if list(cuts) != sorted(set(cuts)):
        raise PartitionError(f"{axis} cuts {list(cuts)} must be strictly increasing")
    return cuts


def aligned_cuts(parts: int) -> Tuple[int, ...]:
    """Cuts on the 14-token grid that split 64 tokens into ``parts`` pieces.

    SAM's 64-token axis holds five 14-token windows (the last one padded to 14),
    so 1..5 parts exist.  Among the aligned choices, the one with the smallest
    largest piece (then the most even pieces) wins, e.g. 2 parts -> cut at 28
    (28/36 tokens) rather than 42 (42/22), so no server gets a needlessly large share.
    """
    if not isinstance(parts, int) or parts < 1:
        raise PartitionError(f"a grid needs at least 1 part per axis, got {parts!r}")
    if parts > MAX_ALIGNED_PARTS:
        raise PartitionError(
            f"{parts} parts per axis is impossible with token-aligned cuts: SAM's 64-token axis "
            f"holds only {MAX_ALIGNED_PARTS} windows of {WINDOW_SIZE} tokens "
            f"(use at most {MAX_ALIGNED_PARTS}, or aligned=False for arbitrary cuts)"
        )

    def cost(cuts: Tuple[int, ...]) -> Tuple[int, int]:
        edges = (0,) + cuts + (TOKEN_GRID,)
        pieces = [b - a for a, b in zip(edges, edges[1:])]
        return (max(pieces), sum(p * p for p in pieces))

    return min(itertools.combinations(ALIGNED_CUTS, parts - 1), key=cost)


def even_cuts(parts: int) -> Tuple[int, ...]:
    """Cuts that split 64 tokens as evenly as possible (ignoring SAM's windows)."""
    if not isinstance(parts, int) or parts < 1 or parts > TOKEN_GRID:
        raise PartitionError(f"parts per axis must be in 1..{TOKEN_GRID}, got {parts!r}")
    return tuple(round(i * TOKEN_GRID / parts) for i in range(1, parts))


@dataclass(frozen=True)
class Partition:
    """A rows x cols grid of tiles over the 64x64 token grid."""

    row_cuts: Tuple[int, ...]
    col_cuts: Tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "row_cuts", _check_cuts(self.row_cuts, "row"))
        object.__setattr__(self, "col_cuts", _check_cuts(self.col_cuts, "col"))

    @classmethod
    def grid(cls, rows: int, cols: int, aligned: bool = True) -> Partition:
        """A rows x cols grid; ``aligned`` snaps cuts to SAM's 14-token windows."""
        make = aligned_cuts if aligned else even_cuts
        return cls(make(rows), make(cols))

    @classmethod
    def parse(cls, spec: str, aligned: bool = True) -> Partition:
        """Parse ``"2x2"`` style grid specs."""
        try:
            r, c = (int(p) for p in spec.lower().split("x"))
        except ValueError:
            raise PartitionError(f"grid spec {spec!r} must look like ROWSxCOLS, e.g. 2x2") from None
        return cls.grid(r, c, aligned=aligned)

    @property
    def rows(self) -> int:
        return len(self.row_cuts) + 1

    @property
    def cols(self) -> int:
        return len(self.col_cuts) + 1

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def is_aligned(self) -> bool:
        return all(c % WINDOW_SIZE == 0 for c in self.row_cuts + self.col_cuts)

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.cols}" + ("" if self.is_aligned else "-free")

    @property
    def tiles(self) -> List[Tile]:
        r_edges = (0,) + self.row_cuts + (TOKEN_GRID,)
        c_edges = (0,) + self.col_cuts + (TOKEN_GRID,)
        out = []
        for i in range(self.rows):
            for j in range(self.cols):
                out.append(
                    Tile(
                        index=i * self.cols + j,
                        grid_row=i,
                        grid_col=j,
                        row0=r_edges[i],
                        row1=r_edges[i + 1],
                        col0=c_edges[j],
                        col1=c_edges[j + 1],
                    )
                )
        return out

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "cols": self.cols,
            "row_cuts": list(self.row_cuts),
            "col_cuts": list(self.col_cuts),
            "aligned": self.is_aligned,
        }


# ---------------------------------------------------------------------------
# Which server serves which tile, and what that exposes.


def round_robin_assignment(partition: Partition, num_servers: int) -> List[int]:
    """Tile index -> server index, spreading tiles so neighbours differ.

    Plain round robin over the tile order when it keeps adjacent tiles on
    different servers, else a diagonal pattern ``(row * k + col) % n`` that does
    (a checkerboard for two servers); if none does, plain round robin anyway and
    :func:`validate_assignment` will say so.
    """
    if num_servers < 1:
        raise PartitionError("at least one remote server is needed")
    n = num_servers
    candidates = [[t.index % n for t in partition.tiles]]
    candidates += [[(t.grid_row * k + t.grid_col) % n for t in partition.tiles] for k in range(1, n)]
    for assign in candidates:
        if n == 1 or not adjacency_violations(partition, assign):
            return assign
    return candidates[0]


def adjacency_violations(partition: Partition, assignment: Sequence[int]) -> List[Tuple[int, int]]:
    """Pairs of adjacent tiles that the assignment gives to the same server."""
    tiles = partition.tiles
    bad = []
    for a in tiles:
        for b in tiles:
            if a.index < b.index and assignment[a.index] == assignment[b.index] and a.is_adjacent(b):
                bad.append((a.index, b.index))
    return bad


def content_shape(orig_hw: Tuple[int, int], long_side: int = IMAGE_SIZE) -> Tuple[int, int]:
    """(h, w) of a frame of original size ``orig_hw`` after SAM's resize to longest side
    ``long_side``: the content area of the model input (the rest is zero padding).

    This is segment_anything's own ``ResizeLongestSide.get_preprocess_shape`` (same
    rounding), so the shares and crops computed here match what SAM's preprocessing does.
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = (int(v) for v in orig_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"a frame needs a positive size, got {h}x{w}")
    return ResizeLongestSide.get_preprocess_shape(h, w, long_side)


def server_shares(
    partition: Partition, assignment: Sequence[int], content_hw: Optional[Tuple[int, int]] = None
) -> List[float]:
    """Fraction of the frame's content pixels each server receives.

    ``content_hw`` is the resized frame's size (:func:`content_shape`); by default the
    whole 1024x1024 input counts (a square frame).  A server's share is the sum of its
    tiles' :meth:`Tile.content_pixels`, i.e. exactly the pixels the edge sends it.
    """
    content = content_hw or (IMAGE_SIZE, IMAGE_SIZE)
    total = int(content[0]) * int(content[1])
    n = max(assignment) + 1 if len(assignment) else 0
    shares = [0.0] * n
    for tile in partition.tiles:
        shares[int(assignment[tile.index])] += tile.content_pixels(content) / total
    return shares


def validate_assignment(
    partition: Partition,
    assignment: Sequence[int],
    num_servers: int,
    allow_adjacent: bool = False,
    max_share: float = 1.0,
    content_hw: Optional[Tuple[int, int]] = None,
) -> None:
    """Refuse assignments that break the privacy policy, with the reason.

    Shares are of the frame's content: ``content_hw`` is the resized frame's size
    (:func:`content_shape`); without it the whole input counts (a square frame).
    """
    if len(assignment) != len(partition):
        raise PartitionError(
            f"assignment lists {len(assignment)} servers but the {partition.name} grid has {len(partition)} tiles"
        )
    for i, s in enumerate(assignment):
        if not 0 <= int(s) < num_servers:
            raise PartitionError(f"tile {i} is assigned to server {s}, but only {num_servers} exist")
    if not allow_adjacent and num_servers > 1:  # with one server, adjacency cannot be avoided
        bad = adjacency_violations(partition, assignment)
        if bad:
            a, b = bad[0]
            raise PartitionError(
                f"tiles {a} and {b} are adjacent and both go to server {assignment[a]} "
                f"({len(bad)} such pairs); use more servers, another assignment, or allow_adjacent"
            )
    check_max_share(server_shares(partition, assignment, content_hw), max_share)


def check_max_share(
    shares: Sequence[float], max_share: float, names: Optional[Sequence[str]] = None, what: str = "the frame"
) -> None:
    """Raise if one server's share of the frame exceeds ``max_share``."""
    if not shares:
        return
    worst = max(range(len(shares)), key=lambda i: shares[i])
    if shares[worst] > max_share + 1e-9:
        who = f"server {worst}" + (f" ({names[worst]})" if names and worst < len(names) else "")
        raise PartitionError(f"{who} would see {shares[worst]:.1%} of {what}, above the limit of {max_share:.1%}")
