"""The edge side of the network: a :class:`Transport` over ZeroMQ.

One DEALER socket per remote server (each server is a ROUTER that binds, see
``remote_node``).  A frame's tiles all go out at once, each request with a
fresh id and the time left of the frame's deadline (``budget_ms``); replies
are matched by id, and replies to abandoned or unknown ids are dropped and
counted.  Any error reply, deadline miss or unreachable server fails the frame
with a :class:`RemoteEncodeError` naming the servers (name and endpoint) and the
reason.  ``encode`` and ``info`` share one send-and-collect loop
(:meth:`ZmqTransport._collect`) over a :class:`_Round` of requests in flight.

Socket settings (:class:`ClientOptions`): ``LINGER=0`` (closing never blocks),
``IMMEDIATE=1`` (requests are only queued to completed connections, so a server
that is down fails the frame at once instead of receiving stale work later),
reconnect back-off, ZMTP heartbeats (a silent peer is dropped after
``heartbeat_timeout_ms``), bounded high-water marks, and ``MAXMSGSIZE`` against
oversized replies.  A socket monitor tracks each connection (handshake done,
disconnected, Curve authentication refused).

Threading: pyzmq sockets are not thread-safe.  The sockets belong to the thread
that calls :meth:`ZmqTransport.encode` / :meth:`~ZmqTransport.info` /
:meth:`~ZmqTransport.wait_connected` (the edge runtime's single worker thread);
concurrent calls raise ``RuntimeError``.  :meth:`ZmqTransport.health` only reads
a snapshot and may be called from any thread.
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
from ped_sam_ros.core.transport import (RemoteEncodeError, ServerAddress, ServerHealth, ServerInfoReply, TileJob,
                                        TileResult, Transport)
from ped_sam_ros.core.wire import EncodeRequest, WireError, frames_nbytes

from .curve import CurveKeyError, is_local_endpoint, load_public_key, load_secret_pair

log = logging.getLogger(__name__)

_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
#: replies to this many abandoned requests are recognised as "late" rather than unknown
_ABANDONED_MEMORY = 4096
#: replies bigger than this (per frame) make libzmq drop the connection; vit_h float32 tokens
#: of the whole 64x64 grid are 21 MB
DEFAULT_MAX_REPLY_BYTES = 32 << 20


@dataclass(frozen=True)
class ClientOptions:
    """Socket settings of every DEALER (milliseconds, message counts, bytes)."""

    hwm: int = 100
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 2000
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 3000
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES


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
        self.health = ServerHealth(self.name, self.endpoint, state="disconnected", connected=False,
                                   curve=address.public_key is not None)

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
        self._abandoned: "collections.OrderedDict[str, int]" = collections.OrderedDict()
        self.stale_replies = 0  # replies whose id was never ours (or long forgotten)
        self.closed = False
        try:
            for conn in self._servers:
                self._open(conn)
        except Exception:
            self.close()
            raise

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
        s.setsockopt(zmq.MAXMSGSIZE, o.max_reply_bytes)
        if curve is not None:
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve
        elif not is_local_endpoint(conn.endpoint):
            log.warning("server %s is not on this machine and has no Curve key: pixels and tokens "
                        "cross the network in plaintext", conn.label)
        conn.monitor = s.get_monitor_socket(_MONITOR_EVENTS)
        s.connect(conn.endpoint)

    @contextlib.contextmanager
    def _owned(self) -> Iterator[None]:
        """``with self._owned():`` around every use of the sockets (one thread at a time)."""
        if self.closed:
            raise RuntimeError("ZmqTransport is closed")
        if not self._owner.acquire(blocking=False):
            raise RuntimeError("ZmqTransport is not thread-safe: encode/info/wait_connected called concurrently")
        try:
            yield
        finally:
            self._owner.release()

    def _poll_monitors(self) -> None:
        """Apply pending connection events to each server's state."""
        for conn in self._servers:
            while conn.monitor is not None and conn.monitor.poll(0):
                try:
                    ev = recv_monitor_message(conn.monitor, zmq.NOBLOCK)
                except zmq.Again:
                    break
                with self._stats_lock:
                    self._apply_event(conn, ev)

    @staticmethod
    def _apply_event(conn: _Connection, ev: dict) -> None:
        h, e = conn.health, ev["event"]
        if e == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            conn.connected = True
            conn.handshake_error = ""
            if h.state == "disconnected":
                h.state = "ok"
        elif e == zmq.EVENT_DISCONNECTED:
            if conn.connected:
                log.warning("lost connection to %s", conn.label)
            conn.connected = False
            h.state = "disconnected"
        elif e == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            conn.connected = False
            h.state = "disconnected"
            conn.handshake_error = (f"Curve handshake refused by the server (status {ev['value']}): "
                                    f"this edge's public key is not in its authorized keys")
            h.last_error = conn.handshake_error
        elif e in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            conn.connected = False
            h.state = "disconnected"
            conn.handshake_error = "ZMTP/Curve handshake failed (wrong server public key, or Curve on one side only?)"
            h.last_error = conn.handshake_error
        h.connected = conn.connected

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """Wait until every server has completed its handshake; False on timeout."""
        with self._owned():
            end = time.monotonic() + timeout_s
            while True:
                self._poll_monitors()
                if all(c.connected for c in self._servers):
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                poller = zmq.Poller()
                for c in self._servers:
                    poller.register(c.monitor, zmq.POLLIN)
                poller.poll(min(left, 0.1) * 1000)

    # -------------------------------------------------------------- interface

    @property
    def server_names(self) -> List[str]:
        return [c.name for c in self._servers]

    def health(self) -> List[ServerHealth]:
        """Each server's health record (a copy): state ok / error / timeout / disconnected,
        last round trip, last compute and queue time reported by the server, counts, last error."""
        with self._stats_lock:
            return [dataclasses.replace(c.health) for c in self._servers]

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

    def _collect(self, rnd: _Round, deadline: float, on_reply: Callable[[_Round, _Reply], None],
                 on_unreadable: Callable[[_Round, _Connection, WireError], None]) -> None:
        """Poll the servers of ``rnd``'s requests until every one is answered, one has failed, or
        ``deadline``; hands each matched reply to ``on_reply`` and drops (and counts) the others."""
        poller = zmq.Poller()
        for i in sorted({s.server for s in rnd.pending.values()}):
            poller.register(self._servers[i].socket, zmq.POLLIN)
        while rnd.pending and not rnd.failures:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for sock, _ in poller.poll(max(1, int(left * 1000))):
                conn = next(c for c in self._servers if c.socket is sock)
                for frames, t_recv in self._received(conn):
                    try:
                        header, arrays = wire.decode_message(frames, max_total_bytes=self.options.max_reply_bytes)
                    except WireError as e:
                        on_unreadable(rnd, conn, e)
                        continue
                    rid = header.get("id")
                    sent = rnd.pending.get(rid) if isinstance(rid, str) else None
                    if sent is None or sent.server != conn.index:
                        if not self._count_unmatched(conn, rid) and header.get("type") == "error":
                            with self._stats_lock:
                                conn.health.last_error = f"{header.get('code')}: {header.get('message')}"
                        log.debug("dropped a reply from %s with unknown or stale id %r", conn.label, rid)
                        continue
                    del rnd.pending[rid]
                    on_reply(rnd, _Reply(conn, sent, header, arrays, frames_nbytes(frames), t_recv))

    # ----------------------------------------------------------------- encode

    def encode(self, jobs: Sequence[TileJob], mode: str, timeout_s: float) -> List[TileResult]:
        with self._owned():
            return self._encode(jobs, mode, timeout_s)

    def _encode(self, jobs: Sequence[TileJob], mode: str, timeout_s: float) -> List[TileResult]:
        deadline = time.monotonic() + timeout_s
        self._poll_monitors()
        for job in jobs:
            if not 0 <= job.server < len(self._servers):
                raise ValueError(f"job for tile {job.tile.index} names server {job.server}, "
                                 f"but only {len(self._servers)} exist")
        used = sorted({j.server for j in jobs})
        down = [self._servers[i] for i in used if not self._servers[i].connected]
        if down:
            self._raise_not_connected(down)
        rnd = self._send_tiles(jobs, mode, deadline)
        self._collect(rnd, deadline, self._take_encoded, self._encode_unreadable)
        if rnd.pending and not rnd.failures:  # deadline
            late = collections.Counter(s.server for s in rnd.pending.values())
            for i, n in late.items():
                rnd.failures[i] = f"no reply for {n} tile(s) within {timeout_s:.3f} s"
                self._fail(self._servers[i], "timeout", rnd.failures[i])
        if rnd.failures:
            self._abandon((r, s.server) for r, s in rnd.pending.items())
            self._poll_monitors()
            bad = [self._servers[i] for i in sorted(rnd.failures)]
            detail = "; ".join(f"{c.label}: {rnd.failures[c.index]}" for c in bad)
            raise RemoteEncodeError(f"remote encoding failed for {len(bad)} of {len(used)} server(s): {detail}",
                                    [c.name for c in bad])
        return rnd.results

    def _send_tiles(self, jobs: Sequence[TileJob], mode: str, deadline: float) -> _Round:
        """Send every tile at once, each with the time left to ``deadline``; a server whose socket
        refuses one fails the frame (the requests already sent are abandoned)."""
        rnd = _Round([None] * len(jobs))
        for k, job in enumerate(jobs):
            conn = self._servers[job.server]
            rid = wire.new_request_id()
            budget_ms = max(1, math.ceil((deadline - time.monotonic()) * 1000))
            frames = wire.make_encode_request(
                EncodeRequest(rid, self.geometry.spec, mode, job.tile, job.pixels, budget_ms, self.token_dtype,
                              self.pixel_codec))
            t_sent = time.monotonic()  # before the send: the server may finish before send_multipart returns
            if not self._send(conn, frames):
                self._abandon((r, s.server) for r, s in rnd.pending.items())
                self._poll_monitors()
                queue_full = conn.connected  # connected but refusing: the send queue is at its high-water mark
                if not queue_full:
                    with self._stats_lock:
                        conn.health.connected = False
                self._raise_not_connected([conn], queue_full=queue_full)
            rnd.pending[rid] = _Sent(k, job.server, t_sent, frames_nbytes(frames), job)
            with self._stats_lock:
                conn.health.requests += 1
        return rnd

    def _encode_failed(self, rnd: _Round, conn: _Connection, reason: str) -> None:
        rnd.failures.setdefault(conn.index, reason)
        self._fail(conn, "error", rnd.failures[conn.index])

    def _encode_unreadable(self, rnd: _Round, conn: _Connection, e: WireError) -> None:
        self._encode_failed(rnd, conn, f"unreadable reply ({e.code}: {e})")

    def _take_encoded(self, rnd: _Round, r: _Reply) -> None:
        """One tile's reply: its result, or the failure of its server."""
        kind = r.header.get("type")
        if kind == "error":
            return self._encode_failed(rnd, r.conn, f"error reply {r.header.get('code')!r}: "
                                                    f"{r.header.get('message')}")
        if kind != "encoded":
            return self._encode_failed(rnd, r.conn, f"unexpected reply type {kind!r}")
        job = r.sent.job
        h, w = job.tile.token_shape
        try:
            reply = read_encoded_reply(r.header, r.arrays, (h, w, self.geometry.embed_dim))
        except WireError as e:
            return self._encode_failed(rnd, r.conn, f"bad reply ({e.code}: {e})")
        rtt = r.t_recv - r.sent.t_sent
        rnd.results[r.sent.slot] = TileResult(job.tile, job.server, reply.tokens, r.sent.bytes_up, r.nbytes, rtt,
                                              reply.compute_s or 0.0)
        with self._stats_lock:
            hh = r.conn.health
            hh.state, hh.consecutive_failures = "ok", 0
            hh.last_latency_s, hh.last_compute_s, hh.last_queue_s = rtt, reply.compute_s, reply.queue_s
            hh.last_ok_time = time.time()
            hh.replies += 1

    def _raise_not_connected(self, down: Sequence[_Connection], queue_full: bool = False):
        parts = []
        for conn in down:
            if queue_full:
                reason = "send queue full (the server is not reading its requests)"
                self._fail(conn, "error", reason)
            else:
                reason = "not connected: " + (conn.handshake_error or "server down or unreachable")
                self._fail(conn, "disconnected", reason)
            parts.append(f"{conn.label}: {reason}")
        raise RemoteEncodeError("cannot send to " + "; ".join(parts), [c.name for c in down])

    # ------------------------------------------------------------------- info

    def info(self, timeout_s: float = 2.0) -> List[ServerInfoReply]:
        """Ask every server for its ``info``: one :class:`ServerInfoReply` per server, by index."""
        with self._owned():
            self._poll_monitors()
            rnd = _Round([ServerInfoReply(c.name, c.endpoint) for c in self._servers])
            for conn in self._servers:
                rid = wire.new_request_id()
                if self._send(conn, wire.encode_message({"type": "info", "id": rid})):
                    rnd.pending[rid] = _Sent(conn.index, conn.index, time.monotonic())
                else:
                    rnd.results[conn.index] = dataclasses.replace(rnd.results[conn.index], error="not connected")
            self._collect(rnd, time.monotonic() + timeout_s, self._take_info, self._info_unreadable)
            for s in rnd.pending.values():
                rnd.results[s.slot] = dataclasses.replace(rnd.results[s.slot],
                                                          error=f"no reply within {timeout_s:.3f} s")
            self._abandon((r, s.server) for r, s in rnd.pending.items())
            return rnd.results

    def _info_unreadable(self, rnd: _Round, conn: _Connection, e: WireError) -> None:
        # no id to match it by: this server's one info request counts as answered
        rnd.results[conn.index] = dataclasses.replace(rnd.results[conn.index],
                                                      error=f"unreadable reply ({e.code}: {e})")
        mine = rnd.pending_of(conn.index)
        for rid in mine:
            del rnd.pending[rid]
        self._abandon((rid, conn.index) for rid in mine)

    @staticmethod
    def _take_info(rnd: _Round, r: _Reply) -> None:
        slot = rnd.results[r.sent.slot]
        if r.header.get("type") != "info":
            rnd.results[r.sent.slot] = dataclasses.replace(
                slot, error=f"{r.header.get('code')}: {r.header.get('message')}")
            return
        try:
            rnd.results[r.sent.slot] = dataclasses.replace(slot, info=ServerInfo.from_header(r.header))
        except WireError as e:
            rnd.results[r.sent.slot] = dataclasses.replace(slot, error=f"bad info reply ({e})")

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close every socket (and the context, when this transport made it); never blocks."""
        if self.closed:
            return
        self.closed = True
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

