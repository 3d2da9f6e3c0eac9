"""The edge node's ``/diagnostics``: typed records both ways.

The node turns the runtime's :class:`~ped_sam_ros.edge.records.RuntimeSnapshot` into one
:class:`PipelineStatus` and one :class:`RemoteStatus` per server, and those into
``DiagnosticStatus`` messages whose key/value pairs are the records' fields; clients (the
tests, the demo) read them back with :func:`read_pipeline` / :func:`read_remote` into the same
records. A field renamed on one side therefore fails on the other (a missing key raises).
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from ped_sam_ros.edge.config import EdgeConfig
from ped_sam_ros.edge.records import RemoteSnapshot, RuntimeSnapshot

from .util import latest_status, status_values

PIPELINE_HARDWARE_ID = "ped_sam_edge"
#: the pipeline status is an ERROR this long after a failed frame
ERROR_HOLD_S = 5.0


def pipeline_status_name(node_fqn: str) -> str:
    return f"{node_fqn}: pipeline"


def remote_status_name(node_fqn: str, server: str) -> str:
    return f"{node_fqn}: remote {server}"


@dataclass(frozen=True)
class StageLatency:
    """One stage's milliseconds over the recent frames."""

    last_ms: float
    mean_ms: float
    max_ms: float


@dataclass(frozen=True)
class PipelineStatus:
    """The values of ``<node>: pipeline``."""

    state: str
    frames_in: int
    frames_out: int
    frames_dropped: int
    frames_failed: int
    requests: int
    requests_failed: int
    callback_errors: int
    automatic: bool
    prompts: int
    bytes_up: int
    bytes_down: int
    last_error: str
    refused_images: int
    model: str
    mode: str
    grid: str
    random_weights: bool
    wire_precision: str
    stages: Dict[str, StageLatency] = field(default_factory=dict)  # as ``stage.<name>.<field>`` keys
    fallback: str = "fail"  # the degraded mode's policy (remotes.fallback)
    spares: Tuple[str, ...] = ()
    frames_degraded: int = 0  # frames finished with some tiles re-placed by the fallback
    tiles_rerouted: int = 0
    tiles_at_edge: int = 0
    tokens_refused: int = 0  # replies refused by the token check
    deadline_ms: Optional[float] = None  # the remote deadline the next frame gets
    # the privacy policy (privacy.*), cumulative; all 0 when it is off
    privacy_frames: int = 0
    sensitive_objects: int = 0  # detections the policy acted on (score >= privacy.min_score)
    tiles_local: int = 0  # tiles computed at the edge (no server saw them)
    tiles_obfuscated: int = 0
    tiles_dropped: int = 0

    @property
    def settled(self) -> bool:
        """Every frame received has an outcome (none pending or in progress)."""
        return self.frames_in == self.frames_out + self.frames_dropped + self.frames_failed

    def key_values(self) -> List[Tuple[str, str]]:
        pairs = _key_values(self, skip=("stages",))
        for stage, latency in self.stages.items():
            pairs += [(f"stage.{stage}.{k}", v) for k, v in _key_values(latency)]
        return pairs

    @classmethod
    def from_key_values(cls, values: Mapping[str, str]) -> PipelineStatus:
        stages: Dict[str, Dict[str, str]] = {}
        for key, value in values.items():
            if key.startswith("stage."):
                stage, _, name = key[len("stage.") :].rpartition(".")
                stages.setdefault(stage, {})[name] = value
        return _from_key_values(cls, values, stages={s: _from_key_values(StageLatency, v) for s, v in stages.items()})


@dataclass(frozen=True)
class RemoteStatus:
    """The values of ``<node>: remote <server>``: the transport's view of the server and
    the edge's account of its work (``share`` and ``tiles``: of the last frame)."""

    name: str
    endpoint: str
    state: str
    connected: bool
    last_latency_ms: Optional[float]
    mean_latency_ms: Optional[float]
    last_compute_ms: Optional[float]
    mean_compute_ms: Optional[float]
    share: float
    tiles: Tuple[int, ...]
    frames: int
    failed_frames: int
    bytes_up: int
    bytes_down: int
    requests: int
    replies: int
    errors: int
    timeouts: int
    late_replies: int
    consecutive_failures: int
    last_error: str
    suspect: bool = False  # failed, gets no tiles until it answers a probe
    probes: int = 0

    @property
    def failing(self) -> bool:
        return not self.connected or self.suspect or self.state in ("error", "timeout")

    def key_values(self) -> List[Tuple[str, str]]:
        return _key_values(self)

    @classmethod
    def from_key_values(cls, values: Mapping[str, str]) -> RemoteStatus:
        return _from_key_values(cls, values)


