"""The edge node under abuse: a 40-call ~/segment burst, decompression bombs on
~/image/compressed, a 10,000-message fuzz of its inputs, and failed frames published with
their status. The real EdgeNode in this process with the executor ``main()`` uses, an
in-process transport whose servers the test can fail; DDS on this machine only, a domain of
our own; everything bounded."""

from __future__ import annotations

import struct
import threading
import time
import zlib

import numpy as np
import pytest

from helpers.ros import edge_node_in_process, image_msg, in_process_transport, small_photos

pytestmark = pytest.mark.timeout(600)

PREFIX = "/faults/edge_node"
WAIT_S = 120.0


class _Switch:
    """In-process servers that fail while ``down`` is set (``before_encode`` of the transport)."""

    def __init__(self):
        self.down = threading.Event()

    def before_encode(self):
        from ped_sam_ros.core.transport import RemoteEncodeError

        if self.down.is_set():
            raise RemoteEncodeError("right (in-process): connection lost", ["right"])


@pytest.fixture(scope="module")
def stack():
    switch = _Switch()
    factory = in_process_transport(switch.before_encode)
    params = dict(diagnostics_period=0.5, use_compressed=True)
    with edge_node_in_process(factory, "/faults", "faults_client", **params) as (node, client):
        try:
            yield node, switch, client
        finally:
            switch.down.clear()


def _prompts_msg(points=((20.0, 20.0, 1),), automatic=False):
    from ped_sam_msgs.msg import PointPrompt, Prompt, Prompts

    return Prompts(
        prompts=[Prompt(points=[PointPrompt(x=x, y=y, label=lab) for x, y, lab in points])], automatic=automatic
    )


def _hold_one_prompt(node, t):
    node._on_prompts(_prompts_msg())
    t.wait_until(lambda: len(node.runtime.prompts) == 1, WAIT_S, "the prompt to be held")


