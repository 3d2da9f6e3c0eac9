"""A remote server stopped mid-stream: the edge node keeps running, publishes an
ERROR diagnostic naming that server, and produces results again once the server
is restarted on the same endpoint (real processes, DDS on this machine only)."""

from __future__ import annotations

import threading
import time

import pytest

from helpers.ros import edge_stack, image_msg, new_domain, small_photos
from ped_sam_ros.ros.diagnostics import read_pipeline
from ped_sam_ros.ros.util import latest_status

pytestmark = pytest.mark.timeout(300)

NS = "/fault"
PREFIX = f"{NS}/edge_node"


class Streamer:
    """Publishes frames at a steady rate with increasing stamps until stopped; can pause."""

    def __init__(self, pub, rate_hz: float = 2.0):
        self.pub, self.period = pub, 1.0 / rate_hz
        self.sent = []
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held while publishing: pause() waits for a publish in progress
        self._paused = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._frames = small_photos()

    def _run(self):
        k = 0
        while not self._stop.is_set():
            with self._lock:
                if not self._paused:
                    msg = image_msg(self._frames[k % len(self._frames)], 5_000 + k, 0, frame_id="stream")
                    self.pub.publish(msg)
                    self.sent.append(msg.header)
                    k += 1
            self._stop.wait(self.period)

    def pause(self) -> int:
        """Stop publishing; returns how many frames were sent (none follows until resume())."""
        with self._lock:
            self._paused = True
            return len(self.sent)

    def resume(self) -> int:
        with self._lock:
            self._paused = False
            return len(self.sent)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def _remote_status(diag_arrays, name):
    return latest_status(diag_arrays, f"{PREFIX}: remote {name}")


def _pipeline(diag_arrays):
    return read_pipeline(diag_arrays, PREFIX)


def _settled(status) -> bool:
    """Every frame the node received has an outcome (nothing pending, nothing in progress)."""
    return status is not None and status.settled


def test_stopped_remote_is_reported_and_recovered(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import Image

    from ped_sam_msgs.msg import Prompts, SegmentationResult
    from ped_sam_ros.core.pipeline import ObjectPrompt
    from ped_sam_ros.ros.convert import prompts_to_msgs

    dom = new_domain()
    with edge_stack(tmp_path, dom, ["steady", "flaky"], "fault_test", namespace=NS, extra_params=["deadline:=3.0"]) as (
        servers,
        edge,
        t,
    ):
        flaky = servers[1]
        results = t.collect(SegmentationResult, f"{PREFIX}/masks")
        diags = t.collect(DiagnosticArray, "/diagnostics")
        prompts_pub = t.node.create_publisher(Prompts, f"{PREFIX}/prompts", 10)
        image_pub = t.node.create_publisher(Image, f"{PREFIX}/image", 5)
        t.wait_for_subscribers(prompts_pub)
        t.wait_for_subscribers(image_pub)
        prompts_pub.publish(Prompts(prompts=prompts_to_msgs([ObjectPrompt(points=[(30.0, 30.0, 1)])])))
        t.wait_until(lambda: (v := _pipeline(diags)) is not None and v.prompts == 1, 30, "the node to hold the prompt")

        with Streamer(image_pub, rate_hz=2.0) as stream:
            t.wait_until(lambda: len(results) >= 1, 90, "a first result")
            st = _remote_status(diags, "flaky")
            assert st is not None and st.level == DiagnosticStatus.OK

            # Stop one server mid-stream.
            flaky.stop()
            stopped_at = len(stream.sent)
            try:
                t.wait_until(
                    lambda: (
                        (s := _remote_status(diags[-3:], "flaky")) is not None and s.level == DiagnosticStatus.ERROR
                    ),
                    60,
                    "an ERROR diagnostic for 'flaky'",
                )
            except TimeoutError:
                raise AssertionError(edge.log_text()) from None
            st = _remote_status(diags, "flaky")
            assert "flaky" in st.message and st.hardware_id == flaky.endpoint
            # the disconnect shows at once (before any frame failed); the next frame fails, naming it
            t.wait_until(
                lambda: (v := _pipeline(diags[-1:])) is not None and v.frames_failed >= 1, 30, "a failed frame"
            )
            values = _pipeline(diags[-1:])
            assert "flaky" in values.last_error
            steady = _remote_status(diags, "steady")
            assert steady.level == DiagnosticStatus.OK, "the healthy server is not blamed"
            time.sleep(1.5)  # a few more frames fail while it is down
            assert edge.alive, edge.log_text()

            # Pause the stream and let the node finish every frame it has (each fails after at most
            # `deadline`), so that no frame sent while the server was down can still be in progress
            # or pending when it comes back: such a frame would rightly get a result.
            paused_at = stream.pause()
            failed_before = values.frames_failed
            n_diag = len(diags)
            try:
                t.wait_until(
                    lambda: (
                        len(diags) > n_diag + 2
                        and _settled(_pipeline(diags))
                        and _settled(_pipeline(diags[:-1]))
                        and _pipeline(diags) == _pipeline(diags[:-1])
                    ),
                    60,
                    "the node to finish the frames it received (two equal settled diagnostics)",
                )
            except TimeoutError:
                raise AssertionError(f"{_pipeline(diags)}\n{edge.log_text()}") from None
            assert _pipeline(diags).frames_failed > failed_before, "frames failed while it was down"
            n_before = len(results)

            # Restart it on the same endpoint: the node reconnects and results resume.
            flaky.restart_same_endpoint()
            restarted_at = stream.resume()
            try:
                t.wait_until(
                    lambda: any(r.header.stamp.sec >= 5_000 + restarted_at for r in results[n_before:]),
                    90,
                    "results after the restart",
                )
            except TimeoutError:
                raise AssertionError(edge.log_text()) from None
            t.wait_until(
                lambda: (s := _remote_status(diags[-3:], "flaky")) is not None and s.level == DiagnosticStatus.OK,
                30,
                "an OK diagnostic for 'flaky'",
            )
        # Frames sent while the server was down got no result, then or after the restart: they failed
        # (or were dropped for a newer frame), they were not queued for later. (+1: a frame published
        # while flaky.stop() ran may be appended to `sent` after stopped_at was read.)
        down = {h.stamp.sec for h in stream.sent[stopped_at + 1 : paused_at]}
        assert down
        got = {r.header.stamp.sec for r in results if r.status != SegmentationResult.STATUS_FAILED}
        assert not down & got, sorted(down & got)
        # ... and downstream nodes saw them fail: a FAILED result with the reason and the input header
        failed = [r for r in results if r.status == SegmentationResult.STATUS_FAILED]
        assert failed and all("flaky" in r.reason and not r.instances for r in failed)
        assert {r.header.stamp.sec for r in failed} <= {h.stamp.sec for h in stream.sent}
        assert edge.alive
