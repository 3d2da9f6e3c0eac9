"""Benchmark of the encoder stages: what the split saves the edge, fused vs reference
attention, memory, and reduced-precision fidelity.  Run through ``ped-sam-bench``.

RANDOM WEIGHTS, FULL WIDTHS (vit_b/l/h geometry, 1024x1024 input): the arithmetic, and
so the time and memory, does not depend on the weights' values; the fidelity figures
(bfloat16/float16 vs float32 on the same weights) are those of random-weight models.

Everything runs in one process, interleaved: each round runs every case once (in a
rotated order), the first ``warmup`` rounds are dropped, and min and median are
reported, so a slowdown from other processes on a shared machine hits every case alike.

* ``stages`` (the default measurement): the edge-only encoder (the whole encoder on the
  edge: patch embedding, every block, neck) against the edge stage of every mode
  (``exact``, ``k2``, ``k3``, ``paper``: its blocks on the merged 64x64 grid, then the
  neck), and the remote stage on one tile.  All are timed on one :class:`WholeEncoder`'s
  weights (an edge stage of a mode runs exactly those modules in that order; a unit
  test checks it against :class:`EdgeStage`), so the machine holds one model, not five.
* ``blocks`` (``--quick``): each component kind once (patch embedding, a window block
  and a global block on the 64x64 grid, the neck), and the stage times *composed* from
  the block counts of each mode.  Labelled ``composed`` in the output.
* attention: one global block with the project's fused attention against
  segment_anything's reference (same weights, same input): time, and peak memory above
  the block's weights and input.
* memory (separate processes, so that nothing cached from another case counts): peak
  of a global and a window block, and of building each model's paper edge stage from
  nothing (and, with ``--full``, of the old path: a whole random SAM first).
* fidelity: the embedding of one image by the whole encoder in bfloat16 (and float16
  on a GPU) against float32 on the same weights: cosine and max abs difference.
* stream throughput against 1/(slowest stage), and per-frame latency against the
  sequential runtime, edge-bound, balanced and I/O-bound: :func:`stream_throughput`
  (:mod:`.stream`, ``stream_frames`` > 0).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..core.attention import set_attention_impl
from ..core.device import Placement, resolve_placement
from ..core.model import (
    PIXEL_MEAN,
    PIXEL_STD,
    EdgeStage,
    RemoteStage,
    SamGeometry,
    WholeEncoder,
    _encoder_shell,
    _mask_decoder,
    _prompt_encoder,
    get_geometry,
    make_block,
    make_fused_block,
    random_sam,
)
from ..core.seeded import fill_seeded_

MODELS = ("vit_b", "vit_l", "vit_h")
MIB = 2**20
#: the issue's targets (edge stage / edge-only on this CPU; global block vs reference; memory)
TARGETS = {
    "ratio_paper": {"vit_h": 0.22, "vit_b": 0.52},
    "ratio_floor": {"vit_h": 0.17, "vit_b": 0.46},
    "global_speedup": 1.4,
    "global_peak_gib_vit_h": 1.2,
    "build_peak_gib_vit_h": 1.5,
}


@dataclass
class Settings:
    """What one benchmark run measures."""

    models: Sequence[str] = MODELS
    devices: Sequence[str] = ("cpu",)
    #: precisions timed per device type (CPU float16 is refused by policy, see core.device)
    precisions: Dict[str, Sequence[str]] = field(
        default_factory=lambda: {"cpu": ("float32",), "cuda": ("float32", "float16", "bfloat16")}
    )
    measure: str = "stages"  # or "blocks" (composed from per-block timings)
    warmup: int = 1
    reps: int = 3
    attention: bool = True
    memory: bool = True
    old_build_path: bool = False
    window_probe: bool = True
    fidelity_models: Sequence[str] = ("vit_b",)
    fidelity_precisions: Sequence[str] = ("bfloat16", "float16")
    compile: bool = False
    seed: int = 0
    #: camera frames per run through the pipelined and the sequential edge runtime, in each of
    #: bench.stream's settings (edge-bound, balanced, I/O-bound); 0: not measured
    stream_frames: int = 0


# ---------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds per run of one case after the warm-up rounds."""

    runs: List[float]

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def to_dict(self) -> Dict:
        return {"min_s": self.min, "median_s": self.median, "runs_s": self.runs}


