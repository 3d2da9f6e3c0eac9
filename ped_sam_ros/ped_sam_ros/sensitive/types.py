"""What a sensitive-content detector returns, and the interface every detector offers.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the image passed to ``detect`` (x1, y1
exclusive), floats.  Classes are plain strings; the ones used here are ``face``,
``person`` and ``text``.  No ROS, no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1

#: the classes the policy knows about by default
CLASSES: Tuple[str, ...] = ("face", "person", "text")


@dataclass(frozen=True)
class Detection:
    """One sensitive object: its class, box (pixels of the detector's input) and score."""

    cls: str
    box: Box
    score: float
    source: str = ""  # which detector found it

    def scaled(self, sx: float, sy: float) -> Detection:
        """The same detection in an image scaled by ``sx`` (x) and ``sy`` (y)."""
        x0, y0, x1, y1 = self.box
        return Detection(self.cls, (x0 * sx, y0 * sy, x1 * sx, y1 * sy), self.score, self.source)

    def clipped(self, height: int, width: int) -> Detection:
        x0, y0, x1, y1 = self.box
        return Detection(
            self.cls,
            (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)),
            self.score,
            self.source,
        )

    @property
    def size(self) -> float:
        """Geometric mean of the box's width and height (pixels)."""
        x0, y0, x1, y1 = self.box
        return float(max(0.0, x1 - x0) * max(0.0, y1 - y0)) ** 0.5

    def to_dict(self) -> dict:
        return {
            "cls": self.cls,
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "source": self.source,
        }


@runtime_checkable
class Detector(Protocol):
    """Anything that finds sensitive objects in an RGB uint8 (H, W, 3) frame."""

    name: str
    classes: Tuple[str, ...]

    def detect(self, rgb: np.ndarray) -> List[Detection]: ...


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Raise ValueError unless ``rgb`` is a uint8 (H, W, 3) image; return it contiguous."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"a detector needs an RGB uint8 HxWx3 image, got "
            f"{getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}"
        )
    return np.ascontiguousarray(rgb)


def nms(dets: Sequence[Detection], iou_threshold: float = 0.4) -> List[Detection]:
    """Greedy non-maximum suppression within each class (highest score first)."""
    kept: List[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(k.cls != d.cls or box_iou(k.box, d.box) <= iou_threshold for k in kept):
            kept.append(d)
    return kept


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