# ----------------------------------------------------------------- from the runtime


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else 1000.0 * seconds


def pipeline_status(
    snap: RuntimeSnapshot, config: EdgeConfig, refused_images: int, privacy: Optional[Mapping[str, int]] = None
) -> PipelineStatus:
    """``privacy``: the privacy hook's totals (:attr:`ped_sam_ros.edge.privacy.PrivacyHook.totals` and
    ``frames``), None when the policy is off."""
    c = snap.counts
    stages = {name: StageLatency(1000.0 * s.last, 1000.0 * s.mean, 1000.0 * s.max) for name, s in snap.stages.items()}
    return PipelineStatus(
        state=snap.state,
        frames_in=c.frames_in,
        frames_out=c.frames_out,
        frames_dropped=c.frames_dropped,
        frames_failed=c.frames_failed,
        requests=c.requests,
        requests_failed=c.requests_failed,
        callback_errors=c.callback_errors,
        automatic=snap.automatic,
        prompts=snap.prompts,
        bytes_up=snap.bytes_up,
        bytes_down=snap.bytes_down,
        last_error=snap.last_error.message if snap.last_error else "",
        refused_images=refused_images,
        model=config.model,
        mode=config.mode,
        grid=config.grid,
        random_weights=config.random_weights,
        wire_precision=config.wire_precision,
        stages=stages,
        **_fallback_values(snap),
        **_privacy_values(privacy),
    )


def _privacy_values(totals: Optional[Mapping[str, int]]) -> Dict[str, Any]:
    if not totals:
        return {}
    return dict(
        privacy_frames=int(totals.get("frames", 0)),
        sensitive_objects=int(totals.get("objects", 0)),
        tiles_local=int(totals.get("local", 0)),
        tiles_obfuscated=int(totals.get("obfuscate", 0)),
        tiles_dropped=int(totals.get("drop", 0)),
    )


def _fallback_values(snap: RuntimeSnapshot) -> Dict[str, Any]:
    f = snap.fallback
    if f is None:
        return {}
    return dict(
        fallback=f.policy,
        spares=f.spares,
        frames_degraded=f.frames_degraded,
        tiles_rerouted=f.tiles_rerouted,
        tiles_at_edge=f.tiles_at_edge,
        tokens_refused=f.tokens_refused,
        deadline_ms=_ms(f.deadline_s),
    )


def remote_status(remote: RemoteSnapshot) -> RemoteStatus:
    h, a = remote.health, remote.activity
    return RemoteStatus(
        name=remote.name,
        endpoint=h.endpoint,
        state=h.state,
        connected=h.connected,
        last_latency_ms=_ms(h.last_latency_s),
        mean_latency_ms=_ms(a.mean_round_trip_s),
        last_compute_ms=_ms(h.last_compute_s),
        mean_compute_ms=_ms(a.mean_compute_s),
        share=a.share,
        tiles=a.tiles,
        frames=a.frames,
        failed_frames=a.failed_frames,
        bytes_up=a.bytes_up,
        bytes_down=a.bytes_down,
        requests=h.requests,
        replies=h.replies,
        errors=h.errors,
        timeouts=h.timeouts,
        late_replies=h.late_replies,
        consecutive_failures=h.consecutive_failures,
        last_error=h.last_error,
        suspect=h.suspect,
        probes=h.probes,
    )


def pipeline_message(snap: RuntimeSnapshot, now: float) -> Tuple[bool, str]:
    """(ok, message) of the pipeline status: an error while the pipeline is not running and
    for :data:`ERROR_HOLD_S` after a failed frame (naming the servers at fault)."""
    err = snap.last_error
    if snap.state != "running":
        ok, message = False, f"pipeline {snap.state}"
    elif err is not None and now - err.time < ERROR_HOLD_S:
        who = f" ({', '.join(err.servers)})" if err.servers else ""
        ok, message = False, f"frame failed{who}: {err.message}"[:400]
    else:
        ok, message = True, "running"
    c = snap.counts
    return ok, message + (
        f"; frames in {c.frames_in}, out {c.frames_out}, dropped {c.frames_dropped}, failed {c.frames_failed}"
    )


