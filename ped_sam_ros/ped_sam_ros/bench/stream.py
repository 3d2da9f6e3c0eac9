"""Stream throughput of the pipelined edge runtime against 1/(slowest stage), and per-frame
latency against the sequential runtime, in one process.

The edge side is real: a random-weight model (default the narrow ``vit_b/w32h2``; any
geometry works) runs its edge stage and SAM's decoder on this machine's CPU or GPU.  The
servers are other machines in production, so the remote phase is emulated: it returns the
tokens the real remote stage computed for that frame beforehand (untimed) after sleeping
``remote_s`` (by default the measured edge phase, the balanced case where overlap matters
most).  A camera submits frames faster than either runtime can take them (latest frame wins),
the same way for both runtimes, run one after the other.

* stages: the I/O side (resize + remote phase) and the compute side (edge encoder + decoder),
  medians of the pipelined run's per-frame timings;
* throughput: outputs per second between the first and the last output; the ideal is
  1 / max(stage medians);
* latency: median of each published frame's ``total`` (camera stamp to result).

    python -m ped_sam_ros.bench.stream --frames 64 --json out/bench/stream.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

DEFAULT_MODEL = "vit_b/w32h2"


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


def _run(pipe_factory, frames: List[np.ndarray], n: int, interval_s: float, prompts) -> Dict:
    """Submit ``n`` frames (cycling through ``frames``) every ``interval_s``; results and counts."""
    from ped_sam_ros.edge.records import Frame
    from ped_sam_ros.edge.runtime import EdgeRuntime

    results, done = [], threading.Event()

    def on_result(r):
        results.append((time.monotonic(), r))

    rt = EdgeRuntime(
        pipe_factory, on_result=on_result, on_error=lambda e: results.append((time.monotonic(), e)), idle_poll_s=0.05
    ).start(timeout_s=600)
    try:
        rt.set_prompts(prompts)
        for k in range(n):
            rt.submit(Frame(frames[k % len(frames)], meta=k))
            done.wait(interval_s)
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
    times = [t for t, _ in ok]
    tim = [r.timings for _, r in ok]
    io = [t.get("preprocess", 0) + t.get("partition", 0) + t.get("remote", 0) + t.get("merge", 0) for t in tim]
    compute = [t.get("edge_encoder", 0) + t.get("decoder", 0) for t in tim]
    return {
        "outputs": len(ok),
        "dropped": rt.stats.counts.frames_dropped,
        "in_order": [r.meta for _, r in ok] == sorted(r.meta for _, r in ok),
        "overlapped": overlapped,
        "throughput_fps": (len(ok) - 1) / (times[-1] - times[0]) if len(ok) > 1 else None,
        "latency_median_s": statistics.median(t["total"] for t in tim),
        "latency_min_s": min(t["total"] for t in tim),
        "io_stage_median_s": statistics.median(io),
        "compute_stage_median_s": statistics.median(compute),
    }


def measure_stream(
    model: str = DEFAULT_MODEL,
    frames: int = 64,
    remote_s: Optional[float] = None,
    device: str = "cpu",
    precision: str = "float32",
    grid: str = "2x2",
    seed: int = 0,
) -> Dict:
    """Pipelined vs sequential edge runtime on the same frames (see the module doc); a JSON-able dict."""
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
    emulated.remote_s = edge_phase if remote_s is None else remote_s

    def factory(pipelined: bool):
        def build():
            base.config.pipelined = pipelined  # the same weights and emulated remote for both runs
            return base

        return build

    interval = min(emulated.remote_s, edge_phase) / 4  # a camera faster than either runtime
    base.close = lambda: None  # shared by both runs; closed at the end
    try:
        seq = _run(factory(False), images, frames, interval, prompts)
        pipe = _run(factory(True), images, frames, interval, prompts)
    finally:
        base.transport.close()
    slowest = max(pipe["io_stage_median_s"], pipe["compute_stage_median_s"])
    ideal = 1.0 / slowest if slowest > 0 else None
    return {
        "status": "measured",
        "model": model,
        "device": f"{device}/{precision}",
        "torch_threads": torch.get_num_threads(),
        "frames_submitted": frames,
        "camera_interval_s": interval,
        "remote_phase": f"emulated: tokens of the real remote stage after {emulated.remote_s * 1e3:.0f} ms "
        "(servers are other machines)",
        "edge_phase_alone_s": edge_phase,
        "sequential": seq,
        "pipelined": pipe,
        "slowest_stage_s": slowest,
        "ideal_fps": ideal,
        "throughput_vs_ideal": pipe["throughput_fps"] / ideal if ideal and pipe["throughput_fps"] else None,
        "throughput_vs_sequential": pipe["throughput_fps"] / seq["throughput_fps"]
        if pipe["throughput_fps"] and seq["throughput_fps"]
        else None,
        "latency_vs_sequential": pipe["latency_median_s"] / seq["latency_median_s"],
    }


def format_report(r: Dict) -> str:
    s, p = r["sequential"], r["pipelined"]
    return "\n".join(
        [
            f"stream ({r['model']}, {r['device']}, {r['torch_threads']} threads; {r['remote_phase']})",
            f"  stages (pipelined run, medians): I/O {p['io_stage_median_s'] * 1e3:.0f} ms, "
            f"compute {p['compute_stage_median_s'] * 1e3:.0f} ms -> ideal {r['ideal_fps']:.2f} frames/s",
            f"  sequential: {s['throughput_fps']:.2f} frames/s, latency median {s['latency_median_s'] * 1e3:.0f} ms "
            f"({s['outputs']} out, {s['dropped']} dropped)",
            f"  pipelined:  {p['throughput_fps']:.2f} frames/s, latency median {p['latency_median_s'] * 1e3:.0f} ms "
            f"({p['outputs']} out, {p['dropped']} dropped, {p['overlapped']} overlapped, in order: {p['in_order']})",
            f"  throughput / ideal {r['throughput_vs_ideal']:.2f}, / sequential {r['throughput_vs_sequential']:.2f}; "
            f"latency / sequential {r['latency_vs_sequential']:.2f}",
        ]
    )


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ped_sam_ros.bench.stream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--frames", type=int, default=64, help="camera frames (about a quarter are processed)")
    ap.add_argument("--remote-ms", type=float, default=None, help="emulated remote phase (default: the edge phase)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure_stream(
        args.model, args.frames, None if args.remote_ms is None else args.remote_ms / 1e3, args.device, args.precision
    )
    print(format_report(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
