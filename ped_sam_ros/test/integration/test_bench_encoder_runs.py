"""ped-sam-bench's runs: composed stage times from timed blocks at SAM's real geometry, and a
memory probe in a fresh process (narrow models: the figures themselves are the benchmark's
business, not the tests').  Its machinery without runs: test/unit/test_bench_encoder.py."""

import json

import pytest

from helpers import TINY_B
from ped_sam_ros.bench import encoder as bench
from ped_sam_ros.core.model import EdgeStage


def test_composed_run_and_report():
    s = bench.Settings(
        models=(TINY_B,),
        measure="blocks",
        warmup=0,
        reps=1,
        memory=False,
        fidelity_models=(TINY_B,),
        fidelity_precisions=("bfloat16", "float16"),
    )
    rep = bench.run(s, log=lambda m: None)
    json.dumps(rep)  # the report is JSON
    (res,) = rep["results"]
    t, r = res["timings"], res["ratios"]
    assert res["method"] == "composed from per-block timings"
    assert set(t) == {"edge_only", "edge_exact", "edge_k2", "edge_k3", "edge_paper"}
    # fewer blocks at the edge, less time: exact > k2 > k3 > paper, all below the edge-only encoder
    assert 1 > r["edge_exact"]["min"] > r["edge_k2"]["min"] > r["edge_k3"]["min"] > r["edge_paper"]["min"] > 0
    (att,) = rep["attention"]
    assert att["max_abs_diff"] <= 1e-5 and att["speedup_min"] > 0
    (fid,) = rep["fidelity"]
    assert 0.99 < fid["bfloat16"]["cosine"] <= 1.0 + 1e-9 and fid["bfloat16"]["max_abs_diff"] > 0
    assert "float16 on the CPU" in fid["float16"]["skipped"]
    text = bench.format_report(rep)
    assert "edge_paper" in text and "speedup" in text and "not measured" in text


@pytest.mark.skipif(not bench.PeakMeter.cpu_supported(), reason="needs Linux /proc peak-RSS reset")
def test_build_probe_in_a_fresh_process():
    out = bench.run_probe({"kind": "build", "stage": "edge", "mode": "paper", "model": TINY_B})
    weights = sum(t.numel() * t.element_size() for t in EdgeStage(TINY_B).state_dict().values())
    assert out["weights_bytes"] == weights == bench.stage_weight_bytes(TINY_B, "edge", "paper", 4)
    assert out["peak_bytes"] >= weights  # the build holds at least its own weights
    with pytest.raises(ValueError, match="unknown probe kind"):
        bench.probe({"kind": "nonsense", "model": TINY_B})
