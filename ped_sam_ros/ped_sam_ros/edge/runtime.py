"""The edge's worker (no ROS): one thread owns the pipeline.

It builds the pipeline (so the ZeroMQ sockets are created, used and closed by that thread
only), waits for the servers, and then processes frames one at a time, taking them from a
:class:`~.scheduler.FrameScheduler`:

* :meth:`EdgeRuntime.submit` never blocks: the frame replaces a pending, unprocessed one
  (that one is counted as dropped) and the worker takes the newest frame when it is free.
* :meth:`EdgeRuntime.request` queues a one-off job (the ROS service) that is never dropped
  by stream frames and runs before them; its result comes back through a
  ``concurrent.futures.Future``.
* Results go to ``on_result``; failures (a :class:`RemoteEncodeError` names the servers at
  fault) go to ``on_error`` and the worker keeps going.  A stream frame counts in
  ``frames_out`` once ``on_result`` returned; when it raises, the frame counts in
  ``frames_failed`` and the exception in ``callback_errors``.
* :meth:`EdgeRuntime.update` changes options, applied between frames (:mod:`.options`).
* :meth:`EdgeRuntime.snapshot` is a :class:`~.records.RuntimeSnapshot` for status
  reporting, from the :class:`~.stats.RuntimeStats` book and the transport's health.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

from ped_sam_ros.core.geometry import content_shape
from ped_sam_ros.core.pipeline import EncodeStats, ObjectPrompt
from ped_sam_ros.core.transport import RemoteEncodeError, ServerHealth, ServerInfoReply

from .builder import EdgePipeline
from .config import AmgOptions
from .options import OptionChanges, PendingOptions
from .records import ErrorReport, FallbackStatus, Frame, FrameResult, RuntimeSnapshot
from .scheduler import FrameScheduler, Job
from .stats import RuntimeStats
from .stream import PipelinedStream, start_stream

log = logging.getLogger(__name__)


def validate_prompts(
    prompts: Sequence[ObjectPrompt],
    max_prompts: int,
    max_points_per_prompt: Optional[int] = None,
    max_points: Optional[int] = None,
) -> None:
    """Raise ValueError, with the reason, for prompts the pipeline would refuse (too many
    objects, too many points for one object or in all, or a prompt SAM cannot take)."""
    if len(prompts) > max_prompts:
        raise ValueError(f"{len(prompts)} prompts exceed max_prompts={max_prompts}")
    total = sum(len(p.points) for p in prompts)
    if max_points is not None and total > max_points:
        raise ValueError(f"{total} points in all exceed max_points={max_points}")
    for k, p in enumerate(prompts, start=1):
        if max_points_per_prompt is not None and len(p.points) > max_points_per_prompt:
            raise ValueError(f"prompt {k}: {len(p.points)} points exceed max_points_per_prompt={max_points_per_prompt}")
        try:
            p.validate()
        except ValueError as e:
            raise ValueError(f"prompt {k}: {e}") from None


def check_image_size(height: int, width: int, max_pixels: int, long_side: int = 1024) -> None:
    """Raise ValueError, with the reason, for an image SAM cannot take or that is too large:
    empty, more than ``max_pixels``, or so thin that a side rounds to 0 pixels after SAM's
    resize to longest side ``long_side`` (e.g. 1x3000)."""
    h, w = int(height), int(width)
    if h <= 0 or w <= 0:
        raise ValueError(f"empty image ({w}x{h})")
    if h * w > max_pixels:
        raise ValueError(f"{w}x{h} = {h * w} pixels exceed max_image_pixels={max_pixels}")
    rh, rw = content_shape((h, w), long_side)
    if rh < 1 or rw < 1:
        raise ValueError(
            f"a {w}x{h} image becomes {rw}x{rh} after SAM's resize to longest side {long_side}: "
            f"the short side must be at least {long_side / (2 * max(h, w)):.3g} of the long one"
        )


class Throttle:
    """At most one log line per ``key`` and ``period_s``; the lines left out are counted and
    reported with the next one ("N more since")."""

    def __init__(self, period_s: float = 5.0):
        self.period_s = period_s
        self._lock = threading.Lock()
        self._last: Dict[str, float] = {}
        self._skipped: Dict[str, int] = {}

    def __call__(self, key: str) -> Optional[int]:
        """None: stay quiet; else log now (the number of lines left out since the last one)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e18) < self.period_s:
                self._skipped[key] = self._skipped.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._skipped.pop(key, 0)


