"""The edge node's /diagnostics as typed records, both ways (message types only, no ROS graph):
a runtime snapshot becomes DiagnosticStatus messages whose values read back into the same
records; a missing key fails loudly; levels follow the pipeline and server states."""

from __future__ import annotations

import time

import pytest

from ped_sam_ros.core.transport import ServerAddress, ServerHealth
from ped_sam_ros.edge.config import EdgeConfig
from ped_sam_ros.edge.records import (
    ErrorReport,
    FrameCounts,
    RemoteActivity,
    RemoteSnapshot,
    RuntimeSnapshot,
    StageSummary,
)

FQN = "/robot/edge_node"


def _snapshot(state="running", last_error=None, b_health=None) -> RuntimeSnapshot:
    a = RemoteSnapshot(
        "a",
        ServerHealth("a", "tcp://127.0.0.1:5601", "ok", last_latency_s=0.25, requests=3, replies=3),
        RemoteActivity(
            frames=3,
            bytes_up=3000,
            bytes_down=1200,
            share=0.5,
            tiles=(0, 3),
            mean_round_trip_s=0.2,
            mean_compute_s=0.125,
        ),
    )
    b = RemoteSnapshot(
        "b",
        b_health or ServerHealth("b", "tcp://127.0.0.1:5602", "ok"),
        RemoteActivity(frames=2, failed_frames=1, bytes_up=100, bytes_down=40, share=0.5, tiles=(1, 2)),
    )
    return RuntimeSnapshot(
        state=state,
        busy=False,
        pending=False,
        counts=FrameCounts(frames_in=8, frames_out=3, frames_dropped=3, frames_failed=1, requests=2),
        automatic=True,
        prompts=2,
        last_error=last_error,
        stages={"remote": StageSummary(0.5, 0.25, 0.2, 0.75, 3), "total": StageSummary(1.0, 0.5, 0.5, 2.0, 3)},
        remotes=[a, b],
    )


def _config() -> EdgeConfig:
    return EdgeConfig(
        model="vit_b/w32h2",
        random_weights=True,
        grid="2x2",
        servers=[ServerAddress("a", "tcp://127.0.0.1:5601"), ServerAddress("b", "tcp://127.0.0.1:5602")],
    )


def test_statuses_read_back_into_the_same_records():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from ped_sam_ros.ros.diagnostics import (
        diagnostic_statuses,
        pipeline_status,
        read_pipeline,
        read_remote,
        remote_status,
    )

    snap = _snapshot()
    statuses = diagnostic_statuses(FQN, snap, _config(), refused_images=4, now=time.time())
    assert [s.name for s in statuses] == [f"{FQN}: pipeline", f"{FQN}: remote a", f"{FQN}: remote b"]
    assert [s.level for s in statuses] == [DiagnosticStatus.OK] * 3
    assert statuses[0].hardware_id == "ped_sam_edge" and statuses[1].hardware_id == "tcp://127.0.0.1:5601"
    arrays = [DiagnosticArray(status=statuses)]

    pipeline = read_pipeline(arrays, FQN)
    assert pipeline == pipeline_status(snap, _config(), 4)
    assert (pipeline.frames_in, pipeline.frames_dropped, pipeline.refused_images) == (8, 3, 4)
    assert pipeline.automatic is True and pipeline.bytes_up == 3100 and not pipeline.settled, "one frame in progress"
    assert pipeline.stages["remote"].mean_ms == pytest.approx(250.0) and list(pipeline.stages) == ["remote", "total"]
    values = {kv.key: kv.value for kv in statuses[0].values}
    assert values["stage.total.max_ms"] == "2000" and values["automatic"] == "True"

    a = read_remote(arrays, FQN, "a")
    assert a == remote_status(snap.remotes[0])
    assert a.tiles == (0, 3) and a.last_latency_ms == pytest.approx(250.0) and a.mean_compute_ms == 125.0
    b = read_remote(arrays, FQN, "b")
    assert b.last_latency_ms is None and b.mean_latency_ms is None, "no reply yet: the key is left out"
    assert b.failed_frames == 1
    assert read_remote(arrays, FQN, "c") is None and read_pipeline(arrays, "/other/edge_node") is None


def test_a_missing_key_fails_loudly():
    from diagnostic_msgs.msg import DiagnosticArray

    from ped_sam_ros.ros.diagnostics import diagnostic_statuses, read_pipeline

    status = diagnostic_statuses(FQN, _snapshot(), _config(), 0, time.time())[0]
    status.values = [kv for kv in status.values if kv.key != "frames_out"]
    with pytest.raises(KeyError, match="frames_out"):
        read_pipeline([DiagnosticArray(status=[status])], FQN)


def test_levels_name_the_failure():
    from diagnostic_msgs.msg import DiagnosticStatus

    from ped_sam_ros.ros.diagnostics import diagnostic_statuses

    now = time.time()
    err = ErrorReport(None, "RemoteEncodeError: b timed out", ["b"], RuntimeError("x"), time=now - 1.0)
    down = ServerHealth("b", "tcp://127.0.0.1:5602", "disconnected", connected=False, last_error="no route")
    pipe, _, b = diagnostic_statuses(FQN, _snapshot(last_error=err, b_health=down), _config(), 0, now)
    assert pipe.level == DiagnosticStatus.ERROR and pipe.message.startswith("frame failed (b): RemoteEncodeError")
    assert "frames in 8, out 3, dropped 3, failed 1" in pipe.message
    assert b.level == DiagnosticStatus.ERROR and b.message == "b disconnected: no route"
    # the pipeline error holds for 5 s after the failed frame, then it is OK again
    pipe = diagnostic_statuses(FQN, _snapshot(last_error=err), _config(), 0, now + 5.0)[0]
    assert pipe.level == DiagnosticStatus.OK and pipe.message.startswith("running;")
    pipe = diagnostic_statuses(FQN, _snapshot(state="crashed"), _config(), 0, now)[0]
    assert pipe.level == DiagnosticStatus.ERROR and pipe.message.startswith("pipeline crashed")
