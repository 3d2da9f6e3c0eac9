"""Fidelity metrics: how closely a split encoder's output agrees with plain SAM.

Everything compares two outputs of the *same weights* (the split one and the
unsplit one); none of it measures segmentation quality against ground truth.
Plain numpy (and torch tensors accepted where noted); no ROS, no network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def _flat64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def cosine_similarity(a, b) -> float:
    """Cosine of the angle between two tensors, flattened (1.0 when identical).

    Two all-zero tensors count as identical (1.0); one zero and one not as 0.0.
    """
    a, b = _flat64(a), _flat64(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def relative_error(estimate, reference) -> float:
    """||estimate - reference|| / ||reference|| (Frobenius norms); 0 when identical."""
    e, r = _flat64(estimate), _flat64(reference)
    if e.shape != r.shape:
        raise ValueError(f"shapes differ: {e.shape} vs {r.shape}")
    nr = np.linalg.norm(r)
    diff = np.linalg.norm(e - r)
    if nr == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / nr)


def max_abs_diff(a, b) -> float:
    a, b = _flat64(a), _flat64(b)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks agree fully (1.0)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b) / union)


def pairwise_mask_iou(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """IoU matrix (len(a) x len(b)) of two lists of same-shape boolean masks."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = np.stack([np.asarray(m, dtype=bool).ravel() for m in a]).astype(np.float32)
    fb = np.stack([np.asarray(m, dtype=bool).ravel() for m in b]).astype(np.float32)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError("mask shapes differ")
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)
    return iou.astype(np.float64)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes given as (x0, y0, x1, y1) with x1 > x0, y1 > y0 (continuous)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


def mask_to_box(mask: np.ndarray) -> Optional[Tuple[float, float, float, float]]:
    """Tight (x0, y0, x1, y1) box of a mask in pixel-edge coordinates (x1, y1 exclusive), None if empty."""
    ys, xs = np.nonzero(np.asarray(mask, dtype=bool))
    if ys.size == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


@dataclass
class MaskMatch:
    """One-to-one matching of a candidate mask set against a reference set."""

    reference: int  # masks in the reference set (plain SAM)
    candidate: int  # masks in the candidate set (the split encoder)
    matched: int  # pairs with IoU >= threshold in the optimal one-to-one assignment
    missed: int  # reference masks without a match
    extra: int  # candidate masks without a match
    mean_matched_iou: Optional[float]  # mean IoU over matched pairs (None if none)
    mean_best_iou: Optional[float]  # mean over reference masks of their best IoU with any candidate
    threshold: float
    pairs: List[Tuple[int, int, float]]  # (reference index, candidate index, IoU)

    @property
    def recall(self) -> Optional[float]:
        return self.matched / self.reference if self.reference else None

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["recall"] = self.recall
        d.pop("pairs")
        return d


def match_iou_matrix(iou: np.ndarray, threshold: float = 0.5) -> List[Tuple[int, int, float]]:
    """One-to-one pairs (reference, candidate, IoU) with IoU >= ``threshold``: as many pairs
    as possible, and among those the largest total IoU.

    Maximising total IoU alone can trade two matches for one: with IoUs
    [[0.9, 0.55], [0.55, 0.4]] it pairs the diagonal and only 0.9 passes a 0.5 threshold,
    although both 0.55 pairs do. A pair's weight is therefore a constant larger than any
    sum of IoUs plus its IoU, and pairs under the threshold weigh nothing.
    """
    from scipy.optimize import linear_sum_assignment

    iou = np.asarray(iou, dtype=np.float64)
    if not iou.size:
        return []
    ok = iou >= threshold
    weight = np.where(ok, min(iou.shape) + 1.0 + iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols) if ok[r, c]]


def match_masks(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], threshold: float = 0.5) -> MaskMatch:
    """One-to-one matching of masks by IoU (see :func:`match_iou_matrix`): the most pairs
    with IoU >= ``threshold``, then the largest total IoU."""
    iou = pairwise_mask_iou(reference, candidate)
    pairs = match_iou_matrix(iou, threshold)
    matched = len(pairs)
    return MaskMatch(
        reference=len(reference),
        candidate=len(candidate),
        matched=matched,
        missed=len(reference) - matched,
        extra=len(candidate) - matched,
        mean_matched_iou=float(np.mean([p[2] for p in pairs])) if pairs else None,
        mean_best_iou=float(iou.max(axis=1).mean()) if iou.size else (None if not len(reference) else 0.0),
        threshold=threshold,
        pairs=pairs,
    )


@dataclass(frozen=True)
class ValueStats:
    """mean / min / max over the values present, and how many there were."""

    mean: Optional[float]
    min: Optional[float]
    max: Optional[float]
    n: int


def value_stats(values: Sequence[Optional[float]]) -> ValueStats:
    """mean / min / max / n over the values that are not None or NaN (all None when there are none)."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and np.isnan(x))]
    if not v:
        return ValueStats(None, None, None, 0)
    return ValueStats(float(np.mean(v)), float(np.min(v)), float(np.max(v)), len(v))
