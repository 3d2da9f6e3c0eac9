"""Balanced, token-aligned layouts for real camera frames.

A camera frame is rarely square: after SAM's resize to longest side 1024 a 4:3 frame
covers 768 of the 1024 input rows and a 16:9 frame 576, the rest is zero padding that
no server receives.  A fixed ``sqrt(K) x sqrt(K)`` grid then gives some server far more
than 1/K of the frame's content (a 2x2 grid on a 16:9 frame: 43.8 %).

This module picks, for one content shape and ``K`` servers, the layout (a grid whose
cuts are all on SAM's 14-token window grid, so the split stays exact) *and* the
assignment of its tiles to servers that minimise the largest single-server share of
the content, with no two tiles of one server sharing an edge (unless allowed).  It
searches exhaustively: every subset of the aligned cuts 14/28/42/56 on each axis that
lies inside the content (a cut in the padding only splits padding), and for each cut
set a branch-and-bound over assignments that is exact unless its node budget runs out
(:attr:`Layout.optimal` says which).  Layouts can have more tiles than servers; that is
how the shares get balanced.

Optionally a layout can also avoid leaving given boxes (detected faces, in tokens or
pixels of the resized frame) whole inside one tile: among the layouts whose largest
share is within ``share_slack`` of the best, the one that cuts the most boxes wins.

Plain Python: no torch, no cv2, no network.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .geometry import ALIGNED_CUTS, IMAGE_SIZE, PATCH_SIZE, Partition, PartitionError, Tile, content_shape

#: branch-and-bound nodes per cut set before the search gives up proving optimality
DEFAULT_NODE_LIMIT = 200_000

PixelBox = Tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the resized frame


@dataclass(frozen=True)
class Layout:
    """A partition of the token grid, which server gets each tile, and what that exposes.

    ``shares[s]`` is server ``s``'s fraction of the frame's content pixels (the same figure
    :func:`~.geometry.server_shares` computes and the pipeline's ``max_share`` checks).
    """

    partition: Partition
    assignment: Tuple[int, ...]
    num_servers: int
    content_hw: Tuple[int, int]
    shares: Tuple[float, ...]
    optimal: bool  # True when the search finished everywhere: no aligned layout has a smaller largest share
    boxes_whole: int = 0  # avoid-boxes that lie whole inside one tile (0 without boxes)

    @property
    def max_share(self) -> float:
        return max(self.shares) if self.shares else 0.0

    @property
    def num_tiles(self) -> int:
        return len(self.partition)

    def server_tiles(self) -> Dict[int, List[int]]:
        """Server index -> indices of the tiles it serves (every server listed)."""
        out: Dict[int, List[int]] = {s: [] for s in range(self.num_servers)}
        for t, s in enumerate(self.assignment):
            out[s].append(t)
        return out

    def to_dict(self) -> dict:
        return {
            "partition": self.partition.to_dict(),
            "assignment": list(self.assignment),
            "num_servers": self.num_servers,
            "content_hw": list(self.content_hw),
            "shares": [round(s, 6) for s in self.shares],
            "max_share": round(self.max_share, 6),
            "optimal": self.optimal,
            "boxes_whole": self.boxes_whole,
        }


def candidate_cuts(extent_px: int) -> Tuple[int, ...]:
    """Aligned cuts (tokens) that fall strictly inside ``extent_px`` content pixels."""
    return tuple(c for c in ALIGNED_CUTS if c * PATCH_SIZE < extent_px)


def _subsets(cuts: Sequence[int]) -> Iterable[Tuple[int, ...]]:
    for n in range(len(cuts) + 1):
        yield from itertools.combinations(cuts, n)


def _neighbours(tiles: Sequence[Tile]) -> List[List[int]]:
    return [[b.index for b in tiles if b.index != a.index and a.is_adjacent(b)] for a in tiles]


def best_assignment(
    partition: Partition,
    num_servers: int,
    content_hw: Tuple[int, int],
    allow_adjacent: bool = False,
    bound: Optional[int] = None,
    node_limit: int = DEFAULT_NODE_LIMIT,
) -> Tuple[Optional[List[int]], int, bool]:
    """Assignment of ``partition``'s tiles to servers with the smallest largest load.

    Loads are content pixels.  Branch and bound: tiles in decreasing size, each tried on
    the servers it may join (no edge-neighbour there unless ``allow_adjacent``), one empty
    server at a time (servers are interchangeable), pruned when a load reaches the best
    found or the remaining pixels cannot fit under it.  Only assignments with a largest
    load below ``bound`` are looked for (None: any).

    Returns ``(assignment, largest_load, finished)``: assignment None when no valid one
    below ``bound`` exists (or none was found within ``node_limit`` nodes); ``finished``
    False when the node budget ran out, so the result may not be optimal.
    """
    if num_servers < 1:
        raise PartitionError("at least one remote server is needed")
    tiles = partition.tiles
    sizes = [t.content_pixels(content_hw) for t in tiles]
    total = sum(sizes)
    adjacent_ok = allow_adjacent or num_servers == 1
    neigh = _neighbours(tiles)
    order = sorted(range(len(tiles)), key=lambda i: (-sizes[i], i))
    lower = max(max(sizes), -(-total // num_servers))

    best_load = bound if bound is not None else total + 1
    best: Optional[List[int]] = None
    assign = [-1] * len(tiles)
    loads = [0] * num_servers
    used = 0  # servers 0..used-1 hold at least one tile
    nodes = 0
    remaining = [0] * (len(order) + 1)
    for k in range(len(order) - 1, -1, -1):
        remaining[k] = remaining[k + 1] + sizes[order[k]]
    finished = True

    def rec(k: int) -> bool:  # True: stop the whole search
        nonlocal best_load, best, used, nodes, finished
        nodes += 1
        if nodes > node_limit:
            finished = False
            return True
        if k == len(order):
            cur = max(loads)
            if cur < best_load:
                best_load, best = cur, list(assign)
            return best_load <= lower
        # every server can take at most best_load - 1 - load more pixels
        room = sum(max(0, best_load - 1 - ld) for ld in loads)
        if room < remaining[k]:
            return False
        t = order[k]
        candidates = sorted(range(min(used + 1, num_servers)), key=lambda s: (loads[s], s))
        for s in candidates:
            if loads[s] + sizes[t] >= best_load:
                continue
            if not adjacent_ok and any(assign[n] == s for n in neigh[t]):
                continue
            assign[t] = s
            loads[s] += sizes[t]
            opened = s == used
            if opened:
                used += 1
            stop = rec(k + 1)
            if opened:
                used -= 1
            loads[s] -= sizes[t]
            assign[t] = -1
            if stop:
                return True
        return False

    rec(0)
    return best, (best_load if best is not None else -1), finished


def _box_whole_in_tile(box: PixelBox, partition: Partition) -> bool:
    """True when no cut of ``partition`` crosses the box (it lies whole inside one tile)."""
    x0, y0, x1, y1 = box
    crosses_row = any(y0 < c * PATCH_SIZE < y1 for c in partition.row_cuts)
    crosses_col = any(x0 < c * PATCH_SIZE < x1 for c in partition.col_cuts)
    return not (crosses_row or crosses_col)


def boxes_whole(partition: Partition, boxes: Sequence[PixelBox]) -> int:
    """How many of ``boxes`` (x0, y0, x1, y1, pixels of the resized frame) no cut crosses."""
    return sum(_box_whole_in_tile(b, partition) for b in boxes)


@functools.lru_cache(maxsize=64)
def search_layouts(
    content_hw: Tuple[int, int],
    num_servers: int,
    allow_adjacent: bool = False,
    node_limit: int = DEFAULT_NODE_LIMIT,
    share_slack: float = 1.0,
) -> Tuple[Layout, ...]:
    """Every aligned cut set with its best assignment, best first (cached per arguments: the
    search takes up to tens of seconds for a square frame and is the same for every frame of
    a stream).

    Cut sets whose lower bound (largest tile, or an even split of the content) cannot come
    within ``share_slack`` of the best found are skipped without a search: they cannot win.
    Sorted by (largest share, number of tiles, sum of squared shares).
    """
    h, w = (int(v) for v in content_hw)
    if h <= 0 or w <= 0 or h > IMAGE_SIZE or w > IMAGE_SIZE:
        raise PartitionError(f"content shape {content_hw} must lie within the {IMAGE_SIZE}x{IMAGE_SIZE} input")
    total = h * w
    cands = []
    for rc in _subsets(candidate_cuts(h)):
        for cc in _subsets(candidate_cuts(w)):
            part = Partition(rc, cc)
            sizes = [t.content_pixels((h, w)) for t in part.tiles]
            lower = max(max(sizes), -(-total // num_servers))
            cands.append((lower, len(part), part))
    cands.sort(key=lambda c: (c[0], c[1]))
    found = []
    best_load: Optional[int] = None
    exhaustive = True
    for lower, _, part in cands:
        if best_load is not None and lower > best_load * share_slack:
            break
        limit = None if best_load is None else int(best_load * share_slack) + 1
        assign, load, finished = best_assignment(part, num_servers, (h, w), allow_adjacent, limit, node_limit)
        exhaustive = exhaustive and finished
        if assign is None:
            continue
        best_load = load if best_load is None else min(best_load, load)
        found.append((part, assign))
    layouts = [_make_layout(part, assign, num_servers, (h, w), exhaustive) for part, assign in found]
    layouts.sort(key=lambda lay: (round(lay.max_share, 12), lay.num_tiles, round(sum(s * s for s in lay.shares), 12)))
    return tuple(layouts)


def _make_layout(
    part: Partition,
    assign: Sequence[int],
    k: int,
    content_hw: Tuple[int, int],
    optimal: bool,
    boxes: Sequence[PixelBox] = (),
) -> Layout:
    total = content_hw[0] * content_hw[1]
    shares = [0.0] * k
    for t in part.tiles:
        shares[assign[t.index]] += t.content_pixels(content_hw) / total
    return Layout(
        part, tuple(int(a) for a in assign), k, tuple(content_hw), tuple(shares), optimal, boxes_whole(part, boxes)
    )


def best_layout(
    content_hw: Tuple[int, int],
    num_servers: int,
    allow_adjacent: bool = False,
    max_share: float = 1.0,
    avoid_boxes: Sequence[PixelBox] = (),
    share_slack: float = 1.05,
    node_limit: int = DEFAULT_NODE_LIMIT,
) -> Layout:
    """The aligned layout and assignment with the smallest largest share for this frame.

    ``content_hw``: the resized frame's size (:func:`~.geometry.content_shape`).  With
    ``avoid_boxes`` (x0, y0, x1, y1 in resized-frame pixels, e.g. detected faces) the
    layout that leaves the fewest boxes whole in one tile wins among those whose largest
    share is within ``share_slack`` of the best (ties: smaller share).  Raises
    :class:`~.geometry.PartitionError` when even the best layout breaks ``max_share``.
    """
    slack = share_slack if avoid_boxes else 1.0
    found = search_layouts(tuple(int(v) for v in content_hw), num_servers, allow_adjacent, node_limit, slack)
    if not found:
        raise PartitionError(
            f"no aligned layout for {num_servers} servers without adjacent tiles on one server "
            f"(content {content_hw[0]}x{content_hw[1]}); allow_adjacent or change the server count"
        )
    best = found[0]
    if avoid_boxes:
        limit = best.max_share * share_slack + 1e-12
        pool = [
            _make_layout(lay.partition, lay.assignment, num_servers, lay.content_hw, lay.optimal, avoid_boxes)
            for lay in found
            if lay.max_share <= limit
        ]
        best = min(pool, key=lambda lay: (lay.boxes_whole, round(lay.max_share, 12), lay.num_tiles))
    if best.max_share > max_share + 1e-9:
        raise PartitionError(
            f"the most balanced aligned layout for {num_servers} servers gives one server "
            f"{best.max_share:.1%} of this {content_hw[0]}x{content_hw[1]} frame, above the limit of {max_share:.1%}"
        )
    return best


def layout_for_frame(orig_hw: Tuple[int, int], num_servers: int, **kwargs) -> Layout:
    """:func:`best_layout` for a frame of original size ``orig_hw`` (SAM's resize applied)."""
    return best_layout(content_shape(orig_hw), num_servers, **kwargs)


def fixed_grid_layout(content_hw: Tuple[int, int], num_servers: int) -> Optional[Layout]:
    """Today's default for comparison: a square aligned grid of K tiles (K = 4, 9, 16, 25)
    with the geometry module's round-robin assignment; None when K is not a square <= 25."""
    from .geometry import round_robin_assignment

    side = round(num_servers**0.5)
    if side * side != num_servers or side > 5:
        return None
    part = Partition.grid(side, side)
    return _make_layout(
        part, round_robin_assignment(part, num_servers), num_servers, tuple(int(v) for v in content_hw), True
    )


# ---------------------------------------------------------------------------
# The share table (``python -m ped_sam_ros.core.layout``)

#: frame shapes (original h, w) the share table covers
TABLE_SHAPES = {"4:3": (480, 640), "16:9": (720, 1280), "1:1": (512, 512), "3:4": (640, 480), "9:16": (1280, 720)}
TABLE_SERVERS = (2, 3, 4, 5, 6, 8, 9, 12, 16)


def share_table(
    shapes: Dict[str, Tuple[int, int]] = TABLE_SHAPES,
    servers: Sequence[int] = TABLE_SERVERS,
    node_limit: int = DEFAULT_NODE_LIMIT,
) -> List[dict]:
    """One row per frame shape and server count: the best layout's largest share, the same
    search with adjacency allowed (the floor of aligned layouts), and the fixed square grid."""
    import time

    rows = []
    for name, orig in shapes.items():
        content = content_shape(orig)
        for k in servers:
            t0 = time.perf_counter()
            lay = best_layout(content, k, node_limit=node_limit)
            dt = time.perf_counter() - t0
            free = best_layout(content, k, allow_adjacent=True, node_limit=node_limit)
            fixed = fixed_grid_layout(content, k)
            rows.append(
                {
                    "shape": name,
                    "orig_hw": list(orig),
                    "content_hw": list(content),
                    "servers": k,
                    "layout": lay.to_dict(),
                    "max_share": lay.max_share,
                    "times_k": lay.max_share * k,
                    "adjacent_allowed_max_share": free.max_share,
                    "ratio_to_adjacent_allowed": lay.max_share / free.max_share,
                    "fixed_grid_max_share": fixed.max_share if fixed else None,
                    "optimal": lay.optimal,
                    "adjacent_allowed_optimal": free.optimal,
                    "search_s": dt,
                }
            )
    return rows


def _format_row(r: dict) -> str:
    p = r["layout"]["partition"]
    fixed = "-" if r["fixed_grid_max_share"] is None else f"{r['fixed_grid_max_share']:.1%}"
    return (
        f"| {r['shape']} | {r['servers']} | {p['rows']}x{p['cols']} rows{tuple(p['row_cuts'])} "
        f"cols{tuple(p['col_cuts'])} | {r['max_share']:.1%} | {r['times_k']:.3f} | "
        f"{r['adjacent_allowed_max_share']:.1%} | {r['ratio_to_adjacent_allowed']:.3f} | {fixed} | "
        f"{'yes' if r['optimal'] else 'no'} | {'yes' if r['adjacent_allowed_optimal'] else 'no'} | "
        f"{r['search_s']:.1f} |"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(
        description="Largest single-server share of the best aligned layout per frame shape and server count."
    )
    ap.add_argument("--servers", type=int, nargs="+", default=list(TABLE_SERVERS))
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = share_table(servers=args.servers)
    print(
        "| frame | K | layout (token cuts) | largest share | x K | adjacency allowed | ratio | fixed grid |"
        " proven best | floor proven | search s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(_format_row(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