def _png_bomb(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096, 9)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_bomb(w: int, h: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + sof + b"\xff\xda" + b"\0" * 580 + b"\xff\xd9"


def test_failed_frames_are_published_with_status_reason_and_header(stack):
    from sensor_msgs.msg import Image

    from ped_sam_msgs.msg import SegmentationResult

    node, switch, t = stack
    _hold_one_prompt(node, t)
    results = t.collect(SegmentationResult, f"{PREFIX}/masks")
    pub = t.node.create_publisher(Image, f"{PREFIX}/image", 5)
    t.wait_for_subscribers(pub)
    switch.down.set()
    rgb = small_photos()[0]
    pub.publish(image_msg(rgb, 9_001, 5, frame_id="cam_fail"))
    t.wait_until(lambda: any(r.header.stamp.sec == 9_001 for r in results), WAIT_S, "the failed frame's result")
    r = next(r for r in results if r.header.stamp.sec == 9_001)
    assert r.status == SegmentationResult.STATUS_FAILED and r.instances == []
    assert "right" in r.reason and "connection lost" in r.reason
    assert (r.header.frame_id, r.header.stamp.nanosec) == ("cam_fail", 5)
    assert (r.image_height, r.image_width) == rgb.shape[:2]
    switch.down.clear()
    pub.publish(image_msg(rgb, 9_002, 0, frame_id="cam_ok"))
    t.wait_until(lambda: any(r.header.stamp.sec == 9_002 for r in results), WAIT_S, "a good frame's result")
    r = next(r for r in results if r.header.stamp.sec == 9_002)
    assert r.status == SegmentationResult.STATUS_OK and r.reason == "" and len(r.instances) == 1


def test_forty_concurrent_service_calls_are_all_answered(stack):
    from rclpy.qos import QoSProfile

    from ped_sam_msgs.msg import PointPrompt, Prompt
    from ped_sam_msgs.srv import SegmentImage

    node, _switch, t = stack
    rgb = small_photos(scale=8)[1]
    prompts = [Prompt(points=[PointPrompt(x=10.0, y=10.0, label=1)])]
    # one client with ROS's default service QoS (depth 10), one with a deep queue
    clients = [
        t.node.create_client(SegmentImage, f"{PREFIX}/segment"),
        t.node.create_client(SegmentImage, f"{PREFIX}/segment", qos_profile=QoSProfile(depth=100)),
    ]
    for c in clients:
        assert c.wait_for_service(timeout_sec=30)
    futures = [
        clients[k % 2].call_async(SegmentImage.Request(image=image_msg(rgb, 8_000 + k, 0), prompts=prompts))
        for k in range(40)
    ]
    try:
        t.wait_until(lambda: all(f.done() for f in futures), WAIT_S, "an answer to each of the 40 calls")
    except TimeoutError:
        raise AssertionError(f"{sum(not f.done() for f in futures)} of 40 calls unanswered") from None
    answers = [f.result() for f in futures]
    ok = [a for a in answers if a.success]
    busy = [a for a in answers if not a.success]
    assert all(a.message.startswith("busy") for a in busy), {a.message for a in busy}
    assert len(ok) >= node.max_service_calls and busy, (len(ok), len(busy))
    assert {a.result.header.stamp.sec for a in ok} <= {8_000 + k for k in range(40)}


def test_bombs_on_the_compressed_topic_are_refused_at_once(stack):
    from sensor_msgs.msg import CompressedImage

    node, _switch, t = stack
    bombs = [_jpeg_bomb(16384, 16384), _png_bomb(16384, 16384), _png_bomb(3000, 1), _png_bomb(1, 3000)]
    assert max(len(b) for b in bombs) < 1000
    refused = node._refused_images
    for b in bombs:
        t0 = time.perf_counter()
        node._on_compressed(CompressedImage(format="png", data=b))
        assert time.perf_counter() - t0 < 0.05
    assert node._refused_images == refused + len(bombs)
    # and through the topic: refused too, and a valid frame afterwards is processed
    import cv2

    from ped_sam_msgs.msg import SegmentationResult

    _hold_one_prompt(node, t)
    results = t.collect(SegmentationResult, f"{PREFIX}/masks")
    pub = t.node.create_publisher(CompressedImage, f"{PREFIX}/image/compressed", 5)
    t.wait_for_subscribers(pub)
    for b in bombs:
        pub.publish(CompressedImage(format="jpeg", data=b))
    t.wait_until(lambda: node._refused_images >= refused + 2 * len(bombs), WAIT_S, "the bombs refused")
    ok, jpg = cv2.imencode(".jpg", small_photos()[2][:, :, ::-1])
    msg = CompressedImage(format="jpeg", data=jpg.tobytes())
    msg.header.stamp.sec = 9_100
    pub.publish(msg)
    t.wait_until(lambda: any(r.header.stamp.sec == 9_100 for r in results), WAIT_S, "the valid frame's result")


def _random_image(rng):
    from sensor_msgs.msg import Image

    h, w = int(rng.integers(0, 40)), int(rng.integers(0, 40))
    if rng.random() < 0.05:
        h, w = int(rng.choice([1, 3000, 2**31 - 1])), int(rng.choice([1, 3000, 2**31 - 1]))
    enc = str(rng.choice(["rgb8", "bgr8", "mono8", "rgba8", "mono16", "bayer_rggb8", "yuv422", "32FC1", "", "x" * 300]))
    step = int(rng.integers(0, 200)) if rng.random() < 0.3 else w * 3
    data = rng.integers(0, 255, int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
    return Image(height=h, width=w, encoding=enc, step=step, is_bigendian=int(rng.integers(0, 2)), data=data)


def _random_compressed(rng):
    from sensor_msgs.msg import CompressedImage

    kind = rng.integers(0, 5)
    if kind == 0:
        data = rng.integers(0, 255, int(rng.integers(0, 600)), dtype=np.uint8).tobytes()
    elif kind == 1:
        data = _png_bomb(int(rng.integers(0, 2**31)), int(rng.integers(0, 2**31)))
    elif kind == 2:
        data = _jpeg_bomb(int(rng.integers(0, 65536)), int(rng.integers(0, 65536)))
    elif kind == 3:  # a valid image cut short or with flipped bytes
        data = bytearray(_VALID_JPEG)
        for _ in range(int(rng.integers(1, 20))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        data = bytes(data[: int(rng.integers(2, len(data) + 1))])
    else:
        data = b"RIFF" + rng.integers(0, 255, 40, dtype=np.uint8).tobytes()
    return CompressedImage(format=str(rng.choice(["jpeg", "png", "", "webp"])), data=data)


def _random_prompts(rng):
    vals = [0.0, 1.0, -1.0, 1e30, float("nan"), float("inf"), 20.0, 5000.0]
    n_obj = int(rng.integers(0, 4)) if rng.random() < 0.95 else int(rng.integers(60, 80))
    objs = []
    for _ in range(n_obj):
        n_pts = int(rng.integers(0, 5)) if rng.random() < 0.9 else int(rng.integers(60, 3000))
        objs.append(
            [(float(rng.choice(vals)), float(rng.choice(vals)), int(rng.integers(-1, 3))) for _ in range(n_pts)]
        )
    from ped_sam_msgs.msg import BoxPrompt, PointPrompt, Prompt, Prompts

    msg = Prompts(
        prompts=[
            Prompt(points=[PointPrompt(x=x, y=y, label=max(0, min(255, lab)) if lab >= 0 else 7) for x, y, lab in o])
            for o in objs
        ],
        automatic=False,
    )
    for p in msg.prompts:
        if rng.random() < 0.3:
            p.has_box = True
            p.box = BoxPrompt(
                x_min=float(rng.choice(vals)),
                y_min=float(rng.choice(vals)),
                x_max=float(rng.choice(vals)),
                y_max=float(rng.choice(vals)),
            )
    return msg


_VALID_JPEG = b""


def test_ten_thousand_fuzzed_inputs_crash_nothing_and_valid_frames_still_work(stack):
    import cv2
    from sensor_msgs.msg import Image

    from ped_sam_msgs.msg import SegmentationResult

    global _VALID_JPEG
    node, _switch, t = stack
    _VALID_JPEG = cv2.imencode(".jpg", small_photos(scale=8)[0])[1].tobytes()
    rng = np.random.default_rng(13)
    makers = [
        (_random_image, node._on_image),
        (_random_compressed, node._on_compressed),
        (_random_prompts, node._on_prompts),
    ]
    crashes = []
    t0 = time.monotonic()
    for k in range(10_000):
        make, callback = makers[k % 3]
        msg = make(rng)
        try:
            callback(msg)
        except Exception as e:  # noqa: BLE001 - what the test counts
            crashes.append(f"{callback.__name__}: {type(e).__name__}: {e}")
    elapsed = time.monotonic() - t0
    assert not crashes, crashes[:5]
    print(f"fuzz: 10000 messages in {elapsed:.1f} s, {node._refused_images} images refused so far")
    assert node.runtime.state == "running"
    # valid inputs after the fuzz: prompts held, a frame processed and published
    _hold_one_prompt(node, t)
    results = t.collect(SegmentationResult, f"{PREFIX}/masks")
    pub = t.node.create_publisher(Image, f"{PREFIX}/image", 5)
    t.wait_for_subscribers(pub)
    pub.publish(image_msg(small_photos()[3], 9_200, 0))
    t.wait_until(lambda: any(r.header.stamp.sec == 9_200 for r in results), WAIT_S, "a result after the fuzz")
    r = next(r for r in results if r.header.stamp.sec == 9_200)
    assert r.status == SegmentationResult.STATUS_OK and len(r.instances) == 1
    counts = node.runtime.snapshot().counts
    assert counts.callback_errors == 0
