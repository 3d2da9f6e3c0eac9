"""SAM's own outputs on one test image, computed once per test session.

The exactness tests of several modules (the split, the k modes, the pipeline, the privacy
policy) compare against the same unpartitioned reference: ``segment_anything``'s encoder
(reference attention) on the same random-weight checkpoint and image.  One such pass costs
seconds at SAM's real geometry, so :class:`SamReference` computes each thing the first time a
test asks for it and keeps it for the session (``conftest.sam_reference``).  Everything it
returns is read-only for the tests.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch


class SamReference:
    """One checkpoint and one image: SAM's predictor, and per mode the unpartitioned features
    and the tokens right after the blocks a remote stage runs in that mode."""

    def __init__(self, spec: str, checkpoint: Path, image: np.ndarray):
        self.spec, self.checkpoint, self.image = spec, checkpoint, image
        self._by_mode: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    @cached_property
    def sam(self):
        from ped_sam_ros.core.model import build_sam

        return build_sam(self.spec, self.checkpoint)

    @cached_property
    def resized(self) -> np.ndarray:
        """The image resized as SAM does (longest side 1024); padding is the preprocess's."""
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide(self.sam.image_encoder.img_size).apply_image(self.image)

    @cached_property
    def x(self) -> torch.Tensor:
        """SAM's normalised, padded 1x3x1024x1024 input."""
        return self.sam.preprocess(torch.from_numpy(self.resized).permute(2, 0, 1)[None].float())

    @cached_property
    def predictor(self):
        """``SamPredictor`` with the image set: its features are the ``exact`` reference."""
        from segment_anything import SamPredictor

        predictor = SamPredictor(self.sam)
        with self._remote_tokens_hook("exact") as seen:
            predictor.set_image(self.image)
        self._by_mode["exact"] = (predictor.features, seen[0])
        return predictor

    def features(self, mode: str = "exact") -> torch.Tensor:
        """The unpartitioned 1x256x64x64 features: SAM's own for ``exact``, else SAM's blocks in
        the split's order for that mode (``reordered_encoder``)."""
        return self._get(mode)[0]

    def tokens(self, mode: str) -> torch.Tensor:
        """The unpartitioned tokens right after the last block a remote stage runs in ``mode``."""
        return self._get(mode)[1]

    def _get(self, mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
        from ped_sam_ros.core.model import parse_mode, reordered_encoder

        mode = parse_mode(mode, self.spec)
        if mode == "exact":
            _ = self.predictor  # computes and stores the exact reference
        elif mode not in self._by_mode:
            with self._remote_tokens_hook(mode) as seen:
                feats = reordered_encoder(self.sam.image_encoder, self.x, mode)
            self._by_mode[mode] = (feats, seen[0])
        return self._by_mode[mode]

    def _remote_tokens_hook(self, mode: str):
        return _CaptureOnce(self.sam.image_encoder.blocks[_last_remote_block(self.spec, mode)])


def _last_remote_block(spec: str, mode: str) -> int:
    from ped_sam_ros.core.model import get_geometry

    return get_geometry(spec).remote_blocks(mode)[-1]


class _CaptureOnce:
    """Context manager: the output of one module during the block; the module must run once."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.seen = module, []

    def __enter__(self):
        self._hook = self.module.register_forward_hook(lambda _m, _i, y: self.seen.append(y.clone()))
        return self.seen

    def __exit__(self, exc_type, *_):
        self._hook.remove()
        if exc_type is None:
            assert len(self.seen) == 1, "each block runs once"
