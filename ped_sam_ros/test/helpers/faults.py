"""Fault scenarios over real server processes (loopback only, bounded, self-stopping).

A :class:`Scenario` streams frames at a fixed rate into an :class:`EdgeRuntime` (the edge
node's worker, without ROS) whose servers are ``python -m remote_node`` processes, injects a
fault into one server mid-stream (``kill``: SIGKILL; ``stop``: SIGSTOP), ends it (``kill``: a
restart on the same endpoint; ``stop``: SIGCONT) and returns a :class:`FaultRow`: frames in,
results out (ok / degraded / failed), the largest gap between published outcomes, how long
after the fault the first frame was finished by the fallback (or failed), and how long after
the server was back it got tiles again.  The fault-suite tests assert on the rows;
``python -m helpers.faults`` (from ``ped_sam_ros/test``) prints the table of docs/faults.md.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from helpers.net import ServerProcess, start_servers, stop_all
from helpers.ros import RANDOM_SERVER_ARGS, TEST_MODEL, TEST_SEED, small_photos

#: 4 servers for a 2x2 grid, and one spare
NAMES = ("fa", "fb", "fc", "fd", "fe")
VICTIM = 2  # "fc": tile 2
RATE_HZ = 3.0


@dataclass
class Outcome:
    """One frame's outcome as the runtime's callbacks saw it."""

    stamp: int
    t: float  # monotonic
    status: str  # ok, degraded, failed
    masks: Optional[List[np.ndarray]] = None
    victim_tiles: Tuple[int, ...] = ()
    reason: str = ""


@dataclass
class FaultRow:
    """One line of the fault table."""

    scenario: str
    frames_in: int
    results_ok: int
    results_degraded: int
    failed: int
    largest_gap_s: float  # between consecutive outcomes (results or failed frames) from the fault on
    largest_result_gap_s: float  # between consecutive results (ok or degraded) from the fault on
    gap_after_detection_s: float  # the same, from the first outcome after the fault on
    gap_during_outage_s: float  # the same, from the first outcome after the fault until the server's return
    first_outcome_after_fault_s: Optional[float]  # the first outcome (result or failed) after the fault
    back_in_use_s: Optional[float]  # from the server's return until it is usable (gets the next frame's tiles)
    served_again_s: Optional[float]  # from the server's return to the first result it contributed to
    healthy_frame_s: float  # median time between results before the fault
    mismatched: int = 0  # results whose masks differ from the healthy result of the same image
    worst_fault_frame_s: Optional[float] = None  # slowest outcome of a frame sent while the server was down
    detail: Dict[str, float] = field(default_factory=dict)

    def markdown(self) -> str:
        def f(v):
            return "-" if v is None else f"{v:.2f}"

        out = self.results_ok + self.results_degraded
        return (
            f"| {self.scenario} | {self.frames_in} | {out} ({self.results_degraded} degraded) | {self.failed} | "
            f"{f(self.healthy_frame_s)} | {f(self.largest_result_gap_s)} | {f(self.gap_during_outage_s)} | "
            f"{f(self.gap_after_detection_s)} | "
            f"{f(self.first_outcome_after_fault_s)} | {f(self.back_in_use_s)} | {f(self.served_again_s)} | "
            f"{self.mismatched} | {f(self.worst_fault_frame_s)} |"
        )


HEADER = (
    "| scenario | frames in | results out | failed (status) | healthy frame (s) | largest gap between results "
    "(s) | largest gap during the outage, after detection (s) | largest gap after detection, restart "
    "included (s) | first outcome after the fault (s) | usable again after its "
    "return (s) | first result it served (s) | results != healthy | slowest outcome of a frame sent "
    "during the fault (s) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def start_fault_servers(workdir: Path) -> List[ServerProcess]:
    return start_servers(workdir, [(n, RANDOM_SERVER_ARGS) for n in NAMES])


def edge_config(servers: Sequence[ServerProcess], fallback: str, deadline_s: float = 30.0):
    from ped_sam_ros.edge.config import EdgeConfig

    return EdgeConfig(
        model=TEST_MODEL,
        random_weights=True,
        seed=TEST_SEED,
        grid="2x2",
        servers=[s.address for s in servers],
        fallback=fallback,
        spares=[NAMES[4]],  # idle unless the fallback uses it
        assignment=[0, 1, 2, 3],
        deadline_s=deadline_s,
        torch_threads=1,
        connect_timeout_s=30.0,
        # lossless wire: results through a spare or the edge fallback must equal the healthy ones
        # (these tests check the fallback paths, not the codecs; the defaults p6 / jpeg444:90 are lossy)
        wire_precision="float32",
        pixel_codec="raw",
    )


class Scenario:
    """Stream, fault, recovery and measurement of one run (see the module docstring)."""

    def __init__(
        self,
        servers: Sequence[ServerProcess],
        fallback: str,
        fault: str,
        healthy_s: float = 12.0,
        fault_s: float = 10.0,
        after_s: float = 10.0,
    ):
        assert fault in ("kill", "stop")
        self.servers, self.fallback, self.fault = list(servers), fallback, fault
        self.healthy_s, self.fault_s, self.after_s = healthy_s, fault_s, after_s
        self.outcomes: List[Outcome] = []
        self.submitted: List[Tuple[int, float]] = []
        self._lock = threading.Lock()
        self.photos = small_photos()
        self.reference: Dict[int, List[np.ndarray]] = {}  # image index -> healthy masks
        self.marks: Dict[str, float] = {}  # fault, back, usable: monotonic times

    # ----------------------------------------------------------------- callbacks

    def _on_result(self, result) -> None:
        stats = result.stats
        tiles = tuple(stats.per_server[VICTIM].tiles) if stats is not None else ()
        status = "degraded" if stats is not None and stats.degraded else "ok"
        with self._lock:
            self.outcomes.append(
                Outcome(
                    result.meta,
                    time.monotonic(),
                    status,
                    [i.mask for i in result.instances],
                    tiles,
                    "; ".join(stats.fallback) if stats else "",
                )
            )

    def _on_error(self, report) -> None:
        with self._lock:
            self.outcomes.append(Outcome(report.meta, time.monotonic(), "failed", reason=report.message))

    # ----------------------------------------------------------------- run

    def run(self) -> FaultRow:
        from ped_sam_ros.core.pipeline import ObjectPrompt
        from ped_sam_ros.edge.builder import build_pipeline
        from ped_sam_ros.edge.records import Frame
        from ped_sam_ros.edge.runtime import EdgeRuntime

        victim = self.servers[VICTIM]
        config = edge_config(self.servers, self.fallback)
        rt = EdgeRuntime(lambda: build_pipeline(config), on_result=self._on_result, on_error=self._on_error)
        rt.start(timeout_s=120)
        rt.set_prompts([ObjectPrompt(points=[(30.0, 30.0, 1)])])
        marks: Dict[str, float] = {}
        usable_at: List[float] = []
        watching = threading.Event()

        def watch() -> None:  # when the victim is usable again (connected, not suspect), every 20 ms
            was_bad = False
            while not watching.is_set():
                h = rt.snapshot().remotes[VICTIM].health
                bad = h.suspect or not h.connected
                if was_bad and not bad:
                    usable_at.append(time.monotonic())
                was_bad = was_bad or bad
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            period = 1.0 / RATE_HZ
            t_start = time.monotonic()
            phases = [("healthy", self.healthy_s), ("fault", self.fault_s), ("after", self.after_s)]
            k = 0
            for phase, length in phases:
                if phase == "fault":
                    marks["fault"] = time.monotonic()
                    victim.kill() if self.fault == "kill" else victim.signal(signal.SIGSTOP)
                if phase == "after":
                    if self.fault == "kill":
                        victim.bind = victim.endpoint
                        victim.start()
                        victim.wait_ready()
                    else:
                        victim.signal(signal.SIGCONT)
                    marks["back"] = time.monotonic()
                end = time.monotonic() + length
                while time.monotonic() < end:
                    stamp = k
                    rt.submit(Frame(self.photos[k % len(self.photos)], stamp))
                    with self._lock:
                        self.submitted.append((stamp, time.monotonic()))
                    k += 1
                    time.sleep(max(0.0, t_start + k * period - time.monotonic()))
            deadline = time.monotonic() + 60
            while not rt.snapshot().counts.settled and time.monotonic() < deadline:
                time.sleep(0.1)
            counts = rt.snapshot().counts
        finally:
            watching.set()
            watcher.join(5)
            rt.stop(timeout_s=30)
            if not victim.alive:
                victim.bind = victim.endpoint
                victim.start()
                victim.wait_ready()
            else:
                victim.signal(signal.SIGCONT)
        marks["usable"] = min((t for t in usable_at if t >= marks["back"]), default=float("nan"))
        self.marks = marks
        return self._row(marks, counts)

    def _row(self, marks: Dict[str, float], counts) -> FaultRow:
        fault, back, usable = marks["fault"], marks["back"], marks["usable"]
        outs = sorted(self.outcomes, key=lambda o: o.t)
        healthy = [o for o in outs if o.t < fault and o.status == "ok"]
        for o in healthy:  # the reference: each image's result while every server was well
            self.reference.setdefault(o.stamp % len(self.photos), o.masks)
        gaps = np.diff([o.t for o in healthy])
        healthy_frame = float(np.median(gaps)) if len(gaps) else float("nan")
        after = [o for o in outs if o.t >= fault]
        results_after = [o for o in after if o.status != "failed"]

        def largest(xs, start):
            ts = [start] + [o.t for o in xs if o.t >= start]
            return float(max(np.diff(ts))) if len(ts) > 1 else float("nan")

        firsts = [o.t - fault for o in after]
        served = [o.t - back for o in outs if o.t >= back and o.victim_tiles]
        mismatched = 0
        for o in outs:
            ref = self.reference.get(o.stamp % len(self.photos))
            if o.status != "failed" and ref is not None and o.masks is not None:
                agree = [float((a == b).mean()) for a, b in zip(o.masks, ref)]
                if len(o.masks) != len(ref) or min(agree, default=1.0) < 0.999:
                    mismatched += 1
        return FaultRow(
            scenario=f"{self.fault} 1 of 4 servers, fallback {self.fallback}",
            frames_in=counts.frames_in,
            results_ok=sum(o.status == "ok" for o in outs),
            results_degraded=sum(o.status == "degraded" for o in outs),
            failed=sum(o.status == "failed" for o in outs),
            largest_gap_s=largest(after, fault),
            largest_result_gap_s=largest(results_after, fault),
            gap_after_detection_s=largest(results_after, fault + min(firsts)) if firsts else float("nan"),
            gap_during_outage_s=largest([o for o in results_after if o.t < back], fault + min(firsts))
            if firsts
            else float("nan"),
            first_outcome_after_fault_s=min(firsts) if firsts else None,
            back_in_use_s=None if usable != usable else usable - back,
            served_again_s=min(served) if served else None,
            healthy_frame_s=healthy_frame,
            mismatched=mismatched,
            worst_fault_frame_s=max((w for _, w in late_outcomes(self, 0.0)), default=None),
            detail={"dropped": counts.frames_dropped},
        )


def late_outcomes(scenario: Scenario, limit_s: float) -> List[Tuple[int, float]]:
    """(stamp, seconds) of the frames submitted and finished while the server was down whose
    outcome came later than ``limit_s`` after max(submission, fault) (frames finished after its
    return wait for its warm-up instead, which is not the fault's doing)."""
    sub = dict(scenario.submitted)
    fault_t, back_t = scenario.marks["fault"], scenario.marks["back"]
    late = []
    for o in scenario.outcomes:
        t_sub = sub.get(o.stamp)
        if t_sub is not None and fault_t <= o.t < back_t:
            wait = o.t - max(t_sub, fault_t)
            if wait > limit_s:
                late.append((o.stamp, wait))
    return late


def main() -> None:  # pragma: no cover - the measurement behind docs/faults.md
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="measure the fault table (docs/faults.md)")
    ap.add_argument("--scenarios", default="kill:spare,kill:edge,kill:fail,stop:spare,stop:edge,stop:fail")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        servers = start_fault_servers(Path(d))
        try:
            rows = []
            for item in args.scenarios.split(","):
                fault, fallback = item.split(":")
                row = Scenario(servers, fallback, fault).run()
                rows.append(row)
                print(row.markdown(), dataclasses.asdict(row), flush=True)
            print(HEADER)
            for row in rows:
                print(row.markdown())
        finally:
            stop_all(servers)


if __name__ == "__main__":  # pragma: no cover
    main()
