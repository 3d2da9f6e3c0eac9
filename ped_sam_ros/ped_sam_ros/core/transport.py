"""How tile jobs reach remote encoders: the interface, its records, and an in-process transport.

A :class:`Transport` serves one model (its :attr:`~Transport.geometry`) on
several servers, each reached by a :class:`ServerAddress`.  Besides encoding a
frame's tiles it reports each server's :class:`ServerHealth`, asks the servers
for their :class:`~.service.ServerInfo` (:class:`ServerInfoReply`), and waits
for the connections.  The ZeroMQ client (``ped_sam_ros.net.zmq_client``)
implements it over the network; the in-process :class:`LocalTransport` runs a
:class:`RemoteStage` directly but still passes every tile through the wire
codec and the encode service (:mod:`.service`), so byte counts and
wire-precision effects are the real ones.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence

import numpy as np

from . import codecs
from .geometry import Tile
from .model import RemoteStage, SamGeometry
from .service import ServerInfo, read_encode_request, read_encoded_reply, run_encode
from .wire import EncodeRequest, decode_message, frames_nbytes, make_encode_request, new_request_id


@dataclass(frozen=True)
class ServerAddress:
    """How to reach one remote server: its name (logs, diagnostics, key file names), the
    ZeroMQ endpoint its ROUTER binds, and its public key file (``NAME.key``; set: CurveZMQ)."""

    name: str
    endpoint: str
    public_key: Optional[str] = None


@dataclass
class TileJob:
    """One tile of one frame, for one server."""

    tile: Tile
    server: int
    pixels: np.ndarray  # uint8 (h, w, 3) crop of the resized frame, top-left part of the tile


@dataclass
class TileResult:
    tile: Tile
    server: int
    tokens: np.ndarray  # (rows, cols, C) float32
    bytes_up: int
    bytes_down: int
    round_trip_s: float  # as the edge saw it
    compute_s: float = 0.0  # as the server reported it


@dataclass(frozen=True)
class ServerFrameStats:
    """What one server did for one frame (see ``EncodeStats.per_server``)."""

    name: str
    tiles: List[int]  # indexes of the tiles it encoded
    share: float  # its share of the frame's content
    bytes_up: int
    bytes_down: int
    round_trip_s: float  # the slowest of its round trips
    compute_s: float  # its compute time, all tiles together


@dataclass
class ServerHealth:
    """One server as the transport sees it now (a snapshot; for diagnostics).

    ``state``: ``ok``, ``error``, ``timeout``, ``disconnected`` or ``unknown``.
    ``connected`` is False only when the transport knows the server cannot be reached.
    ``suspect``: the server failed (missed a deadline, dropped its connection, sent an error
    or tokens that failed :class:`TokenCheck`) and gets no tiles until it answers a probe.
    The ``last_*`` times are those of the last good reply (``None`` before the first);
    ``last_ok_time`` is its ``time.time()``."""

    name: str
    endpoint: str = ""
    state: str = "unknown"
    connected: bool = True
    curve: bool = False
    last_latency_s: Optional[float] = None
    last_compute_s: Optional[float] = None
    last_queue_s: Optional[float] = None
    consecutive_failures: int = 0
    requests: int = 0
    replies: int = 0
    errors: int = 0
    timeouts: int = 0
    late_replies: int = 0
    last_error: str = ""
    last_ok_time: Optional[float] = None
    suspect: bool = False
    probes: int = 0  # info requests sent to it while it was suspect


@dataclass(frozen=True)
class ServerInfoReply:
    """One server's answer to ``info``, as the edge got it: the edge's name and endpoint for
    that server, then the server's :class:`~.service.ServerInfo`, or why there is none."""

    name: str
    endpoint: str
    info: Optional[ServerInfo] = None
    error: str = ""


class RemoteEncodeError(RuntimeError):
    """Some tiles of a frame could not be encoded; names the servers at fault."""

    def __init__(self, message: str, servers: Sequence[str] = ()):
        super().__init__(message)
        self.servers = list(servers)


