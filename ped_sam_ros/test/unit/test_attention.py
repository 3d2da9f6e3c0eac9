"""Fused attention equals segment_anything's reference (fp32, 1e-5), keeps the
checkpoint keys, bounds its chunks; ``compile`` is accepted or refused clearly."""

import logging

import pytest
import torch
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos, get_rel_pos

from helpers import TINY_B, TINY_H
from ped_sam_ros.core import compiled
from ped_sam_ros.core.attention import (
    FusedAttention,
    FusedBlock,
    chunk_budget,
    chunk_shape,
    decomposed_bias,
    rows_per_chunk,
    set_attention_impl,
)
from ped_sam_ros.core.compiled import CompileError, compile_blocks
from ped_sam_ros.core.model import EdgeStage, RemoteStage, get_geometry, make_block, make_fused_block

TOL = 1e-5
# SAM's layouts at narrow widths, plus one with several heads per block
SPECS = [TINY_B, TINY_H, "vit_b/w48h3"]


def _pair(spec, index, seed=0):
    """The reference block and the fused one with the same (random, non-zero position) weights."""
    g = get_geometry(spec)
    torch.manual_seed(seed)
    ref = make_block(g, index).eval()
    with torch.no_grad():
        ref.attn.rel_pos_h.normal_(0, 0.5)
        ref.attn.rel_pos_w.normal_(0, 0.5)
    fused = make_fused_block(g, index).eval()
    fused.load_state_dict(ref.state_dict())
    return g, ref, fused


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("kind", ["window", "global"])
def test_fused_block_equals_reference(spec, kind):
    g = get_geometry(spec)
    index = g.window_blocks[0] if kind == "window" else g.global_attn_indexes[0]
    g, ref, fused = _pair(spec, index)
    assert list(fused.state_dict()) == list(ref.state_dict())  # checkpoint keys unchanged
    # the 64x64 edge grid, and a server tile whose sides are not multiples of 14 (SAM's padding)
    shapes = [(64, 64), (28, 36)] if kind == "window" else [(64, 64)]
    torch.manual_seed(1)
    for h, w in shapes:
        x = torch.randn(1, h, w, g.embed_dim)
        with torch.no_grad():
            want, got = ref(x), fused(x)
        assert got.shape == want.shape
        diff = (got - want).abs().max().item()
        assert diff <= TOL, (spec, kind, (h, w), diff)
        assert (want - x).abs().max().item() > 1e-2  # the block does something


def test_chunked_global_attention_equals_one_chunk():
    g, ref, fused = _pair(TINY_B, 2)
    x = torch.randn(2, 64, 64, g.embed_dim)  # a batch of two frames
    # one grid row of one head per chunk, 3 rows of one head, all rows of one head, everything at once
    budgets = (1, 3 * 2**21, 2**27, 2**40)
    head_row = 2 * 64 * 64 * 64 * 4  # one grid row of queries of one head, both frames, float32
    shapes = [chunk_shape(2, g.num_heads, (64, 64), (64, 64), 4, b) for b in budgets]
    assert shapes == [(1, 1), (3, 1), (64, 1), (64, 2)]
    assert all(r * h * head_row <= b for (r, h), b in zip(shapes[1:], budgets[1:]))  # the mask within the budget
    with torch.no_grad():
        want = ref(x)
        outs = {}
        for budget in budgets:
            fused.attn.max_chunk_bytes = budget
            outs[budget] = fused(x)
    for budget, y in outs.items():
        assert (y - want).abs().max().item() <= TOL, budget


def test_chunk_shape_takes_rows_of_one_head_first():
    # vit_h global block, float32: one grid row of one head's queries is 64 x 4096 x 4 bytes = 1 MiB
    assert chunk_shape(1, 16, (64, 64), (64, 64), 4, 16 * 2**20) == (16, 1)
    assert chunk_shape(1, 16, (64, 64), (64, 64), 4, 256 * 2**20) == (64, 4)
    assert chunk_shape(1, 16, (64, 64), (64, 64), 2, 256 * 2**20) == (64, 8)
    assert chunk_shape(1, 16, (64, 64), (64, 64), 4, 1) == (1, 1)  # never zero
    assert chunk_shape(1, 16, (64, 64), (64, 64), 4, 2**40) == (64, 16)  # never beyond the grid and heads
    # 25 windows of 14x14 (a window block on the 64x64 grid): all rows, as many heads as fit
    assert chunk_shape(25, 12, (14, 14), (14, 14), 4, 16 * 2**20) == (14, 4)


def test_decomposed_bias_into_a_reused_buffer():
    torch.manual_seed(0)
    q = torch.randn(2, 3, 4, 6, 8)
    rh, rw = torch.randn(4, 5, 8), torch.randn(6, 7, 8)
    buf = torch.full((2 * 3 * 4 * 6 * 5 * 7 + 11,), float("nan"))  # larger than needed, stale content
    got = decomposed_bias(q, rh, rw, out=buf)
    assert got.data_ptr() == buf.data_ptr() and got.shape == (2, 3, 24, 35)
    assert torch.equal(got, decomposed_bias(q, rh, rw))


