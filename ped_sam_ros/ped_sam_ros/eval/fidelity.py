"""Fidelity of a split encoder against plain SAM on the same weights and image.

All decoding is segment_anything's own (``SamPredictor.predict_torch``,
``SamAutomaticMaskGenerator``); only the image embedding differs between the
reference predictor and the one under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from segment_anything import SamPredictor

from ..core.pipeline import AmgOptions, generate_masks
from . import metrics

# SAM's automatic-mask-generator score filters (SAM's own defaults, via core's AmgOptions). Random
# weights predict meaningless IoU/stability scores, so with them the filters are off (NMS kept).
_AMG_FILTERS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh")
AMG_DEFAULTS = {k: getattr(AmgOptions(), k) for k in _AMG_FILTERS}
AMG_RANDOM_WEIGHTS = {k: getattr(AmgOptions().without_score_filters(), k) for k in _AMG_FILTERS}


def point_grid(height: int, width: int, n: int) -> np.ndarray:
    """n x n foreground points at the centres of an n x n grid of cells, (x, y) in pixels."""
    xs = (np.arange(n) + 0.5) * width / n
    ys = (np.arange(n) + 0.5) * height / n
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)


@torch.no_grad()
def point_masks(predictor: SamPredictor, points: np.ndarray, batch: int = 16) -> np.ndarray:
    """One mask per single-point prompt: SAM's highest-scoring multimask output."""
    out = []
    for i in range(0, len(points), batch):
        p = points[i : i + batch]
        coords = torch.as_tensor(
            predictor.transform.apply_coords(p[:, None, :], predictor.original_size),
            dtype=torch.float32,
            device=predictor.device,
        )
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=predictor.device)
        masks, scores, _ = predictor.predict_torch(coords, labels, multimask_output=True)
        best = scores.argmax(dim=1)
        out.append(masks[torch.arange(len(p)), best].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + tuple(predictor.original_size), bool)


