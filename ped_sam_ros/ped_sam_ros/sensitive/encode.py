"""A prototype of the policy inside the distributed encoder (integration is a later step).

:class:`PolicyEncoder` encodes one resized frame under a :class:`~.policy.FramePlan`,
with a :class:`~ped_sam_ros.core.pipeline.DistributedEncoder`'s transport and edge
stage: tiles to ``send`` or ``obfuscate`` go to their servers (obfuscated crops from
:func:`~.obfuscate.tile_crops`), ``local`` tiles run on a remote stage held by the edge
(same weights as the servers'), ``drop`` tiles get fill tokens.  The token grid is then
merged and run through the edge stage as usual.  In exact mode with only ``local`` (and
``send``) tiles the result is unmodified SAM's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..core.transport import TileJob
from .obfuscate import tile_crops
from .policy import FramePlan


@dataclass
class PolicyStats:
    """One frame's cost of the policy: seconds per part and tiles per action."""

    timings: Dict[str, float] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0


class PolicyEncoder:
    """Encode frames under a per-tile plan (see the module docstring).

    ``encoder``: a DistributedEncoder (its transport, edge stage, mode and model spec are
    used; its own partition and assignment are replaced by the plan's); ``local_stage``: a
    RemoteStage with the servers' weights, run on the edge for ``local`` tiles (and once
    per tile position for the ``blank`` drop fill).
    """

    def __init__(self, encoder, local_stage=None):
        self.encoder = encoder
        self.local_stage = local_stage
        self._blank: Dict[Tuple[int, int, int, int, str], torch.Tensor] = {}

    def _need_local(self, what: str):
        if self.local_stage is None:
            raise RuntimeError(f"{what} needs a local RemoteStage on the edge (local_stage=...)")
        return self.local_stage

    def _blank_tokens(self, tile, mode: str) -> torch.Tensor:
        key = (tile.row0, tile.row1, tile.col0, tile.col1, mode)
        if key not in self._blank:
            stage = self._need_local("drop_fill='blank'")
            self._blank[key] = stage.encode_tile(np.zeros((0, 0, 3), np.uint8), tile, mode).float()
        return self._blank[key]

    def encode(self, resized: np.ndarray, plan: FramePlan, seed: Optional[int] = None):
        """uint8 (h, w, 3) resized frame -> (1x256x64x64 embedding, PolicyStats)."""
        enc = self.encoder
        geom = enc.edge.geometry
        mode = enc.mode
        stats = PolicyStats(counts=plan.counts())
        t0 = time.perf_counter()
        crops = tile_crops(plan, resized, seed)
        t1 = time.perf_counter()
        tiles = plan.partition.tiles
        jobs = [TileJob(tiles[d.tile], d.server, crop) for d, crop in zip(plan.decisions, crops) if crop is not None]
        results = enc.transport.encode(jobs, mode, enc.timeout_s) if jobs else []
        t2 = time.perf_counter()
        grid = geom.token_grid
        tokens = torch.zeros(1, grid, grid, geom.embed_dim)
        computed = torch.zeros(grid, grid, dtype=torch.bool)
        for r in results:
            t = r.tile
            tokens[0, t.row0 : t.row1, t.col0 : t.col1] = torch.from_numpy(np.asarray(r.tokens, dtype=np.float32))
            computed[t.row0 : t.row1, t.col0 : t.col1] = True
        for d in plan.decisions:
            if d.action != "local":
                continue
            t = tiles[d.tile]
            cb = t.content_box(plan.content_hw)
            crop = (
                np.zeros((0, 0, 3), np.uint8)
                if cb is None
                else np.ascontiguousarray(resized[cb[0] : cb[1], cb[2] : cb[3]])
            )
            stage = self._need_local("action 'local'")
            tokens[0, t.row0 : t.row1, t.col0 : t.col1] = stage.encode_tile(crop, t, mode).float()
            computed[t.row0 : t.row1, t.col0 : t.col1] = True
        t3 = time.perf_counter()
        fill = plan.config.drop_fill
        mean = tokens[0][computed].mean(dim=0) if computed.any() else torch.zeros(geom.embed_dim)
        for d in plan.decisions:
            if d.action != "drop":
                continue
            t = tiles[d.tile]
            if fill == "blank":
                tokens[0, t.row0 : t.row1, t.col0 : t.col1] = self._blank_tokens(t, mode)
            elif fill == "mean":
                tokens[0, t.row0 : t.row1, t.col0 : t.col1] = mean
            # zeros: already zero
        t4 = time.perf_counter()
        with torch.no_grad():
            features = enc.edge(tokens)
        t5 = time.perf_counter()
        stats.timings = {
            "obfuscate": t1 - t0,
            "remote": t2 - t1,
            "local": t3 - t2,
            "fill": t4 - t3,
            "edge_encoder": t5 - t4,
        }
        stats.bytes_up = sum(r.bytes_up for r in results)
        stats.bytes_down = sum(r.bytes_down for r in results)
        return features, stats
