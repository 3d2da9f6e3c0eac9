"""The records, summaries and report section of the sensitive-content evaluation (:mod:`.sensitive`).

Per frame and cell a :class:`SensitiveCell` (one :class:`ObjectOutcome` per sensitive object);
over frames a :class:`CellSummary` per policy x partition and per policy (:func:`summarize`);
everything in a :class:`SensitiveSection` (``results.json`` key ``sensitive``), shown by
:func:`section_lines` in report.md and by :func:`csv_rows` in ``sensitive.csv``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # the specs live with the evaluation, which imports this module
    from .sensitive import PartitionSpec, PolicySpec

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1


# ---------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class ObjectOutcome:
    """One sensitive object in one cell: who saw it, who found it, how well it is reconstructed."""

    cls: str
    box: Box  # original pixels
    edge_detected: Optional[bool]  # the edge detector found it (None: oracle)
    seen_whole_by: List[int]  # servers receiving every pixel of it unaltered
    received_whole_by: List[int]  # servers receiving every pixel of it, altered or not
    largest_unaltered: float  # the largest fraction of its pixels one server receives unaltered
    found_by: List[int]  # servers whose own detector finds it
    recon_server: Optional[int]  # the server with the best reconstruction (None: no server near it)
    recon_ssim: float
    recon_mse: float
    floor_ssim: float  # mean-fill floor (best server)
    floor_mse: float


@dataclass(frozen=True)
class SensitiveCell:
    """One policy x partition on one frame."""

    policy: str
    partition: str
    image: str
    layout: str  # the actual layout for this frame, e.g. "2x3 over 4"
    servers: int
    tiles: int
    max_share: float
    tile_actions: Dict[str, int]  # send / obfuscate / local / drop
    objects: List[ObjectOutcome]
    #: mask IoU with plain SAM per prompt (None: masks were not run on this frame)
    on_ious: Optional[Dict[str, List[float]]] = None  # class -> one per object of that class in scope
    off_ious: Optional[List[float]] = None
    detect_s: float = 0.0  # the edge detector on this frame (0 when the policy needs none, or oracle)
    policy_s: float = 0.0  # planning + obfuscation
    local_s: Optional[float] = None  # the local tiles' remote stage on the edge (masks run only)
    edge_stage_s: Optional[float] = None  # the edge stage's blocks (masks run only)
    roi: Optional[List[float]] = None  # resized pixels; None = whole frame

    @property
    def added_s(self) -> Optional[float]:
        """Edge seconds the policy adds to this frame (None without the local-tile time)."""
        if self.local_s is None:
            return None
        return self.detect_s + self.policy_s + self.local_s


@dataclass(frozen=True)
class ClassFigures:
    """One class's figures over the frames of a cell (fractions of the objects; means over objects)."""

    cls: str
    objects: int
    seen_whole: Optional[float]
    seen_whole_detected: Optional[float]  # of the objects the edge detector found (all of them for the oracle)
    received_whole: Optional[float]
    found: Optional[float]
    recon_ssim: Optional[float]
    recon_psnr: Optional[float]
    floor_ssim: Optional[float]
    floor_psnr: Optional[float]
    edge_recall: Optional[float]  # of the edge detector on these objects (None: oracle)
    iou_on: Optional[float]
    iou_on_min: Optional[float]
    on_prompts: int