def remote_message(status: RemoteStatus) -> Tuple[bool, str]:
    """(ok, message) of a remote's status: an error while disconnected or after a timeout or
    an error reply (with the reason), until its next good reply."""
    if status.failing:
        what = "disconnected" if not status.connected else status.state
        if status.suspect:
            what += ", suspect (no tiles until it answers a probe)"
        message = f"{status.name} {what}"
        if status.last_error:
            message += f": {status.last_error}"[:300]
        return False, message
    return True, f"{status.name} {status.state}"


def diagnostic_statuses(
    node_fqn: str,
    snap: RuntimeSnapshot,
    config: EdgeConfig,
    refused_images: int,
    now: float,
    privacy: Optional[Mapping[str, int]] = None,
) -> List[DiagnosticStatus]:
    """The node's DiagnosticStatus messages: the pipeline, then one per remote server."""
    ok, message = pipeline_message(snap, now)
    out = [
        _msg(
            ok,
            pipeline_status_name(node_fqn),
            message,
            PIPELINE_HARDWARE_ID,
            pipeline_status(snap, config, refused_images, privacy).key_values(),
        )
    ]
    for remote in snap.remotes:
        status = remote_status(remote)
        ok, message = remote_message(status)
        out.append(
            _msg(
                ok,
                remote_status_name(node_fqn, remote.name),
                message,
                status.endpoint or status.name,
                status.key_values(),
            )
        )
    return out


def _msg(ok: bool, name: str, message: str, hardware_id: str, pairs) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=DiagnosticStatus.OK if ok else DiagnosticStatus.ERROR,
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in pairs],
    )


# ------------------------------------------------------------------ for clients


def read_pipeline(diag_arrays: Sequence, node_fqn: str) -> Optional[PipelineStatus]:
    """The newest pipeline status of ``node_fqn`` in received DiagnosticArrays (oldest first)."""
    values = status_values(latest_status(diag_arrays, pipeline_status_name(node_fqn)))
    return None if values is None else PipelineStatus.from_key_values(values)


def read_remote(diag_arrays: Sequence, node_fqn: str, server: str) -> Optional[RemoteStatus]:
    """The newest status of remote ``server`` of ``node_fqn`` in received DiagnosticArrays."""
    values = status_values(latest_status(diag_arrays, remote_status_name(node_fqn, server)))
    return None if values is None else RemoteStatus.from_key_values(values)


def wait_for_pipeline(
    diag_arrays: Sequence, node_fqn: str, timeout_s: float, alive: Callable[[], bool] = lambda: True
) -> PipelineStatus:
    """Wait (polling, bounded) until ``diag_arrays`` (a list a subscription appends to) holds a
    pipeline status of ``node_fqn`` saying ``running``: the node is ready (it publishes
    diagnostics only once its pipeline is built and every topic and service exists).

    Raises RuntimeError when ``alive()`` turns false, TimeoutError after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while True:
        status = read_pipeline(list(diag_arrays), node_fqn)
        if status is not None and status.state == "running":
            return status
        if not alive():
            raise RuntimeError(f"{node_fqn} is gone (last pipeline status: {status})")
        if time.monotonic() > end:
            raise TimeoutError(
                f"no running pipeline status from {node_fqn} on /diagnostics after {timeout_s:g} s (last: {status})"
            )
        time.sleep(0.1)


# ------------------------------------------------------------ the key/value codec


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)


def _key_values(record: Any, skip: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """A record's fields as (key, text) pairs, in field order; None fields are left out."""
    return [
        (f.name, _format(getattr(record, f.name)))
        for f in dataclasses.fields(record)
        if f.name not in skip and getattr(record, f.name) is not None
    ]


def _parse(text: str, hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        return _parse(text, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is tuple:
        return tuple(_parse(str(v), args[0]) for v in json.loads(text))
    if hint is bool:
        if text not in ("True", "False"):
            raise ValueError(f"not a bool: {text!r}")
        return text == "True"
    return hint(text)


def _from_key_values(cls, values: Mapping[str, str], **given: Any):
    """The record ``cls`` from its key/value pairs; a missing key raises KeyError unless the
    field is Optional (then None) or given."""
    hints = typing.get_type_hints(cls)
    kwargs = dict(given)
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            continue
        hint = hints[f.name]
        if f.name in values:
            kwargs[f.name] = _parse(values[f.name], hint)
        elif type(None) in typing.get_args(hint):
            kwargs[f.name] = None
        else:
            raise KeyError(f"{cls.__name__}: no value {f.name!r} in the diagnostics (keys: {sorted(values)})")
    return cls(**kwargs)
