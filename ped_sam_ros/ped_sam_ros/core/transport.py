"""How window jobs reach remote encoders: the interface and an in-process one.

The ZeroMQ client (``ped_sam_ros.net.zmq_client``) implements the same
interface over the network; the in-process :class:`LocalTransport` runs
:class:`RemoteStage` objects directly but still passes every window through the
wire codec, so byte counts and wire-precision effects are the real ones.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .geometry import Tile
from .model import MODES
from .wire import (EncodeRequest, WireError, decode_message, encode_message, frames_nbytes, make_encode_request,
                   new_request_id, pack_tokens, parse_encode_request, unpack_tokens)


@dataclass
class TileJob:
    """One window of one frame, for one server."""

    tile: Tile
    server: int
    pixels: np.ndarray  # uint8 (h, w, 3) crop of the resized frame, top-left part of the window


@dataclass
class TileResult:
    tile: Tile
    server: int
    tokens: np.ndarray  # (rows, cols, C) float32
    bytes_up: int
    bytes_down: int
    round_trip_s: float  # as the edge saw it
    compute_s: float = 0.0  # as the server reported it


class RemoteEncodeError(RuntimeError):
    """Some windows of a frame could not be encoded; names the servers at fault."""

    def __init__(self, message: str, servers: Sequence[str] = ()):
        super().__init__(message)
        self.servers = list(servers)


class Transport(abc.ABC):
    """Sends a frame's window jobs to the servers and returns their tokens."""

    #: wire precision of the returned tokens: float32, float16 or int8
    token_dtype: str = "float16"

    @property
    @abc.abstractmethod
    def server_names(self) -> List[str]:
        """Human-readable name of each server, by index (used in errors and diagnostics)."""

    @abc.abstractmethod
    def encode(self, jobs: Sequence[TileJob], model: str, mode: str, timeout_s: float) -> List[TileResult]:
        """Encode all jobs (concurrently where possible); results in job order.

        Raises :class:`RemoteEncodeError` naming the servers that failed or
        missed the deadline.
        """

    def health(self) -> List[Dict]:
        """Per-server health for diagnostics (name, state, last latency...)."""
        return [{"name": n, "state": "unknown"} for n in self.server_names]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_encode_request(frames, model: str) -> EncodeRequest:
    """Decode and validate one encode request for a server running ``model``.

    Raises :class:`WireError` (whose ``code`` goes into the error reply)."""
    return check_encode_request(*decode_message(frames), model)


def check_encode_request(header: dict, arrays, model: str) -> EncodeRequest:
    """Validate an already decoded encode request for a server running ``model``."""
    req = parse_encode_request(header, arrays)
    if req.model != model:
        raise WireError("wrong_model", f"this server runs {model}, the request is for {req.model}")
    if req.mode not in MODES:
        raise WireError("bad_mode", f"unknown mode {req.mode!r} (servers run {list(MODES)})")
    return req


def run_encode(stage, req: EncodeRequest, queue_s: float = 0.0) -> List:
    """What a remote server computes for a valid request: the reply frames.

    Shared by the in-process transport and the ZeroMQ server."""
    t0 = time.perf_counter()
    tokens = stage.encode_tile(req.pixels, req.tile, req.mode).cpu().numpy()
    compute_s = time.perf_counter() - t0
    return encode_message(
        {"type": "encoded", "id": req.id, "timing": {"compute_s": compute_s, "queue_s": queue_s}},
        pack_tokens(tokens, req.reply_dtype),
    )


class LocalTransport(Transport):
    """Runs one or more :class:`RemoteStage` in this process, one window at a time.

    With a single stage every "server" shares it (same weights, as with real
    servers that load the same checkpoint); the byte counts and token precision
    still go through the real wire codec.
    """

    def __init__(self, stages, num_servers: Optional[int] = None, token_dtype: str = "float32",
                 names: Optional[Sequence[str]] = None):
        self.stages = list(stages) if isinstance(stages, (list, tuple)) else [stages]
        self.num_servers = num_servers or (len(names) if names else len(self.stages))
        if names is not None and len(names) != self.num_servers:
            raise ValueError(f"{len(names)} names for {self.num_servers} servers")
        self._names = list(names) if names is not None else [f"local-{i}" for i in range(self.num_servers)]
        self.token_dtype = token_dtype
        self._stats: List[Dict] = [{"name": n, "state": "ok", "requests": 0} for n in self._names]

    @property
    def server_names(self) -> List[str]:
        return list(self._names)

    def encode(self, jobs, model, mode, timeout_s=60.0):
        out = []
        for job in jobs:
            stage = self.stages[job.server % len(self.stages)]
            t0 = time.perf_counter()
            req = EncodeRequest(new_request_id(), model, mode, job.tile, job.pixels,
                                int(timeout_s * 1000), self.token_dtype)
            up = make_encode_request(req)
            up_copy = [bytes(f) for f in up]  # what would cross the wire
            reply = run_encode(stage, read_encode_request(up_copy, model))
            reply_copy = [bytes(f) for f in reply]
            header, arrays = decode_message(reply_copy, max_total_bytes=1 << 31)
            h, w = job.tile.token_shape
            tokens = unpack_tokens(arrays, (h, w, stage.geometry.embed_dim))
            out.append(TileResult(job.tile, job.server, tokens, frames_nbytes(up_copy),
                                    frames_nbytes(reply_copy), time.perf_counter() - t0,
                                    header.get("timing", {}).get("compute_s", 0.0)))
            self._stats[job.server]["requests"] += 1
        return out

    def health(self):
        return [dict(s) for s in self._stats]
