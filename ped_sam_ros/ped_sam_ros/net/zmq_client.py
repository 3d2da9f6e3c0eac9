"""The edge side of the network: a :class:`Transport` over ZeroMQ.

One DEALER socket per remote server (each server is a ROUTER that binds, see
``remote_node``).  A frame's windows all go out at once, each request with a
fresh id and the time left of the frame's deadline (``budget_ms``); replies
are matched by id, and replies to abandoned or unknown ids are dropped and
counted.  Any error reply, deadline miss or unreachable server fails the frame
with a :class:`RemoteEncodeError` naming the servers (name and endpoint) and the
reason.

Socket settings: ``LINGER=0`` (closing never blocks), ``IMMEDIATE=1``
(requests are only queued to completed connections, so a server that is down
fails the frame at once instead of receiving stale work later), reconnect
back-off, ZMTP heartbeats (a silent peer is dropped after
``heartbeat_timeout_ms``), bounded high-water marks, and ``MAXMSGSIZE`` against
oversized replies.  A socket monitor tracks each connection (handshake done,
disconnected, Curve authentication refused).

Threading: pyzmq sockets are not thread-safe.  The sockets belong to the thread
that calls :meth:`ZmqTransport.encode` / :meth:`info` / :meth:`wait_connected`
(the ROS node's single worker thread); concurrent calls raise ``RuntimeError``.
:meth:`ZmqTransport.health` only reads a snapshot and may be called from any thread.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import zmq
from zmq.utils.monitor import recv_monitor_message

from ped_sam_ros.core import wire
from ped_sam_ros.core.transport import RemoteEncodeError, Transport, TileJob, TileResult
from ped_sam_ros.core.wire import EncodeRequest, WireError, frames_nbytes

from .curve import CurveKeyError, is_local_endpoint, load_public_key, load_secret_pair

log = logging.getLogger(__name__)

_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
#: replies to this many abandoned requests are recognised as "late" rather than unknown
_ABANDONED_MEMORY = 4096
#: fields of an info reply that are not copied into :meth:`ZmqTransport.info`'s dicts: protocol
#: fields, and the ones this client fills in itself (the server's name goes to ``server_name``)
_INFO_OWN_KEYS = frozenset({"v", "type", "id", "tensors", "name", "endpoint", "error", "server_name"})
#: replies bigger than this (per frame) make libzmq drop the connection; vit_h float32 tokens
#: of the whole 64x64 grid are 21 MB
DEFAULT_MAX_REPLY_BYTES = 32 << 20


@dataclass
class ServerSpec:
    """How to reach one remote server.

    ``server_public_key``: the server's ``NAME.key`` file (enables CurveZMQ for
    this server); ``client_secret_key``: this edge's ``NAME.key_secret`` (if not
    given, the transport-wide one is used).
    """

    endpoint: str
    name: Optional[str] = None
    server_public_key: Optional[str] = None
    client_secret_key: Optional[str] = None


class _Server:
    """One remote server: its socket, monitor, and health counters."""

    def __init__(self, index: int, spec: ServerSpec):
        self.index = index
        self.spec = spec
        self.name = spec.name or f"server{index}"
        self.endpoint = spec.endpoint
        self.socket: Optional[zmq.Socket] = None
        self.monitor: Optional[zmq.Socket] = None
        self.connected = False
        self.handshake_error = ""  # why the last handshake failed (cleared when one succeeds)
        self.health: Dict = {
            "name": self.name,
            "endpoint": self.endpoint,
            "state": "disconnected",
            "connected": False,
            "curve": spec.server_public_key is not None,
            "last_latency_s": None,
            "last_compute_s": None,
            "last_queue_s": None,
            "consecutive_failures": 0,
            "requests": 0,
            "replies": 0,
            "errors": 0,
            "timeouts": 0,
            "late_replies": 0,
            "last_error": "",
            "last_ok_time": None,  # time.time() of the last good reply
        }

    @property
    def label(self) -> str:
        return f"{self.name} ({self.endpoint})"


class ZmqTransport(Transport):
    """Remote encoders over ZeroMQ: one DEALER per server.

    ``servers``: endpoints (``"tcp://host:port"``) or :class:`ServerSpec`.
    ``names``: optional names for plain endpoints.  ``client_secret_key`` /
    ``server_public_keys``: CurveZMQ key files (this edge's ``.key_secret``, and
    one server ``.key`` per server, ``None`` for a plaintext server).
    """

    def __init__(
        self,
        servers: Sequence[Union[str, ServerSpec]],
        names: Optional[Sequence[str]] = None,
        token_dtype: str = "float16",
        client_secret_key: Optional[str] = None,
        server_public_keys: Optional[Sequence[Optional[str]]] = None,
        *,
        context: Optional[zmq.Context] = None,
        hwm: int = 100,
        reconnect_ivl_ms: int = 100,
        reconnect_ivl_max_ms: int = 2000,
        heartbeat_ivl_ms: int = 1000,
        heartbeat_timeout_ms: int = 3000,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ):
        if token_dtype not in wire.TOKEN_DTYPES:
            raise ValueError(f"token_dtype must be one of {wire.TOKEN_DTYPES}, got {token_dtype!r}")
        if not servers:
            raise ValueError("at least one remote server endpoint is needed")
        if names is not None and len(names) != len(servers):
            raise ValueError(f"{len(names)} names for {len(servers)} servers")
        if server_public_keys is not None and len(server_public_keys) != len(servers):
            raise ValueError(f"{len(server_public_keys)} server public keys for {len(servers)} servers")
        specs: List[ServerSpec] = []
        for i, s in enumerate(servers):
            spec = ServerSpec(s) if isinstance(s, str) else ServerSpec(**vars(s))
            if names is not None:
                spec.name = names[i]
            if server_public_keys is not None and server_public_keys[i]:
                spec.server_public_key = server_public_keys[i]
            if spec.server_public_key and not spec.client_secret_key:
                spec.client_secret_key = client_secret_key
            if spec.server_public_key and not spec.client_secret_key:
                raise ValueError(f"server {spec.name or spec.endpoint} has a Curve public key but no client "
                                 f"secret key was given")
            specs.append(spec)
        self.token_dtype = token_dtype
        self._opts = dict(hwm=hwm, reconnect_ivl_ms=reconnect_ivl_ms, reconnect_ivl_max_ms=reconnect_ivl_max_ms,
                          heartbeat_ivl_ms=heartbeat_ivl_ms, heartbeat_timeout_ms=heartbeat_timeout_ms,
                          max_reply_bytes=max_reply_bytes)
        self._servers = [_Server(i, s) for i, s in enumerate(specs)]
        names_seen = [s.name for s in self._servers]
        if len(set(names_seen)) != len(names_seen):
            raise ValueError(f"server names must be unique, got {names_seen}")
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._owner = threading.Lock()  # held while a thread uses the sockets
        self._stats_lock = threading.Lock()  # guards health dicts (read from other threads)
        self._abandoned: "collections.OrderedDict[str, int]" = collections.OrderedDict()
        self.stale_replies = 0  # replies whose id was never ours (or long forgotten)
        self.closed = False
        try:
            for srv in self._servers:
                self._open(srv)
        except Exception:
            self.close()
            raise

    # ---------------------------------------------------------------- sockets

    def _open(self, srv: _Server) -> None:
        o = self._opts
        # Keys first: a bad key file raises before any socket exists.
        curve = None
        if srv.spec.server_public_key:
            try:
                public, secret = load_secret_pair(srv.spec.client_secret_key)
                server_public = load_public_key(srv.spec.server_public_key)
            except CurveKeyError as e:
                raise CurveKeyError(f"server {srv.label}: {e}") from None
            curve = (public, secret, server_public)
        s = self.context.socket(zmq.DEALER)
        srv.socket = s  # registered at once: close() releases it whatever fails below
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        s.setsockopt(zmq.SNDHWM, o["hwm"])
        s.setsockopt(zmq.RCVHWM, o["hwm"])
        s.setsockopt(zmq.RECONNECT_IVL, o["reconnect_ivl_ms"])
        s.setsockopt(zmq.RECONNECT_IVL_MAX, o["reconnect_ivl_max_ms"])
        s.setsockopt(zmq.HEARTBEAT_IVL, o["heartbeat_ivl_ms"])
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, o["heartbeat_timeout_ms"])
        s.setsockopt(zmq.HEARTBEAT_TTL, 2 * o["heartbeat_timeout_ms"])
        s.setsockopt(zmq.MAXMSGSIZE, o["max_reply_bytes"])
        if curve is not None:
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve
        elif not is_local_endpoint(srv.endpoint):
            log.warning("server %s is not on this machine and has no Curve key: pixels and tokens "
                        "cross the network in plaintext", srv.label)
        srv.monitor = s.get_monitor_socket(_MONITOR_EVENTS)
        s.connect(srv.endpoint)

    def _check_owner(self):
        if self.closed:
            raise RuntimeError("ZmqTransport is closed")
        if not self._owner.acquire(blocking=False):
            raise RuntimeError("ZmqTransport is not thread-safe: encode/info/wait_connected called concurrently")

    def _poll_monitors(self) -> None:
        """Apply pending connection events to each server's state."""
        for srv in self._servers:
            while srv.monitor is not None and srv.monitor.poll(0):
                try:
                    ev = recv_monitor_message(srv.monitor, zmq.NOBLOCK)
                except zmq.Again:
                    break
                e = ev["event"]
                with self._stats_lock:
                    h = srv.health
                    if e == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        srv.connected = True
                        srv.handshake_error = ""
                        if h["state"] == "disconnected":
                            h["state"] = "ok"
                    elif e == zmq.EVENT_DISCONNECTED:
                        if srv.connected:
                            log.warning("lost connection to %s", srv.label)
                        srv.connected = False
                        h["state"] = "disconnected"
                    elif e == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                        srv.connected = False
                        h["state"] = "disconnected"
                        srv.handshake_error = (f"Curve handshake refused by the server (status {ev['value']}): "
                                               f"this edge's public key is not in its authorized keys")
                        h["last_error"] = srv.handshake_error
                    elif e in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                        srv.connected = False
                        h["state"] = "disconnected"
                        srv.handshake_error = ("ZMTP/Curve handshake failed (wrong server public key, or "
                                               "Curve on one side only?)")
                        h["last_error"] = srv.handshake_error
                    h["connected"] = srv.connected

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """Wait until every server has completed its handshake; False on timeout."""
        self._check_owner()
        try:
            end = time.monotonic() + timeout_s
            while True:
                self._poll_monitors()
                if all(s.connected for s in self._servers):
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                poller = zmq.Poller()
                for s in self._servers:
                    poller.register(s.monitor, zmq.POLLIN)
                poller.poll(min(left, 0.1) * 1000)
        finally:
            self._owner.release()

    # -------------------------------------------------------------- interface

    @property
    def server_names(self) -> List[str]:
        return [s.name for s in self._servers]

    @property
    def endpoints(self) -> List[str]:
        return [s.endpoint for s in self._servers]

    def health(self) -> List[Dict]:
        """Per-server health: name, endpoint, state (ok / error / timeout /
        disconnected), connected, last round-trip latency, last compute and
        queue time reported by the server, consecutive failures, counts, last error."""
        with self._stats_lock:
            return [dict(s.health) for s in self._servers]

    def encode(self, jobs: Sequence[TileJob], model: str, mode: str, timeout_s: float) -> List[TileResult]:
        self._check_owner()
        try:
            return self._encode(jobs, model, mode, timeout_s)
        finally:
            self._owner.release()

    def _fail(self, srv: _Server, state: str, message: str) -> None:
        with self._stats_lock:
            h = srv.health
            h["state"] = state
            h["consecutive_failures"] += 1
            h["last_error"] = message
            if state == "timeout":
                h["timeouts"] += 1
            else:
                h["errors"] += 1

    def _abandon(self, rids) -> None:
        for rid, srv_index in rids:
            self._abandoned[rid] = srv_index
        while len(self._abandoned) > _ABANDONED_MEMORY:
            self._abandoned.popitem(last=False)

    def _encode(self, jobs, model, mode, timeout_s) -> List[TileResult]:
        from ped_sam_ros.core.model import get_geometry

        embed_dim = get_geometry(model).embed_dim
        t_start = time.monotonic()
        deadline = t_start + timeout_s
        self._poll_monitors()
        for job in jobs:
            if not 0 <= job.server < len(self._servers):
                raise ValueError(f"job for window {job.tile.index} names server {job.server}, "
                                 f"but only {len(self._servers)} exist")
        used = sorted({j.server for j in jobs})
        down = [self._servers[i] for i in used if not self._servers[i].connected]
        if down:
            self._raise_not_connected(down)

        # Send every window at once.
        pending: Dict[str, tuple] = {}  # id -> (job index, server index, t_sent, bytes_up)
        for k, job in enumerate(jobs):
            srv = self._servers[job.server]
            rid = wire.new_request_id()
            budget_ms = max(1, math.ceil((deadline - time.monotonic()) * 1000))
            frames = wire.make_encode_request(
                EncodeRequest(rid, model, mode, job.tile, job.pixels, budget_ms, self.token_dtype))
            t_sent = time.monotonic()  # before the send: the server may finish before send_multipart returns
            try:
                srv.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._abandon((r, p[1]) for r, p in pending.items())
                self._poll_monitors()
                # connected but refusing: the send queue is at its high-water mark
                queue_full = srv.connected
                if not queue_full:
                    with self._stats_lock:
                        srv.health["connected"] = False
                self._raise_not_connected([srv], queue_full=queue_full)
            pending[rid] = (k, job.server, t_sent, frames_nbytes(frames))
            with self._stats_lock:
                srv.health["requests"] += 1

        results: List[Optional[TileResult]] = [None] * len(jobs)
        failures: Dict[int, str] = {}  # server index -> reason
        poller = zmq.Poller()
        for i in used:
            poller.register(self._servers[i].socket, zmq.POLLIN)
        while pending and not failures:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for sock, _ in poller.poll(max(1, int(left * 1000))):
                srv = next(s for s in self._servers if s.socket is sock)
                self._drain_replies(srv, pending, results, failures, jobs, embed_dim)

        if pending and not failures:  # deadline
            late = collections.Counter(p[1] for p in pending.values())
            for i, n in late.items():
                srv = self._servers[i]
                failures[i] = f"no reply for {n} window(s) within {timeout_s:.3f} s"
                self._fail(srv, "timeout", failures[i])
        if failures:
            self._abandon((r, p[1]) for r, p in pending.items())
            self._poll_monitors()
            bad = [self._servers[i] for i in sorted(failures)]
            detail = "; ".join(f"{s.label}: {failures[s.index]}" for s in bad)
            raise RemoteEncodeError(f"remote encoding failed for {len(bad)} of {len(used)} server(s): {detail}",
                                    [s.name for s in bad])
        return results  # type: ignore[return-value]

    def _raise_not_connected(self, down: Sequence[_Server], queue_full: bool = False):
        parts = []
        for srv in down:
            if queue_full:
                reason = "send queue full (the server is not reading its requests)"
                self._fail(srv, "error", reason)
            else:
                reason = "not connected: " + (srv.handshake_error or "server down or unreachable")
                self._fail(srv, "disconnected", reason)
            parts.append(f"{srv.label}: {reason}")
        raise RemoteEncodeError("cannot send to " + "; ".join(parts), [s.name for s in down])

    def _drain_replies(self, srv: _Server, pending, results, failures, jobs, embed_dim) -> None:
        while True:
            try:
                frames = srv.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            t_recv = time.monotonic()
            try:
                header, arrays = wire.decode_message(frames, max_total_bytes=self._opts["max_reply_bytes"])
            except WireError as e:
                failures.setdefault(srv.index, f"unreadable reply ({e.code}: {e})")
                self._fail(srv, "error", failures[srv.index])
                continue
            rid = header.get("id")
            entry = pending.get(rid) if isinstance(rid, str) else None
            if entry is None or entry[1] != srv.index:
                if not self._count_unmatched(srv, rid) and header.get("type") == "error":
                    with self._stats_lock:
                        srv.health["last_error"] = f"{header.get('code')}: {header.get('message')}"
                log.debug("dropped a reply from %s with unknown or stale id %r", srv.label, rid)
                continue
            k, _, t_sent, bytes_up = pending.pop(rid)
            if header.get("type") == "error":
                reason = f"error reply {header.get('code')!r}: {header.get('message')}"
                failures.setdefault(srv.index, reason)
                self._fail(srv, "error", reason)
                continue
            if header.get("type") != "encoded":
                failures.setdefault(srv.index, f"unexpected reply type {header.get('type')!r}")
                self._fail(srv, "error", failures[srv.index])
                continue
            job = jobs[k]
            h, w = job.tile.token_shape
            try:
                tokens = wire.unpack_tokens(arrays, (h, w, embed_dim))
            except WireError as e:
                failures.setdefault(srv.index, f"bad reply ({e.code}: {e})")
                self._fail(srv, "error", failures[srv.index])
                continue
            timing = header.get("timing") if isinstance(header.get("timing"), dict) else {}
            compute_s = _num(timing.get("compute_s"))
            rtt = t_recv - t_sent
            results[k] = TileResult(job.tile, job.server, tokens, bytes_up, frames_nbytes(frames), rtt,
                                      compute_s)
            with self._stats_lock:
                hh = srv.health
                hh.update(state="ok", consecutive_failures=0, last_latency_s=rtt, last_compute_s=compute_s,
                          last_queue_s=_num(timing.get("queue_s")), last_ok_time=time.time())
                hh["replies"] += 1

    # ----------------------------------------------------------------- info

    def info(self, timeout_s: float = 2.0) -> List[Dict]:
        """Ask every server for its ``info``; one dict per server (``name``,
        ``endpoint``, then the server's fields, or ``error``)."""
        self._check_owner()
        try:
            self._poll_monitors()
            out: List[Dict] = [{"name": s.name, "endpoint": s.endpoint} for s in self._servers]
            pending: Dict[str, int] = {}
            for srv in self._servers:
                rid = wire.new_request_id()
                try:
                    srv.socket.send_multipart(wire.encode_message({"type": "info", "id": rid}), zmq.NOBLOCK)
                    pending[rid] = srv.index
                except zmq.Again:
                    out[srv.index]["error"] = "not connected"
            deadline = time.monotonic() + timeout_s
            poller = zmq.Poller()
            for i in set(pending.values()):
                poller.register(self._servers[i].socket, zmq.POLLIN)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for sock, _ in poller.poll(max(1, int(left * 1000))):
                    srv = next(s for s in self._servers if s.socket is sock)
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            header, _ = wire.decode_message(frames, max_total_bytes=self._opts["max_reply_bytes"])
                        except WireError as e:
                            # no id to match it by: this server's one info request is answered
                            out[srv.index]["error"] = f"unreadable reply ({e.code}: {e})"
                            mine = [r for r, i in pending.items() if i == srv.index]
                            for r in mine:
                                del pending[r]
                            self._abandon((r, srv.index) for r in mine)
                            continue
                        rid = header.get("id")
                        if not isinstance(rid, str) or pending.get(rid) != srv.index:
                            self._count_unmatched(srv, rid)
                            continue
                        del pending[rid]
                        if header.get("type") == "info":
                            out[srv.index].update({k: v for k, v in header.items()
                                                   if k not in _INFO_OWN_KEYS})
                            out[srv.index]["server_name"] = header.get("name")
                        else:
                            out[srv.index]["error"] = f"{header.get('code')}: {header.get('message')}"
            for rid, i in pending.items():
                out[i]["error"] = f"no reply within {timeout_s:.3f} s"
            self._abandon(pending.items())
            return out
        finally:
            self._owner.release()

    def _count_unmatched(self, srv: _Server, rid) -> bool:
        """Count a reply that answers no pending request of ``srv``: *late* when it answers one
        this client abandoned (True), otherwise *stale* (False)."""
        if isinstance(rid, str) and self._abandoned.get(rid) == srv.index:
            with self._stats_lock:
                srv.health["late_replies"] += 1
            return True
        self.stale_replies += 1
        return False

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close every socket (and the context, when this transport made it); never blocks."""
        if self.closed:
            return
        self.closed = True
        for srv in self._servers:
            for name in ("monitor", "socket"):
                sock = getattr(srv, name)
                if sock is not None:
                    if name == "socket":
                        try:
                            sock.disable_monitor()
                        except zmq.ZMQError:
                            pass
                    sock.close(linger=0)
                    setattr(srv, name, None)
        if self._own_context:
            # destroy() closes any socket still open (with linger 0) before terminating,
            # so a socket missed above can never make this wait forever.
            self.context.destroy(linger=0)


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