@dataclass
class EncodeRound:
    """What :meth:`Transport.encode_partial` got: a result per job (None where its server failed)
    and, per failed server index, the first reason."""

    results: List[Optional[TileResult]]
    failures: Dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenLimits:
    """Bounds on the tokens a server may return (see :class:`TokenCheck`); 0 turns one off.

    ``max_abs``: the largest magnitude of any value.  SAM's remote blocks end on the residual
    stream, the sum of the patch embedding and each block's attention/MLP outputs, whose
    inputs are LayerNorm'd: it grows by a bounded amount per block and stays in the tens to
    hundreds even in ViTs' few "massive activation" channels, far below ``1e4``, while float16
    holds up to 65504 and a poisoned reply can carry anything.
    ``rms_factor``: a tile whose root-mean-square exceeds this multiple of the reference (the
    median RMS of the last accepted tiles, once ``warmup`` are known) is refused: a
    model-relative bound that adapts to the checkpoint (random weights and real SAM differ).
    """

    max_abs: float = 1.0e4
    rms_factor: float = 50.0
    warmup: int = 8
    window: int = 64


class TokenCheck:
    """Checks every tile's tokens before they are merged into the frame's embedding: finite,
    no value above ``max_abs``, RMS within ``rms_factor`` of the reference statistic.

    Used by one thread (the edge worker, which merges the tiles)."""

    def __init__(self, limits: Optional[TokenLimits] = None):
        self.limits = limits or TokenLimits()
        self._rms: Deque[float] = collections.deque(maxlen=max(1, self.limits.window))
        self.refused = 0

    @property
    def reference_rms(self) -> Optional[float]:
        """The median RMS of the recent accepted tiles (None during warm-up)."""
        if len(self._rms) < max(1, self.limits.warmup):
            return None
        return statistics.median(self._rms)

    def problem(self, tokens: np.ndarray) -> Optional[str]:
        """Why ``tokens`` may not be merged (None: they may; they then join the reference)."""
        reason = self._problem(np.asarray(tokens))
        if reason:
            self.refused += 1
        return reason

    def _problem(self, tokens: np.ndarray) -> Optional[str]:
        if tokens.size == 0:
            return None
        finite = np.isfinite(tokens)
        if not finite.all():
            bad = int(tokens.size - np.count_nonzero(finite))
            return f"{bad} of {tokens.size} token values are not finite (NaN or inf)"
        peak = float(np.max(np.abs(tokens)))
        lim = self.limits
        if lim.max_abs > 0 and peak > lim.max_abs:
            return f"a token value of magnitude {peak:.4g} exceeds the bound {lim.max_abs:g}"
        rms = float(np.sqrt(np.mean(np.square(tokens, dtype=np.float64))))
        ref = self.reference_rms
        if lim.rms_factor > 0 and ref is not None and ref > 0 and rms > lim.rms_factor * ref:
            return f"token RMS {rms:.4g} is {rms / ref:.1f}x the reference {ref:.4g} (limit {lim.rms_factor:g}x)"
        self._rms.append(rms)
        return None


