"""Every stage is built by one path (``_StageBase._build``): its random weights are drawn once,
from the seed it is given, by the stage constructors and by the builders that use them."""

import pytest
import torch

from helpers import TINY_B
from ped_sam_ros.core import model
from ped_sam_ros.core.model import EdgeStage, RemoteStage, WholeEncoder, random_sam
from ped_sam_ros.edge import builder
from ped_sam_ros.edge.config import EdgeConfig

SEED = 7


@pytest.fixture
def draws(monkeypatch):
    """The seeds each stage's weights were drawn from, in order (fill_seeded_ still runs)."""
    seen = []
    real = model.fill_seeded_

    def counting(module, seed, **kwargs):
        seen.append((type(module).__name__, seed))
        return real(module, seed, **kwargs)

    monkeypatch.setattr(model, "fill_seeded_", counting)
    return seen


@pytest.mark.parametrize(
    "make",
    [
        lambda s: RemoteStage(TINY_B, seed=s),
        lambda s: EdgeStage(TINY_B, "k2", seed=s),
        lambda s: WholeEncoder(TINY_B, seed=s),
    ],
)
def test_a_stage_draws_its_weights_once(draws, make):
    stage = make(SEED)
    assert draws == [(type(stage).__name__, SEED)]
    assert stage.weights == f"random_sam('{TINY_B}', seed={SEED})"
    draws.clear()
    empty = make(None)  # seed=None: left for load_checkpoint, nothing drawn
    assert draws == [] and empty.weights is None


def test_stages_hold_the_parts_of_one_random_sam():
    sam = random_sam(TINY_B, SEED).state_dict()
    for stage in (RemoteStage(TINY_B, seed=SEED), EdgeStage(TINY_B, "k3", seed=SEED), WholeEncoder(TINY_B, seed=SEED)):
        own = stage.state_dict()
        assert own and all(torch.equal(t, sam[stage.checkpoint_key(k)]) for k, t in own.items())
    # the remote stage's non-persistent normalisation buffers are SAM's
    remote = RemoteStage(TINY_B, seed=SEED)
    assert torch.equal(remote.pixel_mean.flatten(), torch.tensor(model.PIXEL_MEAN))


def test_edge_builder_draws_the_configured_seed_once(draws):
    cfg = EdgeConfig(model=TINY_B, random_weights=True, seed=SEED, mode="exact")
    edge, remote = builder.build_edge_stage(cfg), builder.build_remote_stage(cfg)
    assert draws == [("EdgeStage", SEED), ("RemoteStage", SEED)]
    assert edge.mode == "exact" and remote.weights == edge.weights
