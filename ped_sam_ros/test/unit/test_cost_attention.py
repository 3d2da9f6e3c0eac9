"""The cost model times what the stages run: blocks with the fused attention, cached under a key
that says so (timings of segment_anything's reference attention are not reused)."""

from helpers import TINY_B
from ped_sam_ros.core.attention import FusedAttention
from ped_sam_ros.core.model import get_geometry
from ped_sam_ros.eval import cost


def test_components_are_timed_with_fused_attention(monkeypatch):
    g = get_geometry(TINY_B)
    timed = []
    real_time = cost._time

    def spy(fn, repeats):
        timed.append(fn.__defaults__[0])  # the module the timing lambda runs
        return real_time(fn, repeats)

    monkeypatch.setattr(cost, "_time", spy)
    t = cost.time_components(g, repeats=1)
    assert set(t) == set(cost.COMPONENTS) and len(timed) == len(cost.COMPONENTS)
    blocks = {kind: mod for kind, mod in zip(t, timed) if kind.endswith("_block")}
    assert set(blocks) == {"window_block", "global_block"}
    for kind, block in blocks.items():
        assert isinstance(block.attn, FusedAttention) and block.attn.impl == "fused", kind
    assert blocks["global_block"].window_size == 0 and blocks["window_block"].window_size == g.window_size
    assert "fused attention" in cost.TimingCache.key(g)
