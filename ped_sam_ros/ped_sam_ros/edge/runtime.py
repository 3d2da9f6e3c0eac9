"""The edge's latest-frame-wins worker (no ROS).

One worker thread owns the pipeline: it builds it (so the ZeroMQ sockets are
created, used and closed by that thread only), waits for the servers, and then
processes frames one at a time.

* :meth:`EdgeRuntime.submit` never blocks: the frame replaces a pending,
  unprocessed one (that one is counted as dropped) and the worker takes the
  newest frame when it is free.
* :meth:`EdgeRuntime.request` queues a one-off job (the ROS service) that is
  never dropped by stream frames and runs before them; its result comes back
  through a ``concurrent.futures.Future``.
* Results go to ``on_result``; failures (a :class:`RemoteEncodeError` names
  the servers at fault) go to ``on_error`` and the worker keeps going.  A stream
  frame counts in ``frames_out`` once ``on_result`` returned; when it raises,
  the frame counts in ``frames_failed`` and the exception in ``callback_errors``.
* :meth:`EdgeRuntime.diagnostics` is a snapshot for status reporting: counts,
  per-stage times, and per-remote health merged with what each server did.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

import numpy as np

from ped_sam_ros.core.pipeline import EncodeStats, Instance, ObjectPrompt
from ped_sam_ros.core.transport import RemoteEncodeError

from .builder import EdgePipeline
from .config import AmgOptions

log = logging.getLogger(__name__)

#: stage names, in pipeline order (the ones a frame went through appear in its timings)
STAGES = ("queue", "convert", "preprocess", "partition", "remote", "merge", "edge_encoder", "decoder",
          "postprocess", "total")


@dataclass
class Frame:
    """One input image and what the caller wants back with its result."""

    rgb: np.ndarray  # uint8 HxWx3
    meta: Any = None  # opaque to the runtime (the ROS node puts the input header here)
    received: float = field(default_factory=time.monotonic)
    convert_s: float = 0.0  # time the caller spent turning its message into ``rgb``

    @property
    def size(self):
        return self.rgb.shape[:2]


@dataclass
class FrameResult:
    frame: Frame
    instances: List[Instance]
    automatic: bool
    prompts: List[ObjectPrompt]
    timings: Dict[str, float]
    stats: Optional[EncodeStats]
    frames_dropped: int  # cumulative
    encoded: bool  # False: no prompts were held and automatic mode was off, nothing was computed
    from_request: bool = False

    @property
    def meta(self):
        return self.frame.meta


@dataclass
class ErrorReport:
    meta: Any
    message: str
    servers: List[str]  # remote servers at fault (empty: not a remote failure)
    exception: BaseException
    from_request: bool = False
    time: float = field(default_factory=time.time)


def validate_prompts(prompts: Sequence[ObjectPrompt], max_prompts: int) -> None:
    """Raise ValueError, with the reason, for prompts the pipeline would refuse."""
    if len(prompts) > max_prompts:
        raise ValueError(f"{len(prompts)} prompts exceed max_prompts={max_prompts}")
    for k, p in enumerate(prompts, start=1):
        try:
            p.validate()
        except ValueError as e:
            raise ValueError(f"prompt {k}: {e}") from None


@dataclass
class _Job:
    frame: Frame
    prompts: Optional[List[ObjectPrompt]] = None  # None: the held prompts
    automatic: Optional[bool] = None  # None: the held mode
    future: Optional[concurrent.futures.Future] = None


class _StageStats:
    def __init__(self, window: int = 200):
        self.values: Dict[str, Deque[float]] = collections.defaultdict(lambda: collections.deque(maxlen=window))

    def add(self, timings: Dict[str, float]) -> None:
        for k, v in timings.items():
            self.values[k].append(float(v))

    def summary(self) -> Dict[str, Dict[str, float]]:
        out = {}
        order = list(STAGES) + sorted(set(self.values) - set(STAGES))
        for k in order:
            vals = list(self.values.get(k, ()))
            if vals:
                out[k] = {"last": vals[-1], "mean": statistics.fmean(vals), "p50": statistics.median(vals),
                          "max": max(vals), "count": len(vals)}
        return out


class EdgeRuntime:
    """Latest-frame-wins worker around an :class:`EdgePipeline`.

    ``pipeline``: the pipeline, or a zero-argument callable that builds it (it
    then runs in the worker thread, which thus owns every socket).
    """

    def __init__(
        self,
        pipeline: Union[EdgePipeline, Callable[[], EdgePipeline]],
        on_result: Optional[Callable[[FrameResult], None]] = None,
        on_error: Optional[Callable[[ErrorReport], None]] = None,
        max_requests: int = 4,
        idle_poll_s: float = 0.5,
        connect_timeout_s: Optional[float] = None,
    ):
        self._build = pipeline if callable(pipeline) and not isinstance(pipeline, EdgePipeline) else (lambda: pipeline)
        self.on_result = on_result
        self.on_error = on_error
        self.max_requests = max_requests
        self.idle_poll_s = idle_poll_s
        self._connect_timeout_s = connect_timeout_s
        self.pipeline: Optional[EdgePipeline] = None

        self._cond = threading.Condition()
        self._pending: Optional[_Job] = None
        self._requests: Deque[_Job] = collections.deque()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._build_error: Optional[BaseException] = None

        self._prompts: List[ObjectPrompt] = []
        self._automatic = False
        self._options: Dict[str, Any] = {}  # applied by the worker between frames
        self._latest: Optional[Frame] = None

        self._lock = threading.Lock()  # counters below
        self.state = "created"
        self.frames_in = 0
        self.frames_dropped = 0
        self.frames_out = 0
        self.frames_failed = 0
        self.requests_in = 0
        self.requests_failed = 0
        self.callback_errors = 0
        self.busy = False
        self.last_error: Optional[ErrorReport] = None
        self.server_info: List[Dict] = []
        self._stages = _StageStats()
        self._remote: Dict[str, Dict[str, Any]] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: Optional[float] = None) -> "EdgeRuntime":
        """Start the worker and wait until the pipeline is built (and the servers
        were waited for); re-raises a build failure."""
        if self._thread is not None:
            raise RuntimeError("already started")
        with self._lock:
            self.state = "starting"
        self._thread = threading.Thread(target=self._run, name="ped-sam-edge-worker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the edge pipeline was not ready after {timeout_s} s")
        if self._build_error is not None:
            self._thread.join(5.0)
            raise self._build_error
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the worker (after the frame in progress) and close the pipeline."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the edge worker did not stop within %.1f s", timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------- inputs

    def submit(self, frame: Frame) -> bool:
        """Hand the worker a stream frame; never blocks. True when it replaced a
        pending unprocessed frame (which is then counted as dropped)."""
        with self._cond:
            dropped = self._pending is not None
            self._pending = _Job(frame)
            self._latest = frame
            self._cond.notify()
        with self._lock:
            self.frames_in += 1
            if dropped:
                self.frames_dropped += 1
        return dropped

    def request(self, frame: Optional[Frame], prompts: Optional[Sequence[ObjectPrompt]] = None,
                automatic: Optional[bool] = None) -> concurrent.futures.Future:
        """Queue a one-off job that stream frames never drop (runs before them).

        ``frame`` None: the latest stream frame. ``prompts``/``automatic`` None: the
        held ones. The future resolves to a :class:`FrameResult` or raises.
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self.requests_in += 1
        with self._cond:
            frame = frame or self._latest
            if frame is None:
                fut.set_exception(LookupError("no frame received yet on the image topic"))
            elif self._stop:
                fut.set_exception(RuntimeError("the edge runtime is stopping"))
            elif len(self._requests) >= self.max_requests:
                fut.set_exception(RuntimeError(f"busy: {len(self._requests)} requests already queued"))
            else:
                self._requests.append(_Job(frame, None if prompts is None else list(prompts), automatic, fut))
                self._cond.notify()
        if fut.done() and fut.exception() is not None:
            with self._lock:
                self.requests_failed += 1
        return fut

    def latest_frame(self) -> Optional[Frame]:
        with self._cond:
            return self._latest

    def set_prompts(self, prompts: Sequence[ObjectPrompt], automatic: Optional[bool] = None) -> None:
        """Hold these prompts for the following frames (replacing the previous ones)."""
        with self._cond:
            self._prompts = list(prompts)
            if automatic is not None:
                self._automatic = bool(automatic)

    def set_automatic(self, automatic: bool) -> None:
        with self._cond:
            self._automatic = bool(automatic)

    @property
    def prompts(self) -> List[ObjectPrompt]:
        with self._cond:
            return list(self._prompts)

    @property
    def automatic(self) -> bool:
        with self._cond:
            return self._automatic

    def update(self, *, deadline_s: Optional[float] = None, multimask: Optional[bool] = None,
               amg: Optional[Union[AmgOptions, Dict]] = None) -> None:
        """Change run-time options; the worker applies them before its next frame."""
        opts = {}
        if deadline_s is not None:
            if not deadline_s > 0:
                raise ValueError("deadline must be positive")
            opts["deadline_s"] = float(deadline_s)
        if multimask is not None:
            opts["multimask"] = bool(multimask)
        if amg is not None:
            opts["amg"] = amg.to_kwargs() if isinstance(amg, AmgOptions) else dict(amg)
        with self._cond:
            self._options.update(opts)
            self._cond.notify()

    # ------------------------------------------------------------------- worker

    def _run(self) -> None:
        try:
            self.pipeline = self._build()
            self._wait_for_servers()
        except BaseException as e:  # noqa: BLE001 - handed to start()
            self._build_error = e
            with self._lock:
                self.state = "failed"
            self._ready.set()
            if self.pipeline is not None:
                self.pipeline.close()
            return
        with self._lock:
            self.state = "running"
        self._ready.set()
        last_poll = time.monotonic()
        try:
            while True:
                with self._cond:
                    while not self._stop and not self._requests and self._pending is None:
                        if not self._cond.wait(self.idle_poll_s):
                            break
                    if self._stop:
                        break
                    job = self._requests.popleft() if self._requests else self._pending
                    if job is self._pending:
                        self._pending = None
                    options, self._options = self._options, {}
                    if job is not None:
                        prompts = self._prompts if job.prompts is None else job.prompts
                        automatic = self._automatic if job.automatic is None else job.automatic
                if options:
                    self._apply(options)
                if job is None:
                    if time.monotonic() - last_poll >= self.idle_poll_s:
                        self._poll_connections()
                        last_poll = time.monotonic()
                    continue
                self._handle(job, list(prompts), automatic)
                last_poll = time.monotonic()
        except BaseException:
            log.exception("the edge worker crashed")
            with self._lock:
                self.state = "crashed"
            raise
        finally:
            with self._cond:
                leftover = list(self._requests)
                self._requests.clear()
            for j in leftover:
                if j.future and not j.future.done():
                    j.future.set_exception(RuntimeError("the edge runtime stopped"))
            with self._lock:
                if self.state != "crashed":
                    self.state = "stopped"
            try:
                self.pipeline.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the pipeline failed")

    def _wait_for_servers(self) -> None:
        tr = self.pipeline.transport
        timeout = self._connect_timeout_s if self._connect_timeout_s is not None else self.pipeline.config.connect_timeout_s
        if hasattr(tr, "wait_connected") and timeout > 0:
            if not tr.wait_connected(timeout):
                down = [h["name"] for h in tr.health() if not h.get("connected")]
                log.warning("after %.1f s, not connected to %s; frames fail until they are reachable",
                            timeout, ", ".join(down))
            elif hasattr(tr, "info"):
                try:
                    self.server_info = tr.info(timeout_s=min(5.0, timeout))
                except Exception as e:  # noqa: BLE001 - informative only
                    log.warning("could not ask the servers for their info: %s", e)
                want = self.pipeline.config.model
                for inf in self.server_info:
                    if "model" in inf and inf["model"] != want:
                        log.error("server %s serves model %s but this edge runs %s: every frame will fail",
                                  inf.get("name"), inf["model"], want)

    def _poll_connections(self) -> None:
        """Refresh connection states while idle (the transport only notices
        reconnections when its owner thread looks)."""
        tr = self.pipeline.transport
        if hasattr(tr, "wait_connected"):
            try:
                tr.wait_connected(0)
            except Exception:  # noqa: BLE001
                log.debug("connection poll failed", exc_info=True)

    def _apply(self, options: Dict[str, Any]) -> None:
        p = self.pipeline
        if "deadline_s" in options:
            p.encoder.timeout_s = options["deadline_s"]
            p.config.deadline_s = options["deadline_s"]
        if "multimask" in options:
            p.segmenter.multimask_output = options["multimask"]
            p.config.multimask = options["multimask"]
        if "amg" in options:
            merged = dict(p.segmenter.amg_options)
            merged.update(options["amg"])
            p.segmenter.amg_options = merged
            p.config.amg = dataclasses.replace(p.config.amg, **{k: v for k, v in merged.items()
                                                                 if hasattr(p.config.amg, k)})

    def _handle(self, job: _Job, prompts: List[ObjectPrompt], automatic: bool) -> None:
        if job.future is not None and not job.future.set_running_or_notify_cancel():
            return  # the caller gave up (timed out) before the job started
        with self._lock:
            self.busy = True
        try:
            result = self._process(job.frame, prompts, automatic, job.future is not None)
        except Exception as e:  # noqa: BLE001 - reported, the worker keeps going
            servers = list(getattr(e, "servers", []) or [])
            report = ErrorReport(job.frame.meta, f"{type(e).__name__}: {e}", servers, e, job.future is not None)
            with self._lock:
                self.busy = False
                self.last_error = report
                if job.future is not None:
                    self.requests_failed += 1
                else:
                    self.frames_failed += 1
                for name in servers:
                    self._remote.setdefault(name, _new_remote())["failed_frames"] += 1
            if job.future is not None:
                job.future.set_exception(e)
            if not isinstance(e, RemoteEncodeError):
                log.warning("frame failed: %s", report.message, exc_info=not isinstance(e, ValueError))
            self._call(self.on_error, report)
            return
        with self._lock:
            self.busy = False
            result.frames_dropped = self.frames_dropped
        if job.future is not None:
            job.future.set_result(result)
            return
        # A stream frame is output once on_result has published it; a frame whose callback
        # raised is counted as failed (and in callback_errors), so that
        # frames_in == frames_out + frames_dropped + frames_failed once the worker is idle.
        delivered = self._call(self.on_result, result)
        with self._lock:
            if delivered:
                self.frames_out += 1
            else:
                self.frames_failed += 1

    def _call(self, callback, arg) -> bool:
        """Run a result/error callback; False (counted in ``callback_errors``) when it raised."""
        if callback is None:
            return True
        try:
            callback(arg)
        except Exception:  # noqa: BLE001 - a broken callback must not stop the worker
            with self._lock:
                self.callback_errors += 1
            log.exception("result/error callback failed")
            return False
        return True

    def _process(self, frame: Frame, prompts: List[ObjectPrompt], automatic: bool, from_request: bool) -> FrameResult:
        seg = self.pipeline.segmenter
        start = time.monotonic()
        timings: Dict[str, float] = {"queue": max(0.0, start - frame.received - frame.convert_s)}
        if frame.convert_s:
            timings["convert"] = frame.convert_s
        stats: Optional[EncodeStats] = None
        if automatic:
            t0 = time.perf_counter()
            instances = seg.segment_everything(frame.rgb)
            total = time.perf_counter() - t0
            stats = seg.stats
            enc = dict(stats.timings) if stats else {}
            timings.update(enc)
            timings["decoder"] = max(0.0, total - sum(enc.values()))
            prompts = []
        elif prompts:
            t0 = time.perf_counter()
            stats = seg.set_image(frame.rgb)
            t1 = time.perf_counter()
            instances = seg.segment(prompts)
            t2 = time.perf_counter()
            enc = dict(stats.timings) if stats else {}
            timings["preprocess"] = max(0.0, (t1 - t0) - sum(enc.values()))
            timings.update(enc)
            timings["decoder"] = t2 - t1
        else:
            instances = []
        timings["total"] = time.monotonic() - frame.received
        self._record(timings, stats)
        return FrameResult(frame, instances, automatic, list(prompts), timings, stats, 0,
                           encoded=bool(automatic or prompts), from_request=from_request)

    def _record(self, timings: Dict[str, float], stats: Optional[EncodeStats]) -> None:
        with self._lock:
            self._stages.add(timings)
            if stats is None:
                return
            for s in stats.per_server:
                r = self._remote.setdefault(s["name"], _new_remote())
                r["frames"] += 1
                r["bytes_up"] += int(s["bytes_up"])
                r["bytes_down"] += int(s["bytes_down"])
                r["share"] = float(s["share"])
                r["windows"] = list(s["windows"])
                r["round_trips"].append(float(s["round_trip_s"]))
                r["compute"].append(float(s["compute_s"]))

    def record_stage(self, name: str, seconds: float) -> None:
        """Add a stage the caller timed (e.g. ``postprocess``: turning results into messages)."""
        with self._lock:
            self._stages.add({name: seconds})

    # --------------------------------------------------------------- diagnostics

    def diagnostics(self) -> Dict[str, Any]:
        """A snapshot: counts, per-stage times (last/mean/p50/max), per-remote health."""
        health = []
        if self.pipeline is not None:
            try:
                health = self.pipeline.transport.health()
            except Exception as e:  # noqa: BLE001
                health = [{"name": n, "state": "unknown", "last_error": str(e)}
                          for n in self.pipeline.transport.server_names]
        with self._lock:
            remotes = []
            for h in health:
                d = dict(h)
                r = self._remote.get(h.get("name"), _new_remote())
                d.update({k: v for k, v in r.items() if k not in ("round_trips", "compute")})
                if r["round_trips"]:
                    d["mean_round_trip_s"] = statistics.fmean(r["round_trips"])
                    d["mean_compute_s"] = statistics.fmean(r["compute"])
                remotes.append(d)
            err = self.last_error
            with self._cond:
                n_prompts, automatic, pending = len(self._prompts), self._automatic, self._pending is not None
            return {
                "state": self.state,
                "busy": self.busy,
                "pending": pending,
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "frames_dropped": self.frames_dropped,
                "frames_failed": self.frames_failed,
                "requests": self.requests_in,
                "requests_failed": self.requests_failed,
                "callback_errors": self.callback_errors,
                "automatic": automatic,
                "prompts": n_prompts,
                "last_error": err.message if err else "",
                "last_error_servers": list(err.servers) if err else [],
                "last_error_time": err.time if err else None,
                "stages": self._stages.summary(),
                "remotes": remotes,
                "bytes_up": sum(r.get("bytes_up", 0) for r in remotes),
                "bytes_down": sum(r.get("bytes_down", 0) for r in remotes),
            }


def _new_remote() -> Dict[str, Any]:
    return {"frames": 0, "failed_frames": 0, "bytes_up": 0, "bytes_down": 0, "share": 0.0, "windows": [],
            "round_trips": collections.deque(maxlen=100), "compute": collections.deque(maxlen=100)}
