"""The remote encoder server: a ZeroMQ ROUTER in front of a :class:`RemoteStage`.

One process serves one model (the remote stage of a SAM checkpoint: patch
embedding, ``pos_embed`` and the window-attention blocks; nothing else of the
checkpoint is loaded).  Requests are the multipart messages of
:mod:`ped_sam_ros.core.wire`; what is done with an ``encode`` request is the
encode service of :mod:`ped_sam_ros.core.service`, shared with the in-process
transport.  Keys are :mod:`.keys`, the bind rule :mod:`.policy`.  No ROS here,
and nothing from the network is ever unpickled.

Threads: the thread that calls :meth:`EncoderServer.serve_forever` owns the
socket.  It receives every request as soon as it arrives (stamping its arrival
time), validates it, answers ``info`` and malformed requests at once, and hands
valid ``encode`` requests, in arrival order, to one compute thread, which sends
nothing itself: its replies come back over an inproc socket and the I/O thread
sends them.

Batching: the compute thread takes every request already waiting (at most
``max_batch``), groups the compatible ones (same mode, same tile token shape, same
reply dtype; :func:`~ped_sam_ros.core.service.batch_key`) and runs each group as one
batch through :meth:`RemoteStage.encode_tiles`; each reply still carries its own
request id, and each request's budget is checked when its group starts.  The I/O
thread hands over all requests read in one receive round together, so the tiles of
one frame that arrive together are batched together.  A lone request (the cloud
baseline's whole frame) is a batch of one.

Robustness rules:

* every malformed request gets an ``error`` reply (with the request id when the
  header could be read far enough to find it) and the server keeps serving;
* a request whose ``budget_ms``, counted from its arrival here, has run out
  when its compute would start gets ``deadline_expired`` instead;
* at most :data:`MAX_QUEUED` encode requests, holding at most
  :data:`MAX_QUEUED_BYTES` bytes of request frames, wait for the compute
  thread (both configurable in :class:`ServerOptions`); a request beyond either gets ``busy``;
* an unexpected exception while handling a request gets an ``internal`` reply;
  its traceback is logged once per exception type and minute, not per request;
* a single frame larger than ``MAXMSGSIZE`` (``max_message_bytes``, default
  :data:`wire.MAX_REQUEST_BYTES`; the codec applies the same limit to the whole
  message) is
  dropped by libzmq before it reaches this code: libzmq closes that connection
  (the client's DEALER reconnects by itself) and no reply is sent, so the client
  sees a deadline miss.  More than :data:`MAX_FRAMES` frames are refused;
* replies are sent without blocking (``ROUTER_MANDATORY``): a reply for a peer
  that went away, or whose queue is full, is dropped and logged.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import zmq

from ped_sam_ros.core import wire
from ped_sam_ros.core.model import RemoteStage, SamGeometry, get_geometry
from ped_sam_ros.core.service import ServerInfo, batch_key, check_encode_request, run_encode_batch
from ped_sam_ros.core.wire import WireError, frames_nbytes

from .keys import ServerKeys, start_authenticator
from .policy import ServerConfigError, check_bind_policy

log = logging.getLogger("remote_node")

PathLike = Union[str, os.PathLike]

#: socket settings (milliseconds / message counts)
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
HEARTBEAT_TTL_MS = 6000
RCVHWM = 200
SNDHWM = 200
POLL_MS = 100
#: more frames than this in one request is refused without looking at them
MAX_FRAMES = 8
#: encode requests waiting for the compute thread, at most
MAX_QUEUED = 256
#: bytes of request frames (mostly pixels) waiting for the compute thread, at most
MAX_QUEUED_BYTES = 64 << 20
#: an unexpected exception's traceback is logged at most this often per exception type
INTERNAL_LOG_EVERY_S = 60.0
#: requests the compute thread takes at once (compatible ones run as one batch)
MAX_BATCH = 32


@dataclass(frozen=True)
class ServerOptions:
    """How a server presents itself, whom it lets in, and how much it takes on (checked on creation).

    ``name``: shown in info replies and logs (default ``remote@BIND``).  ``checkpoint_label``:
    what info reports as the checkpoint (default: the checkpoint's file name, or
    ``(in memory)`` for a prebuilt stage).  ``server_secret_key`` and ``authorized_keys_dir``
    (both or neither): this server's ``NAME.key_secret`` and the directory of client
    ``*.key`` files it trusts; they turn CurveZMQ on.  ``allow_insecure_remote``: bind a
    non-loopback address without Curve.  ``max_message_bytes``: the largest request
    (``MAXMSGSIZE`` per frame, and the codec's limit for the whole message).
    ``max_queued`` / ``max_queued_bytes``: how many encode requests, and how many bytes
    of them, may wait for the compute thread before new ones get ``busy``;
    ``max_queued_bytes`` must be at least ``max_message_bytes`` (an idle server takes
    any valid request).  ``max_batch``: requests computed together at most (1: no batching).
    ``device``/``precision``/``compile``/``precision_fallback``: where and how a stage the
    server loads runs (:func:`ped_sam_ros.core.device.resolve_placement`); a prebuilt stage
    keeps its own.
    """

    name: Optional[str] = None
    checkpoint_label: Optional[str] = None
    server_secret_key: Optional[PathLike] = None
    authorized_keys_dir: Optional[PathLike] = None
    allow_insecure_remote: bool = False
    max_message_bytes: int = wire.MAX_REQUEST_BYTES
    max_queued: int = MAX_QUEUED
    max_queued_bytes: int = MAX_QUEUED_BYTES
    max_batch: int = MAX_BATCH
    device: str = "auto"
    precision: str = "float32"
    compile: bool = False
    precision_fallback: bool = False

    def __post_init__(self):
        for label in ("max_message_bytes", "max_queued", "max_queued_bytes", "max_batch"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServerConfigError(f"{label} must be a positive integer, got {value!r}")
        if self.max_queued_bytes < self.max_message_bytes:
            raise ServerConfigError(
                f"max_queued_bytes ({self.max_queued_bytes}) must be at least max_message_bytes "
                f"({self.max_message_bytes}), or a largest request would always be refused"
            )
        if (self.server_secret_key is None) != (self.authorized_keys_dir is None):
            raise ServerConfigError(
                "Curve needs both a server secret key (--server-key NAME.key_secret) and a directory of "
                "authorized client public keys (--authorized-keys DIR)"
            )

    @property
    def curve(self) -> bool:
        return self.server_secret_key is not None

    def stage_options(self) -> dict:
        """Keyword arguments for :class:`RemoteStage` (device, precision, compile, fallback)."""
        return dict(
            device=self.device, precision=self.precision, compile=self.compile, allow_fallback=self.precision_fallback
        )


def load_stage(
    geometry: SamGeometry,
    checkpoint: Optional[PathLike],
    stage: Optional[RemoteStage],
    label: Optional[str] = None,
    stage_options: Optional[dict] = None,
) -> Tuple[RemoteStage, str]:
    """The stage to serve (loaded from ``checkpoint`` unless given, on ``stage_options``'
    device and precision) and the label info reports."""
    label = label or (Path(checkpoint).name if checkpoint else "(in memory)")
    if stage is None:
        if checkpoint is None:
            raise ServerConfigError("a checkpoint path (or a prebuilt stage) is required")
        return RemoteStage.from_checkpoint(geometry, checkpoint, **(stage_options or {})), label
    if stage.geometry.spec != geometry.spec:
        raise ServerConfigError(f"stage is {stage.geometry.spec}, server model is {geometry.spec}")
    return stage, label


def _best_effort_id(frames) -> Optional[str]:
    """The request id from a header that failed validation, if it can be read."""
    try:
        f = frames[0]
        head = f.bytes if hasattr(f, "bytes") else bytes(f)
        if len(head) > wire.MAX_HEADER_BYTES:
            return None
        rid = json.loads(head.decode("utf-8")).get("id")
    except Exception:
        return None
    return rid if isinstance(rid, str) and 0 < len(rid) <= wire.MAX_ID_CHARS else None


class _QueuedEncode:
    """A valid encode request waiting for (or in) the compute thread."""

    __slots__ = ("envelope", "request", "arrival", "id", "budget_s", "summary", "nbytes")

    def __init__(self, envelope, request, arrival, summary, nbytes):
        self.envelope = envelope
        self.request = request  # a validated wire.EncodeRequest (its pixels view the received frame)
        self.arrival = arrival
        self.id = request.id
        self.budget_s = request.budget_ms / 1000.0
        self.summary = summary
        self.nbytes = nbytes  # the request's frames, held until the compute thread takes the job


class EncoderServer:
    """Serves ``encode`` and ``info`` requests for one model on a ROUTER socket.

    Binds in the constructor (so :attr:`endpoint` is the real address, e.g.
    after ``tcp://127.0.0.1:*``); :meth:`serve_forever` runs until its stop
    event is set; :meth:`close` releases everything.  Everything that can be
    refused (options, bind address, keys) is checked before the checkpoint is
    loaded.

    ``stage`` may be given instead of ``checkpoint`` (e.g. random weights for
    demos); ``options.checkpoint_label`` is then what ``info`` reports.
    """

    def __init__(
        self,
        bind: str,
        model: str,
        checkpoint: Optional[PathLike] = None,
        options: Optional[ServerOptions] = None,
        *,
        stage: Optional[RemoteStage] = None,
        context: Optional[zmq.Context] = None,
    ):
        self.options = options = options or ServerOptions()
        check_bind_policy(bind, options.curve, options.allow_insecure_remote)
        # Every *.key file is checked: pyzmq's authenticator trusts no key at all when one of
        # them cannot be read (it only logs that), and would refuse every client.
        keys = ServerKeys.load(options.server_secret_key, options.authorized_keys_dir) if options.curve else None
        self.authorized_keys = keys.authorized if keys else []
        self.bind_address = bind
        self.name = options.name or f"remote@{bind}"
        self.curve = options.curve
        self.geometry = get_geometry(model)
        self.model_spec = self.geometry.spec
        self.stage, self.checkpoint_label = load_stage(
            self.geometry, checkpoint, stage, options.checkpoint_label, options.stage_options()
        )
        self.requests_served = 0
        self.errors = 0
        #: batch size -> how many batches of that size were computed
        self.batches: dict = {}
        self._lock = threading.Lock()  # counters, shared with the compute thread
        self._queued_bytes = 0  # bytes of the jobs waiting for the compute thread (guarded by _lock)
        self._queued_jobs = 0  # jobs waiting for the compute thread (guarded by _lock)
        self._internal_logged: dict = {}  # exception type -> monotonic time its traceback was last logged
        self._dropped_replies = 0  # replies a full client queue refused (logged at most once a minute)
        self._last_drop_warning = -INTERNAL_LOG_EVERY_S
        self._stopping = threading.Event()
        self.started = time.time()

        self._own_context = context is None
        self.context = context or zmq.Context()
        self._auth = None
        self.socket = None
        try:
            if keys is not None:
                self._auth = start_authenticator(self.context, keys)
            self._open_socket(bind, keys)
        except Exception:
            self.close()
            raise
        log.info(
            "%s serving %s on %s (%s, checkpoint %s, Curve %s, protocol v%d)",
            self.name,
            self.model_spec,
            self.endpoint,
            getattr(getattr(self.stage, "placement", None), "describe", lambda: "?")(),
            self.checkpoint_label,
            f"on, {len(self.authorized_keys)} authorized client key(s)" if self.curve else "OFF (plaintext)",
            wire.PROTOCOL_VERSION,
        )

    def _open_socket(self, bind: str, keys: Optional[ServerKeys]) -> None:
        """Bind the ROUTER (its settings: module constants and the options' message limit)."""
        s = self.context.socket(zmq.ROUTER)
        self.socket = s  # registered at once: close() releases it whatever fails below
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.options.max_message_bytes)
        s.setsockopt(zmq.RCVHWM, RCVHWM)
        s.setsockopt(zmq.SNDHWM, SNDHWM)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        s.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
        if keys is not None:
            s.curve_secretkey = keys.secret
            s.curve_publickey = keys.public
            s.curve_server = True
        s.bind(bind)
        self.endpoint = s.getsockopt(zmq.LAST_ENDPOINT).decode()

    # ------------------------------------------------------------------ loop

    def serve_forever(self, stop_event: Optional[threading.Event] = None) -> None:
        """Serve until ``stop_event`` is set (checked every :data:`POLL_MS`)."""
        stop_event = stop_event or threading.Event()
        addr = f"inproc://remote-node-done-{id(self)}"
        done_rx = self.context.socket(zmq.PAIR)
        done_rx.setsockopt(zmq.LINGER, 0)
        done_rx.bind(addr)
        done_tx = self.context.socket(zmq.PAIR)  # used only by the compute thread
        done_tx.setsockopt(zmq.LINGER, 0)
        done_tx.connect(addr)
        jobs: queue.Queue[Optional[List[_QueuedEncode]]] = queue.Queue()  # one list per receive round
        self._stopping.clear()
        worker = threading.Thread(
            target=self._compute_loop, args=(jobs, done_tx), name="remote-node-compute", daemon=True
        )
        worker.start()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(done_rx, zmq.POLLIN)
        try:
            while not stop_event.is_set():
                try:
                    ready = dict(poller.poll(POLL_MS))
                except zmq.ZMQError as e:
                    if e.errno == zmq.ETERM:
                        break
                    raise
                if done_rx in ready:
                    self._send_results(done_rx)
                if self.socket in ready:
                    self._receive(jobs)
        finally:
            self._stopping.set()
            jobs.put(None)
            worker.join(timeout=10.0)
            if worker.is_alive():
                log.warning("compute thread still busy at shutdown")
            else:
                done_tx.close(linger=0)
            done_rx.close(linger=0)

    def _receive(self, jobs: queue.Queue) -> None:
        """Take every complete message waiting on the socket: answer it, or queue it; the
        requests queued in one round go to the compute thread together (one batch)."""
        admitted: List[_QueuedEncode] = []
        try:
            self._receive_round(admitted)
        finally:
            if admitted:
                jobs.put(admitted)

    def _receive_round(self, admitted: List[_QueuedEncode]) -> None:
        for _ in range(10 * RCVHWM):  # bounded: give replies a turn under a flood
            try:
                first = self.socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            arrival = time.monotonic()
            parts = [first]
            extra = 0
            while self.socket.getsockopt(zmq.RCVMORE):
                f = self.socket.recv(copy=False)  # the rest of a message is already here
                if len(parts) < MAX_FRAMES + 2:
                    parts.append(f)
                else:
                    extra += 1
            # ROUTER: peer identity first; a REQ peer adds an empty delimiter, echoed back.
            envelope, body = [parts[0]], parts[1:]
            if len(body) > 1 and len(body[0]) == 0:
                envelope.append(body[0])
                body = body[1:]
            try:
                with self._lock:
                    queued = self._queued_jobs
                result = self._admit(body, extra, arrival, envelope, queued)
            except Exception as e:  # never let one request take the server down
                self._log_internal(e, "reading a request")
                result = self._error(_best_effort_id(body) if body else None, "internal", f"{type(e).__name__}: {e}")
            if isinstance(result, _QueuedEncode):
                with self._lock:
                    self._queued_bytes += result.nbytes
                    self._queued_jobs += 1
                admitted.append(result)
            else:
                self._send(envelope, result)

    def _log_internal(self, exc: BaseException, doing: str) -> None:
        """Log an unexpected exception: with its traceback once per type and
        :data:`INTERNAL_LOG_EVERY_S`, otherwise one line at debug level."""
        key = type(exc).__name__
        now = time.monotonic()
        with self._lock:
            last = self._internal_logged.get(key)
            loud = last is None or now - last >= INTERNAL_LOG_EVERY_S
            if loud:
                self._internal_logged[key] = now
        if loud:
            log.error(
                "internal error while %s (the next %s within %.0f s are logged at debug level only)",
                doing,
                key,
                INTERNAL_LOG_EVERY_S,
                exc_info=exc,
            )
        else:
            log.debug("internal error while %s: %s: %s", doing, key, exc)

    def _error(self, rid, code: str, message: str) -> List:
        with self._lock:
            self.errors += 1
        log.debug("request %s refused: %s: %s", rid, code, message)
        return wire.error_reply(rid, code, message)

    def _admit(self, frames, extra_frames: int, arrival: float, envelope, queued: int):
        """Validate one request: an immediate reply (frames) or a :class:`_QueuedEncode`."""
        if not frames:
            return self._error(None, "empty", "empty message")
        if extra_frames or len(frames) > MAX_FRAMES:
            return self._error(
                _best_effort_id(frames),
                "frame_count",
                f"a request has at most {MAX_FRAMES} frames, this one had {len(frames) + extra_frames}",
            )
        try:
            header, arrays = wire.decode_message(frames, max_total_bytes=self.options.max_message_bytes)
            mtype = header.get("type")
            if mtype == "info":
                if arrays:
                    raise WireError("bad_header", "an info request carries no tensors")
                return wire.encode_message(dict(self.info().to_header(), id=header.get("id")))
            if mtype != "encode":
                raise WireError("bad_type", f"this server answers 'encode' and 'info', not {mtype!r}")
            req = check_encode_request(header, arrays, self.model_spec)
        except WireError as e:
            return self._error(_best_effort_id(frames), e.code, str(e))
        nbytes = frames_nbytes(frames)
        with self._lock:
            queued_bytes = self._queued_bytes
        most, most_bytes = self.options.max_queued, self.options.max_queued_bytes
        if queued >= most or queued_bytes + nbytes > most_bytes:
            return self._error(
                req.id,
                "busy",
                f"{queued} requests ({queued_bytes} bytes) already waiting, at most "
                f"{most} ({most_bytes} bytes); try later",
            )
        w = req.tile
        summary = f"rows [{w.row0}, {w.row1}) cols [{w.col0}, {w.col1}) {req.mode} {req.reply_dtype}"
        return _QueuedEncode(envelope, req, arrival, summary, nbytes)

    def _compute_loop(self, jobs: queue.Queue, done_tx: zmq.Socket) -> None:
        """The compute thread: every job already waiting (at most ``max_batch``), compatible
        ones as one batch; replies go back to the I/O thread, each to its own request."""
        held: List[_QueuedEncode] = []  # taken from the queue, beyond the last round's max_batch
        stop = False
        while not stop:
            if not held:
                first = jobs.get()
                if first is None:
                    return
                held.extend(first)
            while len(held) < self.options.max_batch:  # whatever else is already waiting
                try:
                    more = jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                held.extend(more)
            taken, held = held[: self.options.max_batch], held[self.options.max_batch :]
            with self._lock:
                self._queued_bytes -= sum(j.nbytes for j in taken)
                self._queued_jobs -= len(taken)
            if self._stopping.is_set():
                continue
            groups: dict = {}
            for job in taken:  # groups in order of their first request
                groups.setdefault(batch_key(job.request), []).append(job)
            for group in groups.values():
                for job, reply in self._compute_group(group):
                    try:
                        done_tx.send_multipart(list(job.envelope) + list(reply), copy=False)
                    except zmq.ZMQError:  # context terminated during shutdown
                        return
        with self._lock:  # stopping: what was still held is given back
            self._queued_bytes -= sum(j.nbytes for j in held)
            self._queued_jobs -= len(held)

    def _compute_group(self, group: List[_QueuedEncode]) -> List[Tuple[_QueuedEncode, List]]:
        """Replies for compatible jobs: expired ones refused, the others computed as one batch
        (one at a time, each with its own error, if the batch fails)."""
        start = time.monotonic()
        out: List[Tuple[_QueuedEncode, List]] = []
        live: List[Tuple[_QueuedEncode, float]] = []
        for job in group:
            waited = start - job.arrival
            if waited >= job.budget_s:
                out.append(
                    (
                        job,
                        self._error(
                            job.id,
                            "deadline_expired",
                            f"budget of {job.budget_s * 1e3:.1f} ms ran out {waited * 1e3:.1f} ms "
                            f"after arrival, before compute started",
                        ),
                    )
                )
            else:
                live.append((job, waited))
        if not live:
            return out
        try:
            replies = run_encode_batch(self.stage, [j.request for j, _ in live], [w for _, w in live])
        except Exception as e:
            if len(live) == 1:
                job = live[0][0]
                self._log_internal(e, f"encoding {job.id}")
                return out + [(job, self._error(job.id, "internal", f"{type(e).__name__}: {e}"))]
            log.debug("a batch of %d failed (%s): computing its requests one at a time", len(live), e)
            return out + [pair for job in [j for j, _ in live] for pair in self._compute_group([job])]
        with self._lock:
            self.requests_served += len(live)
            self.batches[len(live)] = self.batches.get(len(live), 0) + 1
        log.debug(
            "served %s: %s, queue %.1f ms, compute %.1f ms (batch of %d)",
            ",".join(j.id for j, _ in live),
            live[0][0].summary,
            live[0][1] * 1e3,
            (time.monotonic() - start) * 1e3,
            len(live),
        )
        return out + [(job, reply) for (job, _), reply in zip(live, replies)]

    def _send_results(self, done_rx: zmq.Socket) -> None:
        while True:
            try:
                msg = done_rx.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # envelope is the identity (+ an empty delimiter for REQ peers): the reply header
            # is the first frame that is not empty after the identity.
            n_env = 2 if len(msg) > 2 and len(msg[1]) == 0 else 1
            self._send(msg[:n_env], msg[n_env:])

    def _send(self, envelope, reply) -> None:
        try:
            self.socket.send_multipart(list(envelope) + list(reply), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._dropped_replies += 1
            now = time.monotonic()
            if now - self._last_drop_warning >= INTERNAL_LOG_EVERY_S:  # one line a minute, with the count
                self._last_drop_warning = now
                log.warning(
                    "reply dropped: the client's queue is full (%d dropped so far; logged at most once every %.0f s)",
                    self._dropped_replies,
                    INTERNAL_LOG_EVERY_S,
                )
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                log.debug("reply dropped: the client has disconnected")
            else:
                raise

    # ------------------------------------------------------------------ info

    def info(self) -> ServerInfo:
        """What the ``info`` reply says: model, weights, counters."""
        with self._lock:
            served, errors = self.requests_served, self.errors
        return ServerInfo.describe(
            self.geometry,
            self.name,
            self.checkpoint_label,
            curve=self.curve,
            requests_served=served,
            errors=errors,
            uptime_s=time.time() - self.started,
        )

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release the socket, the authenticator and the context (after serve_forever returned)."""
        self._stopping.set()
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context and self.context is not None:
            self.context.destroy(linger=0)  # never blocks, even if the compute thread is stuck
            self.context = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
