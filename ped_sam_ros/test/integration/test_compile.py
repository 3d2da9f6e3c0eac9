"""``compile="eager"`` traces the edge stage's blocks through TorchDynamo: the compiler stack
runs (about 1.5 s of tracing even on a 16x16 grid), so this lives in the integration layer; the
unit layer checks the option's parsing, refusals and fallbacks with a stand-in compiler
(test/unit/test_attention.py)."""

import torch

from helpers import TINY_B
from ped_sam_ros.core.attention import chunk_shape
from ped_sam_ros.core.model import EdgeStage

TOL = 1e-5


def test_compile_option_accepted_and_equal():
    """``compile="eager"`` runs the blocks through TorchDynamo (tracing, no code generation).

    On a 16x16 token grid (the blocks take any grid) with a 64 KiB chunk budget, so that the
    traced global attention still runs several chunks (4 rows of one head each) at a sixteenth
    of the 64x64 grid's compute."""
    plain = EdgeStage(TINY_B, "paper", seed=3, max_chunk_bytes=2**16)
    traced = EdgeStage(TINY_B, "paper", seed=3, compile="eager", max_chunk_bytes=2**16)
    assert set(traced._runners) == {2, 5, 8, 11}
    assert list(traced.state_dict()) == list(plain.state_dict())  # keys unchanged by compiling
    x = torch.randn(1, 16, 16, 32)
    assert chunk_shape(1, 2, (16, 16), (16, 16), 4, 2**16) == (4, 1)
    assert (traced(x) - plain(x)).abs().max().item() <= TOL
    assert all(r.compiled_once and r.fn is not r.block for r in traced._runners.values())