def test_rows_per_chunk_bounds_the_mask():
    # vit_h global block, float32: one grid row of queries is 16 heads x 64 x 4096 x 4 bytes = 16 MiB
    assert rows_per_chunk(1, 16, (64, 64), (64, 64), 4, 64 * 2**20) == 4
    assert rows_per_chunk(1, 16, (64, 64), (64, 64), 2, 64 * 2**20) == 8
    assert rows_per_chunk(1, 16, (64, 64), (64, 64), 4, 1) == 1  # never zero
    assert rows_per_chunk(1, 2, (14, 14), (14, 14), 4, 2**30) == 14  # never beyond the grid


def test_chunk_budget_defaults_by_device():
    # CPU: 16 query rows of one head of a vit_b/l/h global block per chunk (a 16 MiB mask); GPU: bigger launches
    assert chunk_budget(None, torch.device("cpu")) == 16 * 2**20
    assert chunk_budget(None, torch.device("cuda", 0)) == 256 * 2**20
    assert chunk_budget(12345, torch.device("cuda", 0)) == 12345
    assert rows_per_chunk(1, 16, (64, 64), (64, 64), 4, chunk_budget(None, torch.device("cpu"))) == 1
    assert chunk_shape(1, 16, (64, 64), (64, 64), 4, chunk_budget(None, torch.device("cpu"))) == (16, 1)


def test_decomposed_bias_is_sams_relative_position_term():
    torch.manual_seed(0)
    b, n, h, w, d = 1, 2, 5, 7, 8
    q = torch.randn(b, n, h, w, d)
    rel_h, rel_w = torch.randn(2 * h - 1, d), torch.randn(2 * w - 1, d)
    rh, rw = get_rel_pos(h, h, rel_h), get_rel_pos(w, w, rel_w)
    zeros = torch.zeros(b * n, h * w, h * w)
    want = add_decomposed_rel_pos(zeros, q.reshape(b * n, h * w, d), rel_h, rel_w, (h, w), (h, w))
    got = decomposed_bias(q, rh, rw).reshape(b * n, h * w, h * w)
    assert (got - want).abs().max().item() <= TOL
    part = decomposed_bias(q[:, :, 2:4], rh[2:4], rw).reshape(b * n, 2 * w, h * w)  # rows 2..3 only
    assert (part - want[:, 2 * w : 4 * w]).abs().max().item() <= TOL


def test_reference_switch_is_segment_anythings_code():
    g, ref, fused = _pair(TINY_B, 2)
    x = torch.randn(1, 64, 64, g.embed_dim)
    assert set_attention_impl([fused], "reference") == 1
    with torch.no_grad():
        assert torch.equal(fused(x), ref(x))
    with pytest.raises(ValueError, match="attention must be one of"):
        set_attention_impl([fused], "flash")


def test_stages_use_fused_attention():
    for stage in (RemoteStage(TINY_B), EdgeStage(TINY_B, "exact")):
        blocks = list(stage.blocks.values())
        assert blocks and all(isinstance(b, FusedBlock) and isinstance(b.attn, FusedAttention) for b in blocks)
        assert all(b.attn.impl == "fused" for b in blocks)


# ---------------------------------------------------------------------------
# compile


def test_compile_refused_clearly_where_unsupported(monkeypatch, caplog):
    with pytest.raises(CompileError, match="unknown torch.compile backend 'nonesuch'"):
        EdgeStage(TINY_B, compile="nonesuch")
    # inductor on the CPU without a C++ compiler: refused up front, or skipped when allowed
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(CompileError, match="C\\+\\+ compiler"):
        EdgeStage(TINY_B, compile=True)
    with caplog.at_level(logging.WARNING):
        stage = EdgeStage(TINY_B, compile=True, allow_fallback=True)
    assert stage._runners == {} and "running uncompiled" in caplog.text


def test_compile_failure_at_first_call(monkeypatch, caplog):
    """Compilation happens at a block's first call: a failure there names the block, or falls back."""

    def broken_compile(module, **kwargs):
        def fn(x):
            raise RuntimeError("backend exploded")

        return fn

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = torch.randn(1, 16, 16, 32)  # the blocks take any token grid; this is about the fallback
    stage = EdgeStage(TINY_B, compile="eager", seed=1)
    with pytest.raises(CompileError, match="failed on block 2: RuntimeError: backend exploded"):
        stage(x)
    plain = EdgeStage(TINY_B, seed=1)
    fallback = EdgeStage(TINY_B, compile="eager", seed=1, allow_fallback=True)
    with caplog.at_level(logging.WARNING):
        y = fallback(x)
    assert "running it uncompiled" in caplog.text
    assert torch.equal(y, plain(x))


def test_compile_off_values():
    assert compile_blocks({}, False, torch.device("cpu")) == {}
    assert compiled.compile_backend("none") is None and compiled.compile_backend(True) == "inductor"
