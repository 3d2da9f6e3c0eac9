"""A remote server stopped mid-stream: the edge node keeps running, publishes an
ERROR diagnostic naming that server, and produces results again once the server
is restarted on the same endpoint (real processes, DDS on this machine only)."""

from __future__ import annotations

import threading
import time

import pytest

from net_helpers import start_servers
from ros_helpers import TEST_MODEL, TEST_SEED, EdgeProcess, TestNode, domain_id, image_msg, small_photos

pytestmark = pytest.mark.timeout(300)

NS = "/fault"
PREFIX = f"{NS}/edge_node"


class Streamer:
    """Publishes frames at a steady rate with increasing stamps until stopped."""

    def __init__(self, pub, rate_hz: float = 2.0):
        self.pub, self.period = pub, 1.0 / rate_hz
        self.sent = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._frames = small_photos()

    def _run(self):
        k = 0
        while not self._stop.is_set():
            msg = image_msg(self._frames[k % len(self._frames)], 5_000 + k, 0, frame_id="stream")
            self.pub.publish(msg)
            self.sent.append(msg.header)
            k += 1
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def _remote_status(diag_arrays, name):
    for arr in reversed(diag_arrays):
        for st in arr.status:
            if st.name == f"{PREFIX}: remote {name}":
                return st
    return None


def test_stopped_remote_is_reported_and_recovered(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from ped_sam_msgs.msg import Prompts, SegmentationResult
    from ped_sam_ros.core.pipeline import ObjectPrompt
    from ped_sam_ros.ros.convert import prompts_to_msgs
    from sensor_msgs.msg import Image

    dom = domain_id(offset=53)
    args = ["--model", TEST_MODEL, "--random-weights", "--seed", str(TEST_SEED)]
    servers = start_servers(tmp_path, [("steady", args), ("flaky", args)])
    flaky = servers[1]
    edge = EdgeProcess(tmp_path / "edge", dom, [f"{s.name}={s.endpoint}" for s in servers], "1x2", namespace=NS,
                       extra_params=["deadline:=3.0"])
    t = None
    try:
        edge.start()
        edge.wait_ready()
        t = TestNode(dom, "fault_test")
        results = t.collect(SegmentationResult, f"{PREFIX}/masks")
        diags = t.collect(DiagnosticArray, "/diagnostics")
        prompts_pub = t.node.create_publisher(Prompts, f"{PREFIX}/prompts", 10)
        image_pub = t.node.create_publisher(Image, f"{PREFIX}/image", 5)
        t.wait_for_subscribers(prompts_pub)
        t.wait_for_subscribers(image_pub)
        prompts_pub.publish(Prompts(prompts=prompts_to_msgs([ObjectPrompt(points=[(30.0, 30.0, 1)])])))
        time.sleep(0.5)

        with Streamer(image_pub, rate_hz=2.0) as stream:
            t.wait_until(lambda: len(results) >= 1, 90, "a first result")
            st = _remote_status(diags, "flaky")
            assert st is not None and st.level == DiagnosticStatus.OK

            # Stop one server mid-stream.
            flaky.stop()
            stopped_at = len(stream.sent)
            try:
                t.wait_until(lambda: (s := _remote_status(diags[-3:], "flaky")) is not None
                             and s.level == DiagnosticStatus.ERROR, 60, "an ERROR diagnostic for 'flaky'")
            except TimeoutError:
                raise AssertionError(edge.log_text()) from None
            st = _remote_status(diags, "flaky")
            assert "flaky" in st.message and st.hardware_id == flaky.endpoint
            pipeline = next(s for s in diags[-1].status if s.name == f"{PREFIX}: pipeline")
            values = {kv.key: kv.value for kv in pipeline.values}
            assert int(values["frames_failed"]) >= 1
            assert "flaky" in values["last_error"]
            steady = _remote_status(diags, "steady")
            assert steady.level == DiagnosticStatus.OK, "the healthy server is not blamed"
            time.sleep(1.5)  # a few more frames fail while it is down
            assert edge.alive, edge.log_text()
            n_before = len(results)
            before_restart = len(stream.sent)

            # Restart it on the same endpoint: the node reconnects and results resume.
            flaky.restart_same_endpoint()
            restarted_at = len(stream.sent)
            try:
                t.wait_until(lambda: any(r.header.stamp.sec >= 5_000 + restarted_at for r in results[n_before:]),
                             90, "results after the restart")
            except TimeoutError:
                raise AssertionError(edge.log_text()) from None
            t.wait_until(lambda: (s := _remote_status(diags[-3:], "flaky")) is not None
                         and s.level == DiagnosticStatus.OK, 30, "an OK diagnostic for 'flaky'")
        # Frames sent while the server was down got no result (they failed, were not queued).
        down = {h.stamp.sec for h in stream.sent[stopped_at + 2:before_restart - 1]}
        assert down
        assert not down & {r.header.stamp.sec for r in results}
        assert edge.alive
    finally:
        if t is not None:
            t.close()
        edge.stop()
        for s in servers:
            s.stop()
