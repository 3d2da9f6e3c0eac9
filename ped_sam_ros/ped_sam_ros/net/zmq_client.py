"""The edge side of the network: a :class:`Transport` over ZeroMQ.

One DEALER socket per remote server (each server is a ROUTER that binds, see
``remote_node``).  A frame's tiles all go out at once, each request with a
fresh id and the time left of the frame's deadline (``budget_ms``); replies
are matched by id, and replies to abandoned or unknown ids are dropped and
counted.  :meth:`ZmqTransport.encode_partial` returns every tile it got and,
per failed server, the reason (error reply, deadline miss, lost connection,
unreachable); :meth:`ZmqTransport.encode` raises a :class:`RemoteEncodeError`
naming the servers (name and endpoint) instead.  ``encode`` and ``info`` share
one send-and-collect loop (:meth:`ZmqTransport._collect`) over a
:class:`_Round` of requests in flight.

Socket settings (:class:`ClientOptions`): ``LINGER=0`` (closing never blocks),
``IMMEDIATE=1`` (requests are only queued to completed connections, so a server
that is down fails the frame at once instead of receiving stale work later),
reconnect back-off, ZMTP heartbeats (a silent peer is dropped after
``heartbeat_timeout_ms``), a handshake timeout, bounded high-water marks, and
``MAXMSGSIZE`` against oversized replies.

Failures and recovery: a monitor thread reads every socket's connection events
as they happen (handshake done, disconnected, handshake refused or timed out),
so :meth:`~ZmqTransport.health` is current within ~50 ms and a frame whose
server drops its connection fails that server's tiles at once instead of at the
deadline.  A server that failed in any way becomes *suspect*: it gets no tiles
(:meth:`~ZmqTransport.usable`) until it answers an ``info`` probe correctly
(same model).  Probes are sent by :meth:`~ZmqTransport.maintain`, which the
socket owner calls between frames and while idle; answers are read there and
during every frame's collect loop.  A server that fails again soon after being
taken back is probed with a growing back-off.

Threading: pyzmq sockets are not thread-safe.  The DEALER sockets belong to the
thread that calls :meth:`ZmqTransport.encode` / :meth:`~ZmqTransport.info` /
:meth:`~ZmqTransport.maintain` / :meth:`~ZmqTransport.wait_connected` (the edge
runtime's single worker thread); concurrent calls raise ``RuntimeError``.  The
monitor sockets belong to the monitor thread.  :meth:`ZmqTransport.health`
only reads a snapshot and may be called from any thread.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import zmq
from zmq.utils.monitor import recv_monitor_message

from ped_sam_ros.core import wire
from ped_sam_ros.core.model import SamGeometry, get_geometry
from ped_sam_ros.core.service import ServerInfo, read_encoded_reply
from ped_sam_ros.core.transport import (
    EncodeRound,
    RemoteEncodeError,
    ServerAddress,
    ServerHealth,
    ServerInfoReply,
    TileJob,
    TileResult,
    Transport,
)
from ped_sam_ros.core.wire import EncodeRequest, WireError, frames_nbytes

from .curve import CurveKeyError, is_local_endpoint, load_public_key, load_secret_pair

log = logging.getLogger(__name__)

_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
#: replies to this many abandoned requests are recognised as "late" rather than unknown
_ABANDONED_MEMORY = 4096
#: replies bigger than this (per frame) make libzmq drop the connection; vit_h float32 tokens
#: of the whole 64x64 grid are 21 MB
DEFAULT_MAX_REPLY_BYTES = 32 << 20
#: probe answers remembered (ids of info requests sent to suspect servers)
_PROBE_MEMORY = 256
#: a server that fails again within this many seconds of being taken back is probed less often
_RELAPSE_S = 10.0
#: the longest back-off between probes of a relapsing server
_MAX_PROBE_BACKOFF_S = 30.0
#: "lost connection" warnings per server, at most one per this many seconds
_WARN_EVERY_S = 10.0


@dataclass(frozen=True)
class ClientOptions:
    """Socket settings of every DEALER (milliseconds, message counts, bytes)."""

    hwm: int = 100
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 500  # a restarted server is reconnected to within half a second
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 3000
    handshake_ivl_ms: int = 5000  # a peer that accepts TCP but never completes ZMTP (hung) is dropped
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    probe_interval_s: float = 0.5  # between info probes of a suspect server
    poll_step_s: float = 0.05  # the collect loop looks at connection states this often


class _Connection:
    """One remote server: its address, socket, monitor, and health record."""

    def __init__(self, index: int, address: ServerAddress):
        self.index = index
        self.address = address
        self.name = address.name
        self.endpoint = address.endpoint
        self.socket: Optional[zmq.Socket] = None
        self.monitor: Optional[zmq.Socket] = None
        self.connected = False
        self.handshake_error = ""  # why the last handshake failed (cleared when one succeeds)
        self.health = ServerHealth(
            self.name, self.endpoint, state="disconnected", connected=False, curve=address.public_key is not None
        )
        self.last_probe = -math.inf  # monotonic time of the last info probe
        self.probe_backoff_s = 0.0  # between probes (0: the options' interval)
        self.readmitted_at = -math.inf  # monotonic time it was last taken back
        self.suspect_since = 0.0
        self.last_warning = -math.inf

    @property
    def suspect(self) -> bool:
        return self.health.suspect

    @property
    def label(self) -> str:
        return f"{self.name} ({self.endpoint})"


@dataclass
class _Sent:
    """One request in flight: the result slot it fills, its server, when and how much was sent."""

    slot: int
    server: int
    t_sent: float
    bytes_up: int = 0
    job: Optional[TileJob] = None  # encode requests only


@dataclass
class _Reply:
    """A reply matched to the request it answers."""

    conn: _Connection
    sent: _Sent
    header: dict
    arrays: dict
    nbytes: int
    t_recv: float


@dataclass
class _Round:
    """The requests of one ``encode`` or ``info`` call: in flight, answered, failed."""

    results: List
    pending: Dict[str, _Sent] = field(default_factory=dict)  # request id -> what it was
    failures: Dict[int, str] = field(default_factory=dict)  # server index -> first reason (encode only)

    def pending_of(self, server: int) -> List[str]:
        return [rid for rid, s in self.pending.items() if s.server == server]


class ZmqTransport(Transport):
    """Remote encoders of one model over ZeroMQ: one DEALER per server.

    ``servers``: how to reach each one; a server with a ``public_key`` is spoken
    to over CurveZMQ, with this edge's ``client_secret_key`` (its ``NAME.key_secret``).
    ``model``: the geometry (or its spec) every server runs.
    """

    def __init__(
        self,
        servers: Sequence[ServerAddress],
        model: Union[str, SamGeometry],
        token_dtype: str = "float16",
        client_secret_key: Optional[str] = None,
        *,
        options: Optional[ClientOptions] = None,
        context: Optional[zmq.Context] = None,
        pixel_codec: str = "raw",
    ):
        if token_dtype not in wire.TOKEN_DTYPES:
            raise ValueError(f"token_dtype must be one of {wire.TOKEN_DTYPES}, got {token_dtype!r}")
        wire.codecs.pixel_codec(pixel_codec)  # "raw", "png", "jpeg:90", "webp:85"...: raises on others
        if not servers:
            raise ValueError("at least one remote server endpoint is needed")
        for a in servers:
            if a.public_key and not client_secret_key:
                raise ValueError(f"server {a.name} has a Curve public key but no client secret key was given")
        names = [a.name for a in servers]
        if len(set(names)) != len(names):
            raise ValueError(f"server names must be unique, got {names}")
        self.geometry = get_geometry(model)
        self.token_dtype = token_dtype
        self.pixel_codec = pixel_codec  # how each request's pixels travel (core.codecs)
        self.client_secret_key = client_secret_key
        self.options = options or ClientOptions()
        self._servers = [_Connection(i, a) for i, a in enumerate(servers)]
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._owner = threading.Lock()  # held while a thread uses the sockets
        self._stats_lock = threading.Lock()  # guards the health records (read from other threads)
        self._abandoned: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._probes: collections.OrderedDict[str, int] = collections.OrderedDict()  # probe id -> server
        self.stale_replies = 0  # replies whose id was never ours (or long forgotten)
        self.closed = False
        self._watch_stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        try:
            for conn in self._servers:
                self._open(conn)
        except Exception:
            self.close()
            raise
        self._watcher = threading.Thread(target=self._watch, name="ped-sam-zmq-monitor", daemon=True)
        self._watcher.start()

    # ---------------------------------------------------------------- sockets

    def _open(self, conn: _Connection) -> None:
        o = self.options
        # Keys first: a bad key file raises before any socket exists.
        curve = None
        if conn.address.public_key:
            try:
                public, secret = load_secret_pair(self.client_secret_key)
                server_public = load_public_key(conn.address.public_key)
            except CurveKeyError as e:
                raise CurveKeyError(f"server {conn.label}: {e}") from None
            curve = (public, secret, server_public)
        s = self.context.socket(zmq.DEALER)
        conn.socket = s  # registered at once: close() releases it whatever fails below
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.SNDHWM, o.hwm)
        s.setsockopt(zmq.RCVHWM, o.hwm)
        s.setsockopt(zmq.RECONNECT_IVL, o.reconnect_ivl_ms)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, o.reconnect_ivl_max_ms)
        s.setsockopt(zmq.HEARTBEAT_IVL, o.heartbeat_ivl_ms)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, o.heartbeat_timeout_ms)
        s.setsockopt(zmq.HEARTBEAT_TTL, 2 * o.heartbeat_timeout_ms)
        s.setsockopt(zmq.HANDSHAKE_IVL, o.handshake_ivl_ms)
        s.setsockopt(zmq.MAXMSGSIZE, o.max_reply_bytes)
        if curve is not None:
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve
        elif not is_local_endpoint(conn.endpoint):
            log.warning(
                "server %s is not on this machine and has no Curve key: pixels and tokens "
                "cross the network in plaintext",
                conn.label,
            )
        conn.monitor = s.get_monitor_socket(_MONITOR_EVENTS)
        s.connect(conn.endpoint)

    @contextlib.contextmanager
    def _owned(self) -> Iterator[None]:
        """``with self._owned():`` around every use of the sockets (one thread at a time)."""
        if self.closed:
            raise RuntimeError("ZmqTransport is closed")
        if not self._owner.acquire(blocking=False):
            raise RuntimeError(
                "ZmqTransport is not thread-safe: encode/info/maintain/wait_connected called concurrently"
            )
        try:
            yield
        finally:
            self._owner.release()

    # ------------------------------------------------------ connection events

    def _watch(self) -> None:
        """The monitor thread: applies each connection event to its server as it happens."""
        poller = zmq.Poller()
        monitors = {}
        for conn in self._servers:
            if conn.monitor is not None:
                poller.register(conn.monitor, zmq.POLLIN)
                monitors[conn.monitor] = conn
        while not self._watch_stop.is_set():
            try:
                ready = poller.poll(int(self.options.poll_step_s * 1000))
            except zmq.ZMQError:
                return  # the context is being destroyed
            for sock, _ in ready:
                conn = monitors[sock]
                while True:
                    try:
                        ev = recv_monitor_message(sock, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except zmq.ZMQError:
                        return
                    with self._stats_lock:
                        self._apply_event(conn, ev)

    def _apply_event(self, conn: _Connection, ev: dict) -> None:
        h, e = conn.health, ev["event"]
        if e == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            conn.connected = True
            conn.handshake_error = ""
            if h.state == "disconnected" and not h.suspect:
                h.state = "ok"
        elif e == zmq.EVENT_DISCONNECTED:
            if conn.connected:
                now = time.monotonic()
                loud = now - conn.last_warning >= _WARN_EVERY_S
                if loud:
                    conn.last_warning = now
                log.log(logging.WARNING if loud else logging.DEBUG, "lost connection to %s", conn.label)
                h.last_error = (
                    f"connection lost (the server closed it, or sent no heartbeat for "
                    f"{self.options.heartbeat_timeout_ms / 1000:g} s)"
                )
                self._make_suspect(conn)
            conn.connected = False
            h.state = "disconnected"
        elif e == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            conn.connected = False
            h.state = "disconnected"
            conn.handshake_error = (
                f"Curve handshake refused by the server (status {ev['value']}): "
                f"this edge's public key is not in its authorized keys"
            )
            h.last_error = conn.handshake_error
            self._make_suspect(conn)
        elif e in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            conn.connected = False
            h.state = "disconnected"
            conn.handshake_error = self._handshake_failure(conn, e)
            h.last_error = conn.handshake_error
            self._make_suspect(conn)
        h.connected = conn.connected

    def _handshake_failure(self, conn: _Connection, event: int) -> str:
        """Why a handshake failed, naming Curve only when Curve is in use."""
        timeout = self.options.handshake_ivl_ms / 1000
        if conn.address.public_key:
            if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                return (
                    f"ZMTP/Curve handshake not completed within {timeout:g} s: the server is hung or "
                    f"overloaded, or its public key is not the one configured"
                )
            return "Curve handshake failed: wrong server public key, or the server does not use Curve"
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            return (
                f"ZMTP handshake not completed within {timeout:g} s: the server accepted the TCP "
                f"connection but does not answer (hung, stopped or overloaded)"
            )
        return "ZMTP handshake failed: the peer speaks another protocol, or requires Curve (this edge has no key)"

    def _make_suspect(self, conn: _Connection) -> None:
        """(stats lock held) No tiles for ``conn`` until it answers a probe."""
        h = conn.health
        now = time.monotonic()
        if not h.suspect:
            conn.suspect_since = now
            relapse = now - conn.readmitted_at < _RELAPSE_S
            base = self.options.probe_interval_s
            conn.probe_backoff_s = min(_MAX_PROBE_BACKOFF_S, max(base, 2 * conn.probe_backoff_s)) if relapse else base
            conn.last_probe = now if relapse else -math.inf
        h.suspect = True

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """Wait until every server has completed its handshake; False on timeout."""
        with self._owned():
            end = time.monotonic() + timeout_s
            while True:
                with self._stats_lock:
                    if all(c.connected for c in self._servers):
                        return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(left, 0.02))

    # -------------------------------------------------------------- interface

    @property
    def server_names(self) -> List[str]:
        return [c.name for c in self._servers]

    def health(self) -> List[ServerHealth]:
        """Each server's health record (a copy): state ok / error / timeout / disconnected,
        suspect, last round trip, last compute and queue time reported by the server, counts,
        last error."""
        with self._stats_lock:
            return [dataclasses.replace(c.health) for c in self._servers]

    def usable(self) -> List[bool]:
        with self._stats_lock:
            return [c.connected and not c.health.suspect for c in self._servers]

    def mark_failed(self, server: int, reason: str) -> None:
        self._fail(self._servers[server], "error", reason)

    def _fail(self, conn: _Connection, state: str, message: str) -> None:
        with self._stats_lock:
            h = conn.health
            h.state = state
            h.consecutive_failures += 1
            h.last_error = message
            if state == "timeout":
                h.timeouts += 1
            else:
                h.errors += 1
            self._make_suspect(conn)

    def _abandon(self, pairs) -> None:
        """Remember (request id, server index) pairs given up on, so their replies count as late."""
        for rid, server in pairs:
            self._abandoned[rid] = server
        while len(self._abandoned) > _ABANDONED_MEMORY:
            self._abandoned.popitem(last=False)

    def _count_unmatched(self, conn: _Connection, rid) -> bool:
        """Count a reply that answers no pending request of ``conn``: *late* when it answers one
        this client abandoned (True), otherwise *stale* (False)."""
        if isinstance(rid, str) and self._abandoned.get(rid) == conn.index:
            with self._stats_lock:
                conn.health.late_replies += 1
            return True
        self.stale_replies += 1
        return False

    # ------------------------------------------------------------------ probes

    def maintain(self) -> None:
        """Read what suspect servers sent (probe answers, late replies) and probe those that
        are due; a server that answers correctly is taken back at once."""
        with self._owned():
            now = time.monotonic()
            for conn in self._servers:
                if not conn.suspect:
                    continue
                self._drain(conn)
                with self._stats_lock:
                    due = (
                        conn.health.suspect
                        and conn.connected
                        and now - conn.last_probe >= (conn.probe_backoff_s or self.options.probe_interval_s)
                    )
                if due:
                    self._probe(conn, now)

    def _probe(self, conn: _Connection, now: float) -> None:
        rid = wire.new_request_id()
        if not self._send(conn, wire.encode_message({"type": "info", "id": rid})):
            return
        conn.last_probe = now
        self._probes[rid] = conn.index
        while len(self._probes) > _PROBE_MEMORY:
            self._probes.popitem(last=False)
        with self._stats_lock:
            conn.health.probes += 1

    def _drain(self, conn: _Connection) -> None:
        """Handle every message waiting on ``conn`` outside a round."""
        for frames, _ in self._received(conn):
            try:
                header, _arrays = wire.decode_message(frames, max_total_bytes=self.options.max_reply_bytes)
            except WireError:
                continue
            rid = header.get("id")
            if isinstance(rid, str) and self._probes.get(rid) == conn.index:
                self._take_probe(conn, header)
            else:
                self._count_unmatched(conn, rid)

    def _take_probe(self, conn: _Connection, header: dict) -> None:
        """An answer to an info probe: the server is taken back when it serves our model."""
        try:
            info = ServerInfo.from_header(header) if header.get("type") == "info" else None
        except WireError as e:
            info, problem = None, f"bad info reply ({e})"
        else:
            problem = f"{header.get('code')}: {header.get('message')}" if info is None else ""
        if info is not None and info.model != self.geometry.spec:
            problem = f"serves model {info.model}, this edge runs {self.geometry.spec}"
        with self._stats_lock:
            h = conn.health
            if problem:
                h.last_error = f"probe answered, still suspect: {problem}"
                return
            if not h.suspect:
                return
            h.suspect = False
            h.state = "ok"
            h.consecutive_failures = 0
            conn.readmitted_at = time.monotonic()
            down_s = conn.readmitted_at - conn.suspect_since
        log.info("server %s answers again: back in use (suspect for %.1f s)", conn.label, down_s)

    # ------------------------------------------------------ send and collect

    def _send(self, conn: _Connection, frames) -> bool:
        """Queue one request without blocking; False when the socket would not take it."""
        try:
            conn.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def _received(self, conn: _Connection) -> Iterator:
        """Every message waiting on ``conn``'s socket: (frames, arrival time)."""
        while True:
            try:
                frames = conn.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            yield frames, time.monotonic()

    def _drop_failed(self, rnd: _Round) -> None:
        """Abandon the requests still pending at servers that already failed in this round."""
        gone = [(rid, s.server) for rid, s in rnd.pending.items() if s.server in rnd.failures]
        for rid, _ in gone:
            del rnd.pending[rid]
        self._abandon(gone)

    def _collect(
        self,
        rnd: _Round,
        deadline: float,
        on_reply: Callable[[_Round, _Reply], None],
        on_unreadable: Callable[[_Round, _Connection, WireError], None],
        on_lost: Optional[Callable[[_Round, _Connection], None]] = None,
        first_failure_ends: bool = True,
    ) -> None:
        """Poll the servers of ``rnd``'s requests until every one is answered (or, with
        ``first_failure_ends``, one has failed), or ``deadline``; hands each matched reply to
        ``on_reply``, each server whose connection drops with requests pending to ``on_lost``
        (at once, not at the deadline), answers probes, and drops (and counts) the rest."""
        poller = zmq.Poller()
        watched = {s.server for s in rnd.pending.values()} | {c.index for c in self._servers if c.suspect}
        for i in sorted(watched):
            poller.register(self._servers[i].socket, zmq.POLLIN)
        step_ms = max(1, int(self.options.poll_step_s * 1000))
        while rnd.pending:
            if rnd.failures:
                if first_failure_ends:
                    return
                self._drop_failed(rnd)
                if not rnd.pending:
                    return
            if on_lost is not None:
                with self._stats_lock:
                    lost = [
                        self._servers[i]
                        for i in sorted({s.server for s in rnd.pending.values()})
                        if not self._servers[i].connected
                    ]
                for conn in lost:
                    on_lost(rnd, conn)
                if lost:
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for sock, _ in poller.poll(max(1, min(step_ms, int(left * 1000)))):
                conn = next(c for c in self._servers if c.socket is sock)
                for frames, t_recv in self._received(conn):
                    try:
                        header, arrays = wire.decode_message(frames, max_total_bytes=self.options.max_reply_bytes)
                    except WireError as e:
                        if rnd.pending_of(conn.index):
                            on_unreadable(rnd, conn, e)
                        continue
                    rid = header.get("id")
                    sent = rnd.pending.get(rid) if isinstance(rid, str) else None
                    if sent is None or sent.server != conn.index:
                        if isinstance(rid, str) and self._probes.get(rid) == conn.index:
                            self._take_probe(conn, header)
                            continue
                        if not self._count_unmatched(conn, rid) and header.get("type") == "error":
                            with self._stats_lock:
                                conn.health.last_error = f"{header.get('code')}: {header.get('message')}"
                        log.debug("dropped a reply from %s with unknown or stale id %r", conn.label, rid)
                        continue
                    del rnd.pending[rid]
                    on_reply(rnd, _Reply(conn, sent, header, arrays, frames_nbytes(frames), t_recv))

    # ----------------------------------------------------------------- encode

    def encode(self, jobs: Sequence[TileJob], mode: str, timeout_s: float) -> List[TileResult]:
        """Every job's result; the first failure fails the frame (:class:`RemoteEncodeError`)."""
        with self._owned():
            rnd = self._encode(jobs, mode, timeout_s, first_failure_ends=True)
        if rnd.failures:
            bad = [self._servers[i] for i in sorted(rnd.failures)]
            used = {j.server for j in jobs}
            if all(rnd.failures[c.index].startswith("not connected") for c in bad):
                raise RemoteEncodeError(
                    "cannot send to " + "; ".join(f"{c.label}: {rnd.failures[c.index]}" for c in bad),
                    [c.name for c in bad],
                )
            detail = "; ".join(f"{c.label}: {rnd.failures[c.index]}" for c in bad)
            raise RemoteEncodeError(
                f"remote encoding failed for {len(bad)} of {len(used)} server(s): {detail}", [c.name for c in bad]
            )
        return rnd.results

    def encode_partial(self, jobs: Sequence[TileJob], mode: str, timeout_s: float) -> EncodeRound:
        """Every tile whose server delivered, and the reason of each server that did not (its
        other requests are abandoned); a server that fails is suspect from then on."""
        with self._owned():
            rnd = self._encode(jobs, mode, timeout_s, first_failure_ends=False)
        return EncodeRound(list(rnd.results), dict(rnd.failures))

    def _encode(self, jobs: Sequence[TileJob], mode: str, timeout_s: float, first_failure_ends: bool) -> _Round:
        deadline = time.monotonic() + timeout_s
        for job in jobs:
            if not 0 <= job.server < len(self._servers):
                raise ValueError(
                    f"job for tile {job.tile.index} names server {job.server}, but only {len(self._servers)} exist"
                )
        rnd = _Round([None] * len(jobs))
        with self._stats_lock:
            down = [self._servers[i] for i in sorted({j.server for j in jobs}) if not self._servers[i].connected]
        for conn in down:
            self._not_connected(rnd, conn)
        if rnd.failures and first_failure_ends:
            return rnd
        self._send_tiles(
            rnd,
            [(k, j) for k, j in enumerate(jobs) if j.server not in rnd.failures],
            mode,
            deadline,
            first_failure_ends,
        )
        if rnd.failures and first_failure_ends:
            self._abandon((r, s.server) for r, s in rnd.pending.items())
            return rnd
        self._collect(rnd, deadline, self._take_encoded, self._encode_unreadable, self._encode_lost, first_failure_ends)
        if rnd.pending and (not rnd.failures or not first_failure_ends):  # deadline
            late = collections.Counter(s.server for s in rnd.pending.values() if s.server not in rnd.failures)
            for i, n in late.items():
                rnd.failures[i] = f"no reply for {n} tile(s) within {timeout_s:.3f} s"
                self._fail(self._servers[i], "timeout", rnd.failures[i])
        self._abandon((r, s.server) for r, s in rnd.pending.items())
        rnd.pending.clear()
        for i in rnd.failures:  # none of a failed server's tiles is used
            for k, job in enumerate(jobs):
                if job.server == i:
                    rnd.results[k] = None
        return rnd

    def _send_tiles(self, rnd: _Round, jobs, mode: str, deadline: float, first_failure_ends: bool) -> None:
        """Send every tile at once, each with the time left to ``deadline``; a server whose socket
        refuses one fails (its requests already sent are abandoned)."""
        for k, job in jobs:
            conn = self._servers[job.server]
            if job.server in rnd.failures:
                continue
            rid = wire.new_request_id()
            budget_ms = max(1, math.ceil((deadline - time.monotonic()) * 1000))
            frames = wire.make_encode_request(
                EncodeRequest(
                    rid, self.geometry.spec, mode, job.tile, job.pixels, budget_ms, self.token_dtype, self.pixel_codec
                )
            )
            t_sent = time.monotonic()  # before the send: the server may finish before send_multipart returns
            if not self._send(conn, frames):
                with self._stats_lock:
                    queue_full = conn.connected  # connected but refusing: the send queue is at its high-water mark
                    if not queue_full:
                        conn.health.connected = False
                if queue_full:
                    rnd.failures[conn.index] = "send queue full (the server is not reading its requests)"
                    self._fail(conn, "error", rnd.failures[conn.index])
                else:
                    self._not_connected(rnd, conn)
                self._drop_failed(rnd)
                if first_failure_ends:
                    return
                continue
            rnd.pending[rid] = _Sent(k, job.server, t_sent, frames_nbytes(frames), job)
            with self._stats_lock:
                conn.health.requests += 1

    def _not_connected(self, rnd: _Round, conn: _Connection) -> None:
        reason = "not connected: " + (conn.handshake_error or "server down or unreachable")
        rnd.failures.setdefault(conn.index, reason)
        self._fail(conn, "disconnected", reason)

    def _encode_lost(self, rnd: _Round, conn: _Connection) -> None:
        n = len(rnd.pending_of(conn.index))
        reason = (
            f"connection lost with {n} tile(s) in flight (the server closed it, or sent no heartbeat for "
            f"{self.options.heartbeat_timeout_ms / 1000:g} s)"
        )
        rnd.failures.setdefault(conn.index, reason)
        self._fail(conn, "disconnected", rnd.failures[conn.index])

    def _encode_failed(self, rnd: _Round, conn: _Connection, reason: str) -> None:
        rnd.failures.setdefault(conn.index, reason)
        self._fail(conn, "error", rnd.failures[conn.index])

    def _encode_unreadable(self, rnd: _Round, conn: _Connection, e: WireError) -> None:
        self._encode_failed(rnd, conn, f"unreadable reply ({e.code}: {e})")

    def _take_encoded(self, rnd: _Round, r: _Reply) -> None:
        """One tile's reply: its result, or the failure of its server."""
        if r.conn.index in rnd.failures:
            return
        kind = r.header.get("type")
        if kind == "error":
            return self._encode_failed(rnd, r.conn, f"error reply {r.header.get('code')!r}: {r.header.get('message')}")
        if kind != "encoded":
            return self._encode_failed(rnd, r.conn, f"unexpected reply type {kind!r}")
        job = r.sent.job
        h, w = job.tile.token_shape
        try:
            reply = read_encoded_reply(r.header, r.arrays, (h, w, self.geometry.embed_dim), self.token_dtype)
        except WireError as e:
            return self._encode_failed(rnd, r.conn, f"bad reply ({e.code}: {e})")
        rtt = r.t_recv - r.sent.t_sent
        rnd.results[r.sent.slot] = TileResult(
            job.tile, job.server, reply.tokens, r.sent.bytes_up, r.nbytes, rtt, reply.compute_s or 0.0
        )
        with self._stats_lock:
            hh = r.conn.health
            if not hh.suspect:
                hh.state, hh.consecutive_failures = "ok", 0
            hh.last_latency_s, hh.last_compute_s, hh.last_queue_s = rtt, reply.compute_s, reply.queue_s
            hh.last_ok_time = time.time()
            hh.replies += 1

    # ------------------------------------------------------------------- info

    def info(self, timeout_s: float = 2.0) -> List[ServerInfoReply]:
        """Ask every server for its ``info``: one :class:`ServerInfoReply` per server, by index."""
        with self._owned():
            rnd = _Round([ServerInfoReply(c.name, c.endpoint) for c in self._servers])
            for conn in self._servers:
                rid = wire.new_request_id()
                if self._send(conn, wire.encode_message({"type": "info", "id": rid})):
                    rnd.pending[rid] = _Sent(conn.index, conn.index, time.monotonic())
                else:
                    rnd.results[conn.index] = dataclasses.replace(rnd.results[conn.index], error="not connected")
            self._collect(rnd, time.monotonic() + timeout_s, self._take_info, self._info_unreadable)
            for s in rnd.pending.values():
                rnd.results[s.slot] = dataclasses.replace(
                    rnd.results[s.slot], error=f"no reply within {timeout_s:.3f} s"
                )
            self._abandon((r, s.server) for r, s in rnd.pending.items())
            return rnd.results

    def _info_unreadable(self, rnd: _Round, conn: _Connection, e: WireError) -> None:
        # no id to match it by: this server's one info request counts as answered
        rnd.results[conn.index] = dataclasses.replace(
            rnd.results[conn.index], error=f"unreadable reply ({e.code}: {e})"
        )
        mine = rnd.pending_of(conn.index)
        for rid in mine:
            del rnd.pending[rid]
        self._abandon((rid, conn.index) for rid in mine)

    @staticmethod
    def _take_info(rnd: _Round, r: _Reply) -> None:
        slot = rnd.results[r.sent.slot]
        if r.header.get("type") != "info":
            rnd.results[r.sent.slot] = dataclasses.replace(
                slot, error=f"{r.header.get('code')}: {r.header.get('message')}"
            )
            return
        try:
            rnd.results[r.sent.slot] = dataclasses.replace(slot, info=ServerInfo.from_header(r.header))
        except WireError as e:
            rnd.results[r.sent.slot] = dataclasses.replace(slot, error=f"bad info reply ({e})")

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the monitor thread, close every socket (and the context, when this transport
        made it); never blocks for long."""
        if self.closed:
            return
        self.closed = True
        self._watch_stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(2.0)
        for conn in self._servers:
            for name in ("monitor", "socket"):
                sock = getattr(conn, name)
                if sock is not None:
                    if name == "socket":
                        try:
                            sock.disable_monitor()
                        except zmq.ZMQError:
                            pass
                    sock.close(linger=0)
                    setattr(conn, name, None)
        if self._own_context:
            # destroy() closes any socket still open (with linger 0) before terminating,
            # so a socket missed above can never make this wait forever.
            self.context.destroy(linger=0)
