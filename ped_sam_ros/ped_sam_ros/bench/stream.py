"""Stream throughput of the pipelined edge runtime against 1/(slowest stage), and per-frame
latency against the sequential runtime, in one process, for several balances of the two sides.

The edge side is real: a random-weight model (default the narrow ``vit_b/w32h2``; any
geometry works) runs its edge stage and SAM's decoder on this machine's CPU or GPU.  The
servers are other machines in production, so the remote phase is emulated: it returns the
tokens the real remote stage computed for that frame beforehand (untimed) after sleeping
``remote_s``.  Each *setting* scales the measured edge phase into ``remote_s`` (default 0.5,
1 and 1.5: edge-bound, balanced, I/O-bound).  A camera submits frames faster than either
runtime can take them (latest frame wins), the same way for both runtimes; per setting the
sequential and the pipelined runtime run one after the other (the order alternates between
settings, so that a drift of the machine's load does not favour one).

* stages: the I/O side (resize + remote phase) and the compute side (edge encoder + decoder),
  medians of the pipelined run's per-frame timings;
* throughput: outputs per second between the second and the last output (the first output
  of every run, a cold start, is left out of every statistic); the ideal is
  1 / max(stage medians);
* latency: median of each published frame's ``total`` (camera stamp to result), with where
  it goes: the frame's age when taken (``queue``), its wait for the compute thread
  (``handoff``, pipelined only) and the compute side, whose growth over the sequential
  run's is what the I/O thread's work beside it costs (``interference``).

    python -m ped_sam_ros.bench.stream --frames 64 --remote-scales 0.5 1 1.5 --json out/bench/stream.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

DEFAULT_MODEL = "vit_b/w32h2"
#: outputs at the start of each run left out of its statistics (cold start), for both runtimes
WARMUP_OUTPUTS = 1


def _frames(n: int, h: int = 480, w: int = 640, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        rgb = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
        rgb[40 + 10 * k % 200 : 200 + 10 * k % 200, 60:300] = 240
        out.append(rgb)
    return out


def _key(resized: np.ndarray) -> bytes:
    return resized[::37, ::41].tobytes() + bytes(str(resized.shape), "ascii")


class _EmulatedRemote:
    """``encode_remote`` as seen from the edge when the servers are elsewhere: wait
    ``remote_s``, get this frame's tokens (computed beforehand by the real remote stage)."""

    def __init__(self, encoder, remote_s: float):
        self.real = encoder.encode_remote
        self.remote_s = remote_s
        self.cache: Dict[bytes, tuple] = {}

    def precompute(self, resized: np.ndarray) -> None:
        self.cache[_key(resized)] = self.real(resized)

    def __call__(self, resized, *args, **kwargs):
        tokens, stats = self.cache[_key(resized)]
        time.sleep(self.remote_s)
        out = copy.deepcopy(stats)
        out.timings["remote"] = self.remote_s
        return tokens, out  # read-only downstream; no copy (no torch kernel in the I/O thread)


def _run(pipe_factory, frames: List[np.ndarray], n: int, interval_s: float, prompts, camera_seed: int = 0) -> Dict:
    """Submit ``n`` frames (cycling through ``frames``), ``interval_s`` apart on average; results
    and counts.  The gaps are drawn from ``camera_seed`` (0.5 to 1.5 x ``interval_s``): a camera
    whose period is not locked to the runtime's cycle, so that a frame's age when it is taken
    is not an artefact of that phase (both runtimes of a setting get the same gaps)."""
    from ped_sam_ros.edge.records import Frame
    from ped_sam_ros.edge.runtime import EdgeRuntime

    results, done = [], threading.Event()

    def on_result(r):
        results.append((time.monotonic(), r))

    gaps = random.Random(camera_seed)
    rt = EdgeRuntime(
        pipe_factory, on_result=on_result, on_error=lambda e: results.append((time.monotonic(), e)), idle_poll_s=0.05
    ).start(timeout_s=600)
    try:
        rt.set_prompts(prompts)
        for k in range(n):
            rt.submit(Frame(frames[k % len(frames)], meta=k))
            done.wait(interval_s * gaps.uniform(0.5, 1.5))
        end = time.monotonic() + 600
        while rt.stats.counts.frames_out + rt.stats.counts.frames_dropped + rt.stats.counts.frames_failed < n:
            if time.monotonic() > end:
                raise TimeoutError(f"stream did not finish: {rt.stats.counts}")
            time.sleep(0.01)
        stream = rt._stream
        overlapped = stream.overlapped if stream is not None else 0
    finally:
        rt.stop()
    ok = [(t, r) for t, r in results if hasattr(r, "instances")]
    if len(ok) != len(results):
        raise RuntimeError(
            f"{len(results) - len(ok)} frame(s) failed: "
            f"{[r.message for _, r in results if not hasattr(r, 'instances')]}"
        )
    in_order = [r.meta for _, r in ok] == sorted(r.meta for _, r in ok)
    outputs = len(ok)
    ok = ok[WARMUP_OUTPUTS:]  # steady state: the first output of a run (cold start) is not counted
    times = [t for t, _ in ok]
    tim = [r.timings for _, r in ok]
    return {
        "outputs": outputs,
        "dropped": rt.stats.counts.frames_dropped,
        "in_order": in_order,
        "overlapped": overlapped,
        "span": (len(ok) - 1, times[-1] - times[0] if len(ok) > 1 else 0.0),
        "latency": [t["total"] for t in tim],
        "io": [t.get("preprocess", 0) + t.get("partition", 0) + t.get("remote", 0) + t.get("merge", 0) for t in tim],
        "compute": [t.get("edge_encoder", 0) + t.get("decoder", 0) for t in tim],
        "queue": [t.get("queue", 0.0) for t in tim],
        "processing": [t["total"] - t.get("queue", 0.0) for t in tim],
        "handoff": [t.get("handoff", 0.0) for t in tim],
    }