@dataclass(frozen=True)
class CellSummary:
    """A policy x partition (or, with ``partition == "all"``, a policy over every partition)."""

    policy: str
    label: str
    partition: str
    frames: int
    max_share: Optional[float]
    tile_actions: Dict[str, float]  # per frame
    classes: Dict[str, ClassFigures]
    iou_off: Optional[float]
    iou_off_min: Optional[float]
    off_prompts: int
    detect_s: Optional[float]
    policy_s: Optional[float]
    local_s: Optional[float]
    edge_stage_s: Optional[float]  # the edge stage's fastest time in the run (the same computation in every cell)
    added_s: Optional[float]  # detector and policy: medians over every frame; local tiles: over the frames with masks
    added_share: Optional[float]  # added_s / edge_stage_s

    def flat(self) -> Dict[str, Any]:
        """One flat row (for CSV)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("classes", "tile_actions")}
        for a, v in self.tile_actions.items():
            d[f"tiles_{a}"] = v
        for c, f in self.classes.items():
            for k, v in dataclasses.asdict(f).items():
                if k != "cls":
                    d[f"{c}_{k}"] = v
        return d


@dataclass(frozen=True)
class SensitiveImageInfo:
    name: str
    height: int
    width: int
    objects: Dict[str, int]
    truth: str
    masks: bool  # mask agreement ran on it
    edge_found: Optional[Dict[str, int]]  # objects of each class the edge detector found (None: oracle)
    detect_s: Optional[float]


@dataclass(frozen=True)
class SensitiveSection:
    """Everything the sensitive-content evaluation measured (``results.json`` key ``sensitive``)."""

    mode: str
    edge_detector: str
    attacker: Dict[str, str]
    classes: List[str]
    policies: Dict[str, Dict]  # name -> PolicyConfig as a dict (noise sigma included)
    partitions: List[str]
    images: List[SensitiveImageInfo]
    wire_dtype: str
    roi: str
    cells: List[SensitiveCell]
    summary: List[CellSummary]  # per policy x partition
    by_policy: List[CellSummary]  # per policy, over every partition
    wall_s: float
    attacker_runs: int
    attacker_s: float


# ---------------------------------------------------------------------------
# Summaries


def _mean(v) -> Optional[float]:
    v = [float(x) for x in v if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else None


def _median(v) -> Optional[float]:
    """Median of the finite values (times: robust to the load spikes of a shared machine)."""
    v = [float(x) for x in v if x is not None and math.isfinite(float(x))]
    return float(np.median(v)) if v else None


def _psnr(mses) -> Optional[float]:
    m = _mean(mses)
    if m is None:
        return None
    return float("inf") if m == 0 else float(10 * math.log10(255.0**2 / m))


def _frac(flags) -> Optional[float]:
    flags = list(flags)
    return sum(1 for f in flags if f) / len(flags) if flags else None


def edge_reference(cells: Sequence[SensitiveCell]) -> Optional[float]:
    """The edge stage's fastest time over the cells with masks: the same computation runs in every cell
    (only the tokens differ), so the spread is the machine's load, and the minimum the stage's own time."""
    times = [c.edge_stage_s for c in cells if c.edge_stage_s]
    return min(times) if times else None


def _summary(
    policy: PolicySpec, partition: str, cells: List[SensitiveCell], classes, edge_s: Optional[float]
) -> CellSummary:
    figs = {}
    for c in classes:
        objs = [o for cell in cells for o in cell.objects if o.cls == c]
        on = [v for cell in cells if cell.on_ious is not None for v in cell.on_ious.get(c, [])]
        det = [o.edge_detected for o in objs if o.edge_detected is not None]
        figs[c] = ClassFigures(
            cls=c,
            objects=len(objs),
            seen_whole=_frac(bool(o.seen_whole_by) for o in objs),
            seen_whole_detected=_frac(bool(o.seen_whole_by) for o in objs if o.edge_detected is not False),
            received_whole=_frac(bool(o.received_whole_by) for o in objs),
            found=_frac(bool(o.found_by) for o in objs),
            recon_ssim=_mean(o.recon_ssim for o in objs),
            recon_psnr=_psnr(o.recon_mse for o in objs),
            floor_ssim=_mean(o.floor_ssim for o in objs),
            floor_psnr=_psnr(o.floor_mse for o in objs),
            edge_recall=_frac(det) if det else None,
            iou_on=_mean(on),
            iou_on_min=min(on) if on else None,
            on_prompts=len(on),
        )
    off = [v for cell in cells if cell.off_ious is not None for v in cell.off_ious]
    timed = [c for c in cells if c.local_s is not None]
    detect_s, policy_s = _median(c.detect_s for c in cells), _median(c.policy_s for c in cells)
    local_s = _median(c.local_s for c in timed)
    added = None if local_s is None else (detect_s or 0.0) + (policy_s or 0.0) + local_s
    actions = {a: _mean(c.tile_actions.get(a, 0) for c in cells) or 0.0 for a in ("send", "obfuscate", "local", "drop")}
    return CellSummary(
        policy=policy.name,
        label=policy.label,
        partition=partition,
        frames=len(cells),
        max_share=max((c.max_share for c in cells), default=None),
        tile_actions=actions,
        classes=figs,
        iou_off=_mean(off),
        iou_off_min=min(off) if off else None,
        off_prompts=len(off),
        detect_s=detect_s,
        policy_s=policy_s,
        local_s=local_s,
        edge_stage_s=edge_s,
        added_s=added,
        added_share=added / edge_s if added is not None and edge_s else None,
    )


def summarize(
    cells: Sequence[SensitiveCell],
    policies: Sequence[PolicySpec],
    partitions: Optional[Sequence[PartitionSpec]],
    classes: Sequence[str],
) -> List[CellSummary]:
    """Per policy x partition, or per policy over every partition (``partitions`` None); the
    edge time's share is of :func:`edge_reference` over all the cells."""
    ref = edge_reference(cells)
    out = []
    for p in policies:
        if partitions is None:
            mine = [c for c in cells if c.policy == p.name]
            out.append(_summary(p, "all", mine, classes, ref))
            continue
        for q in partitions:
            mine = [c for c in cells if c.policy == p.name and c.partition == q.name]
            out.append(_summary(p, q.name, mine, classes, ref))
    return out


def csv_rows(section: SensitiveSection) -> List[Dict[str, Any]]:
    """``sensitive.csv``: one row per policy x partition, then one per policy (partition ``all``)."""
    return [r.flat() for r in section.summary + section.by_policy]


# ---------------------------------------------------------------------------
# The report section