class Transport(abc.ABC):
    """Sends a frame's tile jobs to the servers of one model and returns their tokens."""

    #: the model every server runs: its spec goes into each request, its width sizes each reply
    geometry: SamGeometry
    #: wire precision of the returned tokens: float32, float16 or int8
    token_dtype: str = "float16"

    @property
    @abc.abstractmethod
    def server_names(self) -> List[str]:
        """Human-readable name of each server, by index (used in errors and diagnostics)."""

    @abc.abstractmethod
    def encode(self, jobs: Sequence[TileJob], mode: str, timeout_s: float) -> List[TileResult]:
        """Encode all jobs (concurrently where possible); results in job order.

        Raises :class:`RemoteEncodeError` naming the servers that failed or
        missed the deadline.
        """

    def encode_partial(self, jobs: Sequence[TileJob], mode: str, timeout_s: float) -> EncodeRound:
        """Like :meth:`encode`, but a failed server fails only its own jobs: the others' results
        come back, with the failed servers' reasons (the degraded mode re-places those tiles).

        This default runs :meth:`encode`: on an error every job of the servers it names (all
        servers when it names none) counts as failed, and the other results are lost."""
        try:
            return EncodeRound(list(self.encode(jobs, mode, timeout_s)))
        except RemoteEncodeError as e:
            names = self.server_names
            blamed = {names.index(n) for n in e.servers if n in names} or {j.server for j in jobs}
            for s in blamed:
                self.mark_failed(s, str(e))
            return EncodeRound([None] * len(jobs), {s: str(e) for s in sorted(blamed)})

    def usable(self) -> List[bool]:
        """Per server: may it be given tiles now (connected and not suspect)."""
        return [h.connected and not h.suspect for h in self.health()]

    def mark_failed(self, server: int, reason: str) -> None:
        """The edge refused what ``server`` sent (e.g. poisoned tokens): it becomes suspect.
        In-process transports have nothing to probe and ignore this."""
        return None

    def maintain(self) -> None:
        """Owner thread, between frames and while idle: apply connection events and probe
        suspect servers (the ZeroMQ transport).  The default refreshes the connections."""
        self.wait_connected(0)

    @abc.abstractmethod
    def health(self) -> List[ServerHealth]:
        """Each server's health, by index (safe to call from any thread)."""

    @abc.abstractmethod
    def info(self, timeout_s: float = 2.0) -> List[ServerInfoReply]:
        """Ask every server about itself; one reply per server, by index."""

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """Wait until every server can be reached; False on timeout.  ``0`` only refreshes the
        connection states.  Servers in this process are always reachable."""
        return True

    def close(self) -> None:
        """Release sockets and threads; a transport that holds none has nothing to do."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalTransport(Transport):
    """Runs one :class:`RemoteStage` in this process for every "server", one tile at a time.

    Every server shares the stage (same weights, as with real servers that load
    the same checkpoint); the byte counts and token precision still go through
    the real wire codec and encode service.
    """

    def __init__(
        self,
        stage: RemoteStage,
        num_servers: Optional[int] = None,
        token_dtype: str = "float32",
        names: Optional[Sequence[str]] = None,
        pixel_codec: str = "raw",
    ):
        codecs.pixel_codec(pixel_codec)  # raises CodecError for an unknown codec or quality
        self.pixel_codec = pixel_codec  # how each tile's pixels travel, as over the network
        self.stage = stage
        self.geometry = stage.geometry
        self.num_servers = num_servers or (len(names) if names else 1)
        if names is not None and len(names) != self.num_servers:
            raise ValueError(f"{len(names)} names for {self.num_servers} servers")
        self._names = list(names) if names is not None else [f"local-{i}" for i in range(self.num_servers)]
        self.token_dtype = token_dtype
        self._health = [ServerHealth(n, "in-process", "ok") for n in self._names]
        self._started = time.time()

    @property
    def server_names(self) -> List[str]:
        return list(self._names)

    def encode(self, jobs, mode, timeout_s=60.0):
        model = self.geometry.spec
        out = []
        for job in jobs:
            t0 = time.perf_counter()
            req = EncodeRequest(
                new_request_id(),
                model,
                mode,
                job.tile,
                job.pixels,
                int(timeout_s * 1000),
                self.token_dtype,
                self.pixel_codec,
            )
            up = [bytes(f) for f in make_encode_request(req)]  # what would cross the wire
            down = [bytes(f) for f in run_encode(self.stage, read_encode_request(up, model))]
            header, arrays = decode_message(down, max_total_bytes=1 << 31)
            h, w = job.tile.token_shape
            reply = read_encoded_reply(header, arrays, (h, w, self.geometry.embed_dim), self.token_dtype)
            out.append(
                TileResult(
                    job.tile,
                    job.server,
                    reply.tokens,
                    frames_nbytes(up),
                    frames_nbytes(down),
                    time.perf_counter() - t0,
                    reply.compute_s or 0.0,
                )
            )
            self._health[job.server].requests += 1
            self._health[job.server].replies += 1
        return out

    def health(self) -> List[ServerHealth]:
        return [dataclasses.replace(h) for h in self._health]

    def info(self, timeout_s: float = 2.0) -> List[ServerInfoReply]:
        uptime = time.time() - self._started
        return [
            ServerInfoReply(
                h.name,
                h.endpoint,
                ServerInfo.describe(self.geometry, h.name, "(in memory)", requests_served=h.requests, uptime_s=uptime),
            )
            for h in self._health
        ]
