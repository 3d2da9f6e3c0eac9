"""Benchmark of the wire codecs: bytes per frame, codec time on both ends, and fidelity
against uncompressed tokens (token formats) or raw pixels (pixel codecs).

RANDOM WEIGHTS ONLY (no SAM checkpoint can be downloaded here): the fidelity figures
measure how much a codec changes the *outputs of a random-weight SAM* (embedding cosine,
and the IoU between the masks decoded from the compressed and the uncompressed run),
never segmentation quality.  Random-weight tokens are close to Gaussian, the hard case
for compression; re-check on a real checkpoint with ``--checkpoint`` (see docs/wire.md).

Parts (each prints a table; ``--json`` writes every figure):

* ``tokens``: real channel counts (vit_b/l/h: 768/1024/1280) on random-weight tokens of
  one image, cut into the partition's tiles: bytes per frame, server encode / edge decode
  time, token cosine, and (``--edge-formats``) the embedding cosine and point/box mask IoU
  at that real width.  Real-width tokens take minutes to compute on a CPU (vit_h about
  5 min), so they are cached in ``--cache``.
* ``fidelity``: a narrow model (default ``vit_h/w64h2``, SAM's real geometry) on the
  evaluation's photos: embedding cosine and point/box mask IoU of every token format
  against float32 tokens, through the real wire codec.  Narrow models are more forgiving
  than the real widths (measured: see docs/wire.md): use them to screen, and decide with
  ``--model vit_b`` / ``vit_h`` (slow on a CPU) or a checkpoint.
* ``pixels``: the same narrow model; every pixel codec against raw pixels: bytes up per
  frame, edge encode / server decode time (with the server's strict header checks),
  embedding cosine and point/box mask IoU.

``choose`` (run by ``all``) applies the issue's rule to the measured figures: the default
format is the smallest whose worst-image embedding cosine is >= 0.999 and whose mean
point-mask IoU is >= 0.98 against the uncompressed run.

    python -m ped_sam_ros.bench.codecs all --json /tmp/codecs.json
    python -m ped_sam_ros.bench.codecs tokens --models vit_h --edge-formats e8 e6 q5g64
    python -m ped_sam_ros.bench.codecs fidelity --checkpoint sam_vit_h_4b8939.pth --model vit_h
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core import codecs
from ..core.geometry import TOKEN_GRID, Partition, Tile
from ..core.model import EdgeStage, RemoteStage, SamGeometry, get_geometry
from ..core.pipeline import DistributedEncoder, PedSamPredictor
from ..core.service import read_encode_request, run_encode
from ..core.transport import ServerHealth, ServerInfoReply, TileJob, TileResult, Transport
from ..core.wire import (
    EncodeRequest,
    decode_message,
    encode_message,
    frames_nbytes,
    make_encode_request,
    new_request_id,
    unpack_tokens,
)

log = logging.getLogger("ped_sam_ros.bench.codecs")

#: every format the edge accepts but the reference (float32) and two near-duplicates of listed
#: ones (q8g64 next to int8, q5g32 between q5g64 and q4g32): core.codecs.TOKEN_FORMATS is the list
DEFAULT_TOKEN_FORMATS = tuple(f for f in codecs.TOKEN_FORMATS if f not in ("float32", "q8g64", "q5g32"))
DEFAULT_PIXEL_CODECS = (
    "png",
    "webp:100",
    "webp:90",
    "jpeg444:95",
    "jpeg444:90",
    "jpeg:95",
    "jpeg:90",
    "jpeg:85",
    "jpeg:75",
)
#: the issue's rule for defaults (against the uncompressed run, random weights)
MIN_EMBEDDING_COSINE = 0.999
MIN_POINT_IOU = 0.98
#: the narrow model of the fidelity and pixel parts: vit_h's depth and global blocks at width 64
FIDELITY_MODEL = "vit_h/w64h2"
#: the photos of the evaluation, plus a 1024x1024 mosaic of four of them at their native
#: resolution (the others are upscaled to 1024 by SAM's resize, which flatters the pixel codecs)
DEFAULT_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "mosaic")


# ---------------------------------------------------------------------------
# Images


def native_mosaic() -> np.ndarray:
    """1024x1024 RGB: 512x512 crops of four scikit-image photos at native resolution."""
    from ..eval.images import skimage_image

    tiles = []
    for name in ("astronaut", "coffee", "rocket", "motorcycle_left"):
        img = skimage_image(name)
        h, w = img.shape[:2]
        y, x = max(0, (h - 512) // 2), max(0, (w - 512) // 2)
        crop = img[y : y + 512, x : x + 512]
        pad = np.zeros((512, 512, 3), np.uint8)
        pad[: crop.shape[0], : crop.shape[1]] = crop
        tiles.append(pad)
    return np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)


def load_bench_images(names: Sequence[str]) -> List[Tuple[str, np.ndarray]]:
    from ..eval.images import load_images

    out = []
    for n in names:
        out.append((n, native_mosaic()) if n == "mosaic" else load_images(names=[n])[0])
    return out


def resize_for_sam(rgb: np.ndarray) -> np.ndarray:
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide(TOKEN_GRID * 16).apply_image(rgb)


# ---------------------------------------------------------------------------
# Transports that measure each codec through the real wire


@dataclass
class CodecTimes:
    """Seconds and bytes summed over one frame's tiles."""

    encode_s: float = 0.0
    decode_s: float = 0.0
    bytes: int = 0


