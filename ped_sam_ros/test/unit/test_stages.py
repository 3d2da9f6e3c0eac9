"""The stages: the k-group knob between exact and paper, building only a stage,
batched tiles on a server, and the edge-only whole encoder (fp32, random weights,
SAM's real geometry at narrow widths)."""

import numpy as np
import pytest
import torch

from helpers import TINY_B
from ped_sam_ros.core import model as model_mod
from ped_sam_ros.core.geometry import Partition
from ped_sam_ros.core.model import (
    EdgeStage,
    RemoteStage,
    WholeEncoder,
    block_order,
    get_geometry,
    parse_mode,
    random_sam,
)
from ped_sam_ros.core.pipeline import DistributedEncoder
from ped_sam_ros.core.transport import LocalTransport
from ped_sam_ros.core.wire import WireError

TOL = 1e-4
SEED = 5


# ---------------------------------------------------------------------------
# Modes


def test_parse_mode_names_and_normalises():
    g = get_geometry(TINY_B)  # 4 global blocks: 4 groups
    assert g.num_groups == 4
    assert g.modes == ("exact", "k2", "k3", "paper")
    assert parse_mode("k1", g) == parse_mode("exact", g) == "exact"
    assert parse_mode("k4", g) == parse_mode("paper", g) == "paper"
    assert parse_mode("k2", TINY_B) == "k2" and parse_mode("k3", "vit_h") == "k3"
    for bad in ("k0", "k5", "K2", "k02", "k", "2", "turbo", "", None):
        with pytest.raises(ValueError, match="k1..k4"):
            parse_mode(bad, g)


@pytest.mark.parametrize("spec", ["vit_b", "vit_l", "vit_h"])
def test_groups_split_blocks(spec):
    """Servers run groups 1..k's window blocks; the edge those groups' global blocks, then
    everything after group k in SAM's order; together every block exactly once."""
    g = get_geometry(spec)
    gl = sorted(g.global_attn_indexes)
    for k, mode in enumerate(g.modes, start=1):
        remote, edge = g.remote_blocks(mode), g.edge_blocks(mode)
        assert sorted(remote + edge) == list(range(g.depth))
        assert remote == tuple(i for i in range(gl[k - 1]) if i not in gl)
        assert edge == tuple(gl[:k]) + tuple(range(gl[k - 1] + 1, g.depth))
        assert list(edge[k:]) == sorted(edge[k:])  # after the offloaded globals: SAM's order
    assert g.edge_blocks("exact") == tuple(range(gl[0], g.depth))
    assert g.remote_blocks("paper") == g.window_blocks and g.edge_blocks("paper") == tuple(gl)
    if spec == "vit_b":
        assert g.remote_blocks("k2") == (0, 1, 3, 4) and g.edge_blocks("k2") == (2, 5, 6, 7, 8, 9, 10, 11)


def test_block_order_of_a_sam_encoder():
    enc = random_sam(TINY_B, seed=0).image_encoder
    assert block_order(enc, "exact") == list(range(12))
    assert block_order(enc, "paper") == [0, 1, 3, 4, 6, 7, 9, 10, 2, 5, 8, 11]
    assert block_order(enc, "k3") == [0, 1, 3, 4, 6, 7, 2, 5, 8, 9, 10, 11]


# ---------------------------------------------------------------------------
# Partitioned == reordered reference, every k


@pytest.fixture(scope="module", params=["vit_b", "vit_h"])
def split_setup(request, sam_reference):
    """The session's tiny checkpoint of one model, its remote stage, and SAM's own outputs on
    the landscape photo (683x1024 resized: the bottom rows are padding), shared with
    test_split_exactness (conftest)."""
    ref = sam_reference[request.param]
    return ref, RemoteStage.from_checkpoint(ref.spec, ref.checkpoint)


#: the k between exact and paper checked end to end per model (both have G = 4 groups): together
#: both intermediate values; every k's block split is checked on the official layouts above
BETWEEN = {"vit_b": ("k2", (3, 3)), "vit_h": ("k3", (2, 2))}


def test_partitioned_equals_reordered_reference_for_every_k(split_setup):
    """k1 (exact, against SAM's own features) and kG (paper) are checked on more grids, end to
    end and by merged tokens, in test_split_exactness; here the k between them."""
    ref, remote = split_setup
    g = get_geometry(ref.spec)
    assert g.modes[1:-1] == ("k2", "k3")
    mode, grid = BETWEEN[g.name]
    edge = EdgeStage.from_checkpoint(ref.spec, ref.checkpoint, mode)
    p = Partition.grid(*grid)
    feats, _ = DistributedEncoder(edge, LocalTransport(remote, num_servers=len(p)), p).encode_resized(ref.resized)
    diff = (feats - ref.features(mode)).abs().max().item()
    assert diff <= TOL, (ref.spec, mode, grid, diff)
    # a k is a different function from exact and paper (the comparison is not vacuous)
    exact, paper = ref.features("exact"), ref.features("paper")
    drift = [(ref.features(mode) - other).abs().max().item() for other in (exact, paper)]
    assert all(d > 1e-3 for d in drift), drift


