"""What a remote server sees of a frame, and what an attacker holding it can recover.

Coordinates: tiles live on SAM's 1024-pixel *resized* frame (the longest side
resized to 1024, SAM's zero padding at the bottom/right).  A tile covers only
image content where it overlaps the resized image (``Tile.content_box`` of
``geometry.content_shape``); the rest is padding the server never receives, and
a server's share of the frame is ``geometry.server_shares``.  For views of the
*original* image, a tile maps back with the per-axis resize ratio (``H / newh``,
``W / neww``, i.e. 1 / scale with scale = 1024 / max(H, W) up to SAM's rounding
of the resized size): an original pixel belongs to a tile when its centre falls inside it.

Attacks implemented here are classical only (no learned reconstruction):

* reconstruction of the unseen area from one server's view: OpenCV inpainting
  (``cv2.inpaint``, Telea), a nearest-seen-pixel fill (Euclidean distance
  transform), and a flat mean-colour fill as the floor, scored with SSIM and
  PSNR (``skimage.metrics``) over the whole frame and over the unseen area;
* sensitive content: OpenCV's pretrained Haar frontal-face cascade and HOG
  people detector, run on a server's view versus on the full frame.

No ROS, no network.  cv2, scipy and skimage are imported where used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.geometry import Partition, Tile, content_shape
from .metrics import box_iou

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive), original pixels


# ---------------------------------------------------------------------------
# Geometry of the views


def server_tiles(partition: Partition, assignment: Sequence[int]) -> Dict[int, List[Tile]]:
    """Server index -> the tiles it receives (servers without tiles are listed empty)."""
    n = max(assignment) + 1 if len(assignment) else 0
    out: Dict[int, List[Tile]] = {s: [] for s in range(n)}
    for w in partition.tiles:
        out[int(assignment[w.index])].append(w)
    return out


def collusion_exposure(shares: Sequence[float]) -> List[float]:
    """For k = 1..n: the largest share of the frame any set of k servers holds together.

    Servers' tiles are disjoint, so a set's share is the sum of its members'
    shares and the worst set of k is the k largest.
    """
    s = sorted((float(x) for x in shares), reverse=True)
    out, acc = [], 0.0
    for v in s:
        acc += v
        out.append(min(1.0, acc))
    return out


def _to_original(coord: float, ratio: float, limit: int) -> int:
    """First original pixel index whose centre maps at or after ``coord`` (resized px)."""
    return int(min(limit, max(0, math.ceil(coord * ratio - 0.5))))


def tile_original_box(tile: Tile, orig_hw: Tuple[int, int]) -> Optional[Box]:
    """The tile's area in original image pixels as (x0, y0, x1, y1), None if empty.

    Uses the per-axis ratio original/resized; consecutive tiles cover the image
    without gaps or overlaps.
    """
    H, W = orig_hw
    nh, nw = content_shape((H, W))
    y0, y1, x0, x1 = tile.pixel_box
    ry, rx = H / nh, W / nw
    oy0, oy1 = _to_original(y0, ry, H), _to_original(y1, ry, H)
    ox0, ox1 = _to_original(x0, rx, W), _to_original(x1, rx, W)
    if oy1 <= oy0 or ox1 <= ox0:
        return None
    return ox0, oy0, ox1, oy1


def seen_mask(tiles: Sequence[Tile], orig_hw: Tuple[int, int]) -> np.ndarray:
    """bool (H, W): the original pixels that fall inside any of the tiles."""
    m = np.zeros(orig_hw, dtype=bool)
    for t in tiles:
        b = tile_original_box(t, orig_hw)
        if b is not None:
            x0, y0, x1, y1 = b
            m[y0:y1, x0:x1] = True
    return m


def server_view(image: np.ndarray, seen: np.ndarray, fill: int = 0) -> np.ndarray:
    """The image as the server holds it: unseen pixels set to ``fill``."""
    out = np.full_like(image, fill)
    out[seen] = image[seen]
    return out


# ---------------------------------------------------------------------------
# Reconstruction attacks


def inpaint_reconstruction(image: np.ndarray, seen: np.ndarray, radius: int = 3) -> np.ndarray:
    """OpenCV inpainting (Telea's fast-marching method) of everything not seen."""
    import cv2

    if seen.all():
        return image.copy()
    if not seen.any():
        return np.full_like(image, 128)
    mask = (~seen).astype(np.uint8) * 255
    return cv2.inpaint(np.ascontiguousarray(image), mask, radius, cv2.INPAINT_TELEA)


def nearest_fill_reconstruction(image: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Every unseen pixel takes the value of its nearest seen pixel (Euclidean distance transform)."""
    from scipy import ndimage

    if seen.all():
        return image.copy()
    if not seen.any():
        return np.full_like(image, 128)
    _, (iy, ix) = ndimage.distance_transform_edt(~seen, return_indices=True)
    return image[iy, ix]


def mean_fill_reconstruction(image: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Unseen pixels set to the mean colour of the seen ones: the no-skill floor."""
    if not seen.any():
        return np.full_like(image, 128)
    out = image.copy()
    channels = image.shape[2:]  # () for a gray image
    out[~seen] = np.round(image[seen].reshape((-1,) + channels).mean(0)).astype(image.dtype)
    return out


ATTACKS = {
    "inpaint": inpaint_reconstruction,
    "nearest": nearest_fill_reconstruction,
    "mean": mean_fill_reconstruction,
}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    if a.size == 0:
        return float("nan")
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=255))


