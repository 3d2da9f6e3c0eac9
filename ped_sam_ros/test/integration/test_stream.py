"""The pipelined stream (edge.stream): frame N+1's remote stage overlaps frame N's edge stage.

A real tiny pipeline (in-process servers) is slowed down on both sides: the remote phase
(the transport) and the edge phase (``DistributedEncoder.finish``) each sleep, so that the
overlap is observed by counting, not timing.  Frames of distinct content go through; every
result is checked against the same frame run through a separate, sequential pipeline with
the same weights, and against its neighbours' (so a mix-up would be seen).
"""

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from helpers.edge import two_server_config
from ped_sam_ros.core.pipeline import ObjectPrompt
from ped_sam_ros.core.transport import RemoteEncodeError
from ped_sam_ros.edge.builder import build_pipeline, local_transport
from ped_sam_ros.edge.records import Frame
from ped_sam_ros.edge.runtime import EdgeRuntime

pytestmark = pytest.mark.timeout(300)
PROMPTS = [ObjectPrompt(points=[(40.0, 30.0, 1)]), ObjectPrompt(box=(5.0, 5.0, 70.0, 50.0))]


def _config(**kw):
    return two_server_config(device="cpu", **kw)


def _frames(n):
    """Distinct content: noise of a different level, and a bright block in a different place."""
    rng = np.random.default_rng(11)
    out = []
    for k in range(n):
        rgb = rng.integers(0, 60 + 25 * (k % 8), (60, 80, 3), dtype=np.uint8)
        rgb[5 + 4 * k : 25 + 4 * k, 6 * k : 6 * k + 30] = 250
        out.append(rgb)
    return out


class Slowed:
    """Wraps a built pipeline: the remote phase and the edge phase each sleep, and every call is
    logged as (phase, thread name, first pixel row of the frame's resized input or tokens)."""

    def __init__(self, pipe, remote_s, edge_s, fail_on=()):
        self.pipe, self.log, self.fail_on = pipe, [], set(fail_on)
        enc = pipe.encoder
        remote, finish = enc.encode_remote, enc.finish
        self.remote_calls = 0

        def slow_remote(resized, *a, **k):
            self.remote_calls += 1
            self.log.append(("remote", threading.current_thread().name))
            time.sleep(remote_s)
            if self.remote_calls in self.fail_on:
                raise RemoteEncodeError(f"fake failure of remote call {self.remote_calls}", ["left"])
            return remote(resized, *a, **k)

        def slow_finish(tokens, stats):
            self.log.append(("edge", threading.current_thread().name))
            time.sleep(edge_s)
            return finish(tokens, stats)

        enc.encode_remote, enc.finish = slow_remote, slow_finish


def _run_stream(cfg, frames, remote_s=0.3, edge_s=0.6, fail_on=()):
    out, lock = [], threading.Condition()

    def on_any(x):
        with lock:
            out.append(x)
            lock.notify_all()

    holder = {}

    def build():
        pipe = build_pipeline(cfg, transport_factory=local_transport)
        holder["slowed"] = Slowed(pipe, remote_s, edge_s, fail_on)
        return pipe

    rt = EdgeRuntime(build, on_result=on_any, on_error=on_any, idle_poll_s=0.05).start(timeout_s=120)
    try:
        rt.set_prompts(PROMPTS)
        stream = rt._stream
        for k, rgb in enumerate(frames):
            rt.submit(Frame(rgb, meta={"header": f"cam/{k}"}))
            # the next frame comes once this one's remote phase began: it then waits as the
            # pending frame while this one is remote and is taken as soon as the I/O thread is free
            end = time.monotonic() + 60
            while holder["slowed"].remote_calls < k + 1:
                assert time.monotonic() < end, "the remote phase never started"
                time.sleep(0.01)
        with lock:
            assert lock.wait_for(lambda: len(out) == len(frames), 120), f"{len(out)} of {len(frames)} outputs"
    finally:
        rt.stop()
    return SimpleNamespace(out=out, stream=stream, slowed=holder["slowed"], rt=rt)


@pytest.fixture(scope="module")
def reference():
    """The sequential pipeline (same weights): each frame's own expected instances."""
    pipe = build_pipeline(_config(pipelined=False), transport_factory=local_transport)
    try:

        def expected(rgb):
            pipe.segmenter.set_image(rgb)
            return pipe.segmenter.segment(PROMPTS)

        yield expected
    finally:
        pipe.close()