def interleaved(
    cases: Dict[str, Callable[[], object]],
    warmup: int,
    reps: int,
    device: torch.device,
    log: Callable[[str], None] = lambda s: None,
) -> Dict[str, Timing]:
    """Run every case once per round, rotating the order each round; the first ``warmup``
    rounds are not recorded.  Returns name -> :class:`Timing` over ``reps`` rounds."""
    names = list(cases)
    runs: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + reps):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            _sync(device)
            t0 = time.perf_counter()
            cases[n]()
            _sync(device)
            dt = time.perf_counter() - t0
            if r >= warmup:
                runs[n].append(dt)
            log(f"  round {r + 1}/{warmup + reps} {n}: {dt:.3f} s{' (warm-up)' if r < warmup else ''}")
    return {n: Timing(v) for n, v in runs.items()}


# ---------------------------------------------------------------------------
# Memory


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else -1


class PeakMeter:
    """Peak memory above the level at :meth:`start`: CUDA allocator statistics on a GPU,
    the process's resident-set high-water mark (Linux ``VmHWM``, reset through
    ``/proc/self/clear_refs``) on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0

    @staticmethod
    def cpu_supported() -> bool:
        return os.path.exists("/proc/self/clear_refs") and _proc_status_kib("VmHWM") >= 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
            self.base = _proc_status_kib("VmRSS") * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _proc_status_kib("VmHWM") * 1024 - self.base


def _seeded_block(geom: SamGeometry, index: int, placement: Placement, seed: int, fused: bool = True):
    """Block ``index`` of ``random_sam(geom, seed)`` (fused or reference), built alone on the device."""
    with torch.device("meta"):
        block = make_fused_block(geom, index) if fused else make_block(geom, index)
    block.to_empty(device=placement.device)
    fill_seeded_(block, seed, key_of=lambda k: f"image_encoder.blocks.{index}.{k}")
    return block.to(placement.dtype).eval()


def probe(spec: Dict) -> Dict:
    """One memory measurement in this process (what :func:`run_probe` runs in a fresh one).

    ``kind``: ``build`` (a stage or ``random_sam`` from nothing: peak above the
    imports), ``block`` (one block's first forward on the 64x64 grid: peak above its
    weights and input).
    """
    placement = resolve_placement(spec.get("device", "cpu"), spec.get("precision", "float32"))
    geom = get_geometry(spec["model"])
    meter = PeakMeter(placement.device)
    seed = int(spec.get("seed", 0))
    if spec["kind"] == "build":
        meter.start()
        t0 = time.perf_counter()
        opts = dict(seed=seed, device=placement.device, precision=placement.dtype)
        what = spec["stage"]
        if what == "edge":
            obj = EdgeStage(geom, spec.get("mode", "paper"), **opts)
        elif what == "remote":
            obj = RemoteStage(geom, **opts)
        elif what == "whole_sam_then_edge":  # the old path: a whole random SAM, then the stage's tensors
            sam = random_sam(geom, seed)
            obj = EdgeStage(
                geom, spec.get("mode", "paper"), seed=None, device=placement.device, precision=placement.dtype
            )
            obj._load_own(sam.state_dict())
            del sam
        else:
            raise ValueError(f"unknown stage {what!r}")
        _sync(placement.device)
        weights = sum(t.numel() * t.element_size() for t in obj.state_dict().values())
        return {"peak_bytes": meter.peak_bytes(), "weights_bytes": weights, "seconds": time.perf_counter() - t0}
    if spec["kind"] == "block":
        index = geom.global_attn_indexes[0] if spec["block"] == "global" else geom.window_blocks[0]
        block = _seeded_block(geom, index, placement, seed, fused=True)
        set_attention_impl([block], spec.get("impl", "fused"))
        g = geom.token_grid
        x = torch.randn(1, g, g, geom.embed_dim, device=placement.device, dtype=placement.dtype)
        with torch.no_grad():
            meter.start()
            y = block(x)  # the first call: one-time allocations of the kernels count too
            peak = meter.peak_bytes()
        del y
        return {"peak_bytes": peak, "input_bytes": x.numel() * x.element_size()}
    raise ValueError(f"unknown probe kind {spec['kind']!r}")


def run_probe(spec: Dict, timeout_s: float = 1800.0) -> Dict:
    """:func:`probe` in a fresh Python process (glibc told to return freed memory at once,
    so that the resident-set peak is the live memory)."""
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="65536",
        MALLOC_TRIM_THRESHOLD_="0",
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )  # as many threads as this process
    out = subprocess.run(
        [sys.executable, "-m", "ped_sam_ros.bench.encoder", "--probe", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1], "returncode": out.returncode}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------
# Stage arithmetic shared by both measurements


@cache
def stage_weight_bytes(spec: str, stage: str, mode: str, itemsize: int) -> int:
    """Bytes of a stage's weights (encoder parts at ``itemsize``, the rest float32), counted on meta."""
    g = get_geometry(spec)

    def numel(*modules) -> int:
        return sum(t.numel() for m in modules for t in m.state_dict().values())

    with torch.device("meta"):
        shell = _encoder_shell(g)
        if stage == "edge":
            blocks = [make_block(g, i) for i in g.edge_blocks(mode)]
            return numel(*blocks) * itemsize + numel(shell.neck, _prompt_encoder(g), _mask_decoder()) * 4
        blocks = [make_block(g, i) for i in g.remote_blocks("paper")]
        return (numel(*blocks, shell.patch_embed) + shell.pos_embed.numel()) * itemsize


