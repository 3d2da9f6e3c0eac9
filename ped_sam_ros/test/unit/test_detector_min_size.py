"""The edge's face detection is sized for the smallest face that matters: the privacy hook tells
the detector that size (40 px of the camera frame, in pixels of the frame resized for SAM), MTCNN
downscales for it and still finds the faces above it (boxes in the frame's pixels), its
channels-last networks give the default format's outputs, it runs with one torch thread of its own
without changing the caller's, and detectors that do not take the size are called as before."""

import numpy as np
import pytest

from ped_sam_ros.bench.detectors import matches
from ped_sam_ros.edge.privacy import DEFAULT_MIN_FACE_PX, PrivacyHook
from ped_sam_ros.sensitive.detectors import (
    CombinedDetector,
    DetectorUnavailable,
    MtcnnFaceDetector,
    accepts_min_size,
)
from ped_sam_ros.sensitive.types import Detection

ASTRONAUT_FACE = (178, 60, 272, 178)  # hand-marked, pixels of the 512x512 photo


class _Spy:
    """Records the ``min_size`` it is given; finds one fixed box (pixels of its input)."""

    name, classes = "spy", ("face",)

    def __init__(self):
        self.calls = []

    def detect(self, rgb, min_size=None):
        self.calls.append((rgb.shape[:2], min_size))
        return [Detection("face", (10.0, 20.0, 74.0, 84.0), 0.99, self.name)]


class _Plain:
    """A detector without ``min_size`` (as third-party ones may be)."""

    name, classes = "plain", ("face",)

    def __init__(self):
        self.calls = 0

    def detect(self, rgb):
        self.calls += 1
        return []


@pytest.fixture(scope="module")
def mtcnn():
    try:
        return MtcnnFaceDetector()
    except DetectorUnavailable as e:
        pytest.skip(str(e))


def test_the_hook_tells_the_detector_the_smallest_face_in_the_resized_frames_pixels():
    spy = _Spy()
    hook = PrivacyHook(spy)
    resized = np.zeros((768, 1024, 3), np.uint8)  # a 480x640 camera frame after SAM's resize (x1.6)
    dets = hook.detect(resized, (480, 640))
    assert spy.calls == [((768, 1024), pytest.approx(DEFAULT_MIN_FACE_PX * 1.6))]
    assert dets[0].box == pytest.approx((10 / 1.6, 20 / 1.6, 74 / 1.6, 84 / 1.6))  # camera-frame pixels
    PrivacyHook(spy, min_face_px=100).detect(np.zeros((576, 1024, 3), np.uint8), (1080, 1920))
    assert spy.calls[-1][1] == pytest.approx(100 * 1024 / 1920)


def test_detectors_without_min_size_are_called_as_before_also_inside_a_combination():
    plain, spy = _Plain(), _Spy()
    assert not accepts_min_size(plain) and accepts_min_size(spy)
    assert PrivacyHook(plain).detect(np.zeros((768, 1024, 3), np.uint8), (480, 640)) == []
    assert plain.calls == 1
    both = CombinedDetector([plain, spy])
    assert accepts_min_size(both)
    PrivacyHook(both).detect(np.zeros((768, 1024, 3), np.uint8), (480, 640))
    assert plain.calls == 2 and spy.calls[-1][1] == pytest.approx(64.0)


def test_mtcnn_downscales_for_the_smallest_face_that_matters(mtcnn):
    scale, smallest = mtcnn.plan((768, 1024), min_size=64.0)
    assert smallest == pytest.approx(mtcnn.work_size)  # that face is work_size px in the copy MTCNN sees
    assert scale == pytest.approx(mtcnn.work_size / (mtcnn.margin * 64.0))
    assert mtcnn.plan((768, 1024), min_size=10.0) == (1.0, 12.0)  # never upscaled, never below P-Net's 12 px
    assert mtcnn.plan((768, 1024)) == (pytest.approx(mtcnn.work_size / 32.0), pytest.approx(mtcnn.work_size))


def test_mtcnn_finds_a_face_above_min_size_in_frame_pixels_and_skips_it_below(mtcnn, astronaut):
    import cv2

    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_LINEAR)  # the face is ~190x236 px
    face = tuple(2 * v for v in ASTRONAUT_FACE)
    found = mtcnn.detect(big, min_size=64.0)
    assert any(matches(d.box, face) for d in found), found
    assert all(d.cls == "face" and d.source == "mtcnn" for d in found)
    # told that only faces of 800 px and more matter, it does not search at this face's size at all
    assert not any(matches(d.box, face) for d in mtcnn.detect(big, min_size=800.0))
    # read-only frames (e.g. a view of a ROS message's buffer) are accepted
    ro = big.copy()
    ro.flags.writeable = False
    assert any(matches(d.box, face) for d in mtcnn.detect(ro, min_size=64.0))


def test_mtcnn_channels_last_networks_give_the_default_formats_outputs(mtcnn):
    import copy

    import torch

    for net, shape in ((mtcnn._mtcnn.pnet, (1, 3, 60, 80)), (mtcnn._mtcnn.rnet, (7, 3, 24, 24))):
        plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for a, b in zip(net(x.contiguous(memory_format=torch.channels_last)), plain(x)):
                assert torch.allclose(a, b, atol=1e-4)


def test_mtcnn_runs_on_its_own_thread_with_one_torch_thread_and_leaves_the_callers(mtcnn, astronaut):
    import threading

    import torch

    restore = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller has more threads than the detector (scripts/test.sh sets 1)
    try:
        before = torch.get_num_threads()
        seen = []
        det = MtcnnFaceDetector(num_threads=1)
        assert det._runner.run(torch.get_num_threads) == 1
        assert torch.get_num_threads() == before  # the caller's (the edge stage's) count is unchanged
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # nor a new thread's
        t.start()
        t.join()
        assert seen == [before]
        found = det.detect(astronaut, min_size=64.0)
        assert any(matches(d.box, ASTRONAUT_FACE) for d in found)
        inline = MtcnnFaceDetector(num_threads=0)  # the caller's thread, as the caller has it
        assert inline._runner is None
        again = inline.detect(astronaut, min_size=64.0)
        assert len(again) == len(found)
        assert np.allclose([d.box for d in again], [d.box for d in found], atol=1e-3)
    finally:
        torch.set_num_threads(restore)
