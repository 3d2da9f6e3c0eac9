"""Evaluation configurations: the two baselines and PED-SAM variants.

Spec strings (comma-separated on the command line)::

  cloud                 plain SAM, the whole frame on one remote server
  edge                  plain SAM, the whole encoder on the edge
  paper:2x2             PED-SAM paper mode, token-aligned 2x2 grid, one server per tile
  exact:4x3-free        PED-SAM exact mode, 4x3 grid with even (not token-aligned) cuts
  paper:5x5@3           25 tiles spread over 3 servers (round robin; adjacency allowed)
  k2:2x2                the first 2 groups of window blocks remote (k1 = exact, k4 = paper)
  modes:2x2             every mode on that grid: exact, k2, k3, paper (the fidelity/cost knob)
  default               cloud, edge, {paper, exact} x {2x2, 3x3, 4x3, 5x5} x {aligned, free}, and k2, k3 on 2x2

The baselines are always added, so every report compares against them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..core.geometry import Partition, adjacency_violations, round_robin_assignment
from ..core.model import MODES, get_geometry, parse_mode

DEFAULT_GRIDS: Tuple[Tuple[int, int], ...] = ((2, 2), (3, 3), (4, 3), (5, 5))
BASELINES = ("cloud", "edge")


@dataclass(frozen=True)
class EvalConfig:
    kind: str  # "cloud", "edge" or "ped"
    mode: Optional[str] = None  # ped: "exact", "k2" .. "k<G-1>" or "paper" (canonical names)
    partition: Optional[Partition] = None
    num_servers: Optional[int] = None  # ped: None = one server per tile

    @property
    def _servers_suffix(self) -> str:
        """``@N`` when the tiles share fewer servers than one each ('' otherwise)."""
        return f"@{self.servers}" if self.servers != len(self.partition) else ""

    @property
    def layout_name(self) -> str:
        """Who sees what, independent of the mode: e.g. ``3x3``, ``5x5 @3``."""
        if self.kind == "cloud":
            return "cloud SAM (1 server)"
        if self.kind == "edge":
            return "edge-only SAM"
        return f"{self.partition.name} {self._servers_suffix}".rstrip()

    @property
    def privacy_layout(self) -> str:
        """Key of the server layout (who receives which tiles), shared by ``paper`` and ``exact``:
        ``cloud``, ``edge`` or ``GRID|ASSIGNMENT``, e.g. ``2x2|0,1,2,3``."""
        if self.kind != "ped":
            return self.kind
        return f"{self.partition.name}|{','.join(map(str, self.assignment))}"

    @property
    def name(self) -> str:
        if self.kind == "cloud":
            return "cloud SAM"
        if self.kind == "edge":
            return "edge-only SAM"
        return f"{self.mode} {self.layout_name}"

    @property
    def spec(self) -> str:
        if self.kind in BASELINES:
            return self.kind
        return f"{self.mode}:{self.partition.name}{self._servers_suffix}"

    @property
    def servers(self) -> int:
        if self.kind == "cloud":
            return 1
        if self.kind == "edge":
            return 0
        return self.num_servers or len(self.partition)

    @property
    def assignment(self) -> List[int]:
        """Tile index -> server index (ped only)."""
        if self.kind != "ped":
            return []
        n = self.servers
        if n == len(self.partition):
            return list(range(n))
        return round_robin_assignment(self.partition, n)

    @property
    def adjacent_pairs(self) -> int:
        """Adjacent tiles given to one server (0 with one server per tile)."""
        return len(adjacency_violations(self.partition, self.assignment)) if self.kind == "ped" else 0

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "spec": self.spec,
            "kind": self.kind,
            "servers": self.servers,
            "layout_name": self.layout_name,
            "privacy_layout": self.privacy_layout,
        }
        if self.kind == "ped":
            d.update(
                mode=self.mode,
                partition=self.partition.to_dict(),
                partition_name=self.partition.name,
                aligned=self.partition.is_aligned,
                assignment=self.assignment,
                adjacent_pairs=self.adjacent_pairs,
            )
        return d


_PED = re.compile(r"(paper|exact|k\d+|modes):(\d+)x(\d+)(-free)?(?:@(\d+))?")
#: every official geometry has 4 global blocks, hence modes exact, k2, k3, paper
_GROUPS_OF = "vit_b"


def parse_config(spec: str) -> List[EvalConfig]:
    s = spec.strip().lower()
    if not s:
        return []
    if s == "default":
        return default_configs()
    if s in ("cloud", "cloud-sam"):
        return [EvalConfig("cloud")]
    if s in ("edge", "edge-only"):
        return [EvalConfig("edge")]
    m = _PED.fullmatch(s)
    if not m:
        raise ValueError(
            f"bad configuration {spec!r}: use cloud, edge, default, or MODE:RxC[-free][@SERVERS] "
            f"with MODE in {MODES}, k<N> or modes (all of them), e.g. paper:2x2, exact:5x5-free, paper:5x5@3, "
            f"k2:2x2, modes:3x3"
        )
    mode, r, c, free, n = m.groups()
    part = Partition.grid(int(r), int(c), aligned=not free)
    servers = int(n) if n else None
    if servers is not None and not 1 <= servers <= len(part):
        raise ValueError(f"{spec!r}: servers must be between 1 and {len(part)}")
    if mode == "modes":
        return [EvalConfig("ped", m, part, servers) for m in get_geometry(_GROUPS_OF).modes]
    try:
        mode = parse_mode(mode, _GROUPS_OF)  # k1 -> exact, k4 -> paper
    except ValueError as e:
        raise ValueError(f"bad configuration {spec!r}: {e}") from None
    return [EvalConfig("ped", mode, part, servers)]


def default_configs(grids: Sequence[Tuple[int, int]] = DEFAULT_GRIDS) -> List[EvalConfig]:
    """The baselines, {paper, exact} x grids x {aligned, free}, and the modes between exact and
    paper (k2, k3) on the first aligned grid, so that the report shows the knob."""
    out = [EvalConfig("cloud"), EvalConfig("edge")]
    for mode in MODES:
        for aligned in (True, False):
            for r, c in grids:
                out.append(EvalConfig("ped", mode, Partition.grid(r, c, aligned=aligned)))
    if grids:
        r, c = grids[0]
        between = [m for m in get_geometry(_GROUPS_OF).modes if m not in MODES]
        out.extend(EvalConfig("ped", m, Partition.grid(r, c)) for m in between)
    return out


def layout_configs(configs: Sequence[EvalConfig]) -> List[EvalConfig]:
    """The first configuration of each server layout, in order (``paper`` and ``exact`` share theirs)."""
    seen, out = set(), []
    for c in configs:
        if c.privacy_layout not in seen:
            seen.add(c.privacy_layout)
            out.append(c)
    return out


def parse_configs(specs: Sequence[str]) -> List[EvalConfig]:
    """Parse specs (each may be comma-separated), add the baselines, drop duplicates, keep order."""
    out: List[EvalConfig] = [EvalConfig("cloud"), EvalConfig("edge")]
    for item in specs:
        for part in str(item).split(","):
            out.extend(parse_config(part))
    seen, unique = set(), []
    for c in out:
        if c.spec not in seen:
            seen.add(c.spec)
            unique.append(c)
    return unique