def _agree(got, want) -> bool:
    """Same instances: scores to 1e-4, masks to IoU 0.99."""
    if [i.id for i in got] != [i.id for i in want]:
        return False
    for g, w in zip(got, want):
        inter, union = (g.mask & w.mask).sum(), (g.mask | w.mask).sum()
        if abs(g.score - w.score) > 1e-4 or (union and inter / union < 0.99):
            return False
    return True


def _same(got, want):
    assert _agree(got, want), ([(i.score, int(i.area)) for i in got], [(i.score, int(i.area)) for i in want])


def test_pipelined_stream_overlaps_keeps_order_headers_and_each_frames_own_result(reference):
    frames = _frames(5)
    run = _run_stream(_config(pipelined=True), frames)
    assert run.stream is not None, "config.pipelined must start the stream"
    # overlap, counted: remote phases that began while the compute thread held an earlier frame
    assert run.stream.frames == 5 and run.stream.overlapped >= 3, (run.stream.frames, run.stream.overlapped)
    # the I/O thread (socket owner) ran every remote phase, the compute thread every edge phase
    assert {t for p, t in run.slowed.log if p == "remote"} == {"ped-sam-edge-worker"}
    assert {t for p, t in run.slowed.log if p == "edge"} == {"ped-sam-edge-compute"}
    # every frame published, in input order, each with its own header and its own content
    assert [r.meta["header"] for r in run.out] == [f"cam/{k}" for k in range(5)]
    want = [reference(rgb) for rgb in frames]
    for k, r in enumerate(run.out):
        assert r.frame.rgb is frames[k] and r.encoded
        _same(r.instances, want[k])
        assert "edge_encoder" in r.timings and "remote" in r.timings and "handoff" in r.timings
    # the check can tell frames apart: neighbouring frames have different expected scores
    assert not any(_agree(want[k], want[k + 1]) for k in range(4))
    counts = run.rt.stats.counts
    assert (counts.frames_in, counts.frames_out, counts.frames_failed) == (5, 5, 0)


def test_a_failed_frame_is_reported_in_order_and_the_stream_goes_on(reference):
    frames = _frames(4)
    run = _run_stream(_config(pipelined=True), frames, remote_s=0.2, edge_s=0.4, fail_on=(2,))
    kinds = [("error" if hasattr(x, "servers") and not hasattr(x, "instances") else "result") for x in run.out]
    assert kinds == ["result", "error", "result", "result"]
    assert run.out[1].meta["header"] == "cam/1" and run.out[1].servers == ["left"]
    for k in (0, 2, 3):
        assert run.out[k].meta["header"] == f"cam/{k}"
        _same(run.out[k].instances, reference(frames[k]))


def test_latest_frame_still_wins_while_both_stages_are_busy():
    cfg = _config(pipelined=True)
    out = []
    holder = {}

    def build():
        pipe = build_pipeline(cfg, transport_factory=local_transport)
        holder["s"] = Slowed(pipe, 0.3, 0.6)
        return pipe

    rt = EdgeRuntime(build, on_result=out.append, idle_poll_s=0.05).start(timeout_s=120)
    try:
        rt.set_prompts(PROMPTS)
        frames = _frames(8)
        for k, rgb in enumerate(frames):  # a burst: most are replaced while pending
            rt.submit(Frame(rgb, meta=k))
        end = time.monotonic() + 120
        while rt.stats.counts.frames_out + rt.stats.counts.frames_dropped < 8:
            assert time.monotonic() < end, rt.stats.counts
            time.sleep(0.05)
    finally:
        rt.stop()
    metas = [r.meta for r in out]
    assert metas == sorted(metas) and metas[-1] == 7, metas  # in order, and the newest is published
    assert rt.stats.counts.frames_dropped >= 5 and len(metas) + rt.stats.counts.frames_dropped == 8
    assert all(r.frame.rgb is frames[r.meta] for r in out)


def test_sequential_when_not_pipelined():
    run = _run_stream(_config(pipelined=False), _frames(2), remote_s=0.0, edge_s=0.0)
    assert run.stream is None
    assert [r.meta["header"] for r in run.out] == ["cam/0", "cam/1"]
    assert {t for _, t in run.slowed.log} == {"ped-sam-edge-worker"}
