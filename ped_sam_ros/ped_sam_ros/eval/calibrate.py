"""This machine's measured costs for the latency model (the ``measured`` device profile).

Everything is timed in-process on this CPU, after a warm-up, as the fastest of a few runs
(the least disturbed by other processes on a shared machine; ``statistic="median"`` takes the
typical run instead, for comparing with measured frames on a loaded machine), with the torch
threads of the calling process, and cached in a JSON file keyed by what was timed and the
machine (:func:`.cost.machine_signature`); ``persist=False`` keeps it in memory only (a
calibration taken inside a benchmark's own process and shipped with its results);
``concurrency=N`` times every call while N copies run at once (N servers emulated on this one
machine share its cores, as in ``bench.link``):

* **encoder ops** on the shape they really run on: the patch embedding of a tile's pixels,
  one window block (the stages' fused block) on the tile's token map (SAM pads it to
  14-token windows inside the block), one global block and one window block on 64x64, the
  neck.  Ops above ``max_time_macs`` are not run; they are scaled from the largest timed
  op of their kind by MACs (said so in :attr:`OpTime.how`).
* **decoder**: SAM's prompt encoder + mask decoder for one point prompt (multimask).
* **token codecs** (:func:`ped_sam_ros.core.codecs.pack_tokens` / ``unpack_tokens``) per
  format on a token sample: seconds and bytes per token.
* **pixel codecs** (``encode_pixels`` / ``decode_pixels``) on a photo resized as SAM does:
  seconds and bytes per pixel.
* **CurveZMQ**: seconds per byte that Curve adds to one message's trip over loopback
  (encryption at the sender and decryption at the receiver, in series, as for one message),
  from ping-pong runs with and without Curve.

No ROS.  pyzmq is imported only by :func:`measure_curve`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from ..core.model import SamGeometry, _encoder_shell, _mask_decoder, _prompt_encoder, make_fused_block
from . import cost as costlib

OP_KINDS = ("patch_embed", "window_block", "global_block", "neck")
MAX_TIME_MACS = 1.5e11  # ops above this are scaled from smaller timed ones (a few seconds on this CPU)


@dataclass(frozen=True)
class OpTime:
    """Seconds of one op on one shape; ``how``: "timed" or "scaled from <op> by MACs"."""

    seconds: float
    macs: int
    how: str


@dataclass(frozen=True)
class CodecCost:
    """Per unit (token or pixel) costs of one codec on this machine."""

    encode_s: float
    decode_s: float
    bytes: float
    sample: str  # what it was measured on


STATISTICS = ("min", "median")


@contextlib.contextmanager
def _concurrent_load(fn: Callable[[], object], copies: int) -> Iterator[None]:
    """``copies`` forked processes calling ``fn`` over and over (other servers computing the same
    thing on this machine) while the body runs; they stop at its end.  Processes, not threads: a
    narrow model's ops are short and Python-bound, and threads would time the GIL instead."""
    if copies <= 0:
        yield
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    stop, ready = ctx.Event(), ctx.Semaphore(0)

    def loop() -> None:
        fn()
        ready.release()
        while not stop.is_set():
            fn()

    procs = [ctx.Process(target=loop, daemon=True) for _ in range(copies)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a concurrent calibration copy did not start")
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join(5)


def _best(fn: Callable[[], object], repeats: int, statistic: str = "min", concurrency: int = 1) -> float:
    """Seconds of ``fn`` after a warm-up: the fastest of ``repeats`` runs, or their median; with
    ``concurrency`` > 1, while that many copies in all run at once (:func:`_concurrent_load`)."""
    fn()  # warm-up
    times = []
    with _concurrent_load(fn, concurrency - 1):
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) if statistic == "median" else min(times)


def op_macs(geom: SamGeometry, kind: str, h: int, w: int) -> int:
    """Counted MACs of one op (see :mod:`.cost`)."""
    if kind == "patch_embed":
        return costlib.patch_embed_macs(geom, h, w)
    if kind == "window_block":
        return costlib.block_macs(geom, False, h, w)
    if kind == "global_block":
        return costlib.block_macs(geom, True, h, w)
    if kind == "neck":
        return costlib.neck_macs(geom)
    raise ValueError(f"unknown op kind {kind!r} (one of {OP_KINDS})")


