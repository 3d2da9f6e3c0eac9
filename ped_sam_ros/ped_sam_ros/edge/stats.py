"""The edge runtime's statistics book (no ROS): frame counts, per-stage times and what
each remote server did, updated by the worker and read from any thread."""

from __future__ import annotations

import collections
import statistics
import threading
from dataclasses import replace
from typing import Deque, Dict, List, Mapping, Optional, Sequence

from ped_sam_ros.core.pipeline import EncodeStats
from ped_sam_ros.core.transport import ServerFrameStats, ServerHealth

from .records import STAGES, ErrorReport, FrameCounts, RemoteActivity, RemoteSnapshot, StageSummary


class StageTimes:
    """The last ``window`` durations of each stage."""

    def __init__(self, window: int = 200):
        self._values: Dict[str, Deque[float]] = collections.defaultdict(lambda: collections.deque(maxlen=window))

    def add(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self._values[stage].append(float(seconds))

    def summary(self) -> Dict[str, StageSummary]:
        """Per stage, in pipeline order (then any other stage by name)."""
        order = list(STAGES) + sorted(set(self._values) - set(STAGES))
        out = {}
        for stage in order:
            vals = list(self._values.get(stage, ()))
            if vals:
                out[stage] = StageSummary(
                    last=vals[-1],
                    mean=statistics.fmean(vals),
                    p50=statistics.median(vals),
                    max=max(vals),
                    count=len(vals),
                )
        return out


class _RemoteTally:
    """Running totals for one server."""

    def __init__(self, window: int = 100):
        self.activity = RemoteActivity()
        self.round_trips: Deque[float] = collections.deque(maxlen=window)
        self.compute: Deque[float] = collections.deque(maxlen=window)

    def add_frame(self, part: ServerFrameStats) -> None:
        a = self.activity
        self.activity = replace(
            a,
            frames=a.frames + 1,
            bytes_up=a.bytes_up + part.bytes_up,
            bytes_down=a.bytes_down + part.bytes_down,
            share=part.share,
            tiles=tuple(part.tiles),
        )
        self.round_trips.append(part.round_trip_s)
        self.compute.append(part.compute_s)

    def add_failure(self) -> None:
        self.activity = replace(self.activity, failed_frames=self.activity.failed_frames + 1)

    def snapshot(self) -> RemoteActivity:
        if not self.round_trips:
            return self.activity
        return replace(
            self.activity,
            mean_round_trip_s=statistics.fmean(self.round_trips),
            mean_compute_s=statistics.fmean(self.compute),
        )


class RuntimeStats:
    """Counters, stage times and per-server tallies behind one lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = FrameCounts()
        self._stages = StageTimes()
        self._remotes: Dict[str, _RemoteTally] = {}
        self._last_error: Optional[ErrorReport] = None

    def _count(self, **increments: int) -> None:
        c = self._counts
        self._counts = replace(c, **{k: getattr(c, k) + v for k, v in increments.items()})

    def frame_in(self, replaced_pending: bool) -> None:
        with self._lock:
            self._count(frames_in=1, frames_dropped=int(replaced_pending))

    def request_in(self, refused: bool) -> None:
        with self._lock:
            self._count(requests=1, requests_failed=int(refused))

    def delivered(self, ok: bool) -> None:
        """A stream frame's result callback returned (``ok``) or raised."""
        with self._lock:
            self._count(frames_out=int(ok), frames_failed=int(not ok))

    def callback_error(self) -> None:
        with self._lock:
            self._count(callback_errors=1)

    def failed(self, report: ErrorReport) -> None:
        with self._lock:
            self._last_error = report
            if report.from_request:
                self._count(requests_failed=1)
            else:
                self._count(frames_failed=1)
            for name in report.servers:
                self._tally(name).add_failure()

    def record(self, timings: Mapping[str, float], stats: Optional[EncodeStats]) -> None:
        """A computed frame: its stage times and, when it was encoded, each server's part."""
        with self._lock:
            self._stages.add(timings)
            for part in stats.per_server if stats is not None else ():
                self._tally(part.name).add_frame(part)

    def record_stage(self, name: str, seconds: float) -> None:
        with self._lock:
            self._stages.add({name: seconds})

    def _tally(self, name: str) -> _RemoteTally:
        return self._remotes.setdefault(name, _RemoteTally())

    @property
    def counts(self) -> FrameCounts:
        with self._lock:
            return self._counts

    @property
    def last_error(self) -> Optional[ErrorReport]:
        with self._lock:
            return self._last_error

    def stages(self) -> Dict[str, StageSummary]:
        with self._lock:
            return self._stages.summary()

    def remotes(self, health: Sequence[ServerHealth]) -> List[RemoteSnapshot]:
        """One snapshot per server (in the transport's order), with its ``health``."""
        with self._lock:
            return [
                RemoteSnapshot(
                    h.name, h, self._remotes[h.name].snapshot() if h.name in self._remotes else RemoteActivity()
                )
                for h in health
            ]
