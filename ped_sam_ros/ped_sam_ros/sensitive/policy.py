"""The per-tile policy (the scheduler): what the edge does with each tile of a frame,
given the sensitive objects found in it and the region of interest.

Actions, configurable per class (``face``, ``person``, ``text``...):

* ``send``: the tile goes to its server as it is (what the pipeline does today);
* ``local``: the edge computes the tile's remote stage itself; no server sees any of it,
  and in exact mode the output is still exactly SAM's;
* ``blur`` / ``pixelate`` / ``noise``: the tile is sent with the object's box obfuscated
  (Gaussian blur, a coarse mosaic, or additive Gaussian noise of ``noise_sigma``);
  the rest of the tile is unchanged;
* ``drop``: nobody computes the tile; the edge puts fill tokens in its place
  (``drop_fill``: ``blank`` = the tokens of an all-padding tile at that position,
  computed once and cached; ``mean`` = the mean of the frame's computed tokens;
  ``zeros``).

Tiles outside the region of interest (ROI: around the prompts; the whole frame in
automatic mode) follow ``outside_roi`` (``send`` or ``drop``).  An object that
straddles a cut counts for every tile it touches.  When several rules apply to a tile
the most protective wins: drop (outside the ROI) > local > drop (by class) > obfuscate
> send; obfuscations of several objects in one tile are all applied.

Coordinates: detections and ROI boxes in original-frame pixels; the plan's boxes in
pixels of the frame resized by SAM (``content_hw``), where tiles live.  Pure Python
(no cv2, no torch): :mod:`.obfuscate` applies a plan to pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.geometry import PATCH_SIZE, Partition, Tile
from .types import Box, Detection

CLASS_ACTIONS: Tuple[str, ...] = ("send", "local", "blur", "pixelate", "noise", "drop")
OBFUSCATIONS: Tuple[str, ...] = ("blur", "pixelate", "noise")
TILE_ACTIONS: Tuple[str, ...] = ("send", "obfuscate", "local", "drop")
DROP_FILLS: Tuple[str, ...] = ("blank", "mean", "zeros")
_STRENGTH = {"send": 0, "blur": 1, "pixelate": 1, "noise": 1, "drop": 2, "local": 3}


class PolicyError(ValueError):
    """A policy configuration that cannot be applied, with the reason."""


@dataclass(frozen=True)
class PolicyConfig:
    """What to do with tiles that touch each class, and with tiles outside the ROI."""

    actions: Mapping[str, str] = field(default_factory=lambda: {"face": "local"})
    outside_roi: str = "send"  # send | drop
    min_score: float = 0.5  # detections below this are ignored
    box_margin: float = 0.15  # grow every object box by this fraction of its size on each side
    noise_sigma: float = 40.0  # std of the Gaussian noise, in 0..255 pixel units
    blur_strength: float = 0.15  # Gaussian blur sigma as a fraction of the object's shorter side
    pixelate_cells: int = 6  # mosaic cells across the object's shorter side
    roi_margin_tokens: int = 14  # grow the ROI by this many tokens (one SAM window) on each side
    drop_fill: str = "blank"

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", dict(self.actions))
        for cls, act in self.actions.items():
            if act not in CLASS_ACTIONS:
                raise PolicyError(f"action {act!r} for class {cls!r} is not one of {list(CLASS_ACTIONS)}")
        if self.outside_roi not in ("send", "drop"):
            raise PolicyError(f"outside_roi must be 'send' or 'drop', got {self.outside_roi!r}")
        if self.drop_fill not in DROP_FILLS:
            raise PolicyError(f"drop_fill must be one of {list(DROP_FILLS)}, got {self.drop_fill!r}")
        if self.noise_sigma < 0 or self.blur_strength <= 0 or self.pixelate_cells < 1 or self.box_margin < 0:
            raise PolicyError("noise_sigma >= 0, blur_strength > 0, pixelate_cells >= 1 and box_margin >= 0 needed")
        if self.roi_margin_tokens < 0:
            raise PolicyError("roi_margin_tokens must be >= 0")

    @classmethod
    def parse(cls, spec: str, **kwargs) -> PolicyConfig:
        """``"face=local,text=blur,outside_roi=drop"`` -> a config (other fields from kwargs)."""
        actions: Dict[str, str] = {}
        extra = dict(kwargs)
        for part in (p.strip() for p in (spec or "").split(",")):
            if not part:
                continue
            if "=" not in part:
                raise PolicyError(f"policy item {part!r} must look like CLASS=ACTION")
            key, val = (s.strip() for s in part.split("=", 1))
            if key == "outside_roi":
                extra["outside_roi"] = val
            else:
                actions[key] = val
        return cls(actions=actions, **extra)

    def action_for(self, cls: str) -> str:
        return self.actions.get(cls, "send")

    def to_dict(self) -> dict:
        return {
            "actions": dict(self.actions),
            "outside_roi": self.outside_roi,
            "min_score": self.min_score,
            "box_margin": self.box_margin,
            "noise_sigma": self.noise_sigma,
            "blur_strength": self.blur_strength,
            "pixelate_cells": self.pixelate_cells,
            "roi_margin_tokens": self.roi_margin_tokens,
            "drop_fill": self.drop_fill,
        }


@dataclass(frozen=True)
class SensitiveObject:
    """A detection mapped to the resized frame, margin included."""

    cls: str
    box: Box  # resized-frame pixels, margin included: what the policy protects
    score: float
    action: str  # what the config says for its class
    det_box: Box = (0.0, 0.0, 0.0, 0.0)  # resized-frame pixels, the detector's box without margin

    def to_dict(self) -> dict:
        return {
            "cls": self.cls,
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "action": self.action,
            "det_box": [round(v, 1) for v in self.det_box],
        }


@dataclass(frozen=True)
class TileDecision:
    """What happens to one tile, and why."""

    tile: int
    server: int  # the tile's server in the layout (nobody receives it when local or dropped)
    action: str  # send | obfuscate | local | drop
    reason: str
    objects: Tuple[int, ...] = ()  # indices into FramePlan.objects of the objects touching the tile
    obfuscations: Tuple[Tuple[str, Box, Box], ...] = ()  # (op, box clipped to the tile, whole object box)

    @property
    def leaves_edge(self) -> bool:
        return self.action in ("send", "obfuscate")

    def to_dict(self) -> dict:
        return {
            "tile": self.tile,
            "server": self.server,
            "action": self.action,
            "reason": self.reason,
            "objects": list(self.objects),
            "obfuscations": [{"op": op, "box": [round(v, 1) for v in b]} for op, b, _ in self.obfuscations],
        }


@dataclass(frozen=True)
class FramePlan:
    """The policy's decision for every tile of one frame."""

    partition: Partition
    assignment: Tuple[int, ...]
    content_hw: Tuple[int, int]
    orig_hw: Tuple[int, int]
    config: PolicyConfig
    objects: Tuple[SensitiveObject, ...]
    decisions: Tuple[TileDecision, ...]
    roi: Optional[Box]  # resized-frame pixels, margin included; None = the whole frame

    def tiles(self, action: str) -> List[int]:
        """Indices of the tiles whose action is ``action``."""
        return [d.tile for d in self.decisions if d.action == action]

    def counts(self) -> Dict[str, int]:
        return {a: len(self.tiles(a)) for a in TILE_ACTIONS}

    def to_dict(self) -> dict:
        return {
            "content_hw": list(self.content_hw),
            "orig_hw": list(self.orig_hw),
            "config": self.config.to_dict(),
            "objects": [o.to_dict() for o in self.objects],
            "roi": None if self.roi is None else list(self.roi),
            "tiles": [d.to_dict() for d in self.decisions],
            "counts": self.counts(),
        }


