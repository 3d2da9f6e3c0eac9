"""The pipelined stream's pacing (edge.stream): when the I/O thread starts the next frame, and the
running estimates it starts from."""

import threading
import time
from types import SimpleNamespace

import pytest

from ped_sam_ros.edge.stream import MAX_LATE_SHARE, PipelinedStream, RunningMedian, next_start


def test_next_start_aims_the_io_side_at_the_end_of_the_compute_side():
    # edge-bound: compute 1.0 s started at t=10, I/O side 0.4 s -> start at 10.6, ending at 11.0 (no early margin)
    assert next_start(10.0, 1.0, 0.4) == pytest.approx(10.6)
    assert next_start(10.0, 1.0, 0.4) + 0.4 == pytest.approx(10.0 + 1.0)
    # I/O-bound or balanced: start at once (the compute thread is not the bottleneck)
    assert next_start(10.0, 0.4, 1.0) is None
    assert next_start(10.0, 0.5, 0.5) is None
    # nothing known yet: start at once
    assert next_start(10.0, None, 0.4) is None and next_start(10.0, 1.0, None) is None
    # a varying edge phase: aim one spread past the end (an early frame's wait is latency), never before it,
    # and at most MAX_LATE_SHARE of the edge phase past it (the throughput that may cost)
    assert next_start(10.0, 1.0, 0.4, compute_spread=0.02) == pytest.approx(10.62)
    assert next_start(10.0, 1.0, 0.4, compute_spread=0.5) == pytest.approx(10.6 + MAX_LATE_SHARE)
    assert next_start(10.0, 1.0, 0.4, compute_spread=-1.0) == pytest.approx(10.6)


def test_running_median_ignores_one_disturbed_frame_and_follows_a_lasting_change():
    m = RunningMedian(size=5)
    assert m.value is None and m.spread == 0.0
    for s in (1.0, 1.0, 1.0, 1.0):
        m.add(s)
    m.add(5.0)  # one frame slowed by other load
    assert m.value == 1.0 and m.spread == 0.0
    for s in (2.0, 2.0, 2.0):  # the edge phase really got slower
        m.add(s)
    assert m.value == 2.0
    two = RunningMedian(size=4)
    two.add(1.0)
    two.add(2.0)
    assert two.value == 1.5 and two.spread == 0.5
    jitter = RunningMedian(size=5)
    for s in (1.0, 1.1, 0.9, 1.2, 0.8):
        jitter.add(s)
    assert jitter.value == 1.0 and jitter.spread == pytest.approx(0.1)


def _stream():
    """A PipelinedStream on a stand-in runtime (its compute thread is not started)."""
    polls = []
    rt = SimpleNamespace(idle_poll_s=0.01, _scheduler=SimpleNamespace(stopping=False), _set_busy=lambda b: None)
    rt._poll_connections = lambda: polls.append(time.monotonic())
    return PipelinedStream(rt), polls


def test_until_an_edge_phase_is_measured_the_next_frame_waits_for_it():
    stream, polls = _stream()
    stream._taken.set()  # the compute thread took the frame just handed over
    paced = threading.Thread(target=stream._pace)
    paced.start()
    paced.join(0.2)
    assert paced.is_alive() and polls  # waiting for the edge phase to end, polling the connections meanwhile
    stream._done.set()
    paced.join(5.0)
    assert not paced.is_alive()


def test_a_measured_edge_phase_paces_the_next_frame_to_its_end():
    stream, polls = _stream()
    stream._compute.add(0.3)
    stream._io.add(0.1)
    stream._compute_started = time.monotonic()
    stream._taken.set()
    t0 = time.monotonic()
    stream._pace()
    assert time.monotonic() - t0 >= 0.19  # started 0.3 - 0.1 s into the edge phase, not at once
    stream._io.add(0.5)
    stream._io.add(0.5)  # now the I/O side is the slower: no wait
    stream._compute_started = time.monotonic()
    before = len(polls)
    stream._pace()
    assert len(polls) == before  # returned at once: no wait, so no polling while waiting