def _image(geom: SamGeometry, device: torch.device) -> torch.Tensor:
    """A normalised 1x3x1024x1024 input: a real photo where scikit-image is installed, else a
    smooth synthetic pattern (the content does not change the arithmetic)."""
    try:
        import skimage.data

        rgb = skimage.data.astronaut()
        rgb = np.asarray(
            torch.nn.functional.interpolate(
                torch.from_numpy(rgb).permute(2, 0, 1)[None].float(),
                size=(geom.img_size, geom.img_size),
                mode="bilinear",
                align_corners=False,
            )[0].permute(1, 2, 0)
        )
    except ImportError:
        yy, xx = np.mgrid[0 : geom.img_size, 0 : geom.img_size] / geom.img_size
        rgb = np.stack([255 * xx, 255 * yy, 255 * (0.5 + 0.5 * np.sin(12 * xx * yy))], -1)
    x = (torch.from_numpy(np.ascontiguousarray(rgb)).float() - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)
    return x.permute(2, 0, 1)[None].to(device)


# ---------------------------------------------------------------------------
# Measurements


def bench_stages(spec: str, placement: Placement, s: Settings, log) -> Dict:
    """End-to-end: the edge-only encoder, every mode's edge stage, one remote tile (paper)."""
    g = get_geometry(spec)
    whole = WholeEncoder(g, seed=s.seed, device=placement.device, precision=placement.dtype, compile=s.compile)
    x = _image(g, placement.device)
    with torch.no_grad():
        tokens = whole.embed(x)
    t = 28  # the largest tile of a 2x2 token-aligned grid is 36x36 tokens; 28x28 is its top-left one
    tile_px = x[:, :, : t * g.patch_size, : t * g.patch_size]

    def remote_tile():
        with torch.no_grad():
            y = whole.patch_embed(tile_px.to(placement.dtype)) + whole.pos_embed[:, :t, :t]
            return whole.run_blocks(y, g.remote_blocks("paper"))

    cases: Dict[str, Callable] = {"edge_only": lambda: whole(x)}
    for mode in g.modes:
        cases[f"edge_{mode}"] = lambda m=mode: whole.encode_tokens(tokens, g.edge_blocks(m))
    cases["remote_paper_28x28_tile"] = remote_tile
    timings = interleaved(cases, s.warmup, s.reps, placement.device, log)
    return {"method": "measured end to end", "timings": {k: v.to_dict() for k, v in timings.items()}}