def _ms(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def _pair(a, b, fmt) -> str:
    return f"{fmt(a)} ({fmt(b)})"


def _iou(mean, low, n) -> str:
    from .markdown import f3

    return "n/a" if not n else f"{f3(mean)} (min {f3(low)}, {n})"


def _rows(rows: Sequence[CellSummary], cls: str, with_partition: bool) -> List[List[str]]:
    from .markdown import f3, pct

    def db(x):
        return "n/a" if x is None else ("inf" if math.isinf(x) else f"{x:.1f}")

    out = []
    for r in rows:
        f = r.classes[cls]
        lead = [r.label] + ([r.partition, pct(r.max_share)] if with_partition else [])
        acts = r.tile_actions
        out.append(
            lead
            + [
                str(f.objects),
                pct(f.seen_whole, 0)
                + ("" if f.seen_whole_detected == f.seen_whole else f" ({pct(f.seen_whole_detected, 0)})"),
                pct(f.found, 0),
                pct(f.received_whole, 0),
                _pair(f.recon_ssim, f.floor_ssim, f3),
                _pair(f.recon_psnr, f.floor_psnr, db),
                _iou(f.iou_on, f.iou_on_min, f.on_prompts),
                _iou(r.iou_off, r.iou_off_min, r.off_prompts),
                f"{acts['local']:.1f} / {acts['obfuscate']:.1f} / {acts['drop']:.1f}",
                _ms(r.added_s),
                pct(r.added_share, 0),
            ]
        )
    return out


def section_lines(sec: SensitiveSection, random_weights: bool) -> List[str]:
    """The report's section on sensitive content per policy and partition."""
    from .markdown import table

    names = {"face": "faces", "text": "text boxes"}
    one = {"face": "face", "text": "text box"}
    imgs = ", ".join(
        f"{i.name} ({i.width}x{i.height}, "
        + (", ".join(f"{n} {(one if n == 1 else names).get(c, c)}" for c, n in i.objects.items() if n) or "none")
        + f"; {i.truth})"
        for i in sec.images
    )
    masks = [i.name for i in sec.images if i.masks]
    edge = [
        f"{i.name}: " + ", ".join(f"{i.edge_found[c]}/{i.objects[c]}" for c in sec.classes if i.objects[c])
        for i in sec.images
        if i.edge_found is not None and any(i.objects.values())
    ]
    ref = edge_reference(sec.cells)
    top = max((c.edge_stage_s for c in sec.cells if c.edge_stage_s), default=None)
    weights = (
        "**RANDOM WEIGHTS**: they are agreement with plain SAM on the same random weights, not segmentation quality. "
        if random_weights
        else ""
    )
    L = [
        "## Sensitive content per policy and partition\n",
        f"Frames: {imgs}. Edge detector: `{sec.edge_detector}`"
        + (f" (found, per frame: {'; '.join(edge)})" if edge else "")
        + ". Attacker on each single server's view: "
        + "; ".join(f"{c}: {d}" for c, d in sec.attacker.items())
        + f". Mode `{sec.mode}`, tokens as {sec.wire_dtype}. Region of interest: {sec.roi}.\n",
        "*seen whole*: objects some single server receives whole and unaltered (in brackets, where it "
        "differs: of the objects the edge detector found); *found*: objects that "
        "server's own detector finds on what it received (its crops in place, black elsewhere); *received "
        "whole*: every pixel received by one server, obfuscated or not. *SSIM / PSNR*: the best single "
        "server's reconstruction of the object's box (Telea inpainting of what it did not receive in a "
        "window around it; obfuscated pixels as received), the mean-fill floor in brackets (means over "
        "objects; PSNR from the mean squared error). *IoU ON / OFF*: mask agreement with plain SAM for "
        "single-point prompts on the objects' centres / away from them (mean, min, prompts), on "
        + (", ".join(masks) or "no frame")
        + ". The IoU columns say what the policy costs the masks; "
        + weights
        + "*tiles local / obfuscated / dropped*: per frame. *edge time added*: per frame, the detector "
        "(when the policy needs one) and planning + obfuscation (medians over every frame) + the local tiles' "
        "remote stage on the edge (frames with masks); *share*: of the edge stage's fastest time in this run "
        + ("n/a" if ref is None else f"({ref * 1000:.0f} ms; it ran {ref * 1000:.0f}-{top * 1000:.0f} ms")
        + (", the spread being the machine's load): " if ref is not None else ": ")
        + "this run's model, so the share is only as representative as its size.\n",
    ]
    for c in sec.classes:
        if not any(r.classes[c].objects for r in sec.by_policy):
            continue
        noun = names.get(c, c)
        head = [
            noun,
            f"{noun} seen whole",
            "found by the server's detector",
            "received whole",
            "recon SSIM (floor)",
            "PSNR dB (floor)",
            "IoU ON",
            "IoU OFF",
            "tiles local / obf. / dropped",
            "edge time added",
            "share of edge stage",
        ]
        L += [
            f"### {noun.capitalize()}: per policy (all partitions together)\n",
            table(["policy"] + head, _rows(sec.by_policy, c, False)),
            "",
            f"### {noun.capitalize()}: per policy and partition\n",
            table(["policy", "partition", "largest share"] + head, _rows(sec.summary, c, True)),
            "",
        ]
    L.append(
        f"Run time of this section: {sec.wall_s:.0f} s ({sec.attacker_runs} attacker detector runs, "
        f"{sec.attacker_s:.0f} s).\n"
    )
    return L