def test_k_modes_are_accepted_by_the_encode_service(split_setup):
    ref, remote = split_setup
    transport = LocalTransport(remote, num_servers=4)
    p = Partition.grid(2, 2)
    edge = EdgeStage(ref.spec, "k1", seed=SEED)
    assert edge.mode == "exact"
    jobs = DistributedEncoder(edge, transport, p).jobs_for(ref.resized)
    a = transport.encode(jobs, "k2", 30.0)
    b = transport.encode(jobs, "paper", 30.0)
    assert len(a) == len(b) == 4
    assert max(np.abs(x.tokens - y.tokens).max() for x, y in zip(a, b)) > 1e-3
    with pytest.raises(WireError, match="unknown mode 'k9'") as ei:
        transport.encode(jobs, "k9", 30.0)
    assert ei.value.code == "bad_mode"


# ---------------------------------------------------------------------------
# Building only the stage


def test_stages_never_build_a_whole_sam(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a stage built a whole SAM")

    ref = random_sam(TINY_B, seed=SEED).state_dict()
    monkeypatch.setattr(model_mod, "_whole_sam", refuse)
    monkeypatch.setattr(model_mod, "random_sam", refuse)
    monkeypatch.setattr(model_mod, "build_sam", refuse)
    stages = [RemoteStage(TINY_B, seed=SEED), EdgeStage(TINY_B, "paper", seed=SEED), EdgeStage(TINY_B, "k3", seed=SEED)]
    stages.append(EdgeStage(TINY_B, "exact", seed=None).load_random(SEED))
    for stage in stages:
        own = stage.state_dict()
        for k, v in own.items():  # the tensors of random_sam(spec, seed): one random SAM
            assert torch.equal(v, ref[stage.checkpoint_key(k)]), k
        # and nothing else: its parameters are exactly its checkpoint keys
        assert sum(p.numel() for p in stage.parameters()) == sum(
            ref[stage.checkpoint_key(k)].numel() for k, _ in stage.named_parameters()
        )
    assert set(stages[0].checkpoint_keys()).isdisjoint(stages[1].checkpoint_keys())


def test_different_seeds_give_different_weights_and_no_weights_is_an_error():
    a, b = RemoteStage(TINY_B, seed=1), RemoteStage(TINY_B, seed=2)
    assert not torch.equal(a.blocks["0"].attn.qkv.weight, b.blocks["0"].attn.qkv.weight)
    empty = EdgeStage(TINY_B, seed=None)
    assert empty.weights is None
    with pytest.raises(RuntimeError, match="no weights"):
        empty(torch.zeros(1, 64, 64, 32))


# ---------------------------------------------------------------------------
# Server batching


def test_encode_tiles_batches_equal_one_at_a_time():
    remote = RemoteStage(TINY_B, seed=SEED)
    rng = np.random.default_rng(0)
    tiles = Partition.grid(3, 3).tiles  # three token shapes (28/14/22 rows and columns)
    items = []
    for t in tiles:
        ph, pw = t.pixel_shape
        items.append((rng.integers(0, 256, (ph, pw, 3), dtype=np.uint8), t))
    items[-1] = (items[-1][0][:100, :50], items[-1][1])  # a crop smaller than its tile (padding)
    for mode in ("paper", "k2"):
        one = [remote.encode_tile(px, t, mode) for px, t in items]
        for max_batch in (None, 2):
            many = remote.encode_tiles(items, mode, max_batch=max_batch)
            assert [tuple(m.shape) for m in many] == [tuple(o.shape) for o in one]
            assert all(m.dtype == torch.float32 and m.device.type == "cpu" for m in many)
            assert max((m - o).abs().max().item() for m, o in zip(many, one)) <= 1e-5
    with pytest.raises(ValueError, match="one token shape"):
        remote(torch.zeros(2, 3, 448, 448), [tiles[0], tiles[1]])


# ---------------------------------------------------------------------------
# The whole encoder (edge-only baseline) and what the benchmark times


def test_whole_encoder_is_sam_and_times_edge_stages_faithfully(split_setup):
    ref, _ = split_setup
    whole = WholeEncoder.from_checkpoint(ref.spec, ref.checkpoint)
    assert set(whole.checkpoint_keys()) == {k for k in ref.sam.state_dict() if k.startswith("image_encoder.")}
    assert (whole(ref.x) - ref.features("exact")).abs().max().item() <= TOL
    # what the benchmark times as an edge stage is that stage's function: the same blocks, weights
    # and order (on a 16x16 corner of the tokens: the blocks take any grid, at a sixteenth of the cost)
    tokens = whole.embed(ref.x)[:, :16, :16].contiguous()
    g = get_geometry(ref.spec)
    for mode in ("k2", "paper"):
        edge = EdgeStage.from_checkpoint(ref.spec, ref.checkpoint, mode)
        assert torch.equal(whole.encode_tokens(tokens, g.edge_blocks(mode)), edge(tokens)), mode
