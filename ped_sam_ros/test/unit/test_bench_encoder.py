"""ped-sam-bench's machinery: interleaved rounds, composed stage times, memory probes in a
fresh process, and the CLI's settings (narrow models: the figures themselves are the
benchmark's business, not the tests')."""

import json

import pytest
import torch

from helpers import TINY_B
from ped_sam_ros.bench import encoder as bench
from ped_sam_ros.core.model import EdgeStage
from ped_sam_ros.tools import bench as cli


def test_interleaved_rotates_and_drops_warmup():
    calls = []
    cases = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    t = bench.interleaved(cases, warmup=1, reps=3, device=torch.device("cpu"))
    assert calls == list("abcbcacababc")  # every case once per round, order rotated
    assert all(len(v.runs) == 3 for v in t.values())
    assert all(v.min <= v.median for v in t.values())


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


def test_cli_settings():
    q = cli.settings_from_args(cli.parse_args(["--quick", "--models", "vit_b", "--fidelity-models"]))
    assert q.stream_frames == 8  # the pipelined-stream measurement is part of --quick
    assert cli.settings_from_args(cli.parse_args(["--stream-frames", "0"])).stream_frames == 0
    assert q.measure == "blocks" and q.models == ("vit_b",) and q.fidelity_models == ()
    assert (q.warmup, q.reps, q.window_probe) == (1, 2, False)
    with pytest.raises(SystemExit, match="--measure stages"):
        cli.settings_from_args(cli.parse_args(["--quick", "--compile"]))
    assert "cpu" in q.devices
    full = cli.settings_from_args(cli.parse_args(["--precisions", "bfloat16", "--devices", "cpu"]))
    assert full.measure == "stages" and full.devices == ("cpu",) and full.precisions["cpu"] == ("bfloat16",)
    assert (full.reps, full.window_probe) == (3, True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            cli.settings_from_args(cli.parse_args(["--devices", "cuda"]))