@torch.no_grad()
def box_masks(predictor: SamPredictor, boxes: np.ndarray, batch: int = 16) -> np.ndarray:
    """One mask per box prompt (single-mask output, as SAM recommends for boxes)."""
    out = []
    for i in range(0, len(boxes), batch):
        b = torch.as_tensor(
            predictor.transform.apply_boxes(boxes[i : i + batch], predictor.original_size),
            dtype=torch.float32,
            device=predictor.device,
        )
        masks, _, _ = predictor.predict_torch(None, None, b, multimask_output=False)
        out.append(masks[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + tuple(predictor.original_size), bool)


def boxes_from_masks(
    masks: Sequence[np.ndarray], min_area_frac: float = 0.001, max_area_frac: float = 0.95, dedupe_iou: float = 0.9
) -> np.ndarray:
    """Tight boxes (x0, y0, x1, y1) of the reference masks, skipping tiny or
    whole-frame masks and near-duplicate boxes."""
    boxes: List[tuple] = []
    for m in masks:
        frac = float(np.mean(m))
        box = metrics.mask_to_box(m)
        if box is None or frac < min_area_frac or frac > max_area_frac:
            continue
        if any(metrics.box_iou(box, b) >= dedupe_iou for b in boxes):
            continue
        boxes.append(box)
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def amg_masks(predictor: SamPredictor, image: np.ndarray, points_per_side: int, options: Dict) -> List[np.ndarray]:
    """SAM's automatic mask generator over the predictor's current embedding."""
    records = generate_masks(predictor, image, dict(options, points_per_side=points_per_side, points_per_batch=64))
    return [r["segmentation"] for r in records]


@dataclass
class ReferenceOutputs:
    """Plain SAM's outputs on one image: what every configuration is compared with."""

    features: torch.Tensor
    points: np.ndarray
    point_masks: np.ndarray
    boxes: np.ndarray
    box_masks: np.ndarray
    amg: Optional[List[np.ndarray]] = None


def reference_outputs(
    predictor: SamPredictor, image: np.ndarray, grid: int, amg_points: int, amg_options: Dict, run_amg: bool
) -> ReferenceOutputs:
    h, w = image.shape[:2]
    pts = point_grid(h, w, grid)
    pm = point_masks(predictor, pts)
    boxes = boxes_from_masks(pm)
    bm = box_masks(predictor, boxes)
    amg = amg_masks(predictor, image, amg_points, amg_options) if run_amg else None
    return ReferenceOutputs(predictor.features.detach().clone(), pts, pm, boxes, bm, amg)


@dataclass(frozen=True)
class FidelityScores:
    """One configuration's agreement with plain SAM on one image (1 / 0 error = identical)."""

    embedding_cosine: float
    embedding_rel_error: float
    embedding_max_abs_diff: float
    point_ious: List[float]  # one per point prompt
    box_ious: List[float]  # one per box prompt
    amg: Optional[metrics.MaskMatch] = None  # None when AMG did not run on this image

    @property
    def point_prompts(self) -> int:
        return len(self.point_ious)

    @property
    def point_iou_mean(self) -> Optional[float]:
        return float(np.mean(self.point_ious)) if self.point_ious else None

    @property
    def point_iou_min(self) -> Optional[float]:
        return float(np.min(self.point_ious)) if self.point_ious else None

    @property
    def box_prompts(self) -> int:
        return len(self.box_ious)

    @property
    def box_iou_mean(self) -> Optional[float]:
        return float(np.mean(self.box_ious)) if self.box_ious else None

    @property
    def box_iou_min(self) -> Optional[float]:
        return float(np.min(self.box_ious)) if self.box_ious else None

    def to_dict(self) -> Dict:
        """Flat figures for JSON (the per-prompt lists included, the AMG match as its counts)."""
        return {
            "embedding_cosine": self.embedding_cosine,
            "embedding_rel_error": self.embedding_rel_error,
            "embedding_max_abs_diff": self.embedding_max_abs_diff,
            "point_iou_mean": self.point_iou_mean,
            "point_iou_min": self.point_iou_min,
            "point_prompts": self.point_prompts,
            "point_ious": list(self.point_ious),
            "box_iou_mean": self.box_iou_mean,
            "box_iou_min": self.box_iou_min,
            "box_prompts": self.box_prompts,
            "box_ious": list(self.box_ious),
            "amg": self.amg.to_dict() if self.amg is not None else None,
        }


def compare(
    ref: ReferenceOutputs, predictor: SamPredictor, image: np.ndarray, amg_points: int, amg_options: Dict, run_amg: bool
) -> FidelityScores:
    """Fidelity of ``predictor`` (image already set) against the reference."""
    f = predictor.features
    pm = point_masks(predictor, ref.points)
    bm = box_masks(predictor, ref.boxes)
    amg = None
    if run_amg and ref.amg is not None:
        amg = metrics.match_masks(ref.amg, amg_masks(predictor, image, amg_points, amg_options))
    return FidelityScores(
        embedding_cosine=metrics.cosine_similarity(f, ref.features),
        embedding_rel_error=metrics.relative_error(f, ref.features),
        embedding_max_abs_diff=metrics.max_abs_diff(f, ref.features),
        point_ious=[metrics.mask_iou(a, b) for a, b in zip(ref.point_masks, pm)],
        box_ious=[metrics.mask_iou(a, b) for a, b in zip(ref.box_masks, bm)],
        amg=amg,
    )


def reference_self_scores(ref: ReferenceOutputs, run_amg: bool) -> FidelityScores:
    """The reference compared with itself (what cloud and edge-only SAM score by construction)."""
    amg = metrics.match_masks(ref.amg, ref.amg) if (run_amg and ref.amg is not None) else None
    return FidelityScores(
        embedding_cosine=1.0,
        embedding_rel_error=0.0,
        embedding_max_abs_diff=0.0,
        point_ious=[1.0] * len(ref.point_masks),
        box_ious=[1.0] * len(ref.box_masks),
        amg=amg,
    )
