"""Compute, bytes and latency of each way to run SAM's image encoder.

MACs are counted from the model itself: segment_anything's modules are built on
PyTorch's ``meta`` device (no memory, no arithmetic) and run under
``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix products
and convolutions (``mm``/``addmm``/``bmm``/``einsum``/``conv``); MACs = FLOPs / 2.
Element-wise work (LayerNorm, GELU, softmax, additions) is not counted.  A
closed-form count (:func:`block_macs_analytic`) cross-checks it.

Wall time for full-size geometries is *measured per component* on this machine
(one patch embedding of a 14x14-token window, one window block on one 14x14
window, one global block on the 64x64 grid, the neck), turned into seconds per
MAC for each component kind, and scaled by each configuration's MAC counts.  The
blocks are timed with the fused attention the stages run
(:func:`~ped_sam_ros.core.model.make_fused_block`); MACs are counted on
segment_anything's reference blocks (the same arithmetic, in countable operations).

Bytes are payload bytes: uint8 RGB pixels up (only the image content of each
window, never SAM's padding), tokens down in the wire precision
(:func:`ped_sam_ros.core.wire.token_bytes`); message headers (a few hundred
bytes) are not counted.

No ROS, no network.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..core.geometry import Partition, Tile
from ..core.model import (
    SamGeometry,
    _encoder_shell,
    _mask_decoder,
    _prompt_encoder,
    get_geometry,
    make_block,
    make_fused_block,
)
from ..core.wire import token_bytes

COMPONENTS = ("patch_embed", "window_block", "global_block", "neck")
Workload = Dict[str, int]  # component kind -> MACs


# ---------------------------------------------------------------------------
# Counting


def count_macs(fn: Callable, *args, **kwargs) -> int:
    """Run ``fn(*args, **kwargs)`` under FlopCounterMode: the MACs (FLOPs / 2) it performs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # grad mode on: FlopCounterMode's module tracker needs it (nothing is materialised on meta)
    with torch.enable_grad(), counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops()) // 2


@cache
def block_macs(geom: SamGeometry, is_global: bool, h: int, w: int) -> int:
    """MACs of one encoder block on an h x w token map (a window block pads it to
    multiples of the window size and attends within each window, as SAM does)."""
    index = geom.global_attn_indexes[0] if is_global else geom.window_blocks[0]
    with torch.device("meta"):
        block = make_block(geom, index)
        x = torch.zeros(1, int(h), int(w), geom.embed_dim)
    return count_macs(block, x)


@cache
def patch_embed_macs(geom: SamGeometry, h: int, w: int) -> int:
    """MACs of the 16x16 patch embedding producing an h x w token map."""
    with torch.device("meta"):
        pe = _encoder_shell(geom).patch_embed
        x = torch.zeros(1, 3, int(h) * geom.patch_size, int(w) * geom.patch_size)
    return count_macs(pe, x)


@cache
def neck_macs(geom: SamGeometry) -> int:
    """MACs of the encoder's neck (1x1 conv, 3x3 conv) on the 64x64 grid."""
    g = geom.token_grid
    with torch.device("meta"):
        neck = _encoder_shell(geom).neck
        x = torch.zeros(1, geom.embed_dim, g, g)
    return count_macs(neck, x)


