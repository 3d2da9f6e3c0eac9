"""The encoder split is exact where method.md says it is (fp32, random weights,
SAM's real geometry: 1024 input, 64x64 tokens, window 14, vit_b and vit_h
global-block positions at narrow widths).

The edge stage sees nothing but the merged token grid, so the split is exact for a grid
exactly when its merged tokens equal the unpartitioned reference's tokens after the same
blocks.  Every aligned grid is checked that way (remote stages only, cheap), and one grid
per model and mode also end to end, through the edge stage, against SAM's own features.
"""

import numpy as np
import pytest

from ped_sam_ros.core.geometry import Partition
from ped_sam_ros.core.model import EdgeStage, RemoteStage
from ped_sam_ros.core.pipeline import DistributedEncoder
from ped_sam_ros.core.transport import LocalTransport

MODES = ("paper", "exact")
#: aligned grids whose merged tokens are compared: every shape on vit_b (one tile, square,
#: non-square, the 5x5 maximum with its 8-token last row); two on vit_h, whose difference
#: from vit_b is the block layout, not the tiling
GRIDS = {"vit_b": [(1, 1), (2, 2), (3, 3), (4, 3), (5, 5)], "vit_h": [(4, 3), (5, 5)]}
END_TO_END_GRID = (2, 2)
TOL = 1e-4


@pytest.fixture(scope="module", params=["vit_b", "vit_h"])
def setup(request, sam_reference):
    """The stages of the session's tiny checkpoint and the unpartitioned reference per mode: its
    final features and its tokens right after the blocks the remote stage runs.  ``exact`` is
    SAM's own encoder (``SamPredictor``); ``paper`` is SAM's blocks in the split's order
    (``reordered_encoder``).  The references are computed once per session (conftest)."""
    ref = sam_reference[request.param]
    remote = RemoteStage.from_checkpoint(ref.spec, ref.checkpoint)
    edges = {mode: EdgeStage.from_checkpoint(ref.spec, ref.checkpoint, mode) for mode in MODES}
    refs = {mode: {"features": ref.features(mode), "tokens": ref.tokens(mode)} for mode in MODES}
    return request.param, ref.resized, remote, edges, refs


class _MergedTokens:
    """Stands in for the edge stage: keeps the merged token grid it is handed and returns it,
    so a grid's remote half is checked without running the edge's blocks."""

    def __init__(self, edge):
        self._edge = edge
        self.tokens = None

    def __call__(self, tokens):
        self.tokens = tokens.clone()
        return tokens

    def __getattr__(self, name):
        return getattr(self._edge, name)


def _merged_tokens(remote, edge, partition, resized):
    enc = DistributedEncoder(edge, LocalTransport(remote, num_servers=len(partition)), partition)
    enc.edge = recorder = _MergedTokens(edge)
    enc.encode_resized(resized)
    return recorder.tokens


@pytest.mark.parametrize("mode", MODES)
def test_merged_tokens_equal_reference_on_every_aligned_grid(setup, mode, record_property):
    model, resized, remote, edges, ref = setup
    diffs = {}
    for rows, cols in GRIDS[model]:
        p = Partition.grid(rows, cols)
        diffs[p.name] = (_merged_tokens(remote, edges[mode], p, resized) - ref[mode]["tokens"]).abs().max().item()
    record_property("max_abs_diff", diffs)
    print(f"\n{model} {mode} merged tokens: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert all(d <= TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("mode", MODES)
def test_partitioned_encoder_equals_reference_end_to_end(setup, mode):
    """Through the edge stage: paper mode equals the reordered reference, exact mode SAM itself."""
    _, resized, remote, edges, ref = setup
    p = Partition.grid(*END_TO_END_GRID)
    feats, _ = DistributedEncoder(edges[mode], LocalTransport(remote, num_servers=len(p)), p).encode_resized(resized)
    diff = (feats - ref[mode]["features"]).abs().max().item()
    print(f"\n{p.name} {mode} end to end: {diff:.2e}")
    assert diff <= TOL


def test_paper_mode_is_not_sam_and_free_cuts_are_not_exact(setup):
    """Guards against vacuous comparisons: the approximations do differ, in the final features
    (paper mode) and already in the merged tokens (cuts off SAM's 14-token windows)."""
    _, resized, remote, edges, ref = setup
    assert (ref["paper"]["features"] - ref["exact"]["features"]).abs().max().item() > 1e-2
    free = _merged_tokens(remote, edges["exact"], Partition.grid(2, 2, aligned=False), resized)
    assert (free - ref["exact"]["tokens"]).abs().max().item() > 1e-3


def test_tile_position_matters(setup):
    """A tile encoded at the wrong grid position gives different tokens
    (pos_embed and padding are taken from the tile's real place)."""
    _, resized, remote, _, _ = setup
    t0, t1 = Partition.grid(5, 5).tiles[:2]
    crop = np.ascontiguousarray(resized[:224, :224])
    a = remote.encode_tile(crop, t0)
    b = remote.encode_tile(crop, t1)
    assert (a - b).abs().max().item() > 1e-3