class _BenchTransport(Transport):
    """In-process servers of one model, for measuring (no health or info to speak of)."""

    def __init__(self, geometry: SamGeometry, num_servers: int = 1, prefix: str = "bench"):
        self.geometry = geometry
        self.num_servers = num_servers
        self._names = [f"{prefix}-{i}" for i in range(num_servers)]
        self.times = CodecTimes()

    @property
    def server_names(self) -> List[str]:
        return list(self._names)

    def health(self) -> List[ServerHealth]:
        return [ServerHealth(n, "in-process", "ok") for n in self._names]

    def info(self, timeout_s: float = 2.0) -> List[ServerInfoReply]:
        return [ServerInfoReply(n, "in-process", None, "a benchmark transport") for n in self._names]


class TokenReplayTransport(_BenchTransport):
    """Sends cached float32 tile tokens back in ``token_format`` through the wire codec
    (what a server's reply and the edge's decoding do), without recomputing them."""

    def __init__(
        self, geometry: SamGeometry, tile_tokens: Dict[int, np.ndarray], token_format: str, num_servers: int = 1
    ):
        super().__init__(geometry, num_servers, "replay")
        self.tile_tokens = tile_tokens
        self.token_dtype = token_format

    def encode(self, jobs, mode, timeout_s=60.0):
        out = []
        self.times = CodecTimes()
        for job in jobs:
            tokens = self.tile_tokens[job.tile.index]
            t0 = time.perf_counter()
            frames = encode_message(
                {"type": "encoded", "id": new_request_id(), "timing": {"compute_s": 0.0}},
                codecs.pack_tokens(tokens, self.token_dtype),
            )
            t1 = time.perf_counter()
            wire_frames = [bytes(f) for f in frames]
            t2 = time.perf_counter()
            _, arrays = decode_message(wire_frames, max_total_bytes=1 << 31)
            back = unpack_tokens(arrays, tokens.shape, self.token_dtype)
            t3 = time.perf_counter()
            self.times.encode_s += t1 - t0
            self.times.decode_s += t3 - t2
            self.times.bytes += frames_nbytes(wire_frames)
            out.append(TileResult(job.tile, job.server, back, 0, frames_nbytes(wire_frames), t3 - t0))
        return out


