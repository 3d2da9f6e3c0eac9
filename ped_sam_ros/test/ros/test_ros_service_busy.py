"""~/segment calls that wait for a busy worker never starve the node's other callbacks.

The real EdgeNode in this process, with the executor ``main()`` uses (``make_executor``)
and an in-process transport whose encoding the test holds: while every service slot
waits on the held worker, further calls are refused at once ("busy: ..."), and images,
the diagnostics timer and the parameter services keep being served. Releasing the
worker answers every admitted call. DDS on this machine only, a domain of our own.
"""

from __future__ import annotations

import threading

import pytest

from helpers.ros import edge_node_in_process, image_msg, in_process_transport, small_photos

pytestmark = pytest.mark.timeout(300)

WAIT_S = 60.0


class _Held:
    """The in-process servers' encode waits for ``gate`` (bounded): ``before_encode`` of the transport."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()

    def before_encode(self):
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("the test never released the encoder")


@pytest.fixture
def node_under_test():
    held = _Held()
    factory = in_process_transport(held.before_encode)
    with edge_node_in_process(factory, "/busy", "busy_client", diagnostics_period=0.2) as (node, client):
        try:
            yield node, held, client
        finally:
            held.gate.set()  # before the node shuts down: its worker may be waiting


def test_waiting_service_calls_leave_threads_for_images_diagnostics_and_parameters(node_under_test):
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.srv import GetParameters
    from sensor_msgs.msg import Image

    from ped_sam_msgs.msg import PointPrompt, Prompt
    from ped_sam_msgs.srv import SegmentImage

    node, held, t = node_under_test
    prefix = "/busy/edge_node"
    limit = node.max_service_calls
    assert node.executor_threads > limit, "threads beyond the ones service calls may hold"
    seg = t.node.create_client(SegmentImage, f"{prefix}/segment")
    assert seg.wait_for_service(timeout_sec=30)
    rgb = small_photos()[0]
    prompts = [Prompt(points=[PointPrompt(x=20.0, y=20.0, label=1)])]
    extra = 2
    futures = [
        seg.call_async(SegmentImage.Request(image=image_msg(rgb, 7_000 + k, 0, frame_id="busy"), prompts=prompts))
        for k in range(limit + extra)
    ]
    assert held.entered.wait(WAIT_S), "the worker started the first call"

    # The calls beyond the limit are answered at once, while the others wait for the held worker.
    t.wait_until(lambda: sum(f.done() for f in futures) >= extra, WAIT_S, "the refused calls' answers")
    refused = [f.result() for f in futures if f.done()]
    assert len(refused) == extra, [r.message for r in refused]
    for r in refused:
        assert not r.success and r.message == f"busy: {limit} segment requests already waiting", r.message
    assert node._service_calls == limit

    # Meanwhile: the image callback runs, ...
    image_pub = t.node.create_publisher(Image, f"{prefix}/image", 5)
    t.wait_for_subscribers(image_pub)
    frames_in = node.runtime.snapshot().counts.frames_in
    image_pub.publish(image_msg(rgb, 7_100, 0, frame_id="stream"))
    t.wait_until(lambda: node.runtime.snapshot().counts.frames_in > frames_in, WAIT_S, "the image callback")
    # ... the diagnostics timer publishes, ...
    diags = t.collect(DiagnosticArray, "/diagnostics")
    t.wait_until(lambda: len(diags) >= 2, WAIT_S, "diagnostics while service calls wait")
    # ... and the parameter services answer.
    get = t.node.create_client(GetParameters, f"{prefix}/get_parameters")
    resp = t.call(get, GetParameters.Request(names=["max_prompts"]), WAIT_S)
    assert resp.values[0].integer_value == 64
    assert sum(f.done() for f in futures) == extra, "the admitted calls still wait for the held worker"

    # Releasing the worker answers every admitted call with a result.
    held.gate.set()
    t.wait_until(lambda: all(f.done() for f in futures), WAIT_S, "the admitted calls' results")
    answers = [f.result() for f in futures]
    ok = [a for a in answers if a.success]
    assert len(ok) == limit, [a.message for a in answers]
    stamps = {a.result.header.stamp.sec for a in ok}
    assert len(stamps) == limit and stamps <= {7_000 + k for k in range(limit + extra)}, stamps
    assert all(len(a.result.instances) == 1 for a in ok)
    assert node._service_calls == 0
