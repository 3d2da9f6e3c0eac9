"""MAC counting, bytes and the latency model against hand-computed cases."""

import json

import pytest
import torch
from segment_anything.modeling.image_encoder import Block
from torch import nn

from ped_sam_ros.core.geometry import Partition
from ped_sam_ros.core.model import get_geometry
from ped_sam_ros.core.wire import token_bytes
from ped_sam_ros.eval import cost


def test_linear_layer_macs():
    # y = x W^T + b for x of 3 rows x 8 features, W 4 x 8: 3 * 8 * 4 multiply-accumulates
    with torch.device("meta"):
        lin = nn.Linear(8, 4)
        x = torch.zeros(3, 8)
    assert cost.count_macs(lin, x) == 96


def test_small_global_attention_block_macs():
    """SAM block, C=16, 2 heads, global attention with relative positions on a 4x4 map (N=16):
    qkv 3*N*C^2 + proj N*C^2 + MLP 2*N*C*4C = 12*N*C^2 = 49152;
    q.k^T and attn.v: 2*N*N*C = 8192; decomposed rel-pos: N*(4+4)*C = 2048."""
    c, n = 16, 16
    expected = 12 * n * c * c + 2 * n * n * c + n * (4 + 4) * c
    assert expected == 59392
    blk = Block(dim=c, num_heads=2, use_rel_pos=True, window_size=0, input_size=(4, 4)).to("meta")
    assert cost.count_macs(blk, torch.zeros(1, 4, 4, c, device="meta")) == expected
    assert cost.block_macs_analytic(c, 4, 4, window=0) == expected


def test_small_window_block_macs():
    """Window 3 on a 4x4 map: padded to 6x6 = 4 windows of 9 tokens; attention (and its
    linear layers) run on 36 padded tokens, the MLP on the 16 real ones."""
    c = 16
    expected = 4 * c * c * 36 + 2 * 9 * c * 36 + (3 + 3) * c * 36 + 8 * c * c * 16
    blk = Block(dim=c, num_heads=2, use_rel_pos=True, window_size=3, input_size=(3, 3)).to("meta")
    assert cost.count_macs(blk, torch.zeros(1, 4, 4, c, device="meta")) == expected
    assert cost.block_macs_analytic(c, 4, 4, window=3) == expected


def test_full_size_counts_match_method_md():
    """Per-block figures and the global share quoted in docs/method.md."""
    figures = [("vit_b", 30, 55, 0.47), ("vit_l", 54, 86, 0.24), ("vit_h", 83, 123, 0.175)]
    for spec, window_g, global_g, share in figures:
        g = get_geometry(spec)
        full = cost.full_encoder_workload(g)
        total = sum(full.values())
        per_window_block = full["window_block"] / len(g.window_blocks)
        per_global_block = full["global_block"] / 4
        # method.md's ~30/54/83 G is 12*C^2 per token over 4096 tokens; SAM pads the 64x64 grid to
        # 70x70 for its 14x14 windows, and the counted qkv/proj/attention run on the padding too
        # (+6 to 9 %), which also lowers the global share by up to 1.6 points
        assert per_window_block / 1e9 == pytest.approx(window_g, rel=0.1)
        assert per_window_block / 1e9 > window_g
        assert per_global_block / 1e9 == pytest.approx(global_g, rel=0.05)
        assert full["global_block"] / total == pytest.approx(share, abs=0.02)
        # the counter agrees with the closed form
        assert cost.block_macs(g, True, 64, 64) == cost.block_macs_analytic(g.embed_dim, 64, 64, 0)
        assert cost.block_macs(g, False, 64, 64) == cost.block_macs_analytic(g.embed_dim, 64, 64, 14)


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (4, 3), (5, 5)])
@pytest.mark.parametrize("mode", ["paper", "exact"])
def test_aligned_split_costs_what_sam_costs(grid, mode):
    """Token-aligned windows pad to exactly SAM's own windows, so edge + servers = plain SAM's MACs
    (paper mode: the same blocks, reordered); unaligned cuts cost more."""
    g = get_geometry("vit_b")
    total = sum(cost.full_encoder_workload(g).values())
    p = Partition.grid(*grid)
    w = cost.split_workload(g, mode, p, list(range(len(p))))
    if mode == "paper":
        assert w.edge_macs + sum(w.server_macs) == total
        assert w.edge == {"global_block": 4 * cost.block_macs(g, True, 64, 64), "neck": cost.neck_macs(g)}
    else:
        assert set(w.edge) == {"window_block", "global_block", "neck"}
        assert sum(w.server_macs) == cost.patch_embed_macs(g, 64, 64) + 2 * cost.block_macs(g, False, 64, 64)
    free = Partition.grid(*grid, aligned=False)
    wf = cost.split_workload(g, mode, free, list(range(len(free))))
    assert sum(wf.server_macs) >= sum(w.server_macs)
    assert cost.edge_only_workload(g).servers == [] and cost.cloud_workload(g).edge == {}


