"""The pipelined stream: frame N+1's preparation and remote stage overlap frame N's edge stage.

Two threads, one frame each at most:

* the I/O thread (the :class:`~.runtime.EdgeRuntime` worker, which owns the sockets) takes the
  newest frame from the scheduler, resizes it as SAM does and runs the remote phase
  (:meth:`~ped_sam_ros.core.pipeline.DistributedEncoder.encode_remote`: tiles out, tokens
  back, merged), then hands the frame over;
* the compute thread (started here) runs the edge phase
  (:meth:`~ped_sam_ros.core.pipeline.DistributedEncoder.finish`: the edge's encoder blocks and
  neck) and SAM's decoder on that frame, and publishes the result or the error.

The hand-over holds one frame: while the compute thread is busy with frame N and frame N+1
waits, the I/O thread takes no new frame (it keeps polling the connections), so the scheduler
keeps replacing the pending frame and the latest frame still wins.  When the edge phase is
the slower one, the I/O thread also starts the next frame just in time: at
:func:`next_start`, so that its I/O side ends when the compute thread's current frame ends
(running medians of both sides' recent durations), or a little after it where the edge
phase's duration varies; never before it: a frame that arrives early waits in the hand-over
and its latency grows by the wait; one that arrives late leaves the compute thread idle for
that long but its own latency is the sequential one.  So the frame taken is as fresh as in
the sequential runtime and the throughput is the slower stage's.  One compute thread takes
frames in hand-over order, so results (and errors) are published in input order.  Each
frame travels as one :class:`Prepared` record (its own input, tokens, stats and timings):
nothing of one frame can reach another's result.  ``overlapped`` counts the remote phases
that started while the compute thread held an earlier frame.

The I/O thread runs no torch kernel (the merge is numpy; a torch kernel there would start a
second OpenMP team beside the compute thread's), so its CPU work beside the edge phase is the
resize, the wire codecs and the merge; where torch's threads take every core, that work
slows the edge phase beside it (``bench.stream`` reports it as ``interference``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Deque, Dict, List, Optional

import numpy as np
import torch

from ped_sam_ros.core.pipeline import EncodeStats, Instance

from .records import FrameResult
from .scheduler import Job

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import EdgeRuntime

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One frame between the two threads: its job, and what the I/O thread made of it."""

    job: Job
    timings: Dict[str, float] = field(default_factory=dict)
    resized: Optional[np.ndarray] = None  # SAM's resized input (None: nothing to encode)
    tokens: Optional[torch.Tensor] = None  # merged remote tokens, 1x64x64xC
    stats: Optional[EncodeStats] = None
    error: Optional[Exception] = None
    handed_over: float = 0.0  # monotonic time it entered the hand-over


def supports_pipelining(pipeline) -> bool:
    """True when the pipeline's encoder has the two phases (stand-in pipelines may not)."""
    enc = getattr(pipeline, "encoder", None)
    return hasattr(enc, "encode_remote") and hasattr(enc, "finish") and hasattr(pipeline, "segmenter")


def start_stream(runtime: EdgeRuntime) -> Optional[PipelinedStream]:
    """A running :class:`PipelinedStream` when the runtime's config asks for one (``pipelined``)
    and its pipeline supports it; else None (the runtime then runs frames in sequence)."""
    cfg = getattr(runtime.pipeline, "config", None)
    if not getattr(cfg, "pipelined", False):
        return None
    if not supports_pipelining(runtime.pipeline):
        log.warning("pipelined is set but this pipeline has no remote/edge phases: frames run in sequence")
        return None
    return PipelinedStream(runtime).start()


def _median(values) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class RunningMedian:
    """The median of the last ``size`` samples (None before the first): a duration estimate that
    one frame slowed by other load does not move; ``spread`` is their median absolute deviation."""

    def __init__(self, size: int = 5):
        self._samples: Deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    @property
    def value(self) -> Optional[float]:
        return _median(self._samples) if self._samples else None

    @property
    def spread(self) -> float:
        if not self._samples:
            return 0.0
        mid = _median(self._samples)
        return _median(abs(s - mid) for s in self._samples)


#: the most the I/O thread aims past the expected end of the edge phase, as a share of it (the
#: throughput it may cost, at most, when the edge phase's duration varies)
MAX_LATE_SHARE = 0.05


