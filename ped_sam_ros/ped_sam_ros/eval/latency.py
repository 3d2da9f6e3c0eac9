"""The latency model: one frame's seconds until the masks, for PED-SAM, cloud SAM and edge-only SAM.

Terms (each from a device profile, :mod:`.profiles`, and a link, :class:`.profiles.LinkProfile`):

* **edge**: pixel encoding of each tile's crop (the pixel codec) and Curve encryption of
  each request, in tile order; Curve decryption and token decoding of each reply as it
  arrives; after the last one, the edge's blocks on the 64x64 grid and the neck; then the
  prompt decoder (prompt encoder + mask decoder, one point prompt; ``decoder=False`` leaves
  it out, as the emulated-link benchmark does).
* **uplink**: the requests share the edge's uplink (rate ``up_mbit``), fairly between
  servers (one TCP connection each, a server's requests in order), and arrive
  ``up_delay_ms`` after they leave.
* **server**: per request, in arrival order, one at a time: Curve decryption, pixel
  decoding, the patch embedding and its window blocks on the tile's token map (padded to
  SAM's 14-token windows inside each block), token encoding, Curve encryption.
* **downlink**: the replies share the downlink (``down_mbit``) as the requests share the
  uplink, and arrive ``down_delay_ms`` later.

The transfers and computations are played out as events (a fluid fair share of each link
direction, a queue per server, the edge decoding replies as they come): a server computes
one tile while the next is still uploading, as the real servers do.  Cloud SAM is the same
with one request, the whole frame, and the server running the whole encoder; its reply is
the 256x64x64 embedding in the same token format.  Edge-only SAM is the whole encoder and
the decoder on the edge.  Bytes are payload plus :data:`HEADER_BYTES` per message.

Compute seconds come from :class:`Costs`: a ``measured`` profile asks the calibration
(:mod:`.calibrate`: every op timed on its real shape), a ``published`` one divides the op's
counted MACs by the profile's MAC rate.  Every published figure is a (fast, slow) range:
:func:`predict` takes ``end`` = 0 (fast) or 1 (slow) for each device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.geometry import IMAGE_SIZE, Partition, Tile
from ..core.model import SamGeometry, get_geometry
from . import cost as costlib
from .calibrate import Calibration, CodecCost, op_macs
from .profiles import DeviceProfile, LinkProfile

HEADER_BYTES = 400  # JSON header + ZeroMQ framing per message (measured requests: 250-350 bytes)
FULL_FRAME = (IMAGE_SIZE, IMAGE_SIZE)
EMBED_CHANNELS = 256


# ---------------------------------------------------------------------------
# Workloads as ops on shapes


Op = Tuple[str, int, int]  # (kind, token rows, token cols)


def tile_ops(geom: SamGeometry, tile: Tile, mode: str) -> List[Op]:
    h, w = tile.token_shape
    return [("patch_embed", h, w)] + [("window_block", h, w)] * len(geom.remote_blocks(mode))


def edge_ops(geom: SamGeometry, mode: str) -> List[Op]:
    g = geom.token_grid
    ops: List[Op] = [("global_block" if geom.is_global(i) else "window_block", g, g) for i in geom.edge_blocks(mode)]
    return ops + [("neck", g, g)]


def full_encoder_ops(geom: SamGeometry) -> List[Op]:
    g = geom.token_grid
    ops: List[Op] = [("patch_embed", g, g)]
    ops += [("global_block" if geom.is_global(i) else "window_block", g, g) for i in range(geom.depth)]
    return ops + [("neck", g, g)]


def ops_macs(geom: SamGeometry, ops: Sequence[Op]) -> int:
    return sum(op_macs(geom, *op) for op in ops)


# ---------------------------------------------------------------------------
# Costs of one device


TokenSampler = Callable[[int, Tuple[int, int]], Tuple[np.ndarray, str]]


def gaussian_tokens(channels: int, shape: Tuple[int, int]) -> Tuple[np.ndarray, str]:
    """N(0, 1) tokens (the shape of random-weight tokens' statistics; labelled as such)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((shape[0], shape[1], channels)).astype(np.float32), "gaussian"


@dataclass
class Costs:
    """Seconds of everything one device does, at one end (0 fast, 1 slow) of its profile."""

    profile: DeviceProfile
    calibration: Calibration
    end: int = 0
    tokens: TokenSampler = gaussian_tokens
    image: Optional[Tuple[np.ndarray, str]] = None  # the photo the pixel codecs are measured on

    def _pick(self, r: Tuple[float, float]) -> float:
        return r[self.end]

    @property
    def cpu_factor(self) -> float:
        return self._pick(self.profile.cpu_factor)

    def mac_rate(self, geom: SamGeometry) -> float:
        """MACs per second of a published profile (its reference model's encoder / its seconds)."""
        ref = get_geometry(self.profile.reference_model)
        return ops_macs(ref, full_encoder_ops(ref)) / self._pick(self.profile.encoder_s)

    def op_s(self, geom: SamGeometry, op: Op) -> float:
        if self.profile.measured:
            return self.calibration.op_seconds(geom, *op).seconds
        return op_macs(geom, *op) / self.mac_rate(geom)

    def ops_s(self, geom: SamGeometry, ops: Sequence[Op]) -> float:
        cache: Dict[Op, float] = {}
        total = 0.0
        for op in ops:
            if op not in cache:
                cache[op] = self.op_s(geom, op)
            total += cache[op]
        return total

    def decoder_s(self, geom: SamGeometry) -> float:
        if self.profile.decoder_s is not None:
            return self._pick(self.profile.decoder_s)
        if self.profile.measured:
            return self.calibration.decoder_seconds(geom)
        return costlib.decoder_macs() / self.mac_rate(geom)

    def token_codec(self, fmt: str, channels: int, shape: Tuple[int, int]) -> CodecCost:
        sample, name = self.tokens(channels, shape)
        c = self.calibration.token_codec(fmt, sample, name)
        f = self.cpu_factor
        return CodecCost(c.encode_s * f, c.decode_s * f, c.bytes, c.sample)

    def pixel_codec(self, spec: str) -> CodecCost:
        if spec == "raw":
            return CodecCost(0.0, 0.0, 3.0, "raw")
        img, name = self.image if self.image is not None else (_default_image(), "astronaut")
        c = self.calibration.pixel_codec(spec, img, name)
        f = self.cpu_factor
        return CodecCost(c.encode_s * f, c.decode_s * f, c.bytes, c.sample)

    def curve_s_per_byte(self) -> float:
        if self.profile.curve_mb_s is not None:
            return 1.0 / (self._pick(self.profile.curve_mb_s) * 1e6)
        return self.calibration.curve_s_per_byte() * self.cpu_factor


_IMAGE: List[np.ndarray] = []


def _default_image() -> np.ndarray:
    """skimage's astronaut resized as SAM does (1024x1024): the pixel codecs' sample."""
    if not _IMAGE:
        from segment_anything.utils.transforms import ResizeLongestSide

        from .images import load_images

        _IMAGE.append(ResizeLongestSide(IMAGE_SIZE).apply_image(load_images(names=["astronaut"])[0][1]))
    return _IMAGE[0]


# ---------------------------------------------------------------------------
# The frame as requests, and its playout


@dataclass(frozen=True)
class Request:
    """One tile's round trip: who serves it, bytes each way, seconds on each side."""

    server: int
    up_bytes: float
    down_bytes: float
    edge_send_s: float  # pixel encoding + Curve encryption on the edge
    server_s: float  # Curve + pixel decoding + compute + token encoding + Curve on the server
    edge_recv_s: float  # Curve decryption + token decoding on the edge


@dataclass(frozen=True)
class LatencyPlan:
    """A configuration's frame: its requests (none for edge-only), then the edge's compute."""

    requests: Tuple[Request, ...]
    edge_compute_s: float
    decoder_s: float
    terms: Dict[str, float] = field(default_factory=dict, compare=False)  # summed terms, for reports


@dataclass(frozen=True)
class Prediction:
    """One frame's predicted seconds and its split as the emulated-link benchmark splits it."""

    total_s: float
    upload_s: float  # start -> last request at its server (edge pixel encoding included)
    server_s: float  # the rest of the remote phase
    download_s: float  # last reply's first byte leaving its server -> every reply decoded
    edge_s: float  # after the remote phase: edge blocks, neck (+ decoder)
    up_bytes: float
    down_bytes: float
    terms: Dict[str, float] = field(default_factory=dict)


def _fair_share(ready: Sequence[float], sizes: Sequence[float], groups: Sequence[int], rate: float) -> List[float]:
    """Finish times of transfers over one link of ``rate`` bytes/s shared fairly between
    groups (connections); a group sends its transfers in order; a transfer can start at
    ``ready``.  A fluid model (TCP's fair share without its ramp-up)."""
    n = len(sizes)
    done = [math.inf] * n
    left = [float(s) for s in sizes]
    queues: Dict[int, List[int]] = {}
    for i in sorted(range(n), key=lambda i: (ready[i], i)):
        queues.setdefault(groups[i], []).append(i)
    t = min(ready) if n else 0.0
    while any(queues.values()):
        heads = [q[0] for q in queues.values() if q and ready[q[0]] <= t + 1e-12]
        pending = [ready[q[0]] for q in queues.values() if q and ready[q[0]] > t + 1e-12]
        if not heads:
            t = min(pending)
            continue
        share = rate / len(heads)
        dt_finish = min(left[i] / share for i in heads)
        dt = min([dt_finish] + [p - t for p in pending])
        for i in heads:
            left[i] -= share * dt
        t += dt
        for q in queues.values():
            while q and left[q[0]] <= 1e-6 and ready[q[0]] <= t + 1e-12:
                done[q[0]] = t
                q.pop(0)
    return done


def play(plan: LatencyPlan, link: Optional[LinkProfile]) -> Prediction:
    """Play one frame out over ``link`` (None: edge-only, no transfers)."""
    reqs = plan.requests
    if not reqs:
        total = plan.edge_compute_s + plan.decoder_s
        return Prediction(total, 0.0, 0.0, 0.0, total, 0.0, 0.0, dict(plan.terms))
    if link is None:
        raise ValueError("a plan with requests needs a link")
    ready = list(np.cumsum([r.edge_send_s for r in reqs]))
    groups = [r.server for r in reqs]
    sent = _fair_share(ready, [r.up_bytes for r in reqs], groups, link.up_bytes_per_s)
    arrive = [s + link.up_delay_ms / 1e3 for s in sent]
    free: Dict[int, float] = {}
    finished = [0.0] * len(reqs)
    for i in sorted(range(len(reqs)), key=lambda i: (arrive[i], i)):
        start = max(arrive[i], free.get(reqs[i].server, 0.0))
        finished[i] = free[reqs[i].server] = start + reqs[i].server_s
    got = _fair_share(finished, [r.down_bytes for r in reqs], groups, link.down_bytes_per_s)
    back = [g + link.down_delay_ms / 1e3 for g in got]
    t_edge = 0.0
    for i in sorted(range(len(reqs)), key=lambda i: (back[i], i)):
        t_edge = max(t_edge, back[i]) + reqs[i].edge_recv_s
    remote = t_edge
    upload = max(arrive)
    last = max(range(len(reqs)), key=lambda i: back[i])
    download = remote - max(finished[last], upload)
    server = remote - upload - download
    edge = plan.edge_compute_s + plan.decoder_s
    return Prediction(
        remote + edge,
        upload,
        server,
        download,
        edge,
        sum(r.up_bytes for r in reqs),
        sum(r.down_bytes for r in reqs),
        dict(plan.terms),
    )


# ---------------------------------------------------------------------------
# Plans of the three configurations


@dataclass(frozen=True)
class Wire:
    """What crosses the link: token format (also the cloud embedding's), pixel codec, Curve on/off."""

    token_format: str = "float16"
    pixel_codec: str = "raw"
    curve: bool = True

    @property
    def label(self) -> str:
        return f"{self.token_format} / {self.pixel_codec}{' / curve' if self.curve else ''}"


def _request(
    edge: Costs,
    server: Costs,
    geom: SamGeometry,
    wire: Wire,
    server_index: int,
    pixels: int,
    token_shape: Tuple[int, int],
    channels: int,
    compute_s: float,
    terms: Dict[str, float],
) -> Request:
    pe, ps = edge.pixel_codec(wire.pixel_codec), server.pixel_codec(wire.pixel_codec)
    te, ts = (
        edge.token_codec(wire.token_format, channels, token_shape),
        server.token_codec(wire.token_format, channels, token_shape),
    )
    n = token_shape[0] * token_shape[1]
    up = pixels * pe.bytes + HEADER_BYTES
    down = n * te.bytes + HEADER_BYTES
    ce = edge.curve_s_per_byte() if wire.curve else 0.0
    cs = server.curve_s_per_byte() if wire.curve else 0.0
    parts = {
        "edge_pixel_encode_s": pixels * pe.encode_s,
        "edge_curve_s": (up + down) * ce / 2,  # s_per_byte covers both ends of one message
        "server_pixel_decode_s": pixels * ps.decode_s,
        "server_compute_s": compute_s,
        "server_token_encode_s": n * ts.encode_s,
        "server_curve_s": (up + down) * cs / 2,
        "edge_token_decode_s": n * te.decode_s,
    }
    for k, v in parts.items():
        terms[k] = terms.get(k, 0.0) + v
    return Request(
        server_index,
        up,
        down,
        parts["edge_pixel_encode_s"] + up * ce / 2,
        parts["server_pixel_decode_s"] + compute_s + parts["server_token_encode_s"] + (up + down) * cs / 2,
        down * ce / 2 + parts["edge_token_decode_s"],
    )


def ped_plan(
    edge: Costs,
    server: Costs,
    geom: SamGeometry,
    mode: str,
    partition: Partition,
    assignment: Sequence[int],
    wire: Wire,
    content_hw: Tuple[int, int] = FULL_FRAME,
    decoder: bool = True,
) -> LatencyPlan:
    """PED-SAM: one request per tile (its content pixels up, its tokens down)."""
    terms: Dict[str, float] = {}
    reqs = []
    for tile in partition.tiles:
        compute = server.ops_s(geom, tile_ops(geom, tile, mode))
        px = tile.content_pixels(content_hw)
        reqs.append(
            _request(
                edge,
                server,
                geom,
                wire,
                int(assignment[tile.index]),
                px,
                tile.token_shape,
                geom.embed_dim,
                compute,
                terms,
            )
        )
    edge_s = edge.ops_s(geom, edge_ops(geom, mode))
    dec = edge.decoder_s(geom) if decoder else 0.0
    terms.update(edge_compute_s=edge_s, decoder_s=dec)
    return LatencyPlan(tuple(reqs), edge_s, dec, terms)


def cloud_plan(
    edge: Costs,
    server: Costs,
    geom: SamGeometry,
    wire: Wire,
    content_hw: Tuple[int, int] = FULL_FRAME,
    decoder: bool = True,
) -> LatencyPlan:
    """Cloud SAM: the whole frame up, the whole encoder on the server, the 256x64x64
    embedding down in the token format, the decoder on the edge."""
    terms: Dict[str, float] = {}
    g = geom.token_grid
    compute = server.ops_s(geom, full_encoder_ops(geom))
    req = _request(edge, server, geom, wire, 0, content_hw[0] * content_hw[1], (g, g), EMBED_CHANNELS, compute, terms)
    dec = edge.decoder_s(geom) if decoder else 0.0
    terms.update(edge_compute_s=0.0, decoder_s=dec)
    return LatencyPlan((req,), 0.0, dec, terms)


def edge_plan(edge: Costs, geom: SamGeometry, decoder: bool = True) -> LatencyPlan:
    """Edge-only SAM: the whole encoder and the decoder on the edge."""
    enc = edge.ops_s(geom, full_encoder_ops(geom))
    dec = edge.decoder_s(geom) if decoder else 0.0
    return LatencyPlan((), enc, dec, {"edge_compute_s": enc, "decoder_s": dec})


# ---------------------------------------------------------------------------
# Break-even bandwidth


def break_even(
    latency_at: Callable[[float], float],
    target_s: float,
    lo_mbit: float = 0.01,
    hi_mbit: float = 1e5,
    rel_tol: float = 1e-4,
) -> Optional[float]:
    """The smallest bandwidth (Mbit/s) at which ``latency_at(mbit) <= target_s``, by bisection
    on a log scale (``latency_at`` must not increase with bandwidth).  None when even
    ``hi_mbit`` is not enough; ``lo_mbit`` when it already is."""
    if latency_at(hi_mbit) > target_s:
        return None
    if latency_at(lo_mbit) <= target_s:
        return lo_mbit
    a, b = math.log(lo_mbit), math.log(hi_mbit)
    while b - a > rel_tol:
        m = (a + b) / 2
        if latency_at(math.exp(m)) <= target_s:
            b = m
        else:
            a = m
    return math.exp(b)
