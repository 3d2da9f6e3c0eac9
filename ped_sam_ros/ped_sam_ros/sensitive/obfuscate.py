"""Applying a :class:`~.policy.FramePlan` to pixels: the crops the servers receive.

Each tile is cut from the resized frame first and obfuscated on its own, so a blur
near a cut never mixes in pixels of a neighbouring tile (which may belong to another
server or stay on the edge).

* ``blur``: Gaussian blur of sigma ``blur_strength`` x the object's shorter side;
* ``pixelate``: a mosaic of ``pixelate_cells`` cells across the object's shorter side
  (each cell its mean colour), cells anchored on the object box so that tiles agree;
* ``noise``: additive Gaussian noise of std ``noise_sigma`` (0..255 units), clipped to
  0..255.  The parameter is reported in the plan's config.

cv2 and numpy only; no ROS, no torch.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .policy import Box, FramePlan, PolicyConfig


def _region(box: Box, y_off: int, x_off: int, shape) -> Optional[tuple]:
    """Integer (y0, y1, x0, x1) inside a crop of ``shape`` whose top-left is (y_off, x_off)."""
    x0, y0, x1, y1 = box
    ry0, ry1 = max(0, int(np.floor(y0)) - y_off), min(shape[0], int(np.ceil(y1)) - y_off)
    rx0, rx1 = max(0, int(np.floor(x0)) - x_off), min(shape[1], int(np.ceil(x1)) - x_off)
    return (ry0, ry1, rx0, rx1) if ry1 > ry0 and rx1 > rx0 else None


def obfuscate_region(
    crop: np.ndarray,
    op: str,
    region: tuple,
    whole: Box,
    y_off: int,
    x_off: int,
    config: PolicyConfig,
    rng: np.random.Generator,
) -> None:
    """Obfuscate ``crop[region]`` in place; ``whole`` is the object's full box (resized px)."""
    import cv2

    y0, y1, x0, x1 = region
    side = max(1.0, min(whole[2] - whole[0], whole[3] - whole[1]))
    patch = crop[y0:y1, x0:x1]
    if op == "blur":
        sigma = max(1.0, config.blur_strength * side)
        # a wide Gaussian is slow at full resolution: blur a copy shrunk by sigma/3 and enlarge it
        f = max(1.0, sigma / 3.0)
        ph, pw = patch.shape[:2]
        small = cv2.resize(patch, (max(1, round(pw / f)), max(1, round(ph / f))), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / f, sigmaY=sigma / f, borderType=cv2.BORDER_REFLECT)
        crop[y0:y1, x0:x1] = cv2.resize(small, (pw, ph), interpolation=cv2.INTER_LINEAR)
    elif op == "pixelate":
        cell = max(2.0, side / config.pixelate_cells)
        # cell index of every pixel, counted from the object's top-left corner (same in every tile)
        gy = np.floor((np.arange(y0, y1) + y_off - whole[1]) / cell).astype(int)
        gx = np.floor((np.arange(x0, x1) + x_off - whole[0]) / cell).astype(int)
        gy, gx = gy - gy.min(), gx - gx.min()
        nx = int(gx.max()) + 1
        idx = (gy[:, None] * nx + gx[None, :]).ravel()
        counts = np.bincount(idx)
        out = np.empty(patch.shape, np.float32)
        for c in range(3):
            means = np.bincount(idx, weights=patch[..., c].ravel().astype(np.float64)) / np.maximum(counts, 1)
            out[..., c] = means[idx].reshape(patch.shape[:2])
        crop[y0:y1, x0:x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    elif op == "noise":
        noisy = patch.astype(np.float32) + rng.normal(0.0, config.noise_sigma, patch.shape).astype(np.float32)
        crop[y0:y1, x0:x1] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown obfuscation {op!r}")


def tile_crops(plan: FramePlan, resized: np.ndarray, seed: Optional[int] = None) -> List[Optional[np.ndarray]]:
    """Per tile: the uint8 crop its server receives (obfuscated where the plan says), an
    empty (0, 0, 3) crop for an all-padding tile, or None when the tile does not leave the
    edge (local or dropped).  ``resized`` is the frame after SAM's resize (unpadded)."""
    if resized.dtype != np.uint8 or resized.ndim != 3 or resized.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 resized frame, got {resized.dtype} {resized.shape}")
    if tuple(resized.shape[:2]) != tuple(plan.content_hw):
        raise ValueError(f"the plan is for a {plan.content_hw} frame, got {resized.shape[:2]}")
    rng = np.random.default_rng(seed)
    tiles = plan.partition.tiles
    out: List[Optional[np.ndarray]] = []
    for d in plan.decisions:
        if not d.leaves_edge:
            out.append(None)
            continue
        cb = tiles[d.tile].content_box(plan.content_hw)
        if cb is None:
            out.append(np.zeros((0, 0, 3), dtype=np.uint8))
            continue
        y0, y1, x0, x1 = cb
        crop = np.array(resized[y0:y1, x0:x1], copy=True)
        for op, box, whole in d.obfuscations:
            region = _region(box, y0, x0, crop.shape)
            if region is not None:
                obfuscate_region(crop, op, region, whole, y0, x0, plan.config, rng)
        out.append(crop)
    return out


def server_view(plan: FramePlan, crops: List[Optional[np.ndarray]], server: int) -> np.ndarray:
    """The resized frame as one server sees it: its crops in place, black elsewhere."""
    h, w = plan.content_hw
    view = np.zeros((h, w, 3), dtype=np.uint8)
    tiles = plan.partition.tiles
    for d, crop in zip(plan.decisions, crops):
        if crop is None or d.server != server or crop.size == 0:
            continue
        y0, y1, x0, x1 = tiles[d.tile].content_box(plan.content_hw)
        view[y0:y1, x0:x1] = crop
    return view