class PixelCodecTransport(_BenchTransport):
    """In-process servers (like :class:`~ped_sam_ros.core.transport.LocalTransport`) whose
    requests carry pixels in ``pixel_codec``, decoded by the server-side request parser
    with its strict limits; tokens come back in float32.  Records each frame's tokens per
    tile (``last_tokens``) so they can be replayed."""

    def __init__(self, stage: RemoteStage, pixel_codec: str = "raw", num_servers: int = 1):
        super().__init__(stage.geometry, num_servers, "local")
        self.stage = stage
        self.pixel_codec = pixel_codec
        self.last_tokens: Dict[int, np.ndarray] = {}

    def encode(self, jobs, mode, timeout_s=60.0):
        model = self.geometry.spec
        out = []
        self.times = CodecTimes()
        self.last_tokens = {}
        for job in jobs:
            t0 = time.perf_counter()
            req = EncodeRequest(
                new_request_id(), model, mode, job.tile, job.pixels, int(timeout_s * 1000), "float32", self.pixel_codec
            )
            frames = [bytes(f) for f in make_encode_request(req)]
            t1 = time.perf_counter()
            parsed = read_encode_request(frames, model)
            t2 = time.perf_counter()
            reply = [bytes(f) for f in run_encode(self.stage, parsed)]
            _, arrays = decode_message(reply, max_total_bytes=1 << 31)
            h, w = job.tile.token_shape
            tokens = unpack_tokens(arrays, (h, w, self.stage.geometry.embed_dim))
            self.times.encode_s += t1 - t0
            self.times.decode_s += t2 - t1
            self.times.bytes += frames_nbytes(frames)
            self.last_tokens[job.tile.index] = tokens
            out.append(
                TileResult(
                    job.tile, job.server, tokens, frames_nbytes(frames), frames_nbytes(reply), time.perf_counter() - t0
                )
            )
        return out


# ---------------------------------------------------------------------------
# Models


def load_stages(model: str, seed: int, checkpoint: Optional[str]) -> Tuple[RemoteStage, EdgeStage]:
    geom = get_geometry(model)
    if checkpoint:
        return RemoteStage.from_checkpoint(geom, checkpoint), EdgeStage.from_checkpoint(geom, checkpoint, "paper")
    from ..core.model import random_sam

    sam = random_sam(geom, seed=seed)
    state = sam.state_dict()
    del sam
    remote, edge = RemoteStage(geom), EdgeStage(geom, "paper")
    remote._load_own(state)
    edge._load_own(state)
    return remote, edge


def predictor_for(edge: EdgeStage, transport: Transport, partition: Partition) -> PedSamPredictor:
    n = len(transport.server_names)
    assignment = [i % n for i in range(len(partition.tiles))]
    enc = DistributedEncoder(edge, transport, partition, assignment, timeout_s=3600.0, allow_adjacent=True)
    return PedSamPredictor(enc)


# ---------------------------------------------------------------------------
# Fidelity helpers


@dataclass
class Reference:
    """The uncompressed run's outputs on one image: what every codec is compared with."""

    features: torch.Tensor
    points: np.ndarray
    point_masks: np.ndarray
    boxes: np.ndarray
    box_masks: np.ndarray


def _reference(predictor: PedSamPredictor, image: np.ndarray, grid: int) -> Reference:
    """Encode ``image`` and decode a grid x grid of single-point prompts and one box per
    distinct point mask (the evaluation's prompt rules, ``eval.fidelity``)."""
    from ..eval import fidelity as fid

    predictor.set_image(image)
    pts = fid.point_grid(image.shape[0], image.shape[1], grid)
    pm = fid.point_masks(predictor, pts)
    boxes = fid.boxes_from_masks(pm)
    return Reference(predictor.features.detach().clone(), pts, pm, boxes, fid.box_masks(predictor, boxes))


def _fidelity(ref: Reference, predictor: PedSamPredictor) -> Dict:
    """Embedding cosine and point/box mask IoUs of ``predictor`` (image already set) vs ``ref``."""
    from ..eval import fidelity as fid
    from ..eval.metrics import mask_iou

    point = [mask_iou(a, b) for a, b in zip(ref.point_masks, fid.point_masks(predictor, ref.points))]
    box = [mask_iou(a, b) for a, b in zip(ref.box_masks, fid.box_masks(predictor, ref.boxes))]
    return {
        "embedding_cosine": _cosine(predictor.features.numpy(), ref.features.numpy()),
        "point_iou_mean": float(np.mean(point)) if point else None,
        "point_iou_min": float(np.min(point)) if point else None,
        "point_prompts": len(point),
        "box_iou_mean": float(np.mean(box)) if box else None,
        "box_iou_min": float(np.min(box)) if box else None,
        "box_prompts": len(box),
    }