def _pooled(runs: List[Dict]) -> Dict:
    """Several runs of one runtime in one setting, pooled: throughput over all their outputs,
    medians over all their frames."""
    intervals = sum(r["span"][0] for r in runs)
    seconds = sum(r["span"][1] for r in runs)

    def med(key: str) -> float:
        return statistics.median(v for r in runs for v in r[key])

    return {
        "runs": len(runs),
        "outputs": sum(r["outputs"] for r in runs),
        "dropped": sum(r["dropped"] for r in runs),
        "in_order": all(r["in_order"] for r in runs),
        "overlapped": sum(r["overlapped"] for r in runs),
        "throughput_fps": intervals / seconds if seconds > 0 else None,
        "latency_median_s": med("latency"),
        "latency_min_s": min(v for r in runs for v in r["latency"]),
        # from the moment the runtime took the frame to its result (latency less the frame's age then)
        "processing_median_s": med("processing"),
        "io_stage_median_s": med("io"),
        "compute_stage_median_s": med("compute"),
        # where a frame's latency goes: its age when taken, and (pipelined) its wait for the compute thread
        "queue_median_s": med("queue"),
        "handoff_median_s": med("handoff"),
    }


DEFAULT_SCALES = (0.5, 1.0, 1.5)


def measure_stream(
    model: str = DEFAULT_MODEL,
    frames: int = 64,
    remote_s: Optional[float] = None,
    device: str = "cpu",
    precision: str = "float32",
    grid: str = "2x2",
    seed: int = 0,
    remote_scales: Sequence[float] = DEFAULT_SCALES,
    repeats: int = 1,
) -> Dict:
    """Pipelined vs sequential edge runtime on the same frames (see the module doc), per
    setting: ``remote_s`` if given, else each of ``remote_scales`` x the measured edge phase.
    Each setting runs both runtimes ``repeats`` times, alternating which goes first, and pools
    their frames.  A JSON-able dict: ``settings`` (one record each) and the worst ratios."""
    from ped_sam_ros.core.pipeline import ObjectPrompt
    from ped_sam_ros.core.transport import ServerAddress
    from ped_sam_ros.edge.builder import build_pipeline, local_transport
    from ped_sam_ros.edge.config import EdgeConfig

    rows, cols = (int(x) for x in grid.split("x"))
    servers = [ServerAddress(f"s{i}", f"tcp://127.0.0.1:{7000 + i}") for i in range(rows * cols)]
    prompts = [ObjectPrompt(points=[(200.0, 150.0, 1)]), ObjectPrompt(box=(50.0, 40.0, 400.0, 300.0))]
    images = _frames(4, seed=seed)

    def config(pipelined: bool) -> EdgeConfig:
        return EdgeConfig(
            model=model,
            random_weights=True,
            seed=seed,
            grid=grid,
            servers=servers,
            device=device,
            precision=precision,
            pipelined=pipelined,
        )

    base = build_pipeline(config(False), transport_factory=local_transport)
    emulated = _EmulatedRemote(base.encoder, 0.0)
    seg = base.segmenter
    for rgb in images:
        emulated.precompute(seg.predictor.transform.apply_image(rgb))
    # the edge phase alone (edge encoder + decoder), warm, to size the emulated remote phase
    base.encoder.encode_remote = emulated
    edge_s = []
    for rgb in images + images:
        seg.set_image(rgb)
        t0 = time.perf_counter()
        seg.segment(prompts)
        edge_s.append(seg.stats.timings["edge_encoder"] + time.perf_counter() - t0)
    edge_phase = min(edge_s[len(images) :])  # the least disturbed by other load

    def factory(pipelined: bool):
        def build():
            base.config.pipelined = pipelined  # the same weights and emulated remote for both runs
            return base

        return build

    base.close = lambda: None  # shared by every run; closed at the end
    remotes = [remote_s] if remote_s is not None else [scale * edge_phase for scale in remote_scales]
    settings = []
    try:
        for n, r_s in enumerate(remotes):
            emulated.remote_s = r_s
            interval = min(r_s, edge_phase) / 4  # a camera faster than either runtime
            runs: Dict[bool, List[Dict]] = {False: [], True: []}
            for rep in range(repeats):
                for pipelined in (False, True) if (n + rep) % 2 == 0 else (True, False):
                    cam = 1000 * n + rep  # the same camera for both runtimes of this repeat
                    runs[pipelined].append(_run(factory(pipelined), images, frames, interval, prompts, cam))
            settings.append(_setting(r_s, edge_phase, interval, _pooled(runs[False]), _pooled(runs[True])))
    finally:
        base.transport.close()
    return {
        "status": "measured",
        "model": model,
        "device": f"{device}/{precision}",
        "torch_threads": torch.get_num_threads(),
        "frames_submitted": frames,
        "repeats": repeats,
        "remote_phase": "emulated: tokens of the real remote stage after remote_s (servers are other machines)",
        "edge_phase_alone_s": edge_phase,
        "settings": settings,
        "worst_throughput_vs_ideal": min(r["throughput_vs_ideal"] or 0.0 for r in settings),
        "worst_latency_vs_sequential": max(r["latency_vs_sequential"] for r in settings),
        "worst_processing_vs_sequential": max(r["processing_vs_sequential"] for r in settings),
    }