# ---------------------------------------------------------------------------
# Geometry helpers


def to_resized(box: Box, orig_hw: Tuple[int, int], content_hw: Tuple[int, int]) -> Box:
    """Original-frame pixels -> resized-frame pixels (SAM's per-axis resize ratio)."""
    sy, sx = content_hw[0] / orig_hw[0], content_hw[1] / orig_hw[1]
    x0, y0, x1, y1 = box
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def grow(box: Box, frac: float, limit_hw: Tuple[int, int]) -> Box:
    """The box grown by ``frac`` of its width/height on each side, clipped to the frame."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * frac, (y1 - y0) * frac
    h, w = limit_hw
    return (max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(w), x1 + dx), min(float(h), y1 + dy))


def intersect(a: Box, b: Box) -> Optional[Box]:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def tile_box(tile: Tile, content_hw: Tuple[int, int]) -> Optional[Box]:
    """The tile's content area as (x0, y0, x1, y1) resized-frame pixels; None if all padding."""
    cb = tile.content_box(content_hw)
    if cb is None:
        return None
    y0, y1, x0, x1 = cb
    return (float(x0), float(y0), float(x1), float(y1))


def roi_box(
    prompt_boxes: Optional[Sequence[Box]], orig_hw: Tuple[int, int], content_hw: Tuple[int, int], margin_tokens: int
) -> Optional[Box]:
    """The region of interest in resized pixels: the bounding box of the prompts (points as
    zero-size boxes), grown by ``margin_tokens`` tokens; None (whole frame) without prompts."""
    if not prompt_boxes:
        return None
    rs = [to_resized(b, orig_hw, content_hw) for b in prompt_boxes]
    m = margin_tokens * PATCH_SIZE
    h, w = content_hw
    x0, y0 = min(b[0] for b in rs) - m, min(b[1] for b in rs) - m
    x1, y1 = max(b[2] for b in rs) + m, max(b[3] for b in rs) + m
    return (max(0.0, x0), max(0.0, y0), min(float(w), max(x1, x0 + 1)), min(float(h), max(y1, y0 + 1)))