@dataclass(frozen=True)
class ReconstructionScores:
    """How close an attacker's reconstruction is to the original frame.

    ``*_frame``: over the whole frame; ``*_unseen``: over the pixels the server
    did not see (SSIM: the mean of skimage's local SSIM map there; NaN when the
    server saw everything).  PSNR is +inf for identical images.
    """

    ssim_frame: float
    ssim_unseen: float
    psnr_frame: float
    psnr_unseen: float
    unseen_fraction: float


def reconstruction_scores(original: np.ndarray, reconstruction: np.ndarray, seen: np.ndarray) -> ReconstructionScores:
    """SSIM and PSNR of a reconstruction against the original (see :class:`ReconstructionScores`)."""
    from skimage.metrics import structural_similarity

    if original.shape != reconstruction.shape:
        raise ValueError("shapes differ")
    unseen = ~seen
    channel_axis = 2 if original.ndim == 3 else None
    win = min(7, *(s if s % 2 else s - 1 for s in original.shape[:2]))
    if win < 3:
        raise ValueError(f"image {original.shape[:2]} is too small for SSIM")
    ssim, smap = structural_similarity(
        original, reconstruction, data_range=255, channel_axis=channel_axis, full=True, win_size=win
    )
    if smap.ndim == 3:
        smap = smap.mean(axis=2)
    return ReconstructionScores(
        ssim_frame=float(ssim),
        ssim_unseen=float(smap[unseen].mean()) if unseen.any() else float("nan"),
        psnr_frame=_psnr(original, reconstruction),
        psnr_unseen=_psnr(original[unseen], reconstruction[unseen]) if unseen.any() else float("nan"),
        unseen_fraction=float(unseen.mean()),
    )


def region_scores(original: np.ndarray, reconstruction: np.ndarray, region: np.ndarray) -> Tuple[float, float]:
    """(SSIM, mean squared error) of a reconstruction over ``region`` (bool mask) only.

    SSIM is the mean of skimage's local SSIM map (7x7 window, or the image's odd side when
    smaller; colour channels averaged) over the region's pixels, computed on the whole image so
    the map sees the region's surroundings; the error is over the region's pixels and channels
    (0 where they are identical: PSNR infinite)."""
    from skimage.metrics import structural_similarity

    if original.shape != reconstruction.shape or original.shape[:2] != region.shape:
        raise ValueError("shapes differ")
    if not region.any():
        raise ValueError("empty region")
    win = min(7, *(s if s % 2 else s - 1 for s in original.shape[:2]))
    if win < 3:
        raise ValueError(f"image {original.shape[:2]} is too small for SSIM")
    _, smap = structural_similarity(
        original,
        reconstruction,
        data_range=255,
        channel_axis=2 if original.ndim == 3 else None,
        full=True,
        win_size=win,
    )
    if smap.ndim == 3:
        smap = smap.mean(axis=2)
    diff = original[region].astype(np.float64) - reconstruction[region].astype(np.float64)
    return float(smap[region].mean()), float(np.mean(diff * diff))


# ---------------------------------------------------------------------------
# Sensitive-content attack with OpenCV's pretrained classical detectors


def box_fully_seen(box: Box, seen: np.ndarray) -> bool:
    x0, y0, x1, y1 = box
    H, W = seen.shape
    if x0 < 0 or y0 < 0 or x1 > W or y1 > H or x1 <= x0 or y1 <= y0:
        return False
    return bool(seen[y0:y1, x0:x1].all())


