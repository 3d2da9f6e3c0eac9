"""The privacy rows: what each server layout exposes of one image, and what attacks recover from it."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from ..core.geometry import server_shares
from . import privacy as priv
from .configs import EvalConfig
from .records import PrivacyRow


def edge_privacy(image: str, full: Dict[str, List[priv.Box]]) -> PrivacyRow:
    """Edge-only SAM: no server, so nothing is seen or detected by one."""
    detection = {
        k: priv.SensitiveContentResult(k, list(boxes), [[] for _ in boxes], [[] for _ in boxes])
        for k, boxes in full.items()
    }
    return PrivacyRow(
        layout="edge",
        image=image,
        servers=0,
        shares=[],
        max_share=0.0,
        collusion=[],
        attack_server=None,
        attacks={},
        detection=detection,
    )


def server_views(c: EvalConfig, rgb: np.ndarray, content_hw: Tuple[int, int]) -> Tuple[List[np.ndarray], List[float]]:
    """Per server of ``c``'s layout: the original pixels it holds (bool masks) and its share of the
    frame's content (``content_hw``: the frame after SAM's resize)."""
    hw = rgb.shape[:2]
    if c.kind == "cloud":
        return [np.ones(hw, bool)], [1.0]
    tiles = priv.server_tiles(c.partition, c.assignment)
    masks = [priv.seen_mask(tiles[sidx], hw) for sidx in sorted(tiles)]
    return masks, server_shares(c.partition, c.assignment, content_hw)


def attack(image: np.ndarray, seen: np.ndarray) -> Dict[str, priv.ReconstructionScores]:
    """Every reconstruction attack on one server's view, scored against the original."""
    return {name: priv.reconstruction_scores(image, fn(image, seen), seen) for name, fn in priv.ATTACKS.items()}


def server_privacy(
    c: EvalConfig,
    name: str,
    rgb: np.ndarray,
    content_hw: Tuple[int, int],
    dets: priv.Detectors,
    full: Dict[str, List[priv.Box]],
    attack_all_servers: bool = False,
) -> PrivacyRow:
    """What each server of ``c``'s layout (cloud or PED-SAM) holds of the image, and what the attacks
    recover from the most-exposed one (from every one with ``attack_all_servers``)."""
    masks, shares = server_views(c, rgb, content_hw)
    worst = int(np.argmax(shares))
    targets = range(len(masks)) if attack_all_servers else [worst]
    per_server = {t: attack(rgb, masks[t]) for t in targets}
    worst_scores = None
    if attack_all_servers:
        worst_scores = {
            a: max((per_server[t][a] for t in per_server), key=lambda r: r.ssim_frame) for a in priv.ATTACKS
        }
    return PrivacyRow(
        layout=c.privacy_layout,
        image=name,
        servers=len(masks),
        shares=shares,
        max_share=max(shares),
        collusion=priv.collusion_exposure(shares),
        attack_server=worst,
        attacks=per_server[worst],
        detection=priv.sensitive_content_attack(rgb, masks, dets, full_frame=full),
        original_seen_fraction=float(masks[worst].mean()),
        attacks_worst_server=worst_scores,
    )
