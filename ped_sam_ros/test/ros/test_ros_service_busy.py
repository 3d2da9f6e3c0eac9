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

from helpers.ros import TEST_MODEL, TEST_SEED, TestNode, image_msg, new_domain, small_photos, use_domain

pytestmark = pytest.mark.timeout(300)

WAIT_S = 60.0


class _Held:
    """An in-process transport factory whose encode waits for ``gate`` (bounded)."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, config):
        from ped_sam_ros.core.transport import LocalTransport
        from ped_sam_ros.edge.builder import build_remote_stage

        held = self

        class HeldTransport(LocalTransport):
            def encode(self, jobs, mode, timeout_s=60.0):
                held.entered.set()
                if not held.gate.wait(WAIT_S):
                    raise RuntimeError("the test never released the encoder")
                return super().encode(jobs, mode, timeout_s)

        return HeldTransport(build_remote_stage(config), token_dtype=config.wire_precision, names=config.server_names)


@pytest.fixture
def node_under_test():
    import rclpy
    from rclpy.parameter import Parameter

    from ped_sam_ros.ros.edge_node import EdgeNode, make_executor

    dom = new_domain()
    use_domain(dom)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=dom)
    held = _Held()
    overrides = [
        Parameter("model", value=TEST_MODEL),
        Parameter("random_weights", value=True),
        Parameter("seed", value=TEST_SEED),
        Parameter("grid", value="1x2"),
        Parameter("remotes.servers", value=["left=tcp://127.0.0.1:1", "right=tcp://127.0.0.1:2"]),
        Parameter("torch_threads", value=1),
        Parameter("diagnostics_period", value=0.2),
    ]
    node = executor = spin = client = None
    try:
        node = EdgeNode(transport_factory=held, context=ctx, namespace="/busy", parameter_overrides=overrides)
        executor = make_executor(node)
        executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        client = TestNode(dom, "busy_client")
        yield node, held, client
    finally:
        held.gate.set()
        if client is not None:
            client.close()
        if node is not None:
            node.begin_shutdown()
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        if spin is not None:
            spin.join(10)
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown(context=ctx)


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