def prompt_boxes(points: Sequence[Tuple[float, float]] = (), boxes: Sequence[Box] = ()) -> List[Box]:
    """Prompts as boxes for :func:`roi_box`: points become 1-pixel boxes."""
    return [(float(x), float(y), float(x) + 1, float(y) + 1) for x, y in points] + [tuple(map(float, b)) for b in boxes]


# ---------------------------------------------------------------------------
# The plan


def plan_frame(
    partition: Partition,
    assignment: Sequence[int],
    orig_hw: Tuple[int, int],
    content_hw: Tuple[int, int],
    detections: Sequence[Detection],
    config: PolicyConfig = PolicyConfig(),
    prompts: Optional[Sequence[Box]] = None,
) -> FramePlan:
    """Decide every tile's action for one frame.

    ``detections`` in original pixels (a detector's output on the frame); ``prompts``:
    boxes in original pixels (see :func:`prompt_boxes`), None or empty in automatic mode.
    """
    if len(assignment) != len(partition):
        raise PolicyError(f"{len(assignment)} assignments for {len(partition)} tiles")
    objects = []
    for d in detections:
        if d.score < config.min_score:
            continue
        raw = grow(to_resized(d.box, orig_hw, content_hw), 0.0, content_hw)
        box = grow(raw, config.box_margin, content_hw)
        if raw[2] > raw[0] and raw[3] > raw[1]:
            objects.append(SensitiveObject(d.cls, box, float(d.score), config.action_for(d.cls), raw))
    roi = roi_box(prompts, orig_hw, content_hw, config.roi_margin_tokens)
    decisions = [_decide(t, int(assignment[t.index]), content_hw, objects, roi, config) for t in partition.tiles]
    return FramePlan(
        partition,
        tuple(int(a) for a in assignment),
        tuple(content_hw),
        tuple(orig_hw),
        config,
        tuple(objects),
        tuple(decisions),
        roi,
    )


def _describe(o: SensitiveObject) -> str:
    x0, y0, x1, y1 = o.box
    return f"{o.cls} ({o.score:.2f}) at x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f}"


def _decide(
    tile: Tile, server: int, content_hw, objects: Sequence[SensitiveObject], roi: Optional[Box], config: PolicyConfig
) -> TileDecision:
    tb = tile_box(tile, content_hw)
    if tb is None:
        return TileDecision(tile.index, server, "send", "all padding: no content")
    touching = [i for i, o in enumerate(objects) if intersect(o.box, tb) is not None]
    if roi is not None and config.outside_roi == "drop" and intersect(roi, tb) is None:
        return TileDecision(tile.index, server, "drop", "outside the region of interest", tuple(touching))
    if not touching:
        return TileDecision(tile.index, server, "send", "no sensitive object")
    strongest = max(_STRENGTH[objects[i].action] for i in touching)
    lead = next(objects[i] for i in touching if _STRENGTH[objects[i].action] == strongest)
    if lead.action == "local":
        return TileDecision(tile.index, server, "local", f"{_describe(lead)}: computed on the edge", tuple(touching))
    if lead.action == "drop":
        return TileDecision(tile.index, server, "drop", f"{_describe(lead)}: not computed", tuple(touching))
    obf = tuple(
        (objects[i].action, intersect(objects[i].box, tb), objects[i].box)
        for i in touching
        if objects[i].action in OBFUSCATIONS
    )
    if obf:
        ops = sorted({op for op, _, _ in obf})
        return TileDecision(
            tile.index, server, "obfuscate", f"{_describe(lead)}: {'+'.join(ops)} before sending", tuple(touching), obf
        )
    return TileDecision(tile.index, server, "send", f"{_describe(lead)}: policy sends it", tuple(touching))


# ---------------------------------------------------------------------------
# What each server ends up seeing


def server_object_views(plan: FramePlan) -> List[Dict[int, float]]:
    """Per object: server -> fraction of the object's detected box (no margin) that server
    receives *unaltered* (local, dropped and obfuscated parts excluded)."""
    out: List[Dict[int, float]] = []
    tiles = plan.partition.tiles
    for o in plan.objects:
        area = (o.det_box[2] - o.det_box[0]) * (o.det_box[3] - o.det_box[1])
        seen: Dict[int, float] = {}
        for d in plan.decisions:
            if not d.leaves_edge:
                continue
            tb = tile_box(tiles[d.tile], plan.content_hw)
            part = intersect(o.det_box, tb) if tb is not None else None
            if part is None:
                continue
            if d.action == "obfuscate" and any(ob == o.box for _, _, ob in d.obfuscations):
                continue  # this object is obfuscated in this tile
            seen[d.server] = seen.get(d.server, 0.0) + (part[2] - part[0]) * (part[3] - part[1]) / area
        out.append(seen)
    return out


def objects_seen_whole(plan: FramePlan, threshold: float = 0.999) -> List[bool]:
    """Per object: whether some single server receives (at least ``threshold`` of) it unaltered."""
    return [any(v >= threshold for v in seen.values()) for seen in server_object_views(plan)]
