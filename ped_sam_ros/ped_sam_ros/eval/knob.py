"""The knob between ``exact`` and ``paper``: fidelity against edge compute for every mode.

Mode ``k<N>`` offloads the window blocks of the first N groups (``exact`` = k1, ``paper`` =
kG): the larger N, the less the edge computes and the further the result drifts from plain
SAM.  For every server layout the evaluation ran in two or more modes, this module lines the
modes up (edge MAC share on the headline geometry, fidelity on this run's model) and marks
the Pareto-optimal ones: no other mode of that layout has at least the same fidelity with
fewer edge MACs.  :func:`knob_section` is the report's section; the plot is
:func:`~.plots.knob_pareto`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..core.model import get_geometry, offload_groups
from .records import EvalResults

#: the fidelity the front is computed on (the embedding is what the split changes)
FIDELITY = "embedding_cosine"


@dataclass(frozen=True)
class KnobPoint:
    """One mode of one layout: its cost and its fidelity."""

    layout: str
    mode: str
    k: int
    config: str
    edge_mac_share: Optional[float]
    edge_gmacs: Optional[float]
    embedding_cosine: Optional[float]
    point_iou: Optional[float]
    box_iou: Optional[float]
    pareto: bool = False
    #: full-size geometry -> edge share of the encoder MACs (those in the cost tables)
    full_size_shares: Dict[str, float] = field(default_factory=dict)


def pareto_flags(costs: Sequence[float], fidelities: Sequence[float]) -> List[bool]:
    """True where no other point has cost <= and fidelity >= with one of them strictly better."""
    out = []
    for i, (c, f) in enumerate(zip(costs, fidelities)):
        dominated = any(
            (c2 <= c and f2 >= f) and (c2 < c or f2 > f) for j, (c2, f2) in enumerate(zip(costs, fidelities)) if j != i
        )
        out.append(not dominated)
    return out


def knob_points(res: EvalResults) -> Dict[str, List[KnobPoint]]:
    """Layout -> its modes (k ascending), for every layout run in two or more modes."""
    g = get_geometry(res.meta.model)
    by_spec = {c.spec: c for c in res.configs}
    full_size = [name for name in res.cost.geometries if "(this run)" not in name]
    layouts: Dict[str, List[KnobPoint]] = {}
    for s in res.summary:
        c = by_spec.get(s.spec)
        if c is None or c.kind != "ped":
            continue
        layouts.setdefault(c.layout_name, []).append(
            KnobPoint(
                c.layout_name,
                c.mode,
                offload_groups(c.mode, g.num_groups),
                s.config,
                s.cost.edge_mac_share,
                s.cost.edge_gmacs,
                s.fidelity.embedding_cosine,
                s.fidelity.point_iou,
                s.fidelity.box_iou,
                full_size_shares={
                    name: row.edge_share for name in full_size if (row := res.cost.row(name, c.spec)) is not None
                },
            )
        )
    out = {}
    for layout, pts in layouts.items():
        if len({p.mode for p in pts}) < 2:
            continue
        pts.sort(key=lambda p: p.k)
        ok = [p for p in pts if p.edge_mac_share is not None and getattr(p, FIDELITY) is not None]
        flags = dict(
            zip([p.mode for p in ok], pareto_flags([p.edge_mac_share for p in ok], [getattr(p, FIDELITY) for p in ok]))
        )
        out[layout] = [dataclasses.replace(p, pareto=flags.get(p.mode, False)) for p in pts]
    return out


def _f(x, d=4) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def knob_section(res: EvalResults, files: Dict[str, Path]) -> List[str]:
    """The report's section on the exact..paper knob (empty when no layout ran two modes)."""
    layouts = knob_points(res)
    if not layouts:
        return []
    g = get_geometry(res.meta.model)
    headline = res.summary[0].cost.cost_geometry if res.summary else "?"
    L = [
        "## The knob between exact and paper (k modes)\n",
        f"Mode `k<N>` offloads the window blocks of the first N of the {g.num_groups} groups (a group: the window "
        f"blocks before one global block; `exact` = k1, `paper` = k{g.num_groups}); the edge runs those groups' "
        "global blocks, then every block after group N. Edge MAC share on the headline geometry "
        f"(`{headline}`); fidelity against plain SAM on this run's model and images "
        f"({'RANDOM WEIGHTS: agreement only, not quality' if res.meta.random_weights else res.meta.weights.label}). "
        f"Pareto: no other mode of the same layout has at least this {FIDELITY.replace('_', ' ')} with fewer edge "
        "MACs.\n",
    ]
    for layout, pts in layouts.items():
        full = [name for name in pts[0].full_size_shares if name != headline]
        L.append(f"**{layout}**\n")
        L.append(
            "| mode | k | edge MAC share | edge GMACs | "
            + "".join(f"edge share {name} | " for name in full)
            + "embedding cosine | point IoU | box IoU | Pareto |"
        )
        L.append("|---" * (8 + len(full)) + "|")
        for p in pts:
            share = "n/a" if p.edge_mac_share is None else f"{p.edge_mac_share:.1%}"
            others = "".join(
                f"{p.full_size_shares[name]:.1%} | " if name in p.full_size_shares else "n/a | " for name in full
            )
            L.append(
                f"| `{p.mode}` | {p.k} | {share} | {_f(p.edge_gmacs, 1)} | {others}{_f(p.embedding_cosine)} | "
                f"{_f(p.point_iou, 3)} | {_f(p.box_iou, 3)} | {'yes' if p.pareto else ''} |"
            )
        L.append("")
    if "knob_pareto.png" in files:
        L.append("![fidelity against edge MACs](knob_pareto.png)\n")
    return L
