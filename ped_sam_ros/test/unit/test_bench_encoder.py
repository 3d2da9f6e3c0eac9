"""ped-sam-bench's machinery: interleaved rounds and the CLI's settings (the runs themselves,
timed at full width and probed in fresh processes, are test/integration/test_bench_encoder_runs.py)."""

import pytest
import torch

from ped_sam_ros.bench import encoder as bench
from ped_sam_ros.tools import bench as cli


def test_interleaved_rotates_and_drops_warmup():
    calls = []
    cases = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    t = bench.interleaved(cases, warmup=1, reps=3, device=torch.device("cpu"))
    assert calls == list("abcbcacababc")  # every case once per round, order rotated
    assert all(len(v.runs) == 3 for v in t.values())
    assert all(v.min <= v.median for v in t.values())


def test_cli_settings():
    q = cli.settings_from_args(cli.parse_args(["--quick", "--models", "vit_b", "--fidelity-models"]))
    assert q.stream_frames == 64  # the pipelined-stream measurement is part of --quick (64 frames per run)
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
