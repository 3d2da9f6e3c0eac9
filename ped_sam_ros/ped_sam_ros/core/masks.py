"""Mask encodings and pictures: SAM-style uncompressed RLE, label maps, overlays."""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

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


def palette(n: int, seed: int = 7) -> np.ndarray:
    """n distinct, saturated RGB colours (deterministic)."""
    import colorsys

    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0)] for h in hues], dtype=np.uint8)


def overlay(
    rgb: np.ndarray,
    masks: Sequence[np.ndarray],
    alpha: float = 0.5,
    points: Iterable[Tuple[float, float, int]] = (),
    boxes: Iterable[Tuple[float, float, float, float]] = (),
    caption: Optional[str] = None,
) -> np.ndarray:
    """RGB picture of the masks over the image, with their outlines, the prompt
    points (green foreground, red background), boxes and an optional caption."""
    import cv2

    rgb = np.asarray(rgb)
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[..., 0]
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)  # a gray frame is drawn on in colour
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"overlay needs an (H, W, 3) RGB or (H, W) gray image, got shape {rgb.shape}")
    for i, m in enumerate(masks):
        if m.shape != rgb.shape[:2]:
            raise ValueError(f"mask {i} has shape {m.shape}, the image {rgb.shape[:2]}")
    out = rgb.astype(np.float32).copy()
    colors = palette(len(masks))
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        m = masks[i].astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * colors[i]
    out = out.clip(0, 255).astype(np.uint8)
    for i in order:
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[i]), 2)
    r = max(3, int(round(max(rgb.shape[:2]) / 120)))
    for x, y, label in points:
        color = (40, 220, 40) if label == 1 else (230, 40, 40)
        cv2.circle(out, (int(round(x)), int(round(y))), r, color, -1)
        cv2.circle(out, (int(round(x)), int(round(y))), r, (255, 255, 255), 1)
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), (40, 220, 40), 2)
    if caption:
        scale = max(0.4, rgb.shape[1] / 1400)
        (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (tw + 8, th + 10), (0, 0, 0), -1)
        cv2.putText(out, caption, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
