"""Shared fixtures: random-weight SAM checkpoints in the official format, with
SAM's real geometry (1024 input, 64x64 tokens, window 14, official global-block
positions) at narrow widths so the suite runs on a 2-core CPU."""

from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_B, TINY_H

#: marker applied to every test by the folder it lives in (``-m unit`` is the fast run)
LAYER_MARKERS = ("unit", "integration", "net", "ros", "eval", "faults")


TEST_DIR = Path(__file__).resolve().parent


def pytest_ignore_collect(collection_path, config):
    """``-m LAYER`` (one layer's marker alone, e.g. ``-m unit``) does not import the other layers'
    folders: markers come from folders only, so their tests would all be deselected, after their
    modules (ROS, ZeroMQ, the evaluation) had been imported for nothing."""
    layer = (config.getoption("markexpr") or "").strip()
    if layer in LAYER_MARKERS and collection_path.parent == TEST_DIR and collection_path.name in LAYER_MARKERS:
        return collection_path.name != layer or None
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for layer in LAYER_MARKERS:
            if layer in parts:
                item.add_marker(getattr(pytest.mark, layer))


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


@pytest.fixture(scope="session")
def sam_reference(tiny_b_checkpoint, tiny_h_checkpoint, landscape):
    """``"vit_b"`` / ``"vit_h"`` -> SAM's own outputs on ``landscape`` with the session's tiny
    checkpoint, each computed the first time a test asks (:class:`helpers.reference.SamReference`)."""
    from helpers.reference import SamReference

    return {
        "vit_b": SamReference(TINY_B, tiny_b_checkpoint, landscape),
        "vit_h": SamReference(TINY_H, tiny_h_checkpoint, landscape),
    }


@pytest.fixture(scope="module")
def ctx():
    """A ZeroMQ context for one test module's clients (destroyed with linger 0 at its end)."""
    import zmq

    c = zmq.Context()
    yield c
    c.destroy(linger=0)