def _setting(remote_s: float, edge_phase: float, interval: float, seq: Dict, pipe: Dict) -> Dict:
    """One setting's record: both runs, the ideal, and the ratios the targets are about."""
    slowest = max(pipe["io_stage_median_s"], pipe["compute_stage_median_s"])
    ideal = 1.0 / slowest if slowest > 0 else None
    return {
        "remote_s": remote_s,
        "remote_vs_edge_phase": remote_s / edge_phase if edge_phase > 0 else None,
        "camera_interval_s": interval,
        "sequential": seq,
        "pipelined": pipe,
        "slowest_stage_s": slowest,
        "ideal_fps": ideal,
        "throughput_vs_ideal": pipe["throughput_fps"] / ideal if ideal and pipe["throughput_fps"] else None,
        "throughput_vs_sequential": pipe["throughput_fps"] / seq["throughput_fps"]
        if pipe["throughput_fps"] and seq["throughput_fps"]
        else None,
        "latency_vs_sequential": pipe["latency_median_s"] / seq["latency_median_s"],
        "processing_vs_sequential": pipe["processing_median_s"] / seq["processing_median_s"],
        # what the I/O thread's work beside the compute costs it (compute side, pipelined vs sequential)
        "interference_s": pipe["compute_stage_median_s"] - seq["compute_stage_median_s"],
    }


def format_report(r: Dict) -> str:
    lines = [
        f"stream ({r['model']}, {r['device']}, {r['torch_threads']} threads, {r['repeats']} run(s) each; "
        f"edge phase alone {r['edge_phase_alone_s'] * 1e3:.0f} ms; {r['remote_phase']}), medians in ms:",
        f"  {'remote/edge':>11} {'I/O':>6} {'comp':>6} {'ideal/s':>7} | {'seq/s':>6} {'pipe/s':>6} "
        f"{'/ideal':>6} | {'lat seq':>7} {'lat pipe':>8} {'ratio':>5} {'proc':>5} | {'queue s/p':>9} {'handoff':>7} "
        f"{'interf':>6} | out s/p, in order",
    ]
    for x in r["settings"]:
        s, p = x["sequential"], x["pipelined"]
        lines.append(
            f"  {x['remote_vs_edge_phase']:>11.2f} {p['io_stage_median_s'] * 1e3:>6.0f} "
            f"{p['compute_stage_median_s'] * 1e3:>6.0f} {x['ideal_fps']:>7.2f} | {s['throughput_fps']:>6.2f} "
            f"{p['throughput_fps']:>6.2f} {x['throughput_vs_ideal']:>6.2f} | {s['latency_median_s'] * 1e3:>7.0f} "
            f"{p['latency_median_s'] * 1e3:>8.0f} {x['latency_vs_sequential']:>5.2f} "
            f"{x['processing_vs_sequential']:>5.2f} | "
            f"{s['queue_median_s'] * 1e3:>4.0f}/{p['queue_median_s'] * 1e3:<4.0f} {p['handoff_median_s'] * 1e3:>7.0f} "
            f"{x['interference_s'] * 1e3:>6.0f} | {s['outputs']}/{p['outputs']}, {p['in_order']}"
        )
    lines.append(
        f"  worst: throughput / ideal {r['worst_throughput_vs_ideal']:.2f} (target >= 0.9), "
        f"latency / sequential {r['worst_latency_vs_sequential']:.2f} (target <= 1.00; "
        f"from the frame's taking: {r['worst_processing_vs_sequential']:.2f})"
    )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ped_sam_ros.bench.stream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--frames", type=int, default=64, help="camera frames per run (about a quarter are processed)")
    ap.add_argument("--remote-ms", type=float, default=None, help="one setting: this emulated remote phase")
    ap.add_argument(
        "--remote-scales",
        type=float,
        nargs="+",
        default=list(DEFAULT_SCALES),
        help="settings: the emulated remote phase as multiples of the measured edge phase (default 0.5 1 1.5)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs of each runtime per setting, pooled (default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure_stream(
        args.model,
        args.frames,
        None if args.remote_ms is None else args.remote_ms / 1e3,
        args.device,
        args.precision,
        remote_scales=args.remote_scales,
        repeats=args.repeats,
    )
    print(format_report(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
