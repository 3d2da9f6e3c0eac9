"""The edge's privacy policy inside the pipeline (no ROS): the frame hook of the distributed encoder.

:class:`PrivacyHook` is a :data:`~ped_sam_ros.core.pipeline.FrameHook`.  For every frame, before
any tile leaves the edge, it

1. picks the layout (``layout: auto``: the most balanced token-aligned layout for this frame's
   content shape and the primary servers, :func:`~ped_sam_ros.core.layout.best_layout`, cached
   per shape; ``grid``: the configured grid, unchanged);
2. runs the detector on the resized frame the pipeline already has (:meth:`PrivacyHook.detect`:
   once per frame, no copy; told the smallest face that matters, ``min_face_px`` of the camera
   frame, so that it skips the work for smaller ones; boxes mapped back to original pixels);
3. plans every tile (:func:`~ped_sam_ros.sensitive.policy.plan_frame`: send, obfuscate, local,
   drop, with the reason), the prompts giving the region of interest;
4. returns a :class:`~ped_sam_ros.core.pipeline.TilePlan`: obfuscated crops
   (:func:`~ped_sam_ros.sensitive.obfuscate.tile_crops`), local tiles (computed by the remote
   stage held at the edge) and dropped tiles with their fill tokens.

The :class:`PrivacyRecord` it leaves in ``EncodeStats.privacy`` is what the ROS node publishes
(tile decisions, detections on the overlay, counts in diagnostics).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ped_sam_ros.core.geometry import Tile
from ped_sam_ros.core.pipeline import TilePlan

log = logging.getLogger(__name__)

LAYOUTS = ("grid", "auto")
#: the smallest face, in pixels of the camera frame, the policy must catch (the detector recall
#: target of docs/privacy.md is for faces of 40 px and larger); smaller ones may be missed
DEFAULT_MIN_FACE_PX = 40.0


@dataclass
class PrivacyRecord:
    """One frame's policy result: the plan (tile decisions, objects), the detections in
    original pixels, and the seconds it took."""

    plan: object  # sensitive.policy.FramePlan
    detections: list  # sensitive.types.Detection, original pixels
    detector: str
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> Dict[str, int]:
        return self.plan.counts()

    def decisions(self) -> list:
        return list(self.plan.decisions)

    def objects_seen_whole(self) -> int:
        from ped_sam_ros.sensitive.policy import objects_seen_whole

        return sum(objects_seen_whole(self.plan))


class PrivacyHook:
    """Detector + per-tile policy + layout, run by the distributed encoder on every frame.

    ``detector``: a :class:`~ped_sam_ros.sensitive.types.Detector` (None: finds nothing);
    ``config``: a :class:`~ped_sam_ros.sensitive.policy.PolicyConfig`; ``layout``: ``grid``
    or ``auto``; ``primaries``: the server indexes that get tiles (spares excluded);
    ``local_stage``: a zero-argument callable giving the remote stage at the edge (for
    ``local`` tiles and the ``blank`` drop fill); ``seed``: of the noise obfuscation;
    ``min_face_px``: the smallest face that matters, in pixels of the camera frame (detectors that
    take ``min_size`` skip smaller ones: see :meth:`detect`).
    """

    def __init__(
        self,
        detector=None,
        config=None,
        layout: str = "grid",
        primaries: Optional[Sequence[int]] = None,
        local_stage=None,
        seed: Optional[int] = None,
        min_face_px: float = DEFAULT_MIN_FACE_PX,
    ):
        from ped_sam_ros.sensitive.detectors import accepts_min_size
        from ped_sam_ros.sensitive.policy import PolicyConfig

        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.detector = detector
        self.min_face_px = float(min_face_px)
        self._sized = detector is not None and accepts_min_size(detector)
        self.config = config if config is not None else PolicyConfig()
        self.layout = layout
        self.primaries = list(primaries) if primaries is not None else None
        self._local_stage = local_stage
        self._rng = np.random.default_rng(seed)
        self._layouts: Dict[Tuple[int, int], object] = {}
        self._blank: Dict[Tuple[int, int, int, int, str], torch.Tensor] = {}
        self.mode = "paper"  # the encoder's split mode (set by build_privacy_hook)
        self.frames = 0
        self.totals: Dict[str, int] = {"send": 0, "obfuscate": 0, "local": 0, "drop": 0, "objects": 0}

    # ------------------------------------------------------------------ layout

    def layout_for(self, encoder, content_hw: Tuple[int, int]):
        """The cached balanced layout for this content shape (``auto``), with the primaries' indexes."""
        from ped_sam_ros.core.layout import best_layout

        key = tuple(int(v) for v in content_hw)
        if key not in self._layouts:
            prim = self.primaries if self.primaries is not None else list(range(len(encoder.transport.server_names)))
            lay = best_layout(key, len(prim), allow_adjacent=encoder.allow_adjacent, max_share=encoder.max_share)
            self._layouts[key] = (lay.partition, [prim[a] for a in lay.assignment], lay.max_share)
            log.info(
                "layout auto for a %dx%d frame: %s tiles, largest share %.1f %%",
                key[0],
                key[1],
                len(lay.partition),
                100 * lay.max_share,
            )
        return self._layouts[key]

    # --------------------------------------------------------------- the hook

    def detect(self, resized: np.ndarray, orig_hw: Optional[Tuple[int, int]] = None) -> list:
        """The detector, once, on the uint8 frame the pipeline already resized for SAM (no copy,
        no conversion here), told the smallest face that matters in that frame's pixels
        (``min_face_px`` of the camera frame); detections in pixels of the camera frame
        (``orig_hw``, default: the resized frame's own size)."""
        if self.detector is None:
            return []
        content_hw = resized.shape[:2]
        orig_hw = tuple(int(v) for v in orig_hw) if orig_hw is not None else content_hw
        sx, sy = orig_hw[1] / content_hw[1], orig_hw[0] / content_hw[0]
        if self._sized:
            found = self.detector.detect(resized, min_size=self.min_face_px / max(sx, sy))
        else:
            found = self.detector.detect(resized)
        return [d.scaled(sx, sy) for d in found]

    def __call__(self, encoder, resized: np.ndarray, orig_hw: Optional[Tuple[int, int]], prompts) -> TilePlan:
        from ped_sam_ros.sensitive.obfuscate import tile_crops
        from ped_sam_ros.sensitive.policy import plan_frame, prompt_boxes

        self.mode = encoder.mode
        content_hw = tuple(int(v) for v in resized.shape[:2])
        orig_hw = tuple(int(v) for v in orig_hw) if orig_hw is not None else content_hw
        timings: Dict[str, float] = {}
        if self.layout == "auto":
            part, assign, _ = self.layout_for(encoder, content_hw)
            if part is not encoder.partition:
                encoder.set_layout(part, assign)
        t0 = time.perf_counter()
        dets = self.detect(resized, orig_hw)
        t1 = time.perf_counter()
        roi = None
        if prompts:
            pts = [(x, y) for p in prompts for x, y, _ in p.points]
            boxes = [tuple(p.box) for p in prompts if p.box is not None]
            roi = prompt_boxes(points=pts, boxes=boxes)
        plan = plan_frame(encoder.partition, encoder.assignment, orig_hw, content_hw, dets, self.config, roi)
        t2 = time.perf_counter()
        seed = int(self._rng.integers(2**31))
        crops = tile_crops(plan, resized, seed)
        obf = {d.tile: c for d, c in zip(plan.decisions, crops) if d.action == "obfuscate" and c is not None}
        t3 = time.perf_counter()
        if self.detector is not None:
            timings["detect"] = t1 - t0
        timings["policy"] = (t2 - t1) + (t3 - t2)
        record = PrivacyRecord(plan, dets, getattr(self.detector, "name", "none"), dict(timings))
        counts = plan.counts()
        self.frames += 1
        for k, v in counts.items():
            self.totals[k] = self.totals.get(k, 0) + v
        self.totals["objects"] += len(plan.objects)
        local = tuple(plan.tiles("local"))
        dropped = tuple(plan.tiles("drop"))
        if (local or (dropped and self.config.drop_fill == "blank")) and self._local_stage is None:
            raise RuntimeError("the privacy policy keeps tiles at the edge but no remote stage is held there")
        return TilePlan(crops=obf, local=local, dropped=dropped, fill=self._fill, record=record, timings=timings)

    # ------------------------------------------------------------------- fill

    def _fill(self, tile: Tile, tokens: torch.Tensor, computed: torch.Tensor):
        """Tokens for a dropped tile (``drop_fill``): ``blank`` = an all-padding tile's tokens at
        that position (computed once, cached), ``mean`` = the mean computed token, ``zeros``."""
        fill = self.config.drop_fill
        if fill == "zeros":
            return 0.0
        if fill == "mean":
            return tokens[0][computed].mean(dim=0) if computed.any() else 0.0
        key = (tile.row0, tile.row1, tile.col0, tile.col1, self.mode)
        if key not in self._blank:
            stage = self._local_stage()
            self._blank[key] = stage.encode_tile(np.zeros((0, 0, 3), np.uint8), tile, self.mode).float()
        return self._blank[key]