class Detectors:
    """OpenCV 4.x's shipped detectors: Haar frontal face and HOG people (Dalal-Triggs SVM)."""

    FACE_CASCADE = "haarcascade_frontalface_default.xml"
    KINDS = ("face", "person")

    def __init__(self, face_scale: float = 1.1, face_neighbors: int = 5, hog_scale: float = 1.05):
        import cv2

        path = cv2.data.haarcascades + self.FACE_CASCADE
        self._face = cv2.CascadeClassifier(path)
        if self._face.empty():
            raise RuntimeError(f"could not load OpenCV's face cascade {path}")
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.face_scale, self.face_neighbors, self.hog_scale = face_scale, face_neighbors, hog_scale
        self.description = {
            "face": f"cv2.CascadeClassifier({self.FACE_CASCADE}), scaleFactor={face_scale}, "
            f"minNeighbors={face_neighbors}, minSize=24x24, on grayscale",
            "person": f"cv2.HOGDescriptor + HOGDescriptor_getDefaultPeopleDetector(), winStride=8x8, "
            f"padding=8x8, scale={hog_scale}",
        }

    def detect(self, kind: str, rgb: np.ndarray) -> List[Box]:
        import cv2

        h, w = rgb.shape[:2]
        if kind == "face":
            if min(h, w) < 24:
                return []
            gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
            found = self._face.detectMultiScale(
                gray, scaleFactor=self.face_scale, minNeighbors=self.face_neighbors, minSize=(24, 24)
            )
        elif kind == "person":
            if h < 128 or w < 64:  # smaller than the detector's 64x128 window
                return []
            bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
            found, _ = self._hog.detectMultiScale(bgr, winStride=(8, 8), padding=(8, 8), scale=self.hog_scale)
        else:
            raise ValueError(f"unknown detector {kind!r}")
        return [(int(x), int(y), int(x + bw), int(y + bh)) for x, y, bw, bh in np.asarray(found).reshape(-1, 4)]

    def detect_in_view(self, kind: str, image: np.ndarray, seen: np.ndarray) -> List[Box]:
        """Run the detector on what the server holds: the bounding rectangle of its
        seen pixels, unseen pixels inside it blacked out; boxes in original coordinates."""
        if not seen.any():
            return []
        ys, xs = np.nonzero(seen)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = server_view(image[y0:y1, x0:x1], seen[y0:y1, x0:x1])
        return [(a + x0, b + y0, c + x0, d + y0) for a, b, c, d in self.detect(kind, crop)]


@dataclass
class SensitiveContentResult:
    kind: str
    full_frame: List[Box]  # detections on the full frame (the reference set)
    seen_whole_by: List[List[int]] = field(default_factory=list)  # per detection: servers whose view holds it whole
    detected_by: List[List[int]] = field(default_factory=list)  # per detection: servers whose detector finds it

    @property
    def n(self) -> int:
        return len(self.full_frame)

    @property
    def n_seen_whole(self) -> int:
        return sum(1 for s in self.seen_whole_by if s)

    @property
    def n_detected(self) -> int:
        return sum(1 for s in self.detected_by if s)

    def to_dict(self) -> Dict:
        return {
            "kind": self.kind,
            "n_full_frame": self.n,
            "n_seen_whole": self.n_seen_whole,
            "n_detected": self.n_detected,
            "full_frame_boxes": [list(b) for b in self.full_frame],
            "seen_whole_by": self.seen_whole_by,
            "detected_by": self.detected_by,
        }


def sensitive_content_attack(
    image: np.ndarray,
    seen_masks: Sequence[np.ndarray],
    detectors: Detectors,
    kinds: Sequence[str] = Detectors.KINDS,
    iou_threshold: float = 0.5,
    full_frame: Optional[Dict[str, List[Box]]] = None,
) -> Dict[str, SensitiveContentResult]:
    """For each detection on the full frame: which single servers see its box whole,
    and which detect it themselves (a box on their view with IoU >= ``iou_threshold``).

    ``full_frame`` may carry the full-frame detections already computed (they do not
    depend on the partition).
    """
    out = {}
    for kind in kinds:
        ref = full_frame[kind] if full_frame is not None else detectors.detect(kind, image)
        res = SensitiveContentResult(kind, list(ref))
        views = [detectors.detect_in_view(kind, image, m) if ref else [] for m in seen_masks]
        for box in ref:
            res.seen_whole_by.append([s for s, m in enumerate(seen_masks) if box_fully_seen(box, m)])
            res.detected_by.append(
                [s for s, found in enumerate(views) if any(box_iou(box, f) >= iou_threshold for f in found)]
            )
        out[kind] = res
    return out
