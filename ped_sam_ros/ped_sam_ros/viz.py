"""Pictures of results for people: masks, outlines, prompt points, boxes and a caption
drawn over a frame (OpenCV).

Used by the ROS node's ``~/overlay`` topic and the demo's PNGs; the core never draws,
so it does not need OpenCV.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

Point = tuple[float, float, int]  # x, y, label (1 foreground, 0 background), original pixels
Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max, original pixels

FOREGROUND = (40, 220, 40)
BACKGROUND = (230, 40, 40)


def palette(n: int, seed: int = 7) -> np.ndarray:
    """n distinct, saturated RGB colours (deterministic): golden-ratio steps around the hue circle."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0)] for h in hues], dtype=np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB, (H, W, 1) or (H, W) gray -> (H, W, 3): a gray frame is drawn on in colour."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB or (H, W) gray image, got shape {image.shape}")
    return image


def draw_masks(rgb: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend each mask in its own colour over ``rgb`` and outline it; larger masks are drawn
    first so small objects on top stay visible.  Returns a new uint8 image."""
    for i, m in enumerate(masks):
        if m.shape != rgb.shape[:2]:
            raise ValueError(f"mask {i} has shape {m.shape}, the image {rgb.shape[:2]}")
    out = rgb.astype(np.float32)
    colors = palette(len(masks))
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        m = masks[i].astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * colors[i]
    out = out.clip(0, 255).astype(np.uint8)
    for i in order:
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[i]), 2)
    return out


def draw_points(out: np.ndarray, points: Iterable[Point]) -> np.ndarray:
    """Prompt points in place: green foreground, red background, white rim; radius scales with the image."""
    r = max(3, int(round(max(out.shape[:2]) / 120)))
    for x, y, label in points:
        centre = (int(round(x)), int(round(y)))
        cv2.circle(out, centre, r, FOREGROUND if label == 1 else BACKGROUND, -1)
        cv2.circle(out, centre, r, (255, 255, 255), 1)
    return out


def draw_boxes(
    out: np.ndarray, boxes: Iterable[Box], color: tuple[int, int, int] = FOREGROUND, thickness: int = 2
) -> np.ndarray:
    """Rectangles ``(x_min, y_min, x_max, y_max)`` in place."""
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), color, thickness)
    return out


def draw_caption(out: np.ndarray, caption: str) -> np.ndarray:
    """White text on a black band at the top-left, in place."""
    scale = max(0.4, out.shape[1] / 1400)
    (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (tw + 8, th + 10), (0, 0, 0), -1)
    cv2.putText(out, caption, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def overlay(
    rgb: np.ndarray,
    masks: Sequence[np.ndarray],
    alpha: float = 0.5,
    points: Iterable[Point] = (),
    boxes: Iterable[Box] = (),
    caption: str | None = None,
) -> np.ndarray:
    """RGB picture of the masks over the image, with their outlines, the prompt
    points (green foreground, red background), boxes and an optional caption."""
    out = draw_masks(as_rgb(rgb), masks, alpha)
    draw_points(out, points)
    draw_boxes(out, boxes)
    if caption:
        draw_caption(out, caption)
    return out