def bench_blocks(spec: str, placement: Placement, s: Settings, log) -> Dict:
    """Per component kind, then composed: stage time = sum over its blocks (+ embedding, neck)."""
    g = get_geometry(spec)
    wblock = _seeded_block(g, g.window_blocks[0], placement, s.seed)
    gblock = _seeded_block(g, g.global_attn_indexes[0], placement, s.seed)
    with torch.device("meta"):
        shell = _encoder_shell(g)
    shell.to_empty(device=placement.device)
    fill_seeded_(shell, s.seed, key_of=lambda k: f"image_encoder.{k}")
    shell.patch_embed.to(placement.dtype)  # the encoder parts in the placement's precision, the neck float32
    shell.eval()
    x = _image(g, placement.device).to(placement.dtype)
    grid = torch.randn(1, g.token_grid, g.token_grid, g.embed_dim, device=placement.device, dtype=placement.dtype)
    with torch.no_grad():
        cases = {
            "patch_embed": lambda: shell.patch_embed(x),
            "window_block": lambda: wblock(grid),
            "global_block": lambda: _with_impl(gblock, "fused", grid),
            "neck": lambda: shell.neck(grid.float().permute(0, 3, 1, 2)),
        }
        if s.attention:  # the reference global block in the same rounds (see bench_attention)
            cases["global_block_reference"] = lambda: _with_impl(gblock, "reference", grid)
            diff = (_with_impl(gblock, "fused", grid) - _with_impl(gblock, "reference", grid)).abs().max().item()
        timings = interleaved(cases, s.warmup, s.reps, placement.device, log)
    attention = None
    if s.attention:
        ref = timings.pop("global_block_reference")
        attention = _attention_record(timings["global_block"], ref, diff)
    parts = {k: v.min for k, v in timings.items()}
    parts_med = {k: v.median for k, v in timings.items()}

    def compose(p: Dict[str, float], blocks: Sequence[int], embed: bool) -> float:
        n_glob = sum(1 for i in blocks if g.is_global(i))
        return (
            (p["patch_embed"] if embed else 0.0)
            + n_glob * p["global_block"]
            + (len(blocks) - n_glob) * p["window_block"]
            + p["neck"]
        )

    composed = {"edge_only": (compose(parts, range(g.depth), True), compose(parts_med, range(g.depth), True))}
    for mode in g.modes:
        composed[f"edge_{mode}"] = (
            compose(parts, g.edge_blocks(mode), False),
            compose(parts_med, g.edge_blocks(mode), False),
        )
    return {
        "method": "composed from per-block timings",
        "components": {k: v.to_dict() for k, v in timings.items()},
        "timings": {k: {"min_s": a, "median_s": b} for k, (a, b) in composed.items()},
        "attention": attention,
    }


def _with_impl(block, impl: str, x: torch.Tensor) -> torch.Tensor:
    set_attention_impl([block], impl)
    with torch.no_grad():
        return block(x).float()


def _attention_record(fused: Timing, reference: Timing, max_abs_diff: float) -> Dict:
    return {
        "timings": {"fused": fused.to_dict(), "reference": reference.to_dict()},
        "speedup_min": reference.min / fused.min,
        "speedup_median": reference.median / fused.median,
        "max_abs_diff": max_abs_diff,
    }


def bench_attention(spec: str, placement: Placement, s: Settings, log) -> Dict:
    """One global block, fused vs reference attention on the same weights and input."""
    g = get_geometry(spec)
    block = _seeded_block(g, g.global_attn_indexes[0], placement, s.seed)
    x = torch.randn(1, g.token_grid, g.token_grid, g.embed_dim, device=placement.device, dtype=placement.dtype)
    diff = (_with_impl(block, "fused", x) - _with_impl(block, "reference", x)).abs().max().item()
    cases = {"fused": lambda: _with_impl(block, "fused", x), "reference": lambda: _with_impl(block, "reference", x)}
    timings = interleaved(cases, s.warmup, s.reps, placement.device, log)
    return _attention_record(timings["fused"], timings["reference"], diff)


def bench_memory(spec: str, placement: Placement, s: Settings, log) -> Dict:
    """Peaks in fresh processes: global block (fused, reference), window block, paper edge stage build."""
    base = {"model": spec, "device": str(placement.device), "precision": placement.precision, "seed": s.seed}
    out = {}
    probes = [
        ("global_block_fused", {"kind": "block", "block": "global", "impl": "fused"}),
        ("global_block_reference", {"kind": "block", "block": "global", "impl": "reference"}),
        ("window_block_fused", {"kind": "block", "block": "window", "impl": "fused"}),
        ("build_edge_paper", {"kind": "build", "stage": "edge", "mode": "paper"}),
    ]
    if not s.window_probe:
        probes = [p for p in probes if p[0] != "window_block_fused"]
    for name, extra in probes:
        log(f"  memory probe {name}")
        out[name] = run_probe({**base, **extra})
    if s.old_build_path:
        log("  memory probe build_whole_sam_then_edge_paper (the old path)")
        out["build_whole_sam_then_edge_paper"] = run_probe({**base, "kind": "build", "stage": "whole_sam_then_edge"})
    itemsize = torch.empty(0, dtype=placement.dtype).element_size()
    g = get_geometry(spec)
    out["weights_bytes"] = {f"edge_{m}": stage_weight_bytes(g.spec, "edge", m, itemsize) for m in g.modes}
    out["weights_bytes"]["remote"] = stage_weight_bytes(g.spec, "remote", "paper", itemsize)
    return out