def _raw_reference(
    remote: RemoteStage, edge: EdgeStage, partition: Partition, image: np.ndarray, grid: int
) -> Tuple[Reference, PixelCodecTransport]:
    """The reference run (raw pixels up, float32 tokens down) and its transport, which holds
    that frame's bytes, codec times and tokens per tile."""
    source = PixelCodecTransport(remote, "raw")
    return _reference(predictor_for(edge, source, partition), image, grid), source


def _measured(
    edge: EdgeStage,
    transport: _BenchTransport,
    partition: Partition,
    image: np.ndarray,
    ref: Reference,
    labels: Dict,
    **extra,
) -> Dict:
    """One row: ``image`` encoded through ``transport`` (one codec), its bytes and codec times
    over the frame's tiles, and its fidelity against ``ref``."""
    pred = predictor_for(edge, transport, partition)
    pred.set_image(image)
    t = transport.times
    row = {**labels, "bytes": t.bytes, "encode_ms": 1e3 * t.encode_s, "decode_ms": 1e3 * t.decode_s, **extra}
    row.update(_fidelity(ref, pred))
    return row


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def _mean(rows: List[Dict], k: str) -> Optional[float]:
    vals = [r[k] for r in rows if r.get(k) is not None]
    return float(np.mean(vals)) if vals else None


def _pooled(rows: List[Dict], k: str, n: str) -> Optional[float]:
    """The mean over all prompts of all images (each image's mean weighted by its prompt count)."""
    num = sum(r[k] * r[n] for r in rows if r.get(k) is not None)
    den = sum(r[n] for r in rows if r.get(k) is not None)
    return num / den if den else None


def _summarise(rows: List[Dict], key: str) -> List[Dict]:
    """Per ``key`` (format or codec): means over images, worst image cosine, pooled IoUs."""
    out = []
    for name in dict.fromkeys(r[key] for r in rows):
        mine = [r for r in rows if r[key] == name]
        s = {
            key: name,
            "images": len(mine),
            "bytes_per_frame": _mean(mine, "bytes"),
            "encode_ms": _mean(mine, "encode_ms"),
            "decode_ms": _mean(mine, "decode_ms"),
            "embedding_cosine_mean": _mean(mine, "embedding_cosine"),
            "embedding_cosine_min": min((r["embedding_cosine"] for r in mine), default=None),
            "point_iou": _pooled(mine, "point_iou_mean", "point_prompts"),
            "point_iou_min": min(
                (r["point_iou_min"] for r in mine if r.get("point_iou_min") is not None), default=None
            ),
            "box_iou": _pooled(mine, "box_iou_mean", "box_prompts"),
        }
        if "token_cosine" in mine[0]:
            s["token_cosine_min"] = min(r["token_cosine"] for r in mine)
        out.append(s)
    return out


# ---------------------------------------------------------------------------
# Part 1: token formats on a narrow model over the photos


