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

from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from . import metrics

# SAM's automatic-mask-generator score filters. Random weights predict meaningless
# IoU/stability scores, so with them the filters are switched off (NMS kept).
AMG_DEFAULTS = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7}
AMG_RANDOM_WEIGHTS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7}


class FixedEmbedding:
    """Stands in for a predictor inside SamAutomaticMaskGenerator so the image is
    encoded once: ``set_image`` keeps the embedding already computed and
    ``reset_image`` keeps it too; everything else is the wrapped predictor."""

    def __init__(self, predictor: SamPredictor):
        self._p = predictor

    def set_image(self, image, image_format="RGB"):
        if not self._p.is_image_set or tuple(image.shape[:2]) != tuple(self._p.original_size):
            raise RuntimeError("FixedEmbedding: set the whole image on the predictor first (crop_n_layers must be 0)")

    def reset_image(self):
        pass

    def __getattr__(self, name):
        return getattr(self._p, name)


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
        p = points[i:i + batch]
        coords = torch.as_tensor(predictor.transform.apply_coords(p[:, None, :], predictor.original_size),
                                 dtype=torch.float32, device=predictor.device)
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
        b = torch.as_tensor(predictor.transform.apply_boxes(boxes[i:i + batch], predictor.original_size),
                            dtype=torch.float32, device=predictor.device)
        masks, _, _ = predictor.predict_torch(None, None, b, multimask_output=False)
        out.append(masks[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + tuple(predictor.original_size), bool)


def boxes_from_masks(masks: Sequence[np.ndarray], min_area_frac: float = 0.001, max_area_frac: float = 0.95,
                     dedupe_iou: float = 0.9) -> np.ndarray:
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
    amg = SamAutomaticMaskGenerator(predictor.model, points_per_side=points_per_side, points_per_batch=64,
                                    **options)
    amg.predictor = FixedEmbedding(predictor)
    return [r["segmentation"] for r in amg.generate(image)]


@dataclass
class Reference:
    """Plain SAM's outputs on one image: what every configuration is compared with."""

    features: torch.Tensor
    points: np.ndarray
    point_masks: np.ndarray
    boxes: np.ndarray
    box_masks: np.ndarray
    amg: Optional[List[np.ndarray]] = None


def reference_outputs(predictor: SamPredictor, image: np.ndarray, grid: int, amg_points: int,
                      amg_options: Dict, run_amg: bool) -> Reference:
    h, w = image.shape[:2]
    pts = point_grid(h, w, grid)
    pm = point_masks(predictor, pts)
    boxes = boxes_from_masks(pm)
    bm = box_masks(predictor, boxes)
    amg = amg_masks(predictor, image, amg_points, amg_options) if run_amg else None
    return Reference(predictor.features.detach().clone(), pts, pm, boxes, bm, amg)


def compare(ref: Reference, predictor: SamPredictor, image: np.ndarray, amg_points: int, amg_options: Dict,
            run_amg: bool) -> Dict:
    """Fidelity of ``predictor`` (image already set) against the reference."""
    f = predictor.features
    out: Dict = {
        "embedding_cosine": metrics.cosine_similarity(f, ref.features),
        "embedding_rel_error": metrics.relative_error(f, ref.features),
        "embedding_max_abs_diff": metrics.max_abs_diff(f, ref.features),
    }
    pm = point_masks(predictor, ref.points)
    point_ious = [metrics.mask_iou(a, b) for a, b in zip(ref.point_masks, pm)]
    bm = box_masks(predictor, ref.boxes)
    box_ious = [metrics.mask_iou(a, b) for a, b in zip(ref.box_masks, bm)]
    out.update(point_iou_mean=float(np.mean(point_ious)) if point_ious else None,
               point_iou_min=float(np.min(point_ious)) if point_ious else None,
               point_prompts=len(point_ious), point_ious=point_ious,
               box_iou_mean=float(np.mean(box_ious)) if box_ious else None,
               box_iou_min=float(np.min(box_ious)) if box_ious else None,
               box_prompts=len(box_ious), box_ious=box_ious)
    if run_amg and ref.amg is not None:
        cand = amg_masks(predictor, image, amg_points, amg_options)
        out["amg"] = metrics.match_masks(ref.amg, cand).to_dict()
    return out


def reference_self_metrics(ref: Reference, run_amg: bool) -> Dict:
    """The reference compared with itself (what cloud and edge-only SAM score by construction)."""
    n_amg = len(ref.amg) if (run_amg and ref.amg is not None) else None
    out = {"embedding_cosine": 1.0, "embedding_rel_error": 0.0, "embedding_max_abs_diff": 0.0,
           "point_iou_mean": 1.0, "point_iou_min": 1.0, "point_prompts": len(ref.point_masks),
           "box_iou_mean": 1.0 if len(ref.box_masks) else None, "box_iou_min": 1.0 if len(ref.box_masks) else None,
           "box_prompts": len(ref.box_masks)}
    if n_amg is not None:
        out["amg"] = metrics.match_masks(ref.amg, ref.amg).to_dict()
    return out