def bench_fidelity(spec: str, device: str, precisions: Sequence[str], s: Settings, log) -> Dict:
    """The whole encoder's embedding of one image in each precision vs float32, same weights."""
    g = get_geometry(spec)
    ref_p = resolve_placement(device, "float32")
    x = _image(g, ref_p.device)
    ref = WholeEncoder(g, seed=s.seed, device=ref_p.device)(x).flatten().double().cpu()
    out = {}
    for prec in precisions:
        try:
            p = resolve_placement(device, prec)
        except ValueError as e:
            out[prec] = {"skipped": str(e)}
            continue
        log(f"  fidelity {spec} {p.describe()}")
        t0 = time.perf_counter()
        emb = WholeEncoder(g, seed=s.seed, device=p.device, precision=p.dtype)(x).flatten().double().cpu()
        out[prec] = {
            "cosine": torch.nn.functional.cosine_similarity(ref, emb, dim=0).item(),
            "max_abs_diff": (ref - emb).abs().max().item(),
            "ref_max_abs": ref.abs().max().item(),
            "seconds": time.perf_counter() - t0,
        }
    return out


def stream_throughput(s: Optional[Settings] = None, log: Callable[[str], None] = print) -> Dict:
    """Stream throughput of the pipelined edge runtime against 1/(slowest stage) and per-frame
    latency against the sequential runtime (:func:`.stream.measure_stream`: the narrow
    random-weight model's real edge stage and decoder, the remote phase emulated at 0.5, 1 and
    1.5 x the edge phase), on the first device; ``{"status": "not measured", ...}`` when
    ``s.stream_frames`` is 0."""
    if s is None or s.stream_frames <= 0:
        return {"status": "not measured", "reason": "stream_frames is 0 (ped-sam-bench --stream-frames N)"}
    from .stream import measure_stream

    device = s.devices[0] if s.devices else "cpu"
    log(f"stream: {s.stream_frames} frames through the pipelined and the sequential runtime on {device}")
    try:
        return measure_stream(frames=s.stream_frames, device=device, seed=s.seed)
    except Exception as e:  # noqa: BLE001 - reported in the report, the rest stands
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------
# The run


def machine() -> Dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
    }
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        info["cpu"] = m.group(1) if m else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    return info


def run(s: Settings, log: Callable[[str], None] = print) -> Dict:
    """Every measurement of ``s``; a JSON-serialisable report."""
    report: Dict = {
        "settings": asdict(s),
        "machine": machine(),
        "weights": "RANDOM (seeded), full widths",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": [],
        "attention": [],
        "memory": [],
        "fidelity": [],
        "stream": stream_throughput(s, log),
    }
    for device in s.devices:
        for prec in s.precisions.get(torch.device(device).type, ("float32",)):
            try:
                placement = resolve_placement(device, prec)
            except ValueError as e:
                log(f"skip {device}/{prec}: {e}")
                continue
            for spec in s.models:
                tag = f"{spec} on {placement.describe()}"
                log(f"[{s.measure}] {tag}")
                bench = bench_stages if s.measure == "stages" else bench_blocks
                res = bench(spec, placement, s, log)
                report["results"].append(
                    {
                        "model": spec,
                        "device": str(placement.device),
                        "precision": placement.precision,
                        **res,
                        **_ratios(res),
                    }
                )
                if s.attention:
                    att = res.pop("attention", None)
                    if att is None:
                        log(f"[attention] {tag}")
                        att = bench_attention(spec, placement, s, log)
                    report["attention"].append(
                        {"model": spec, "device": str(placement.device), "precision": placement.precision, **att}
                    )
                if s.memory and (placement.device.type == "cuda" or PeakMeter.cpu_supported()):
                    log(f"[memory] {tag}")
                    report["memory"].append(
                        {
                            "model": spec,
                            "device": str(placement.device),
                            "precision": placement.precision,
                            **bench_memory(spec, placement, s, log),
                        }
                    )
                gc.collect()
        for spec in s.fidelity_models:
            log(f"[fidelity] {spec} on {device}")
            report["fidelity"].append(
                {"model": spec, "device": device, **bench_fidelity(spec, device, s.fidelity_precisions, s, log)}
            )
    return report


