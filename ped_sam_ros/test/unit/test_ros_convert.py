"""Message conversions of the edge node (rclpy message classes, no ROS graph)."""

from __future__ import annotations

import numpy as np
import pytest

from builtin_interfaces.msg import Time
from ped_sam_ros.core.masks import label_image
from ped_sam_ros.core.pipeline import Instance, ObjectPrompt
from ped_sam_ros.ros.convert import (SUPPORTED_ENCODINGS, UnsupportedImage, compressed_to_rgb, image_to_label,
                                     image_to_rgb, label_from_result, label_to_image, masks_from_result,
                                     prompts_from_msgs, prompts_to_msgs, result_to_msg, rgb_to_image, stamp_key)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header


def _header():
    return Header(stamp=Time(sec=12, nanosec=345), frame_id="cam")


@pytest.fixture(scope="module")
def rgb(astronaut):
    return np.ascontiguousarray(astronaut[::8, ::6])  # 64x86, odd width


def _image(arr, encoding, pad=0):
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    rows = np.zeros((h, w * ch + pad), np.uint8)
    rows[:, : w * ch] = arr.reshape(h, -1)
    return Image(header=_header(), height=h, width=w, encoding=encoding, is_bigendian=0, step=w * ch + pad,
                 data=rows.tobytes())


@pytest.mark.parametrize("pad", [0, 5])
def test_every_supported_encoding_gives_the_same_rgb(rgb, pad):
    gray = rgb[:, :, 0]
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    cases = {
        "rgb8": (rgb, rgb),
        "bgr8": (rgb[:, :, ::-1], rgb),
        "rgba8": (np.concatenate([rgb, alpha], 2), rgb),
        "bgra8": (np.concatenate([rgb[:, :, ::-1], alpha], 2), rgb),
        "mono8": (gray, np.repeat(gray[:, :, None], 3, 2)),
    }
    assert set(cases) == set(SUPPORTED_ENCODINGS)
    for enc, (src, want) in cases.items():
        out = image_to_rgb(_image(np.ascontiguousarray(src), enc, pad))
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        assert np.array_equal(out, want), enc


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1", "bayer_rggb8", "yuv422", "RGB8"])
def test_other_encodings_are_refused_with_the_reason(encoding):
    msg = Image(header=_header(), height=2, width=2, encoding=encoding, step=8, data=bytes(16))
    with pytest.raises(UnsupportedImage, match="not supported"):
        image_to_rgb(msg)


def test_malformed_images_are_refused(rgb):
    msg = _image(rgb, "rgb8")
    msg.data = msg.data[:-10]
    with pytest.raises(UnsupportedImage, match="data bytes"):
        image_to_rgb(msg)
    with pytest.raises(UnsupportedImage, match="step"):
        image_to_rgb(Image(height=2, width=4, encoding="rgb8", step=4, data=bytes(8)))
    with pytest.raises(UnsupportedImage, match="empty"):
        image_to_rgb(Image(height=0, width=4, encoding="rgb8", step=12))


def test_compressed_images_decode_to_rgb(rgb):
    import cv2

    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    out = compressed_to_rgb(CompressedImage(header=_header(), format="png", data=png.tobytes()))
    assert np.array_equal(out, rgb)  # lossless
    ok, jpg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_to_rgb(CompressedImage(format="rgb8; jpeg compressed bgr8", data=jpg.tobytes()))
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 6
    with pytest.raises(UnsupportedImage):
        compressed_to_rgb(CompressedImage(format="jpeg", data=b"not an image"))


def test_label_images_mono8_and_mono16_roundtrip():
    lab8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = label_to_image(lab8, _header())
    assert msg.encoding == "mono8" and msg.step == 4 and msg.header == _header()
    assert np.array_equal(image_to_label(msg), lab8)
    lab16 = (np.arange(12, dtype=np.uint16) * 300).reshape(3, 4)
    msg = label_to_image(lab16, _header())
    assert msg.encoding == "mono16" and msg.step == 8 and msg.is_bigendian == 0
    assert np.array_equal(image_to_label(msg), lab16)
    out = rgb_to_image(np.zeros((2, 3, 3), np.uint8), _header())
    assert out.encoding == "rgb8" and out.step == 9


def test_prompts_roundtrip():
    prompts = [ObjectPrompt(points=[(1.5, 2.5, 1), (3.0, 4.0, 0)]), ObjectPrompt(box=(1.0, 2.0, 30.0, 40.0)),
               ObjectPrompt(points=[(5.0, 6.0, 1)], box=(0.0, 0.0, 9.0, 9.0))]
    back = prompts_from_msgs(prompts_to_msgs(prompts))
    assert back == prompts


def test_result_message_masks_decode_to_the_label_map():
    rng = np.random.default_rng(0)
    h, w = 37, 53
    masks = [rng.random((h, w)) > 0.7, np.zeros((h, w), bool), rng.random((h, w)) > 0.4]
    masks[1][3:9, 10:20] = True
    inst = [Instance(k + 1, m, 0.9, 0.8, (0, 0, w, h), int(m.sum())) for k, m in enumerate(masks)]
    msg = result_to_msg(_header(), (h, w), inst, [("remote", 0.25), ("total", 1.0)], "vit_b", "paper", (2, 2),
                        True, 3)
    assert msg.header == _header() and (msg.image_height, msg.image_width) == (h, w)
    assert (msg.grid_rows, msg.grid_cols, msg.frames_dropped, msg.random_weights) == (2, 2, 3, True)
    for (iid, m), src in zip(masks_from_result(msg), masks):
        assert np.array_equal(m, src)
    assert np.array_equal(label_from_result(msg), label_image(masks, [1, 2, 3], (h, w)))
    assert [(t.stage, t.seconds) for t in msg.timings] == [("remote", 0.25), ("total", 1.0)]
    assert stamp_key(msg.header) == (12, 345, "cam")