def run_fidelity(
    model: str,
    images: Sequence[Tuple[str, np.ndarray]],
    formats: Sequence[str],
    partition: Partition,
    seed: int,
    grid: int,
    checkpoint: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> List[Dict]:
    remote, edge = load_stages(model, seed, checkpoint)
    rows = []
    for name, rgb in images:
        t0 = time.perf_counter()
        ref, source = _raw_reference(remote, edge, partition, rgb, grid)
        tiles = dict(source.last_tokens)
        for fmt in formats:
            tr = TokenReplayTransport(edge.geometry, tiles, fmt)
            rows.append(_measured(edge, tr, partition, rgb, ref, {"model": model, "image": name, "format": fmt}))
        echo(f"  fidelity {model} {name}: {len(formats)} formats in {time.perf_counter() - t0:.0f} s")
    return rows


# ---------------------------------------------------------------------------
# Part 2: token formats at the real channel counts


def real_tokens(
    model: str,
    image: Tuple[str, np.ndarray],
    seed: int,
    cache: Path,
    checkpoint: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> np.ndarray:
    """The 64x64xC tokens after the remote stage (paper mode) for one image, cached."""
    name, rgb = image
    tag = Path(checkpoint).stem if checkpoint else f"random{seed}"
    path = cache / f"tokens_{model.replace('/', '_')}_{tag}_{name}.npy"
    if path.exists():
        return np.load(path)
    echo(f"  computing {model} tokens for {name} (cached in {path}; vit_h takes minutes on a CPU)")
    remote, _ = load_stages(model, seed, checkpoint)
    full = Tile(0, 0, 0, 0, TOKEN_GRID, 0, TOKEN_GRID)
    with torch.no_grad():
        tokens = remote.encode_tile(resize_for_sam(rgb), full, "paper").numpy()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, tokens)
    return tokens


def run_tokens(
    models: Sequence[str],
    image: Tuple[str, np.ndarray],
    formats: Sequence[str],
    partition: Partition,
    seed: int,
    cache: Path,
    edge_formats: Sequence[str] = (),
    grid: int = 4,
    checkpoint: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> List[Dict]:
    """Bytes, codec times and token cosine per format at real widths; with ``edge_formats``
    also the embedding cosine and mask IoUs (the edge stage at real width: slow on a CPU)."""
    rows = []
    name, rgb = image
    for model in models:
        grid_tokens = real_tokens(model, image, seed, cache, checkpoint, echo)
        tiles = {t.index: np.ascontiguousarray(grid_tokens[t.row0 : t.row1, t.col0 : t.col1]) for t in partition.tiles}
        fidelity = {}
        if edge_formats:
            t0 = time.perf_counter()
            _, edge = load_stages(model, seed, checkpoint)
            ref_pred = predictor_for(edge, TokenReplayTransport(edge.geometry, tiles, "float32"), partition)
            ref = _reference(ref_pred, rgb, grid)
            for fmt in edge_formats:
                pred = predictor_for(edge, TokenReplayTransport(edge.geometry, tiles, fmt), partition)
                pred.set_image(rgb)
                fidelity[fmt] = _fidelity(ref, pred)
            echo(f"  {model}: edge-stage fidelity of {len(edge_formats)} formats in {time.perf_counter() - t0:.0f} s")
            del edge, ref_pred, ref
        for fmt in dict.fromkeys(list(formats) + list(edge_formats)):
            tr = TokenReplayTransport(get_geometry(model), tiles, fmt)
            jobs = [TileJob(t, 0, np.zeros((0, 0, 3), np.uint8)) for t in partition.tiles]
            tr.encode(jobs, "paper")  # warm-up; then the fastest of three runs (the CPU is shared)
            runs = [(tr.encode(jobs, "paper"), tr.times) for _ in range(3)]
            results = runs[0][0]
            cos = _cosine(
                np.concatenate([tiles[r.tile.index].ravel() for r in results]),
                np.concatenate([r.tokens.ravel() for r in results]),
            )
            nbytes = runs[0][1].bytes
            row = {
                "model": model,
                "channels": int(grid_tokens.shape[-1]),
                "image": name,
                "format": fmt,
                "bytes": nbytes,
                "bits_per_value": 8 * nbytes / grid_tokens.size,
                "encode_ms": 1e3 * min(t.encode_s for _, t in runs),
                "decode_ms": 1e3 * min(t.decode_s for _, t in runs),
                "token_cosine": cos,
            }
            row.update(fidelity.get(fmt, {}))
            rows.append(row)
        echo(f"  tokens {model}: {len(rows)} rows so far")
    return rows


# ---------------------------------------------------------------------------
# Part 3: pixel codecs


def run_pixels(
    model: str,
    images: Sequence[Tuple[str, np.ndarray]],
    pixel_codecs: Sequence[str],
    partition: Partition,
    seed: int,
    grid: int,
    checkpoint: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> List[Dict]:
    remote, edge = load_stages(model, seed, checkpoint)
    rows = []
    for name, rgb in images:
        t0 = time.perf_counter()
        ref, raw = _raw_reference(remote, edge, partition, rgb, grid)
        raw_bytes = raw.times.bytes
        content = resize_for_sam(rgb).shape[:2]
        rows.append(
            {
                "model": model,
                "image": name,
                "codec": "raw",
                "bytes": raw_bytes,
                "encode_ms": 0.0,
                "decode_ms": 1e3 * raw.times.decode_s,
                "frame_hw": list(content),
                "embedding_cosine": 1.0,
                "point_iou_mean": 1.0,
                "point_iou_min": 1.0,
                "point_prompts": len(ref.point_masks),
                "box_iou_mean": 1.0,
                "box_iou_min": 1.0,
                "box_prompts": len(ref.box_masks),
            }
        )
        for spec in pixel_codecs:
            tr = PixelCodecTransport(remote, spec)
            labels = {"model": model, "image": name, "codec": spec}
            rows.append(_measured(edge, tr, partition, rgb, ref, labels, frame_hw=list(content)))
        echo(f"  pixels {name}: {len(pixel_codecs)} codecs in {time.perf_counter() - t0:.0f} s")
    return rows


# ---------------------------------------------------------------------------
# The rule for defaults


def choose(summary: List[Dict], key: str, size_of: Dict[str, float]) -> Optional[Dict]:
    """The smallest entry (by ``size_of``) whose worst-image embedding cosine and mean point
    IoU meet :data:`MIN_EMBEDDING_COSINE` / :data:`MIN_POINT_IOU`."""
    ok = [
        s
        for s in summary
        if s[key] in size_of
        and (s["embedding_cosine_min"] or 0) >= MIN_EMBEDDING_COSINE
        and (s["point_iou"] or 0) >= MIN_POINT_IOU
    ]
    return min(ok, key=lambda s: size_of[s[key]], default=None)


# ---------------------------------------------------------------------------
# Reporting


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def token_table(rows: List[Dict]) -> str:
    lines = [
        "| model | format | MB/frame | bits/value | encode ms | decode ms | token cos | emb cos | point IoU "
        "| box IoU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['format']} | {r['bytes'] / 1e6:.3f} | {r['bits_per_value']:.2f} | "
            f"{r['encode_ms']:.0f} | {r['decode_ms']:.0f} | {r['token_cosine']:.6f} | "
            f"{_fmt(r.get('embedding_cosine'), '.6f')} | {_fmt(r.get('point_iou_mean'), '.4f')} | "
            f"{_fmt(r.get('box_iou_mean'), '.4f')} |"
        )
    return "\n".join(lines)


def summary_table(summary: List[Dict], key: str) -> str:
    lines = [
        f"| {key} | MB/frame | encode ms | decode ms | emb cos mean | emb cos min | point IoU | point IoU min "
        f"| box IoU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s[key]} | {s['bytes_per_frame'] / 1e6:.3f} | {s['encode_ms']:.1f} | {s['decode_ms']:.1f} | "
            f"{_fmt(s['embedding_cosine_mean'], '.6f')} | {_fmt(s['embedding_cosine_min'], '.6f')} | "
            f"{_fmt(s['point_iou'], '.4f')} | {_fmt(s['point_iou_min'], '.4f')} | "
            f"{_fmt(s['box_iou'], '.4f')} |"
        )
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.system()} {platform.release()}, no GPU used"


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ped_sam_ros.bench.codecs",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("part", choices=["tokens", "fidelity", "pixels", "all"])
    ap.add_argument("--models", nargs="+", default=["vit_b", "vit_l", "vit_h"], help="real-width models (tokens)")
    ap.add_argument("--model", default=FIDELITY_MODEL, help="narrow model of the fidelity and pixel parts")
    ap.add_argument("--checkpoint", help="a real SAM checkpoint instead of random weights (must fit --model/--models)")
    ap.add_argument("--images", nargs="+", default=list(DEFAULT_IMAGES))
    ap.add_argument("--token-image", default="astronaut", help="the image of the real-width token part")
    ap.add_argument("--formats", nargs="+", default=list(DEFAULT_TOKEN_FORMATS))
    ap.add_argument(
        "--edge-formats",
        nargs="*",
        default=[],
        help="formats whose embedding cosine and mask IoU are also measured at real width (slow)",
    )
    ap.add_argument("--pixel-codecs", nargs="+", default=list(DEFAULT_PIXEL_CODECS))
    ap.add_argument("--grid", type=int, default=2, help="partition: grid x grid aligned tiles")
    ap.add_argument("--points", type=int, default=4, help="point prompts: points x points grid per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache",
        default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ped_sam_bench"),
        help="real-width token cache",
    )
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    ap.add_argument("--json", help="write every row and summary here")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    logging.basicConfig(level=logging.WARNING)
    partition = Partition.grid(args.grid, args.grid)
    result: Dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "weights": f"checkpoint {args.checkpoint}" if args.checkpoint else f"RANDOM (seed {args.seed})",
        "partition": f"{args.grid}x{args.grid}",
        "thresholds": {"embedding_cosine_min": MIN_EMBEDDING_COSINE, "point_iou": MIN_POINT_IOU},
    }
    print(f"# wire codecs benchmark, {result['date']}, {result['machine']}, weights: {result['weights']}")
    if not args.checkpoint:
        print("# RANDOM WEIGHTS: fidelity = agreement with the uncompressed run, not segmentation quality")
    parts = ["tokens", "fidelity", "pixels"] if args.part == "all" else [args.part]
    need_images = any(p in parts for p in ("fidelity", "pixels"))
    images = load_bench_images(args.images) if need_images else []
    if "tokens" in parts:
        image = load_bench_images([args.token_image])[0]
        rows = run_tokens(
            args.models,
            image,
            args.formats,
            partition,
            args.seed,
            Path(args.cache),
            args.edge_formats,
            args.points,
            args.checkpoint,
        )
        result["tokens"] = rows
        print(f"\n## Tokens at real widths ({args.token_image}, {args.grid}x{args.grid} tiles)\n")
        print(token_table(rows))
    if "fidelity" in parts:
        rows = run_fidelity(args.model, images, args.formats, partition, args.seed, args.points, args.checkpoint)
        summ = _summarise(rows, "format")
        result["fidelity"], result["fidelity_summary"] = rows, summ
        print(f"\n## Token formats vs float32, {args.model}, {len(images)} images\n")
        print(summary_table(summ, "format"))
    if "pixels" in parts:
        rows = run_pixels(args.model, images, args.pixel_codecs, partition, args.seed, args.points, args.checkpoint)
        summ = _summarise(rows, "codec")
        result["pixels"], result["pixels_summary"] = rows, summ
        print(f"\n## Pixel codecs vs raw, {args.model}, {len(images)} images\n")
        print(summary_table(summ, "codec"))
    if "fidelity_summary" in result:
        sizes = {}
        for r in result.get("tokens", []):
            if r["model"] == args.models[-1]:
                sizes[r["format"]] = r["bytes"]
        if not sizes:
            sizes = {s["format"]: s["bytes_per_frame"] for s in result["fidelity_summary"]}
        pick = choose(result["fidelity_summary"], "format", sizes)
        result["default_token_format"] = pick and pick["format"]
        print(f"\nDefault token format by the rule: {result['default_token_format']}")
    if "pixels_summary" in result:
        sizes = {s["codec"]: s["bytes_per_frame"] for s in result["pixels_summary"]}
        pick = choose(result["pixels_summary"], "codec", sizes)
        result["default_pixel_codec"] = pick and pick["codec"]
        print(f"Default pixel codec by the rule: {result['default_pixel_codec']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
