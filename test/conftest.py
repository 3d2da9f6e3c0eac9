"""Shared fixtures: random-weight SAM checkpoints in the official format, with
SAM's real geometry (1024 input, 64x64 tokens, window 14, official global-block
positions) at narrow widths so the suite runs on a 2-core CPU."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Narrow variants of the official layouts: depth and global blocks as vit_b / vit_h.
TINY_B = "vit_b/w32h2"
TINY_H = "vit_h/w16h1"


def _save_random(tmp_path_factory, spec: str, seed: int) -> Path:
    from ped_sam_ros.core.model import random_sam, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / f"random_{spec.replace('/', '_')}_{seed}.pth"
    return save_checkpoint(random_sam(spec, seed=seed), path)


@pytest.fixture(scope="session")
def tiny_b_checkpoint(tmp_path_factory) -> Path:
    """Random vit_b-layout checkpoint (width 32), saved as a plain Sam state dict."""
    return _save_random(tmp_path_factory, TINY_B, seed=1)


@pytest.fixture(scope="session")
def tiny_h_checkpoint(tmp_path_factory) -> Path:
    return _save_random(tmp_path_factory, TINY_H, seed=2)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real photo (512x512 RGB) that scikit-image ships."""
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def landscape(astronaut) -> np.ndarray:
    """A non-square real image (so SAM's padding and coordinate mapping matter)."""
    import skimage.data

    return skimage.data.coffee()  # 400x600


@pytest.fixture(scope="module")
def ctx():
    """A ZeroMQ context for one test module's clients (destroyed with linger 0 at its end)."""
    import zmq

    c = zmq.Context()
    yield c
    c.destroy(linger=0)
