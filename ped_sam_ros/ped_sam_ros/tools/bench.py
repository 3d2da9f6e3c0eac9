"""``ped-sam-bench``: the encoder stages side by side, in one process, interleaved.

Edge-only encoder vs the edge stage of every mode (exact, k2, k3, paper), for the
vit_b/vit_l/vit_h geometries at full width with random weights, on every device
present (CPU float32; on a GPU float32, float16 and bfloat16); fused vs reference
attention on a global block; peak memory; bf16/fp16 fidelity.  Prints the ratios
next to the issue's targets and writes every figure to JSON.  See
:mod:`ped_sam_ros.bench.encoder` for what each figure is.

    ped-sam-bench --quick                      # a few minutes on a 2-core CPU
    ped-sam-bench --models vit_b vit_h --reps 3 --json bench.json
    ped-sam-bench --devices cuda --precisions float16 bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch

from ..bench.encoder import MODELS, Settings, format_report, run
from ..core.device import PRECISIONS, resolve_device


def _devices(requested: Optional[List[str]]) -> List[str]:
    """``None`` -> every device present: the CPU and each CUDA device."""
    if requested:
        return [str(resolve_device(d)) for d in requested]
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ped-sam-bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU-friendly: compose stage times from per-block timings (one block of each kind), "
        "1 warm-up + 2 rounds, no window-block memory probe, fidelity on vit_b only",
    )
    p.add_argument(
        "--measure",
        choices=("stages", "blocks"),
        default=None,
        help="stages: time each stage end to end (default); blocks: per-block timings, composed",
    )
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--devices", nargs="+", default=None, help="default: every device present (cpu, cuda:N)")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=sorted(PRECISIONS),
        default=None,
        help="precisions to time on each device (default: float32 on the CPU; float32, float16, bfloat16 on a GPU)",
    )
    p.add_argument("--warmup", type=int, default=1, help="rounds run before the timed ones (default 1)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 3; 2 with --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-attention", action="store_true", help="skip the fused-vs-reference global block")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument(
        "--old-build-path",
        action="store_true",
        help="also measure the build peak of the old path (a whole random SAM first)",
    )
    p.add_argument(
        "--fidelity-models",
        nargs="*",
        choices=MODELS,
        default=None,
        help="whole-encoder bf16/fp16 vs fp32 fidelity (default: vit_b; none to skip)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks (inductor; --measure stages only)")
    p.add_argument(
        "--stream-frames",
        type=int,
        default=None,
        help="camera frames per run through the pipelined vs the sequential edge runtime, in each of three "
        "settings (edge-bound, balanced, I/O-bound; default 64, about a quarter are processed; 0: skip)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    return p.parse_args(argv)


def settings_from_args(a: argparse.Namespace) -> Settings:
    s = Settings(
        models=tuple(a.models),
        devices=tuple(_devices(a.devices)),
        warmup=a.warmup,
        reps=a.reps if a.reps is not None else (2 if a.quick else 3),
        attention=not a.no_attention,
        memory=not a.no_memory,
        window_probe=not a.quick,
        old_build_path=a.old_build_path,
        compile=a.compile,
        seed=a.seed,
        stream_frames=a.stream_frames if a.stream_frames is not None else 64,
    )
    s.measure = a.measure or ("blocks" if a.quick else "stages")
    if s.compile and s.measure != "stages":
        raise SystemExit("ped-sam-bench: --compile times whole stages: use it with --measure stages")
    if a.precisions:
        s.precisions = {"cpu": tuple(a.precisions), "cuda": tuple(a.precisions)}
    if a.fidelity_models is not None:
        s.fidelity_models = tuple(a.fidelity_models)
    return s


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    s = settings_from_args(a)
    log = (lambda msg: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run(s, log=log)
    print(format_report(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
