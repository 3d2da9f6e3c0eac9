"""Mask encodings both ends of a message agree on: SAM-style uncompressed RLE and label maps.

Pictures of masks (overlays) are drawn by :mod:`ped_sam_ros.viz`; nothing here needs OpenCV.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from segment_anything.utils.amg import mask_to_rle_pytorch, rle_to_mask


def mask_to_rle(mask: np.ndarray) -> Tuple[int, int, List[int]]:
    """bool (H, W) -> (H, W, counts): column-major runs starting with a run of zeros,
    exactly SAM's ``mask_to_rle_pytorch`` (and COCO's uncompressed RLE)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    rle = mask_to_rle_pytorch(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None])[0]
    h, w = rle["size"]
    return int(h), int(w), [int(c) for c in rle["counts"]]


def rle_to_bool(height: int, width: int, counts: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`, validating that the runs cover the image."""
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise ValueError(f"RLE runs sum to {sum(counts)}, expected {height}x{width}={height * width}")
    return rle_to_mask({"size": [height, width], "counts": counts})


def label_dtype(num_instances: int):
    """mono8 up to 255 instances, mono16 above."""
    return np.uint8 if num_instances <= 255 else np.uint16


def label_image(masks: Sequence[np.ndarray], ids: Sequence[int], shape: Tuple[int, int]) -> np.ndarray:
    """Label map: 0 background, each pixel the id of the smallest instance covering it
    (large masks are painted first so small objects on top stay visible)."""
    out = np.zeros(shape, dtype=label_dtype(max(ids, default=0)))
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        out[masks[i]] = ids[i]
    return out
