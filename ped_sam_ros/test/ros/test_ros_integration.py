"""The edge node end to end: real remote servers and the real node (separate
processes), real photos published from this test's own rclpy node (DDS on this
machine only, a domain of our own).

Results carry their input's header; their RLE masks decode to the published
label image; prompts work through the topic and through the service; an
unsupported encoding is refused without harming the node; parameters are
validated at run time (by rclpy's descriptors and by the node itself) and take
effect; a Prompts message is validated in automatic mode too and sets the
``automatic`` parameter.  Each test sets up the node state it relies on
(waiting, bounded, until the node reports it in /diagnostics, read back as typed records).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from helpers.ros import TEST_MODEL, edge_stack, image_msg, new_domain, small_photos
from ped_sam_ros.ros.diagnostics import read_pipeline, read_remote

pytestmark = pytest.mark.timeout(300)

NS = "/itest"
PREFIX = f"{NS}/edge_node"
RESULT_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage, Image

    from ped_sam_msgs.msg import Prompts, SegmentationResult

    work = tmp_path_factory.mktemp("ros_integration")
    dom = new_domain()
    extra = [
        "use_compressed:=true",
        "amg.points_per_side:=2",
        "amg.pred_iou_thresh:=0.0",
        "amg.stability_score_thresh:=0.0",
    ]
    with edge_stack(work, dom, ["left", "right"], "integration_test", namespace=NS, extra_params=extra) as (
        servers,
        edge,
        t,
    ):
        s = {
            "edge": edge,
            "node": t,
            "servers": servers,
            "masks": t.collect(SegmentationResult, f"{PREFIX}/masks"),
            "labels": t.collect(Image, f"{PREFIX}/label_mask"),
            "overlays": t.collect(Image, f"{PREFIX}/overlay"),
            "diags": t.collect(DiagnosticArray, "/diagnostics"),
            "image_pub": t.node.create_publisher(Image, f"{PREFIX}/image", 5),
            "compressed_pub": t.node.create_publisher(CompressedImage, f"{PREFIX}/image/compressed", 5),
            "prompts_pub": t.node.create_publisher(Prompts, f"{PREFIX}/prompts", 10),
        }
        for key in ("image_pub", "compressed_pub", "prompts_pub"):
            t.wait_for_subscribers(s[key])
        yield s


def _by_stamp(msgs, header):
    from ped_sam_ros.ros.convert import stamp_key

    key = stamp_key(header)
    return [m for m in msgs if stamp_key(m.header) == key]


def _wait_result(stack, header, timeout_s=RESULT_TIMEOUT_S):
    t = stack["node"]
    try:
        t.wait_until(
            lambda: _by_stamp(stack["masks"], header) and _by_stamp(stack["labels"], header),
            timeout_s,
            f"a result for stamp {header.stamp.sec}",
        )
    except TimeoutError:
        raise AssertionError(f"no result for {header}:\n{stack['edge'].log_text()}") from None
    return _by_stamp(stack["masks"], header)[0], _by_stamp(stack["labels"], header)[0]


def _wait_pipeline(stack, pred, what, since=None, timeout_s=30.0):
    """Wait until a /diagnostics message received after index ``since`` (default: now) has a
    PipelineStatus satisfying ``pred``; returns it."""
    diags = stack["diags"]
    start = len(diags) if since is None else since
    found = []

    def check():
        for arr in diags[start:]:
            v = read_pipeline([arr], PREFIX)
            if v is not None and pred(v):
                found.append(v)
                return True
        return False

    try:
        stack["node"].wait_until(check, timeout_s, what)
    except TimeoutError:
        last = read_pipeline(diags, PREFIX)
        raise AssertionError(f"{what}: last pipeline diagnostics {last}\n{stack['edge'].log_text()}") from None
    return found[0]


def _hold_prompts(stack, msg, n_prompts, automatic=False):
    """Publish a Prompts message and wait until the node holds it (its diagnostics say so)."""
    since = len(stack["diags"])
    stack["prompts_pub"].publish(msg)
    return _wait_pipeline(
        stack,
        lambda v: v.prompts == n_prompts and v.automatic == automatic,
        f"the node to hold {n_prompts} prompt(s), automatic {automatic}",
        since=since,
    )


def _get_param(stack, name):
    from rcl_interfaces.srv import GetParameters

    t = stack["node"]
    client = t.node.create_client(GetParameters, f"{PREFIX}/get_parameters")
    try:
        resp = t.call(client, GetParameters.Request(names=[name]), 30)
    finally:
        t.node.destroy_client(client)
    from rclpy.parameter import parameter_value_to_python

    return parameter_value_to_python(resp.values[0])


def _eventually(fn, timeout_s, what):
    """Poll ``fn`` (which may call services: not inside TestNode.wait_until, whose lock the
    spinning thread needs), bounded."""
    end = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _prompts_msg(objects, automatic=False):
    from ped_sam_msgs.msg import Prompts
    from ped_sam_ros.core.pipeline import ObjectPrompt
    from ped_sam_ros.ros.convert import prompts_to_msgs

    return Prompts(prompts=prompts_to_msgs([ObjectPrompt(points=p, box=b) for p, b in objects]), automatic=automatic)


def _check_result(result, label_msg, rgb, header, n_instances):
    from ped_sam_ros.ros.convert import image_to_label, label_from_result, masks_from_result

    assert result.header == header, "the input header (stamp and frame_id) is copied, never restamped"
    assert label_msg.header == header
    assert (result.image_height, result.image_width) == rgb.shape[:2]
    assert result.model_type == TEST_MODEL and result.mode == "paper" and result.random_weights
    assert (result.grid_rows, result.grid_cols) == (1, 2)
    assert [i.id for i in result.instances] == list(range(1, n_instances + 1))
    label = image_to_label(label_msg)
    assert label_msg.encoding == "mono8" and label.shape == rgb.shape[:2]
    assert np.array_equal(label_from_result(result), label), "RLE masks decode to the label image"
    for inst, (_iid, mask) in zip(result.instances, masks_from_result(result)):
        assert mask.shape == rgb.shape[:2] and inst.area == int(mask.sum())
        assert 0.0 <= inst.stability_score <= 1.0
        if inst.area:
            ys, xs = np.nonzero(mask)
            assert (inst.bbox.x_offset, inst.bbox.y_offset, inst.bbox.width, inst.bbox.height) == (
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            )
    stages = [s.stage for s in result.timings]
    for stage in ("remote", "edge_encoder", "decoder", "total", "postprocess"):
        assert stage in stages


def test_prompts_topic_results_carry_input_headers(stack):
    photos = small_photos()
    objects = [([(40.0, 30.0, 1)], None), ([(20.0, 60.0, 1), (5.0, 5.0, 0)], (10.0, 40.0, 70.0, 90.0))]
    _hold_prompts(stack, _prompts_msg(objects), 2)  # held before the first image is published
    for k, (rgb, enc) in enumerate(zip(photos[:2], ("rgb8", "bgr8"))):
        msg = image_msg(rgb, 1_000 + k, 123_456_789 + k, frame_id=f"cam_{k}", encoding=enc)
        stack["image_pub"].publish(msg)
        result, label = _wait_result(stack, msg.header)
        _check_result(result, label, rgb, msg.header, n_instances=2)
        # someone (this test) subscribes to ~/overlay, so the node draws it, same header
        stack["node"].wait_until(lambda msg=msg: _by_stamp(stack["overlays"], msg.header), 10, "overlay")
        ov = _by_stamp(stack["overlays"], msg.header)[0]
        assert ov.encoding == "rgb8" and (ov.height, ov.width) == rgb.shape[:2]


def test_segment_service_with_prompts_and_automatic(stack):
    from ped_sam_msgs.srv import SegmentImage
    from ped_sam_ros.ros.convert import label_from_result

    t = stack["node"]
    client = t.node.create_client(SegmentImage, f"{PREFIX}/segment")
    rgb = small_photos()[2]
    img = image_msg(rgb, 2_000, 1, frame_id="service_cam", encoding="bgr8")
    req = SegmentImage.Request(
        image=img, use_latest_frame=False, prompts=_prompts_msg([([(50.0, 30.0, 1)], None)]).prompts, automatic=False
    )
    resp = t.call(client, req, RESULT_TIMEOUT_S)
    assert resp.success, resp.message
    assert resp.result.header == img.header
    assert [i.id for i in resp.result.instances] == [1]
    assert (resp.result.image_height, resp.result.image_width) == rgb.shape[:2]
    label_from_result(resp.result)  # the RLE is valid for the image size

    # Automatic mode (SAM's mask generator over the distributed embedding) on the latest topic frame:
    # this test's own frame, once the node has processed it.
    latest_rgb = small_photos()[1]
    latest = image_msg(latest_rgb, 2_100, 7, frame_id="latest_cam")
    stack["image_pub"].publish(latest)
    _wait_result(stack, latest.header)
    resp = t.call(client, SegmentImage.Request(use_latest_frame=True, automatic=True), RESULT_TIMEOUT_S)
    assert resp.success, resp.message
    assert resp.result.header == latest.header, "the latest frame received on ~/image"
    assert (resp.result.image_height, resp.result.image_width) == latest_rgb.shape[:2]
    assert all(i.mask.height == resp.result.image_height for i in resp.result.instances)

    resp = t.call(client, SegmentImage.Request(image=img, automatic=False), 30)
    assert not resp.success and "no prompts" in resp.message
    assert stack["edge"].alive


def test_unsupported_encoding_is_refused_and_node_keeps_answering(stack):
    import cv2
    from sensor_msgs.msg import CompressedImage

    bad = image_msg(np.zeros((8, 8), np.float32), 3_000, 0, frame_id="depth", encoding="32FC1")
    stack["image_pub"].publish(bad)
    time.sleep(1.5)
    assert stack["edge"].alive
    assert not _by_stamp(stack["masks"], bad.header)
    assert "32FC1" in stack["edge"].log_text(100_000) and "refusing image" in stack["edge"].log_text(100_000)

    # Still answering: a JPEG on ~/image/compressed (use_compressed:=true).
    rgb = small_photos()[3]
    ok, jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1])
    assert ok
    msg = CompressedImage(
        header=image_msg(rgb, 3_001, 0, frame_id="jpeg_cam").header, format="jpeg", data=jpeg.tobytes()
    )
    stack["compressed_pub"].publish(msg)
    result, _ = _wait_result(stack, msg.header)
    assert (result.image_height, result.image_width) == rgb.shape[:2]
    assert read_pipeline(stack["diags"], PREFIX).refused_images >= 1


def _set_param(stack, name, value):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    t = stack["node"]
    if isinstance(value, bool):
        pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, float):
        pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    elif isinstance(value, int):
        pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    client = t.node.create_client(SetParameters, f"{PREFIX}/set_parameters")
    try:
        resp = t.call(client, SetParameters.Request(parameters=[Parameter(name=name, value=pv)]), 30)
    finally:
        t.node.destroy_client(client)
    return resp.results[0]


def test_runtime_parameters_are_validated(stack):
    from ped_sam_msgs.srv import SegmentImage

    # Refused by rclpy's descriptors (range, read_only) before the node's callback runs.
    r = _set_param(stack, "deadline", -1.0)
    assert not r.successful and "out of range" in r.reason, r.reason
    r = _set_param(stack, "model", "vit_h")
    assert not r.successful and "read-only" in r.reason.lower(), r.reason

    # Refused by the node's own callback (no descriptor can say it): max_prompts below the prompts held.
    three = [([(10.0 + 20 * k, 30.0, 1)], None) for k in range(3)]
    _hold_prompts(stack, _prompts_msg(three), 3)
    r = _set_param(stack, "max_prompts", 2)
    assert not r.successful, "the node holds 3 prompts"
    assert "prompts held now would be refused" in r.reason and "max_prompts=2" in r.reason, r.reason
    assert _get_param(stack, "max_prompts") == 64, "a refused change leaves the value"

    # Accepted changes are stored and take effect.
    r = _set_param(stack, "max_prompts", 3)
    assert r.successful, r.reason
    assert _get_param(stack, "max_prompts") == 3
    t = stack["node"]
    client = t.node.create_client(SegmentImage, f"{PREFIX}/segment")
    img = image_msg(small_photos()[0], 4_000, 0, frame_id="param_cam")
    four = _prompts_msg([([(10.0 + 10 * k, 20.0, 1)], None) for k in range(4)]).prompts
    resp = t.call(client, SegmentImage.Request(image=img, prompts=four), 30)
    assert not resp.success and "4 prompts exceed max_prompts=3" in resp.message, resp.message
    try:
        for name, value in (("amg.pred_iou_thresh", 0.5), ("deadline", 20.0), ("overlay_alpha", 0.8)):
            r = _set_param(stack, name, value)
            assert r.successful, r.reason
            assert _get_param(stack, name) == value
    finally:
        assert _set_param(stack, "max_prompts", 64).successful


def test_prompts_are_validated_in_automatic_mode_and_switch_the_parameter(stack):
    from ped_sam_msgs.msg import BoxPrompt, Prompt, Prompts

    _hold_prompts(stack, _prompts_msg([([(30.0, 30.0, 1)], None)]), 1)
    assert _get_param(stack, "automatic") is False
    # automatic=true with an invalid prompt (a box with x_max < x_min): refused as a whole, so no invalid
    # prompt is held for when automatic is switched off again
    bad = Prompts(
        automatic=True, prompts=[Prompt(has_box=True, box=BoxPrompt(x_min=50.0, y_min=5.0, x_max=10.0, y_max=40.0))]
    )
    stack["prompts_pub"].publish(bad)
    # the next (valid) message on the same reliable topic arrives after it
    v = _hold_prompts(
        stack, _prompts_msg([([(5.0, 5.0, 1)], None), ([(9.0, 9.0, 1)], None)], automatic=True), 2, automatic=True
    )
    assert v.automatic is True
    log = stack["edge"].log_text(200_000)
    assert "Prompts message refused, keeping the previous prompts and mode: prompt 1:" in log, log[-3000:]
    # the Prompts message's mode is set as the node's automatic parameter, both ways
    _eventually(lambda: _get_param(stack, "automatic") is True, 30, "the automatic parameter to become true")
    _hold_prompts(stack, _prompts_msg([([(30.0, 30.0, 1)], None)]), 1, automatic=False)
    _eventually(lambda: _get_param(stack, "automatic") is False, 30, "the automatic parameter to become false")


def test_diagnostics_name_each_remote(stack):
    from diagnostic_msgs.msg import DiagnosticStatus

    t = stack["node"]
    names = {f"{PREFIX}: remote left", f"{PREFIX}: remote right", f"{PREFIX}: pipeline"}
    t.wait_until(lambda: stack["diags"] and names <= {s.name for s in stack["diags"][-1].status}, 10, "diagnostics")
    last = {s.name: s for s in stack["diags"][-1].status}
    arrays = stack["diags"][-1:]
    for k, srv in enumerate(stack["servers"]):
        st = last[f"{PREFIX}: remote {srv.name}"]
        assert st.level == DiagnosticStatus.OK, st.message
        remote = read_remote(arrays, PREFIX, srv.name)
        assert remote.name == srv.name and remote.endpoint == srv.endpoint and remote.connected
        assert remote.last_latency_ms > 0 and remote.frames >= 1 and remote.replies >= remote.frames
        assert remote.share > 0 and remote.tiles == (k,), "1x2 grid: one tile each, in server order"
    pipeline = read_pipeline(arrays, PREFIX)
    assert pipeline.stages["remote"].mean_ms > 0 and pipeline.frames_out >= 1
    assert pipeline.bytes_up > 0 and pipeline.model == TEST_MODEL and pipeline.grid == "1x2"