class Calibration:
    """Measured costs of this machine, cached in ``path`` (JSON)."""

    def __init__(
        self,
        path: Optional[Union[str, Path]] = None,
        repeats: int = 3,
        max_time_macs: float = MAX_TIME_MACS,
        refresh: bool = False,
        persist: bool = True,
        data: Optional[Dict] = None,
        statistic: str = "min",
        concurrency: int = 1,
    ):
        """``persist=False``: no file is read or written (``data``, if given, is the starting
        content, e.g. a calibration another process took: :attr:`data` is plain JSON).
        ``concurrency``: copies of each timed call running at once (see the module doc)."""
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        self.path = Path(path) if path else cache_home / "ped_sam_ros" / "calibration.json"
        self.repeats, self.max_time_macs, self.refresh = repeats, max_time_macs, refresh
        self.persist, self.statistic, self.concurrency = persist, statistic, max(1, int(concurrency))
        self.machine = costlib.machine_signature()
        self._fresh: set = set()  # keys measured by this instance (``refresh`` re-times each once)
        self.data: Dict = dict(data) if data else {}
        if persist and data is None:
            try:
                self.data = json.loads(self.path.read_text())
                if not isinstance(self.data, dict):
                    self.data = {}
            except (OSError, ValueError):
                self.data = {}

    # -- cache ------------------------------------------------------------------------

    def _cached(self, key: str, measure: Callable[[], Dict]) -> Dict:
        k = f"{key} | {self.machine}" + ("" if self.statistic == "min" else f" | {self.statistic}")
        k += "" if self.concurrency == 1 else f" | x{self.concurrency}"
        if (not self.refresh or k in self._fresh) and isinstance(self.data.get(k), dict):
            return self.data[k]
        value = measure()
        self._fresh.add(k)
        value["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.data[k] = value
        self.save()
        return value

    def save(self) -> None:
        if not self.persist:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only home only loses the cache

    # -- encoder ops ------------------------------------------------------------------

    @torch.no_grad()
    def _time_op(self, geom: SamGeometry, kind: str, h: int, w: int) -> float:
        c = geom.embed_dim
        if kind == "patch_embed":
            mod, x = _encoder_shell(geom).patch_embed, torch.randn(1, 3, h * geom.patch_size, w * geom.patch_size)
        elif kind == "window_block":
            mod, x = make_fused_block(geom, geom.window_blocks[0]).eval(), torch.randn(1, h, w, c)
        elif kind == "global_block":
            mod, x = make_fused_block(geom, geom.global_attn_indexes[0]).eval(), torch.randn(1, h, w, c)
        else:
            mod, x = _encoder_shell(geom).neck, torch.randn(1, c, geom.token_grid, geom.token_grid)
        return _best(lambda: mod(x), self.repeats, self.statistic, self.concurrency)

    def op_seconds(self, geom: SamGeometry, kind: str, h: int, w: int) -> OpTime:
        """Seconds of one ``kind`` op on an h x w token map of ``geom`` on this machine."""
        if kind == "neck":
            h = w = geom.token_grid
        macs = op_macs(geom, kind, h, w)
        if macs <= self.max_time_macs:
            d = self._cached(f"op {geom.spec} {kind} {h}x{w}", lambda: {"seconds": self._time_op(geom, kind, h, w)})
            return OpTime(float(d["seconds"]), macs, "timed")
        # too big to run here: scale the largest op of this kind below the limit by MACs
        side = h
        while side > 1 and op_macs(geom, kind, side, side) > self.max_time_macs:
            side -= 7
        side = max(side, 1)
        ref = self.op_seconds(geom, kind, side, side)
        return OpTime(ref.seconds * macs / max(ref.macs, 1), macs, f"scaled from {kind} {side}x{side} by MACs")

    # -- decoder ----------------------------------------------------------------------

    @torch.no_grad()
    def decoder_seconds(self, geom: SamGeometry) -> float:
        """Prompt encoder + mask decoder for one point prompt, multimask (independent of the encoder)."""

        def measure() -> Dict:
            pe, md = _prompt_encoder(geom).eval(), _mask_decoder().eval()
            emb = torch.randn(1, 256, geom.token_grid, geom.token_grid)
            dense_pe = pe.get_dense_pe()
            pts = (torch.rand(1, 1, 2) * 1024, torch.ones(1, 1))

            def run():
                sparse, dense = pe(points=pts, boxes=None, masks=None)
                md(
                    image_embeddings=emb,
                    image_pe=dense_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )

            return {"seconds": _best(run, max(self.repeats, 5), self.statistic, self.concurrency)}

        return float(self._cached("decoder point multimask", measure)["seconds"])

    # -- codecs -----------------------------------------------------------------------

    def token_codec(self, fmt: str, sample: np.ndarray, sample_name: str) -> CodecCost:
        """Seconds per token to pack and unpack ``sample`` ((h, w, C) float32) in ``fmt``, and bytes per token."""
        from ..core import codecs

        h, w, c = sample.shape

        def measure() -> Dict:
            arrays = codecs.pack_tokens(sample, fmt)
            nbytes = sum(a.nbytes for _, a in arrays)
            enc = _best(lambda: codecs.pack_tokens(sample, fmt), self.repeats, self.statistic, self.concurrency)
            d = dict(arrays)
            dec = _best(lambda: codecs.unpack_tokens(d, (h, w, c)), self.repeats, self.statistic, self.concurrency)
            n = h * w
            return {"encode_s": enc / n, "decode_s": dec / n, "bytes": nbytes / n}

        d = self._cached(f"tokens {fmt} {h}x{w}x{c} {sample_name}", measure)
        return CodecCost(float(d["encode_s"]), float(d["decode_s"]), float(d["bytes"]), sample_name)

    def pixel_codec(self, spec: str, image: np.ndarray, image_name: str) -> CodecCost:
        """Seconds per pixel to encode and decode ``image`` (uint8 RGB) with ``spec``, and bytes per pixel."""
        from ..core import codecs

        hh, ww = image.shape[:2]
        n = hh * ww
        if spec == "raw":
            return CodecCost(0.0, 0.0, 3.0, image_name)

        def measure() -> Dict:
            data = codecs.encode_pixels(image, spec)
            name = codecs.pixel_codec(spec).name
            enc = _best(lambda: codecs.encode_pixels(image, spec), self.repeats, self.statistic, self.concurrency)
            buf = np.frombuffer(data, np.uint8)
            dec = _best(
                lambda: codecs.decode_pixels(name, buf, (hh, ww)), self.repeats, self.statistic, self.concurrency
            )
            return {"encode_s": enc / n, "decode_s": dec / n, "bytes": len(data) / n}

        d = self._cached(f"pixels {spec} {hh}x{ww} {image_name}", measure)
        return CodecCost(float(d["encode_s"]), float(d["decode_s"]), float(d["bytes"]), image_name)

    # -- Curve ------------------------------------------------------------------------

    def curve_s_per_byte(self, message_bytes: int = 4 << 20, messages: int = 6) -> float:
        """Seconds CurveZMQ adds per payload byte to one message's trip (loopback, this machine)."""
        d = self._cached(f"curve {message_bytes}", lambda: measure_curve(message_bytes, messages))
        return float(d["s_per_byte"])


def measure_curve(message_bytes: int = 4 << 20, messages: int = 6) -> Dict:
    """Ping-pong ``messages`` messages of ``message_bytes`` over TCP loopback with and without
    CurveZMQ (a 1-byte reply each); the fastest trip of each, and the difference per byte."""
    import zmq

    def trip(curve: bool) -> float:
        ctx = zmq.Context()
        srv, cli = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        try:
            if curve:
                spub, ssec = zmq.curve_keypair()
                cpub, csec = zmq.curve_keypair()
                srv.curve_server, srv.curve_secretkey = True, ssec
                cli.curve_serverkey, cli.curve_publickey, cli.curve_secretkey = spub, cpub, csec
            port = srv.bind_to_random_port("tcp://127.0.0.1")
            cli.connect(f"tcp://127.0.0.1:{port}")
            payload = np.random.default_rng(0).integers(0, 255, message_bytes, dtype=np.uint8).tobytes()

            def echo():
                for _ in range(messages + 1):
                    srv.recv(copy=False)
                    srv.send(b"k")

            t = threading.Thread(target=echo, daemon=True)
            t.start()
            best = float("inf")
            for k in range(messages + 1):
                t0 = time.perf_counter()
                cli.send(payload, copy=False)
                cli.recv()
                if k:  # the first trip includes the handshake
                    best = min(best, time.perf_counter() - t0)
            t.join(10)
            return best
        finally:
            srv.close(0)
            cli.close(0)
            ctx.term()

    plain, curve = trip(False), trip(True)
    return {
        "plain_s": plain,
        "curve_s": curve,
        "message_bytes": message_bytes,
        "s_per_byte": max(curve - plain, 0.0) / message_bytes,
        "curve_mb_s": message_bytes / max(curve - plain, 1e-9) / 1e6,
    }


def as_dict(x) -> Dict:
    return asdict(x)


def tile_sample(tokens: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """The top-left ``shape`` of a 64x64xC token map (a tile-shaped sample)."""
    return np.ascontiguousarray(tokens[: shape[0], : shape[1]])