@cache
def decoder_macs(multimask: bool = True) -> int:
    """MACs of SAM's prompt encoder + mask decoder for one single-point prompt
    (independent of the encoder's size; counted on CPU tensors, it is small)."""
    geom = get_geometry("vit_b")
    pe, md = _prompt_encoder(geom), _mask_decoder()
    emb = torch.zeros(1, 256, geom.token_grid, geom.token_grid)

    def run():
        sparse, dense = pe(points=(torch.zeros(1, 1, 2), torch.ones(1, 1)), boxes=None, masks=None)
        md(
            image_embeddings=emb,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    return count_macs(run)


def block_macs_analytic(dim: int, h: int, w: int, window: int, mlp_ratio: float = 4.0) -> int:
    """Closed-form MACs of a SAM ViT block (relative positions on) on an h x w map.

    Attention runs on the map padded to multiples of ``window`` (``window`` = 0:
    global attention on the whole map): per token 4*C^2 for qkv and the output
    projection, q.k^T and attn.v cost 2 * L * C per token for an L-token window,
    and the decomposed relative positions (L_h + L_w) * C per token; the MLP
    (2 * mlp_ratio * C^2 per token) runs on the unpadded tokens only.
    """
    if window > 0:
        hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
        lh = lw = window
    else:
        hp, wp, lh, lw = h, w, h, w
    tokens_padded = hp * wp
    attn_len = lh * lw
    hidden = int(dim * mlp_ratio)
    attention = 4 * dim * dim * tokens_padded + 2 * attn_len * dim * tokens_padded + (lh + lw) * dim * tokens_padded
    mlp = 2 * dim * hidden * h * w
    return int(attention + mlp)


# ---------------------------------------------------------------------------
# Workloads of each configuration


@dataclass
class SplitWorkload:
    """Encoder MACs by component kind: on the edge, and on each server."""

    edge: Workload
    servers: List[Workload]

    @property
    def edge_macs(self) -> int:
        return sum(self.edge.values())

    @property
    def server_macs(self) -> List[int]:
        return [sum(s.values()) for s in self.servers]


def _add(w: Workload, kind: str, macs: int) -> None:
    w[kind] = w.get(kind, 0) + int(macs)


def full_encoder_workload(geom: SamGeometry) -> Workload:
    """Unmodified SAM's image encoder on the 1024x1024 input."""
    g = geom.token_grid
    w: Workload = {}
    _add(w, "patch_embed", patch_embed_macs(geom, g, g))
    for i in range(geom.depth):
        kind = "global_block" if geom.is_global(i) else "window_block"
        _add(w, kind, block_macs(geom, geom.is_global(i), g, g))
    _add(w, "neck", neck_macs(geom))
    return w


def tile_workload(geom: SamGeometry, tile: Tile, mode: str) -> Workload:
    """What one server computes for one window: patch embedding and its window blocks."""
    h, wd = tile.token_shape
    w: Workload = {}
    _add(w, "patch_embed", patch_embed_macs(geom, h, wd))
    for _ in geom.remote_blocks(mode):
        _add(w, "window_block", block_macs(geom, False, h, wd))
    return w


def edge_workload(geom: SamGeometry, mode: str) -> Workload:
    """What the edge computes after merging the tiles: its blocks on 64x64, then the neck."""
    g = geom.token_grid
    w: Workload = {}
    for i in geom.edge_blocks(mode):
        kind = "global_block" if geom.is_global(i) else "window_block"
        _add(w, kind, block_macs(geom, geom.is_global(i), g, g))
    _add(w, "neck", neck_macs(geom))
    return w


def split_workload(geom: SamGeometry, mode: str, partition: Partition, assignment: Sequence[int]) -> SplitWorkload:
    n = max(assignment) + 1
    servers: List[Workload] = [{} for _ in range(n)]
    for win in partition.tiles:
        for kind, macs in tile_workload(geom, win, mode).items():
            _add(servers[int(assignment[win.index])], kind, macs)
    return SplitWorkload(edge_workload(geom, mode), servers)


def cloud_workload(geom: SamGeometry) -> SplitWorkload:
    return SplitWorkload({}, [full_encoder_workload(geom)])


def edge_only_workload(geom: SamGeometry) -> SplitWorkload:
    return SplitWorkload(full_encoder_workload(geom), [])


# ---------------------------------------------------------------------------
# Bytes


@dataclass(frozen=True)
class WireBytes:
    """Payload bytes of one frame: up to the servers, down to the edge (all servers together)."""

    up: int
    down: int


def split_bytes(
    geom: SamGeometry, partition: Partition, assignment: Sequence[int], content_hw: Tuple[int, int], dtype: str
) -> Tuple[List[int], List[int]]:
    """(bytes up per server, bytes down per server) for one frame resized to ``content_hw``:
    up, each tile's content pixels (``Tile.content_pixels``) as uint8 RGB."""
    n = max(assignment) + 1
    up, down = [0] * n, [0] * n
    for win in partition.tiles:
        s = int(assignment[win.index])
        up[s] += 3 * win.content_pixels(content_hw)
        down[s] += token_bytes(win.num_tokens, geom.embed_dim, dtype)
    return up, down


def cloud_bytes(geom: SamGeometry, content_hw: Tuple[int, int], dtype: str) -> Tuple[int, int]:
    """Whole frame up as uint8, SAM's 256x64x64 image embedding down (the edge
    keeps the prompt encoder and mask decoder, as in PED-SAM)."""
    g = geom.token_grid
    return content_hw[0] * content_hw[1] * 3, token_bytes(g * g, geom.out_chans, dtype)


# ---------------------------------------------------------------------------
# Timing per component (measured once per geometry, cached)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_signature() -> str:
    return f"{_cpu_name()} | {os.cpu_count()} cpus | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _time(fn: Callable, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass(frozen=True)
class ComponentTiming:
    """One component kind timed on this machine: the fastest of ``repeats`` runs of ``macs`` MACs."""

    seconds: float
    macs: int
    s_per_mac: float
    shape: str  # what was timed, e.g. "one 14x14-token window"
    repeats: int

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> ComponentTiming:
        return cls(float(d["seconds"]), int(d["macs"]), float(d["s_per_mac"]), str(d["shape"]), int(d["repeats"]))


@dataclass(frozen=True)
class CachedTiming:
    """A cache entry: every component's timing for one (geometry, machine) key."""

    key: str
    measured_at: str
    components: Dict[str, ComponentTiming]


@torch.no_grad()
def time_components(
    geom: SamGeometry, repeats: int = 5, big_repeats: int = 2, big_macs: float = 3e10
) -> Dict[str, ComponentTiming]:
    """Measure each component kind on this CPU (random weights; the values do not
    change the arithmetic): one warm-up run, then the fastest of ``repeats`` runs
    (``big_repeats`` for components above ``big_macs``), which filters out the
    slowdowns other processes cause on a shared machine.  Returns kind -> timing."""
    g, c, ws = geom.token_grid, geom.embed_dim, geom.window_size
    shell = _encoder_shell(geom)
    # the fused attention the stages run (core.attention), not segment_anything's reference
    wblock = make_fused_block(geom, geom.window_blocks[0]).eval()
    gblock = make_fused_block(geom, geom.global_attn_indexes[0]).eval()
    # (module, input, its MACs as counted for the workloads, shape label)
    cases = {
        "patch_embed": (
            shell.patch_embed,
            torch.randn(1, 3, ws * geom.patch_size, ws * geom.patch_size),
            patch_embed_macs(geom, ws, ws),
            f"1x3x{ws * geom.patch_size}x{ws * geom.patch_size} px",
        ),
        "window_block": (
            wblock,
            torch.randn(1, ws, ws, c),
            block_macs(geom, False, ws, ws),
            f"one {ws}x{ws}-token window",
        ),
        "global_block": (gblock, torch.randn(1, g, g, c), block_macs(geom, True, g, g), f"{g}x{g} tokens"),
        "neck": (shell.neck, torch.randn(1, c, g, g), neck_macs(geom), f"{c}x{g}x{g}"),
    }
    out = {}
    for kind, (mod, x, macs, shape) in cases.items():
        mod(x)  # warm-up (allocator, kernels)
        n = big_repeats if macs > big_macs else repeats
        secs = _time(lambda mod=mod, x=x: mod(x), n)
        out[kind] = ComponentTiming(secs, macs, secs / max(macs, 1), shape, n)
    return out


class TimingCache:
    """Component timings per (geometry, machine), kept in a JSON file."""

    def __init__(self, path: Optional[Union[str, Path]] = None):
        cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        self.path = Path(path) if path else cache_home / "ped_sam_ros" / "component_timings.json"
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def key(geom: SamGeometry) -> str:
        # "fused attention": entries timed with the reference attention (older caches) are not reused
        return f"{geom.spec} | fused attention | {machine_signature()}"

    def get(self, geom: SamGeometry, measure: bool = True, refresh: bool = False) -> Optional[CachedTiming]:
        """The cached entry, measured first if missing or unreadable (``measure``) or if ``refresh``."""
        k = self.key(geom)
        entry = None if refresh else self._entry(k)
        if entry is None and (measure or refresh):
            entry = CachedTiming(k, time.strftime("%Y-%m-%d %H:%M:%S"), time_components(geom))
            self.data[k] = {
                "measured_at": entry.measured_at,
                "components": {kind: t.to_dict() for kind, t in entry.components.items()},
            }
            self.save()
        return entry

    def _entry(self, k: str) -> Optional[CachedTiming]:
        """The stored entry for ``k`` as a record; None if absent or not in the expected format."""
        raw = self.data.get(k)
        try:
            return CachedTiming(
                k,
                str(raw["measured_at"]),
                {kind: ComponentTiming.from_dict(t) for kind, t in raw["components"].items()},
            )
        except (TypeError, KeyError, ValueError, AttributeError):
            return None

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only home only loses the cache


def workload_seconds(work: Workload, timings: Dict[str, ComponentTiming], speedup: float = 1.0) -> float:
    """Seconds for a workload: each component kind's MACs x its measured seconds per MAC."""
    return sum(macs * timings[kind].s_per_mac for kind, macs in work.items()) / speedup


# ---------------------------------------------------------------------------
# Latency model


@dataclass(frozen=True)
class SymmetricLink:
    name: str
    mbit_s: float
    rtt_ms: float

    @property
    def bytes_per_s(self) -> float:
        return self.mbit_s * 1e6 / 8


LINKS = (
    SymmetricLink("1 Gbit/s, 2 ms RTT", 1000.0, 2.0),
    SymmetricLink("100 Mbit/s, 20 ms RTT", 100.0, 20.0),
    SymmetricLink("20 Mbit/s, 50 ms RTT", 20.0, 50.0),
)

LATENCY_MODEL = (
    "latency = RTT + (sum of all servers' uplink bytes) / bandwidth + max over servers of their compute "
    "+ (sum of all servers' downlink bytes) / bandwidth + edge compute. All servers share the edge's one "
    "link (fair share: the uploads finish together), up- and downlink are separate directions (full duplex) "
    "of the same rate, all requests leave at once (one RTT per frame), servers run in parallel, and "
    "transfers do not overlap compute (a conservative, pipelining-free estimate). Edge-only has no network "
    "term. Payload bytes only (headers and TCP/ZeroMQ framing ignored)."
)


@dataclass(frozen=True)
class LatencyEstimate:
    """One frame's estimated seconds under :data:`LATENCY_MODEL`, and its terms."""

    total_s: float
    network_s: float  # rtt_s + uplink_s + downlink_s
    server_s: float  # the busiest server's compute
    edge_s: float
    uplink_s: float = 0.0
    downlink_s: float = 0.0
    rtt_s: float = 0.0


def estimate_latency(
    edge_s: float, server_s: Sequence[float], up_bytes: int, down_bytes: int, link: SymmetricLink
) -> LatencyEstimate:
    """End-to-end seconds for one frame's image embedding under :data:`LATENCY_MODEL`."""
    if not server_s:
        return LatencyEstimate(total_s=edge_s, network_s=0.0, server_s=0.0, edge_s=edge_s)
    up = up_bytes / link.bytes_per_s
    down = down_bytes / link.bytes_per_s
    rtt = link.rtt_ms / 1000.0
    srv = max(server_s)
    return LatencyEstimate(
        total_s=rtt + up + srv + down + edge_s,
        network_s=rtt + up + down,
        server_s=srv,
        edge_s=edge_s,
        uplink_s=up,
        downlink_s=down,
        rtt_s=rtt,
    )