def test_bytes_per_frame():
    g = get_geometry("vit_b")
    p = Partition.grid(2, 2)
    up, down = cost.split_bytes(g, p, [0, 1, 2, 3], (1024, 1024), "float16")
    assert sum(up) == 3 * 1024 * 1024  # 3 MiB of uint8 pixels
    assert sum(down) == 64 * 64 * 768 * 2  # 6 MiB of fp16 tokens
    _, d8 = cost.split_bytes(g, p, [0, 1, 2, 3], (1024, 1024), "int8")
    assert sum(d8) == 64 * 64 * (768 + 4)
    up_l, _ = cost.split_bytes(g, p, [0, 1, 2, 3], (683, 1024), "float32")
    assert sum(up_l) == 683 * 1024 * 3  # padding is never sent
    assert cost.cloud_bytes(g, (1024, 1024), "float16") == (3 * 1024 * 1024, token_bytes(4096, 256, "float16"))


def test_latency_model_hand_case():
    link = cost.SymmetricLink("100M", 100.0, 20.0)
    # 12.5 MB each way at 12.5 MB/s = 1 s each; busiest server 3 s; edge 1 s; RTT 20 ms
    lat = cost.estimate_latency(1.0, [2.0, 3.0], 12_500_000, 12_500_000, link)
    assert lat.total_s == pytest.approx(0.02 + 1 + 3 + 1 + 1)
    assert lat.network_s == pytest.approx(2.02)
    assert cost.estimate_latency(4.0, [], 0, 0, link).total_s == 4.0  # edge-only: no network
    assert [link.mbit_s for link in cost.LINKS] == [1000.0, 100.0, 20.0]
    assert [link.rtt_ms for link in cost.LINKS] == [2.0, 20.0, 50.0]


def test_workload_seconds_scales_by_mac_rate():
    timings = {
        "window_block": cost.ComponentTiming(1.0, 10**9, 1e-9, "w", 1),
        "global_block": cost.ComponentTiming(1.0, 5 * 10**8, 2e-9, "g", 1),
    }
    w = {"window_block": 1_000_000_000, "global_block": 500_000_000}
    assert cost.workload_seconds(w, timings) == pytest.approx(2.0)
    assert cost.workload_seconds(w, timings, speedup=4.0) == pytest.approx(0.5)


def test_component_timing_and_cache(tmp_path, monkeypatch):
    g = get_geometry("vit_b/w16h1")
    t = cost.time_components(g, repeats=1)
    assert set(t) == set(cost.COMPONENTS)
    assert all(v.seconds > 0 and v.macs > 0 for v in t.values())
    assert t["global_block"].macs == cost.block_macs(g, True, 64, 64)
    assert t["window_block"].macs == cost.block_macs(g, False, 14, 14)
    calls = []
    monkeypatch.setattr(cost, "time_components", lambda geom: calls.append(geom) or t)
    path = tmp_path / "timings.json"
    c1 = cost.TimingCache(path)
    assert c1.get(g).components["neck"].macs == t["neck"].macs
    assert cost.TimingCache(path).get(g).components == t and len(calls) == 1  # second time from the file
    assert cost.TimingCache(tmp_path / "none.json").get(g, measure=False) is None
    assert json.loads(path.read_text())