def next_start(
    compute_started: float, compute_s: Optional[float], io_s: Optional[float], compute_spread: float = 0.0
) -> Optional[float]:
    """When (monotonic seconds) the I/O thread should start the next frame: so that its I/O side
    (``io_s``) ends when the compute thread's current frame, started at ``compute_started``,
    ends (``compute_s``), plus the recent spread of the compute side (``compute_spread``, at most
    :data:`MAX_LATE_SHARE` of it).  None: start now (the I/O side is the slower, or nothing is
    known yet).

    Why aim at the end, or a little past it, never before: a frame whose I/O side ends before
    the edge phase does waits in the hand-over, and that wait is latency the sequential runtime
    does not have; one that ends after it leaves the compute thread idle for the difference
    (throughput) while its own latency is the sequential one.  Where the edge phase's duration
    varies (other load on the machine), aiming one spread late makes an early frame the
    exception, for at most :data:`MAX_LATE_SHARE` of the throughput; where it does not vary the
    aim is the end itself."""
    if io_s is None or compute_s is None or compute_s <= io_s:
        return None
    return compute_started + compute_s - io_s + min(max(compute_spread, 0.0), MAX_LATE_SHARE * compute_s)


class PipelinedStream:
    """The two-phase frame path of an :class:`~.runtime.EdgeRuntime` (see the module doc).

    :meth:`submit` is called by the I/O thread for every job; :meth:`close` (also by the I/O
    thread) finishes the frames in flight and stops the compute thread."""

    def __init__(self, runtime: EdgeRuntime):
        self.rt = runtime
        self._handover: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._compute_loop, name="ped-sam-edge-compute", daemon=True)
        self._lock = threading.Lock()
        self._computing = False  # the compute thread holds a frame (guarded by _lock)
        self._in_flight = 0  # frames between submit and published (guarded by _lock)
        #: remote phases that started while the compute thread held an earlier frame
        self.overlapped = 0
        #: frames that went through the remote phase
        self.frames = 0
        #: running estimates of the I/O side of a frame and of the compute side: medians of the last 3
        #: frames (a new compute thread's first frames run ~20% slower; 5 frames followed that too late)
        self._io = RunningMedian(size=3)
        self._compute = RunningMedian(size=3)
        self._compute_started = 0.0  # monotonic start of the compute thread's current frame
        self._taken = threading.Event()  # the compute thread took the last hand-over
        self._done = threading.Event()  # the compute thread finished the frame it took last

    def start(self) -> PipelinedStream:
        self._thread.start()
        return self

    # ------------------------------------------------------------------ I/O thread

    def submit(self, job: Job) -> None:
        """Run ``job``'s remote phase here, then hand it to the compute thread (waiting, while
        polling the connections, until the hand-over is free)."""
        if job.future is not None and not job.future.set_running_or_notify_cancel():
            return  # the caller gave up before the job started
        self._add_in_flight(+1)
        t0 = time.monotonic()
        prepared = self._prepare(job)
        if prepared.tokens is not None:
            self._io.add(time.monotonic() - t0)
        prepared.handed_over = time.monotonic()
        self._taken.clear()
        while True:
            try:
                self._handover.put(prepared, timeout=self.rt.idle_poll_s)
                break
            except queue.Full:
                self.rt._poll_connections()  # the I/O thread's duty while it waits
        self._pace()

    @property
    def io_s(self) -> Optional[float]:
        """The running estimate of a frame's I/O side (resize, remote phase, merge), seconds."""
        return self._io.value

    @property
    def compute_s(self) -> Optional[float]:
        """The running estimate of a frame's compute side (edge phase, decoder, publishing), seconds."""
        return self._compute.value

    def _pace(self) -> None:
        """Wait (polling the connections) until the next frame's remote phase should start: once
        the compute thread took the frame just handed over, and then until :func:`next_start`
        (no wait when the I/O side is the slower).  Until one edge phase has been measured, the
        next frame waits for the current one to finish (in sequence: an early frame would wait
        in the hand-over, for as long as the edge phase takes)."""
        while not self._taken.wait(self.rt.idle_poll_s):
            if self.rt._scheduler.stopping:
                return
            self.rt._poll_connections()
        if self.compute_s is None:
            while not self._done.wait(self.rt.idle_poll_s):
                if self.rt._scheduler.stopping:
                    return
                self.rt._poll_connections()
            return
        start_at = next_start(self._compute_started, self.compute_s, self.io_s, self._compute.spread)
        if start_at is None:
            return
        while not self.rt._scheduler.stopping:
            left = start_at - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self.rt.idle_poll_s))
            self.rt._poll_connections()

    def _prepare(self, job: Job) -> Prepared:
        frame, p = job.frame, Prepared(job)
        start = time.monotonic()
        p.timings["queue"] = max(0.0, start - frame.received - frame.convert_s)
        if frame.convert_s:
            p.timings["convert"] = frame.convert_s
        if not (job.automatic or job.prompts):
            return p  # nothing to encode: published as not encoded, in order
        seg = self.rt.pipeline.segmenter
        try:
            rgb = frame.rgb
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ValueError(f"expected an RGB uint8 HxWx3 image, got {rgb.dtype} {rgb.shape}")
            t0 = time.perf_counter()
            p.resized = seg.predictor.transform.apply_image(rgb)  # what SamPredictor.set_image does
            p.timings["preprocess"] = time.perf_counter() - t0
            with self._lock:
                self.frames += 1
                if self._computing:
                    self.overlapped += 1
            roi = None if job.automatic else list(job.prompts)  # the frame hook's region of interest
            p.tokens, p.stats = self.rt.pipeline.encoder.encode_remote(p.resized, tuple(frame.size), roi)
        except Exception as e:  # noqa: BLE001 - published in order by the compute thread
            p.error = e
        return p

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish the frames in flight, then stop the compute thread."""
        while self._thread.is_alive():
            try:
                self._handover.put(None, timeout=1.0)
                break
            except queue.Full:
                continue
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the edge compute thread did not stop within %.1f s", timeout_s)

    # ------------------------------------------------------------------ compute thread

    def _compute_loop(self) -> None:
        while True:
            p = self._handover.get()
            if p is None:
                return
            with self._lock:
                self._computing = True
            self._compute_started = time.monotonic()
            self._done.clear()
            self._taken.set()
            try:
                self._finish(p)
                if p.tokens is not None and p.error is None:
                    self._compute.add(time.monotonic() - self._compute_started)
            except BaseException:  # noqa: BLE001 - keep the stream alive; the frame is reported
                log.exception("the edge compute thread failed on a frame")
            finally:
                with self._lock:
                    self._computing = False
                self._done.set()
                self._add_in_flight(-1)

    def _finish(self, p: Prepared) -> None:
        job, rt = p.job, self.rt
        if p.error is None:
            try:
                result = self._complete(p)
            except Exception as e:  # noqa: BLE001 - reported below, in order
                p.error = e
        if p.error is not None:
            self._report(job, p.error)
            return
        result.frames_dropped = rt.stats.counts.frames_dropped
        if job.future is not None:
            job.future.set_result(result)
            return
        rt.stats.delivered(rt._call(rt.on_result, result))

    def _complete(self, p: Prepared) -> FrameResult:
        """The edge phase and the decoder, on this frame's own tokens only."""
        job, frame, timings = p.job, p.job.frame, dict(p.timings)
        timings["handoff"] = max(0.0, time.monotonic() - p.handed_over)
        instances: List[Instance] = []
        stats = None
        prompts = [] if job.automatic else list(job.prompts)
        if p.tokens is not None:
            seg = self.rt.pipeline.segmenter
            features, stats = self.rt.pipeline.encoder.finish(p.tokens, p.stats)
            pred = seg.predictor
            pred.reset_image()  # as SamPredictor.set_torch_image, with this frame's embedding
            pred.original_size = tuple(frame.size)
            pred.input_size = tuple(p.resized.shape[:2])
            pred.features = features
            pred.is_image_set = True
            pred.last_stats = seg.stats = stats
            timings.update(stats.timings)
            t0 = time.perf_counter()
            instances = self._decode(seg, frame.rgb, prompts, job.automatic)
            timings["decoder"] = time.perf_counter() - t0
        timings["total"] = time.monotonic() - frame.received
        self.rt.stats.record(timings, stats)
        return FrameResult(
            frame,
            instances,
            job.automatic,
            prompts,
            timings,
            stats,
            0,
            encoded=p.tokens is not None,
            from_request=job.from_request,
        )

    @staticmethod
    def _decode(seg, rgb: np.ndarray, prompts, automatic: bool) -> List[Instance]:
        """Prompted masks, or SAM's automatic mask generator over the held embedding
        (:meth:`~ped_sam_ros.core.pipeline.Segmenter.everything_from_embedding`: not encoded again)."""
        return seg.everything_from_embedding(rgb) if automatic else seg.segment(prompts)

    def _report(self, job: Job, e: Exception) -> None:
        """A failed frame, reported as the sequential worker reports it."""
        self.rt.report_failure(job, e)

    # ------------------------------------------------------------------ bookkeeping

    def _add_in_flight(self, n: int) -> None:
        with self._lock:
            self._in_flight += n
            busy = self._in_flight > 0
        self.rt._set_busy(busy)