class EdgeRuntime:
    """Latest-frame-wins worker around an :class:`EdgePipeline`.

    ``pipeline``: the pipeline, or a zero-argument callable that builds it (it then runs in
    the worker thread, which thus owns every socket).
    """

    def __init__(
        self,
        pipeline: Union[EdgePipeline, Callable[[], EdgePipeline]],
        on_result: Optional[Callable[[FrameResult], None]] = None,
        on_error: Optional[Callable[[ErrorReport], None]] = None,
        max_requests: int = 4,
        idle_poll_s: float = 0.2,
        connect_timeout_s: Optional[float] = None,
    ):
        self._build = pipeline if callable(pipeline) and not isinstance(pipeline, EdgePipeline) else (lambda: pipeline)
        self.on_result = on_result
        self.on_error = on_error
        self.idle_poll_s = idle_poll_s
        self._connect_timeout_s = connect_timeout_s
        self.pipeline: Optional[EdgePipeline] = None
        self.server_info: List[ServerInfoReply] = []
        self.stats = RuntimeStats()
        self._scheduler = FrameScheduler(max_requests)
        self._options = PendingOptions()
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._build_error: Optional[BaseException] = None
        self._state_lock = threading.Lock()
        self._state = "created"
        self._busy = False
        self._throttle = Throttle(5.0)
        self._stream: Optional[PipelinedStream] = None  # the pipelined stream (config.pipelined), else None

    @property
    def max_requests(self) -> int:
        return self._scheduler.max_requests

    @property
    def state(self) -> str:
        with self._state_lock:
            return self._state

    def _set_state(self, state: str) -> None:
        with self._state_lock:
            self._state = state

    def _set_busy(self, busy: bool) -> None:
        with self._state_lock:
            self._busy = busy

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: Optional[float] = None) -> EdgeRuntime:
        """Start the worker and wait until the pipeline is built (and the servers were
        waited for); re-raises a build failure."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._set_state("starting")
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
        self._scheduler.stop()
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
        """Hand the worker a stream frame; never blocks. True when it replaced a pending
        unprocessed frame (which is then counted as dropped)."""
        dropped = self._scheduler.submit(frame)
        self.stats.frame_in(replaced_pending=dropped)
        return dropped

    def request(
        self, frame: Optional[Frame], prompts: Optional[Sequence[ObjectPrompt]] = None, automatic: Optional[bool] = None
    ) -> concurrent.futures.Future:
        """Queue a one-off job that stream frames never drop (runs before them).

        ``frame`` None: the latest stream frame. ``prompts``/``automatic`` None: the held
        ones. The future resolves to a :class:`FrameResult` or raises.
        """
        fut = self._scheduler.request(frame, prompts, automatic)
        self.stats.request_in(refused=fut.done() and fut.exception() is not None)
        return fut

    def latest_frame(self) -> Optional[Frame]:
        return self._scheduler.latest

    def set_prompts(self, prompts: Sequence[ObjectPrompt]) -> None:
        """Hold these prompts for the following frames (replacing the previous ones)."""
        self._scheduler.hold(prompts)

    def set_automatic(self, automatic: bool) -> None:
        self._scheduler.set_automatic(automatic)

    @property
    def prompts(self) -> List[ObjectPrompt]:
        return self._scheduler.prompts

    @property
    def automatic(self) -> bool:
        return self._scheduler.automatic

    def update(
        self, *, deadline_s: Optional[float] = None, multimask: Optional[bool] = None, amg: Optional[AmgOptions] = None
    ) -> None:
        """Change run-time options; the worker applies them before its next frame."""
        self._options.add(OptionChanges(deadline_s=deadline_s, multimask=multimask, amg=amg))
        self._scheduler.wake()

    def record_stage(self, name: str, seconds: float) -> None:
        """Add a stage the caller timed (e.g. ``postprocess``: turning results into messages)."""
        self.stats.record_stage(name, seconds)

    # ------------------------------------------------------------------- worker

    def _run(self) -> None:
        try:
            self.pipeline = self._build()
            self._wait_for_servers()
            self._stream = start_stream(self)  # edge.stream: overlaps frames when config.pipelined
        except BaseException as e:  # noqa: BLE001 - handed to start()
            self._build_error = e
            self._set_state("failed")
            self._ready.set()
            if self.pipeline is not None:
                self.pipeline.close()
            return
        self._set_state("running")
        self._ready.set()
        try:
            self._loop()
        except BaseException:
            log.exception("the edge worker crashed")
            self._set_state("crashed")
            raise
        finally:
            if self._stream is not None:
                self._stream.close()  # the frames in flight are finished and published first
            for fut in self._scheduler.drain():
                if not fut.done():
                    fut.set_exception(RuntimeError("the edge runtime stopped"))
            if self.state != "crashed":
                self._set_state("stopped")
            try:
                self.pipeline.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the pipeline failed")

    def _loop(self) -> None:
        last_poll = time.monotonic()
        while True:
            job = self._scheduler.next_job(self.idle_poll_s)
            if job is None and self._scheduler.stopping:
                return
            changes = self._options.take()
            if changes is not None:
                changes.apply(self.pipeline)
            if job is None:
                if time.monotonic() - last_poll >= self.idle_poll_s:
                    self._poll_connections()
                    last_poll = time.monotonic()
                continue
            self._poll_connections()  # probes and connection events before every frame
            (self._stream.submit if self._stream is not None else self._handle)(job)
            last_poll = time.monotonic()

    def _wait_for_servers(self) -> None:
        """Wait (bounded) for every server's connection, then check that they serve our model;
        problems are logged, not raised: frames fail, naming the server, until it is fixed."""
        tr = self.pipeline.transport
        timeout = (
            self._connect_timeout_s if self._connect_timeout_s is not None else self.pipeline.config.connect_timeout_s
        )
        if timeout <= 0:
            return
        if not tr.wait_connected(timeout):
            down = [h.name for h in tr.health() if not h.connected]
            log.warning(
                "after %.1f s, not connected to %s; frames fail until they are reachable", timeout, ", ".join(down)
            )
            return
        try:
            self.server_info = tr.info(timeout_s=min(5.0, timeout))
        except Exception as e:  # noqa: BLE001 - informative only
            log.warning("could not ask the servers for their info: %s", e)
        want = self.pipeline.config.model
        for reply in self.server_info:
            if reply.info is not None and reply.info.model != want:
                log.error(
                    "server %s serves model %s but this edge runs %s: every frame will fail",
                    reply.name,
                    reply.info.model,
                    want,
                )

    def _poll_connections(self) -> None:
        """Apply connection events and probe suspect servers (the transport's owner thread
        does it: between frames and while idle)."""
        try:
            self.pipeline.transport.maintain()
        except Exception:  # noqa: BLE001
            log.debug("connection poll failed", exc_info=True)

    def _handle(self, job: Job) -> None:
        if job.future is not None and not job.future.set_running_or_notify_cancel():
            return  # the caller gave up (timed out) before the job started
        self._set_busy(True)
        try:
            result = self._process(job)
        except Exception as e:  # noqa: BLE001 - reported, the worker keeps going
            self._set_busy(False)
            self.report_failure(job, e)
            return
        self._set_busy(False)
        result.frames_dropped = self.stats.counts.frames_dropped
        if job.future is not None:
            job.future.set_result(result)
            return
        # A stream frame is output once on_result has published it; a frame whose callback
        # raised is counted as failed (and in callback_errors), so that
        # frames_in == frames_out + frames_dropped + frames_failed once the worker is idle.
        self.stats.delivered(self._call(self.on_result, result))

    def _call(self, callback, arg) -> bool:
        """Run a result/error callback; False (counted in ``callback_errors``) when it raised."""
        if callback is None:
            return True
        try:
            callback(arg)
        except Exception:  # noqa: BLE001 - a broken callback must not stop the worker
            self.stats.callback_error()
            log.exception("result/error callback failed")
            return False
        return True

    def report_failure(self, job: Job, e: Exception) -> None:
        """A failed frame: counted, its future failed, logged (throttled; remote failures are
        reported by the transport), and handed to ``on_error``. Shared by the pipelined stream."""
        report = ErrorReport(
            job.frame.meta,
            f"{type(e).__name__}: {e}",
            list(getattr(e, "servers", []) or []),
            e,
            job.from_request,
            size=job.frame.size,
        )
        self.stats.failed(report)
        if job.future is not None:
            job.future.set_exception(e)
        if not isinstance(e, RemoteEncodeError):
            skipped = self._throttle(f"failed:{type(e).__name__}")
            if skipped is not None:
                more = f" ({skipped} more since the last such line)" if skipped else ""
                log.warning("frame failed%s: %s", more, report.message, exc_info=not isinstance(e, ValueError))
        self._call(self.on_error, report)

    def _process(self, job: Job) -> FrameResult:
        seg = self.pipeline.segmenter
        frame, prompts = job.frame, job.prompts
        start = time.monotonic()
        timings: Dict[str, float] = {"queue": max(0.0, start - frame.received - frame.convert_s)}
        if frame.convert_s:
            timings["convert"] = frame.convert_s
        stats: Optional[EncodeStats] = None
        seg.roi_prompts = None if job.automatic else list(prompts or [])  # the privacy policy's region of interest
        if job.automatic:
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
        self.stats.record(timings, stats)
        return FrameResult(
            frame,
            instances,
            job.automatic,
            list(prompts),
            timings,
            stats,
            0,
            encoded=bool(job.automatic or prompts),
            from_request=job.from_request,
        )

    # --------------------------------------------------------------- status

    def snapshot(self) -> RuntimeSnapshot:
        """Counts, per-stage times, and per-remote health merged with what each server did."""
        health: List[ServerHealth] = []
        if self.pipeline is not None:
            tr = self.pipeline.transport
            try:
                health = list(tr.health())
            except Exception as e:  # noqa: BLE001 - reported as each server's error
                health = [ServerHealth(n, state="unknown", last_error=str(e)) for n in tr.server_names]
        with self._state_lock:
            state, busy = self._state, self._busy
        return RuntimeSnapshot(
            state=state,
            busy=busy,
            pending=self._scheduler.pending,
            counts=self.stats.counts,
            automatic=self._scheduler.automatic,
            prompts=len(self._scheduler.prompts),
            last_error=self.stats.last_error,
            stages=self.stats.stages(),
            remotes=self.stats.remotes(health),
            fallback=self._fallback_status(),
        )

    def _fallback_status(self) -> Optional[FallbackStatus]:
        """What the degraded mode has done (None before the pipeline is built)."""
        enc = getattr(self.pipeline, "encoder", None)
        if enc is None or not hasattr(enc, "fallback"):  # not built yet, or a stand-in pipeline
            return None
        return FallbackStatus(
            policy=enc.fallback.mode,
            spares=tuple(self.pipeline.transport.server_names[i] for i in enc.fallback.spares),
            frames_degraded=enc.frames_degraded,
            tiles_rerouted=enc.tiles_rerouted,
            tiles_at_edge=enc.tiles_at_edge,
            deadline_s=enc.frame_deadline(),
            tokens_refused=enc.token_check.refused,
        )
