"""Evaluation images: a folder of photos, or the real photos scikit-image ships."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

# Real photographs bundled with scikit-image (no download needed).
DEFAULT_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Any common image array as RGB uint8: 8- and 16-bit integers are scaled by their
    range (a 16-bit photo is not clipped to white), floats in [0, 1] or [0, 255], gray
    (H, W) or (H, W, 1), gray+alpha (H, W, 2), RGB and RGBA (alpha dropped)."""
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.integer):
            if img.dtype.itemsize > 1:
                img = img.astype(np.float64) * (255.0 / np.iinfo(img.dtype).max)
        elif np.issubdtype(img.dtype, np.floating):
            if img.size and np.nanmax(img) <= 1.0:
                img = img * 255.0
        else:
            raise ValueError(f"not an image: dtype {img.dtype}")
        img = np.clip(np.round(np.nan_to_num(img)), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] in (1, 2):
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"not an RGB image: shape {img.shape}")
    return np.ascontiguousarray(img[..., :3])


def skimage_image(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    if name == "motorcycle_right":
        return skimage.data.stereo_motorcycle()[1]
    fn = getattr(skimage.data, name, None)
    if fn is None:
        raise ValueError(f"scikit-image has no sample image {name!r}")
    return fn()


def _limit(img: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    if not max_side or max(img.shape[:2]) <= max_side:
        return img
    import cv2

    s = max_side / max(img.shape[:2])
    size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def load_images(
    folder: Optional[str] = None,
    names: Optional[List[str]] = None,
    max_images: Optional[int] = None,
    max_side: Optional[int] = None,
) -> List[Tuple[str, np.ndarray]]:
    """(name, RGB uint8) pairs: every image file in ``folder`` (sorted by name), or the
    scikit-image photos ``names`` (default :data:`DEFAULT_IMAGES`); images whose longest
    side exceeds ``max_side`` are downscaled (area interpolation)."""
    out: List[Tuple[str, np.ndarray]] = []
    if folder:
        import skimage.io

        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in EXTENSIONS)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) in {folder}")
        for p in paths[:max_images] if max_images else paths:
            out.append((p.stem, _limit(as_rgb_uint8(skimage.io.imread(str(p))), max_side)))
    else:
        for n in (names or list(DEFAULT_IMAGES))[:max_images] if max_images else (names or list(DEFAULT_IMAGES)):
            out.append((n, _limit(as_rgb_uint8(skimage_image(n)), max_side)))
    for name, img in out:
        if min(img.shape[:2]) < 16:
            raise ValueError(f"image {name} of shape {img.shape} is too small")
    return out