def build_privacy_hook(config, encoder) -> Optional[PrivacyHook]:
    """The hook an :class:`~ped_sam_ros.edge.config.EdgeConfig` asks for (None when the detector
    is ``none``, every class is ``send``, nothing is dropped and the layout is ``grid``)."""
    if not config.privacy_enabled:
        return None
    from ped_sam_ros.sensitive.detectors import make_detector

    detector = make_detector(config.privacy_detector) if config.privacy_detector != "none" else None
    primaries = [i for i in range(len(config.servers)) if i not in config.spare_indexes]
    hook = PrivacyHook(
        detector,
        config.policy_config(),
        config.layout,
        primaries,
        local_stage=encoder.edge_remote_stage,
        seed=config.seed,
        min_face_px=config.privacy_min_face_px,
    )
    return hook


def describe_decisions(record: Optional[PrivacyRecord], server_names: Sequence[str]) -> List[dict]:
    """Plain dicts (tile, token rows/cols, server name, action, reason, classes) for messages and logs."""
    if record is None:
        return []
    plan = record.plan
    tiles = plan.partition.tiles
    out = []
    for d in plan.decisions:
        t = tiles[d.tile]
        out.append(
            {
                "tile": d.tile,
                "rows": (t.row0, t.row1),
                "cols": (t.col0, t.col1),
                "server": server_names[d.server] if 0 <= d.server < len(server_names) else "",
                "action": d.action,
                "reason": d.reason,
                "classes": sorted({plan.objects[i].cls for i in d.objects}),
            }
        )
    return out
