"""The edge node with its privacy policy on, end to end: the real node (a process of its own) with
``privacy.detector:=default`` (MTCNN from facenet-pytorch, Haar where it is missing) and faces
``local`` or ``blur``, two remote servers in this test process that log every tile they receive
(real ``EncoderServer``s over ZeroMQ on loopback, random weights), and a camera frame with a real
face (the astronaut's head from scikit-image, pasted at a known place onto the rocket photo).

For the frame with the face: ``tile_decisions`` name the tile holding it, with the policy's action
and a reason; no server received that face whole (``local``: nobody received its tile; ``blur``:
its tile arrived with the face altered and nothing else, and the servers' own face detector finds
no face in anything they received); ``~/overlay`` carries the detection (the policy's magenta box
around the face); ``/diagnostics`` counts it.  For the same background without the face every tile
is ``send``, the servers receive it all unaltered (so the "seen whole" check can fail) and the
overlay has no detection box.  DDS on this machine only, a domain of our own; bounded in time.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from helpers.net import InProcessServer
from helpers.ros import TEST_MODEL, TEST_SEED, EdgeProcess, TestNode, image_msg, new_domain
from ped_sam_ros.bench.detectors import matches
from ped_sam_ros.ros.diagnostics import read_pipeline

pytestmark = pytest.mark.timeout(420)

NS = "/privtest"
PREFIX = f"{NS}/edge_node"
RESULT_TIMEOUT_S = 120.0
FRAME_HW = (480, 640)
HEAD_AT = (40, 40)  # (y, x) of the pasted head in the camera frame
HEAD_SCALE = 0.8
MAGENTA = (255, 0, 255)  # the overlay's colour for the policy's detections
TILE_PX = 448  # the 2x2 grid cuts SAM's 64x64 tokens at 28 tokens = 448 px of the resized frame


def _frames():
    """(frame with the face, the same frame without it, face box in camera-frame pixels)."""
    import cv2
    from skimage import data

    from ped_sam_ros.bench.detectors import backgrounds

    bg = backgrounds(FRAME_HW)[2]  # the rocket: no face, and no false detection by MTCNN or Haar
    head = data.astronaut()[20:220, 130:320]  # head and shoulders; the face is x 48..142, y 40..158
    patch = cv2.resize(head, (round(190 * HEAD_SCALE), round(200 * HEAD_SCALE)), interpolation=cv2.INTER_AREA)
    y, x = HEAD_AT
    face = bg.copy()
    face[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    k = HEAD_SCALE
    box = (x + 48 * k, y + 40 * k, x + 142 * k, y + 158 * k)
    return face, bg, box


class SpyStage:
    """A real remote stage that logs what it receives: (tile index, tile, a copy of the pixels)."""

    def __init__(self, stage):
        self.inner, self.geometry = stage, stage.geometry
        self._lock = threading.Lock()
        self.received = []

    def encode_tile(self, pixels, tile, mode):
        with self._lock:
            self.received.append((tile.index, tile, np.array(pixels, copy=True)))
        return self.inner.encode_tile(pixels, tile, mode)

    def take(self):
        with self._lock:
            out, self.received = self.received, []
        return out


@pytest.fixture(scope="module", params=["local", "blur"])
def stack(request, tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from ped_sam_msgs.msg import SegmentationResult
    from ped_sam_ros.core.model import RemoteStage

    action = request.param
    work = tmp_path_factory.mktemp(f"ros_privacy_{action}")
    dom = new_domain()
    spies = [SpyStage(RemoteStage(TEST_MODEL, seed=TEST_SEED)) for _ in range(2)]
    servers = [InProcessServer(TEST_MODEL, s) for s in spies]
    extra = [
        "privacy.detector:=default",
        f"privacy.face_action:={action}",
        "pixel_codec:=raw",  # lossless: what a server received compares exactly with the frame
        "automatic:=true",  # segment everything (the whole frame is the region of interest)
        "amg.points_per_side:=2",
        "amg.pred_iou_thresh:=0.0",
        "amg.stability_score_thresh:=0.0",
    ]
    edge = EdgeProcess(
        work / "edge",
        dom,
        [f"spy{i}={s.endpoint}" for i, s in enumerate(servers)],
        "2x2",
        namespace=NS,
        extra_params=extra,
    )
    node = None
    with servers[0], servers[1]:
        try:
            edge.start()
            node = TestNode(dom, f"privacy_test_{action}")
            edge.wait_ready(node)
            s = {
                "action": action,
                "edge": edge,
                "node": node,
                "spies": spies,
                "masks": node.collect(SegmentationResult, f"{PREFIX}/masks"),
                "overlays": node.collect(Image, f"{PREFIX}/overlay"),
                "diags": node.collect(DiagnosticArray, "/diagnostics"),
                "image_pub": node.node.create_publisher(Image, f"{PREFIX}/image", 5),
            }
            node.wait_for_subscribers(s["image_pub"])
            yield s
        finally:
            if node is not None:
                node.close()
            edge.stop()


def _by_stamp(msgs, header):
    from ped_sam_ros.ros.convert import stamp_key

    return [m for m in msgs if stamp_key(m.header) == stamp_key(header)]


def _segment(stack, rgb, sec):
    """Publish one frame and wait for its result and overlay: (result, overlay RGB, tiles received
    by the servers for this frame as (server, tile index, tile, pixels))."""
    for spy in stack["spies"]:
        spy.take()
    msg = image_msg(rgb, sec, 0)
    stack["image_pub"].publish(msg)
    t = stack["node"]
    try:
        t.wait_until(
            lambda: _by_stamp(stack["masks"], msg.header) and _by_stamp(stack["overlays"], msg.header),
            RESULT_TIMEOUT_S,
            f"the result and overlay of frame {sec}",
        )
    except TimeoutError:
        raise AssertionError(f"no result/overlay for frame {sec}:\n{stack['edge'].log_text()}") from None
    result = _by_stamp(stack["masks"], msg.header)[0]
    ov = _by_stamp(stack["overlays"], msg.header)[0]
    overlay = np.frombuffer(bytes(ov.data), np.uint8).reshape(ov.height, ov.width, 3)
    received = [(k, i, tile, px) for k, spy in enumerate(stack["spies"]) for i, tile, px in spy.take()]
    return result, overlay, received


def _resized(rgb):
    """The frame as the edge cuts it into tiles (SAM's resize to longest side 1024)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide(1024).apply_image(rgb)


def _seen_whole(received, resized, box, tol=2):
    """The servers (indexes) that received all of ``box`` (resized-frame pixels) unaltered."""
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    out = set()
    for server, _, tile, px in received:
        ty0, _, tx0, _ = tile.pixel_box
        if not (ty0 <= y0 and tx0 <= x0 and y1 <= ty0 + px.shape[0] and x1 <= tx0 + px.shape[1]):
            continue
        part = px[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0].astype(int)
        if np.abs(part - resized[y0:y1, x0:x1].astype(int)).max() <= tol:
            out.add(server)
    return out


@pytest.fixture(scope="module")
def face_run(stack):
    face, _, box = _frames()
    return (*_segment(stack, face, 101), face, box)


@pytest.fixture(scope="module")
def blank_run(stack, face_run):  # after the face frame, so both fixtures' frames are in one order
    _, blank, box = _frames()
    return (*_segment(stack, blank, 102), blank, box)


def test_tile_decisions_name_the_face_tile_with_the_action_and_a_reason(stack, face_run):
    result, _, _, face, box = face_run
    scale = 1024 / FRAME_HW[1]
    assert (result.grid_rows, result.grid_cols) == (2, 2)
    by_tile = {d.tile: d for d in result.tile_decisions}
    assert sorted(by_tile) == [0, 1, 2, 3]
    # the face (and the policy's 15 % margin around it) lies inside tile 0 (rows and cols 0..28 tokens)
    assert box[2] * scale * 1.15 < TILE_PX and box[3] * scale * 1.15 < TILE_PX
    d = by_tile[0]
    assert (d.row0, d.row1, d.col0, d.col1) == (0, 28, 0, 28)
    assert list(d.classes) == ["face"]
    assert d.server == "spy0"
    if stack["action"] == "local":
        assert d.action == "local" and "face" in d.reason and "computed on the edge" in d.reason
    else:
        assert d.action == "obfuscate" and "face" in d.reason and "blur before sending" in d.reason
    # the reason gives the face's place (resized-frame pixels): it must be this face's
    x = [float(v) for v in d.reason.split(" at x ")[1].split(",")[0].split("-")]
    y = [float(v) for v in d.reason.split(", y ")[1].split(":")[0].split("-")]
    assert matches((x[0] / scale, y[0] / scale, x[1] / scale, y[1] / scale), box), d.reason
    for t in (1, 2, 3):
        assert by_tile[t].action == "send" and list(by_tile[t].classes) == [], by_tile[t]


def test_no_server_received_the_face_whole(stack, face_run):
    from ped_sam_ros.sensitive.detectors import make_detector

    _, _, received, face, box = face_run
    resized = _resized(face)
    scale = resized.shape[1] / FRAME_HW[1]
    rbox = tuple(v * scale for v in box)
    tiles = sorted(i for _, i, _, _ in received)
    assert _seen_whole(received, resized, rbox) == set()
    if stack["action"] == "local":
        assert tiles == [1, 2, 3]  # the face's tile never left the edge
        return
    assert tiles == [0, 1, 2, 3]
    (_, _, tile, px) = next(r for r in received if r[1] == 0)
    y0, y1, x0, x1 = tile.content_box(resized.shape[:2])
    sent = px.astype(int)
    orig = resized[y0:y1, x0:x1].astype(int)
    fx0, fy0, fx1, fy1 = (int(v) for v in rbox)
    # the face is altered (a blur, not a few changed pixels) ...
    assert np.abs(sent[fy0:fy1, fx0:fx1] - orig[fy0:fy1, fx0:fx1]).mean() > 8.0
    # ... and nothing else: the tile outside the face box and its 15 % margin (+2 px) arrived unaltered
    mx, my = int(0.15 * (fx1 - fx0)) + 2, int(0.15 * (fy1 - fy0)) + 2
    outside = np.ones(sent.shape[:2], bool)
    outside[max(0, fy0 - my) : fy1 + my, max(0, fx0 - mx) : fx1 + mx] = False
    assert np.array_equal(sent[outside], orig[outside])
    # the servers' own face detector (the strongest here) finds no face in anything they received
    attacker = make_detector("default")
    assert not [d for _, _, _, p in received for d in attacker.detect(np.ascontiguousarray(p))]


def test_the_overlay_carries_the_detection(face_run, blank_run):
    _, overlay, _, face, box = face_run
    assert overlay.shape == face.shape
    magenta = np.all(overlay == MAGENTA, axis=2)
    x0, y0, x1, y1 = box
    near = np.zeros_like(magenta)
    near[max(0, int(y0) - 20) : int(y1) + 20, max(0, int(x0) - 20) : int(x1) + 20] = True
    # the box's outline: at least its perimeter's worth of magenta pixels, all of them around the face
    assert magenta[near].sum() >= (x1 - x0 + y1 - y0) and not magenta[~near].any()
    assert not np.all(blank_run[1] == MAGENTA, axis=2).any()  # no face, no box


def test_diagnostics_count_the_policys_work(stack, face_run, blank_run):
    t = stack["node"]
    diags = stack["diags"]
    local = stack["action"] == "local"

    def counted():
        v = read_pipeline(diags, PREFIX)
        return v is not None and v.privacy_frames >= 2

    try:
        t.wait_until(counted, 30.0, "diagnostics counting both frames")
    except TimeoutError:
        raise AssertionError(f"diagnostics: {read_pipeline(diags, PREFIX)}") from None
    v = read_pipeline(diags, PREFIX)
    assert v.privacy_frames == 2 and v.sensitive_objects == 1
    assert (v.tiles_local, v.tiles_obfuscated, v.tiles_dropped) == ((1, 0, 0) if local else (0, 1, 0))


def test_a_frame_without_faces_is_sent_whole(stack, blank_run):
    result, overlay, received, blank, box = blank_run
    assert [d.action for d in sorted(result.tile_decisions, key=lambda d: d.tile)] == ["send"] * 4
    assert all(list(d.classes) == [] for d in result.tile_decisions)
    assert sorted(i for _, i, _, _ in received) == [0, 1, 2, 3]
    resized = _resized(blank)
    scale = resized.shape[1] / FRAME_HW[1]
    # where the face was, a server now receives the frame unaltered: the check above can fail
    assert _seen_whole(received, resized, tuple(v * scale for v in box)) == {0}