def _ratios(res: Dict) -> Dict:
    t = res["timings"]
    base = t["edge_only"]
    return {
        "ratios": {
            k: {"min": v["min_s"] / base["min_s"], "median": v["median_s"] / base["median_s"]}
            for k, v in t.items()
            if k.startswith("edge_") and k != "edge_only"
        }
    }


def _gib(b: Optional[float]) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def format_report(rep: Dict) -> str:
    """The tables ``ped-sam-bench`` prints: ratios with the issue's targets side by side."""
    lines = [
        f"ped-sam-bench {rep['date']}  {rep['machine'].get('cpu', '')}  torch {rep['machine']['torch']} "
        f"threads {rep['machine']['torch_threads']}  weights: {rep['weights']}"
    ]
    for r in rep["results"]:
        lines.append(f"\n{r['model']} {r['device']}/{r['precision']} ({r['method']}), seconds min/median:")
        t = r["timings"]
        lines.append(f"  {'edge_only':<26} {t['edge_only']['min_s']:8.3f} {t['edge_only']['median_s']:8.3f}")
        for k, v in t.items():
            if k == "edge_only":
                continue
            ratio = r["ratios"].get(k)
            target = ""
            if k == "edge_paper" and r["model"] in TARGETS["ratio_paper"]:
                target = (
                    f"  target <= {TARGETS['ratio_paper'][r['model']]:.2f} "
                    f"(MAC floor {TARGETS['ratio_floor'][r['model']]:.2f})"
                )
            rs = f"  ratio {ratio['min']:.3f} / {ratio['median']:.3f}" if ratio else ""
            lines.append(f"  {k:<26} {v['min_s']:8.3f} {v['median_s']:8.3f}{rs}{target}")
    for a in rep["attention"]:
        t = a["timings"]
        lines.append(
            f"\nglobal block {a['model']} {a['device']}/{a['precision']}: fused {t['fused']['min_s']:.3f} s, "
            f"reference {t['reference']['min_s']:.3f} s (min); speedup {a['speedup_min']:.2f}x min, "
            f"{a['speedup_median']:.2f}x median (target >= {TARGETS['global_speedup']}x); "
            f"max |fused - reference| {a['max_abs_diff']:.1e}"
        )
    for m in rep["memory"]:
        pk = lambda name, m=m: m.get(name, {}).get("peak_bytes")  # noqa: E731
        lines.append(
            f"\nmemory {m['model']} {m['device']}/{m['precision']} (GiB): global block peak above input "
            f"fused {_gib(pk('global_block_fused'))} vs reference {_gib(pk('global_block_reference'))}"
            + (f" (target <= {TARGETS['global_peak_gib_vit_h']})" if m["model"] == "vit_h" else "")
            + f"; window block {_gib(pk('window_block_fused'))}; paper edge stage build peak "
            f"{_gib(pk('build_edge_paper'))}"
            + (f" (target <= {TARGETS['build_peak_gib_vit_h']})" if m["model"] == "vit_h" else "")
            + (
                f"; old path (whole SAM first) {_gib(pk('build_whole_sam_then_edge_paper'))}"
                if "build_whole_sam_then_edge_paper" in m
                else ""
            )
        )
        w = m["weights_bytes"]
        lines.append("  weights per stage (GiB): " + ", ".join(f"{k} {_gib(v)}" for k, v in w.items()))
        for name, v in m.items():
            if isinstance(v, dict) and "error" in v:
                lines.append(f"  probe {name} failed: {v['error']}")
    for f in rep["fidelity"]:
        for prec, v in f.items():
            if isinstance(v, dict) and "cosine" in v:
                lines.append(
                    f"\nfidelity {f['model']} {f['device']} {prec} vs float32 (random weights, whole "
                    f"encoder): cosine {v['cosine']:.6f}, max abs diff {v['max_abs_diff']:.3g} "
                    f"(|ref| max {v['ref_max_abs']:.3g})"
                )
            elif isinstance(v, dict) and "skipped" in v:
                lines.append(f"\nfidelity {f['model']} {f['device']} {prec}: skipped ({v['skipped']})")
    if rep["stream"].get("status") == "measured":
        from .stream import format_report as format_stream

        lines.append("\n" + format_stream(rep["stream"]))
    else:
        lines.append(f"\nstream throughput: {rep['stream']['status']} ({rep['stream']['reason']})")
    return "\n".join(lines)


def _probe_main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--probe":
        print("usage: python -m ped_sam_ros.bench.encoder --probe JSON (use ped-sam-bench)", file=sys.stderr)
        return 2
    print(json.dumps(probe(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
