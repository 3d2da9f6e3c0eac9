"""Typed records the edge runtime hands out (no ROS): frames in, results and errors out,
and the snapshot the ROS node turns into ``/diagnostics``.

They are small dataclasses rather than string-keyed dicts so that a renamed or missing
field fails where it is used, not in a reader three layers away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ped_sam_ros.core.pipeline import EncodeStats, Instance, ObjectPrompt
from ped_sam_ros.core.transport import ServerHealth

#: stage names, in pipeline order (the ones a frame went through appear in its timings)
STAGES = (
    "queue",
    "convert",
    "preprocess",
    "partition",
    "remote",
    "merge",
    "edge_encoder",
    "decoder",
    "postprocess",
    "total",
)


@dataclass
class Frame:
    """One input image and what the caller wants back with its result."""

    rgb: np.ndarray  # uint8 HxWx3
    meta: Any = None  # opaque to the runtime (the ROS node puts the input header here)
    received: float = field(default_factory=time.monotonic)
    convert_s: float = 0.0  # time the caller spent turning its message into ``rgb``

    @property
    def size(self) -> Tuple[int, int]:
        return self.rgb.shape[:2]


@dataclass
class FrameResult:
    """What the worker made of one frame (a stream frame or a request)."""

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
    def meta(self) -> Any:
        return self.frame.meta


@dataclass
class ErrorReport:
    """A frame that failed: why, and which remote servers were at fault (empty: none)."""

    meta: Any
    message: str
    servers: List[str]
    exception: BaseException
    from_request: bool = False
    time: float = field(default_factory=time.time)
    size: Tuple[int, int] = (0, 0)  # the input image's (height, width)


@dataclass(frozen=True)
class FrameCounts:
    """What happened to the frames and requests so far. Once the worker is idle,
    ``frames_in == frames_out + frames_dropped + frames_failed`` (:attr:`settled`)."""

    frames_in: int = 0
    frames_out: int = 0  # stream frames whose result callback returned
    frames_dropped: int = 0  # replaced by a newer frame before the worker took them
    frames_failed: int = 0  # failed, or their result callback raised
    requests: int = 0
    requests_failed: int = 0
    callback_errors: int = 0  # result/error callbacks that raised

    @property
    def settled(self) -> bool:
        return self.frames_in == self.frames_out + self.frames_dropped + self.frames_failed


@dataclass(frozen=True)
class StageSummary:
    """Seconds one stage took over the recent frames."""

    last: float
    mean: float
    p50: float
    max: float
    count: int


@dataclass(frozen=True)
class RemoteActivity:
    """What the edge saw one server do for its frames."""

    frames: int = 0
    failed_frames: int = 0  # frames that failed with this server at fault
    bytes_up: int = 0
    bytes_down: int = 0
    share: float = 0.0  # of the last frame's content
    tiles: Tuple[int, ...] = ()  # tile indices of the last frame
    mean_round_trip_s: Optional[float] = None
    mean_compute_s: Optional[float] = None


@dataclass(frozen=True)
class RemoteSnapshot:
    """One server: the transport's health record for it and the edge's account of its work."""

    name: str
    health: ServerHealth  # as the transport sees it now
    activity: RemoteActivity


@dataclass(frozen=True)
class FallbackStatus:
    """The degraded mode: the operator's policy and what it did so far."""

    policy: str  # fail, spare, reroute, edge
    spares: Tuple[str, ...]
    frames_degraded: int  # frames finished with some tiles re-placed
    tiles_rerouted: int  # tiles sent to another server than their own
    tiles_at_edge: int  # tiles the edge computed itself
    deadline_s: float  # the remote deadline the next frame gets
    tokens_refused: int  # replies refused by the token check


@dataclass(frozen=True)
class RuntimeSnapshot:
    """The runtime at one moment, for status reporting."""

    state: str  # created, starting, running, failed, crashed, stopped
    busy: bool
    pending: bool  # a stream frame waits for the worker
    counts: FrameCounts
    automatic: bool
    prompts: int  # prompts held
    last_error: Optional[ErrorReport]
    stages: Dict[str, StageSummary]  # in pipeline order
    remotes: List[RemoteSnapshot]
    fallback: Optional[FallbackStatus] = None

    @property
    def bytes_up(self) -> int:
        return sum(r.activity.bytes_up for r in self.remotes)

    @property
    def bytes_down(self) -> int:
        return sum(r.activity.bytes_down for r in self.remotes)
