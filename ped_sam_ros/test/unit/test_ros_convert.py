"""Message conversions of the edge node (rclpy message classes, no ROS graph)."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ped_sam_ros.core.masks import label_image
from ped_sam_ros.core.pipeline import Instance, ObjectPrompt
from ped_sam_ros.ros.convert import (
    SUPPORTED_ENCODINGS,
    UnsupportedImage,
    compressed_to_rgb,
    image_to_label,
    image_to_rgb,
    label_from_result,
    label_to_image,
    masks_from_result,
    prompts_from_msgs,
    prompts_to_msgs,
    result_to_msg,
    rgb_to_image,
    stamp_key,
)


def _header():
    return Header(stamp=Time(sec=12, nanosec=345), frame_id="cam")


@pytest.fixture(scope="module")
def rgb(astronaut):
    return np.ascontiguousarray(astronaut[::8, ::6])  # 64x86, odd width


def _image(arr, encoding, pad=0, bigendian=False):
    """An Image message of ``arr`` (uint8 or uint16, HxW or HxWxC) with ``pad`` bytes per row."""
    h, w = arr.shape[:2]
    raw = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder(">" if bigendian else "<"))).view(np.uint8)
    row = raw.reshape(h, -1)
    rows = np.zeros((h, row.shape[1] + pad), np.uint8)
    rows[:, : row.shape[1]] = row
    return Image(
        header=_header(),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=rows.shape[1],
        data=rows.tobytes(),
    )


def _cases_8bit(rgb):
    gray = rgb[:, :, 0]
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    return {
        "rgb8": (rgb, rgb),
        "bgr8": (rgb[:, :, ::-1], rgb),
        "rgba8": (np.concatenate([rgb, alpha], 2), rgb),
        "bgra8": (np.concatenate([rgb[:, :, ::-1], alpha], 2), rgb),
        "mono8": (gray, np.repeat(gray[:, :, None], 3, 2)),
    }


def _cases_16bit(rgb):
    # v * 257 spreads 0..255 over 0..65535 exactly; scaling back must give v again
    return {
        enc.replace("8", "16"): (src.astype(np.uint16) * 257, want) for enc, (src, want) in _cases_8bit(rgb).items()
    }


BAYER = ("rggb", "bggr", "gbrg", "grbg")
YUV = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")


@pytest.mark.parametrize("pad", [0, 5])
def test_8_and_16_bit_encodings_give_the_same_rgb(rgb, pad):
    for bigendian in (False, True):
        for enc, (src, want) in {**_cases_8bit(rgb), **_cases_16bit(rgb)}.items():
            out = image_to_rgb(_image(np.ascontiguousarray(src), enc, pad, bigendian))
            assert out.dtype == np.uint8 and out.flags.c_contiguous and out.shape == rgb.shape
            assert np.array_equal(out, want), (enc, bigendian)


def test_16_bit_values_are_scaled_over_the_full_range():
    values = np.array([[0, 128, 129, 257, 32767, 32896, 65535, 65279]], np.uint16)
    out = image_to_rgb(_image(values, "mono16"))[0, :, 0]
    assert out.tolist() == [0, 0, 1, 1, 127, 128, 255, 254]  # round(v * 255 / 65535)
    # the byte order comes from is_bigendian, not from the machine
    assert np.array_equal(image_to_rgb(_image(values, "mono16", bigendian=True))[0, :, 0], out)
    swapped = _image(values, "mono16", bigendian=True)
    swapped.is_bigendian = 0
    assert not np.array_equal(image_to_rgb(swapped)[0, :, 0], out)


def _mosaic(rgb, pattern):
    """A Bayer mosaic of ``rgb``: pattern "rggb" puts R at (0, 0), G at (0, 1) and (1, 0), B at (1, 1)."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(colour)]
    return out


@pytest.mark.parametrize("pattern", BAYER)
def test_bayer_patterns_demosaic_to_the_known_colours(pattern):
    # flat colour patches: bilinear demosaicing is exact away from the patch borders
    colours = [(200, 100, 30), (10, 220, 90), (250, 250, 250), (0, 0, 0)]
    img = np.zeros((32, 48, 3), np.uint8)
    for k, c in enumerate(colours):
        img[:, 12 * k : 12 * (k + 1)] = c
    for bits in (8, 16):
        src = _mosaic(img, pattern) if bits == 8 else _mosaic(img, pattern).astype(np.uint16) * 257
        out = image_to_rgb(_image(src, f"bayer_{pattern}{bits}", pad=3))
        for k, c in enumerate(colours):
            inner = out[3:-3, 12 * k + 3 : 12 * (k + 1) - 3]
            assert (inner == np.array(c, np.uint8)).all(), (pattern, bits, c, inner[0, 0])


def test_bayer_of_a_real_photo_matches_only_its_own_pattern(astronaut):
    rgb = np.ascontiguousarray(astronaut[:256, :256])
    for pattern in BAYER:
        errors = {
            p: np.abs(image_to_rgb(_image(_mosaic(rgb, pattern), f"bayer_{p}8")).astype(int) - rgb).mean()
            for p in BAYER
        }
        assert errors[pattern] < 6, (pattern, errors)  # demosaicing blurs edges a little
        assert min(e for p, e in errors.items() if p != pattern) > 3 * errors[pattern], (pattern, errors)


def _bt601_video(rgb):
    """Y, Cb, Cr of ITU-R BT.601 in video range (Y 16..235, C 16..240), written out independently."""
    r, g, b = (rgb[..., i].astype(float) / 255 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return [np.clip(np.round(v), 0, 255).astype(np.uint8) for v in (y, cb, cr)]


def _yuv422(rgb, order):
    """Packed 4:2:2 bytes of ``rgb`` (each horizontal pixel pair shares its chroma): order "uyvy" or "yuyv"."""
    y, cb, cr = _bt601_video(rgb)
    u, v = cb[:, 0::2], cr[:, 0::2]  # pairs have one colour in these tests
    h, w = y.shape
    out = np.zeros((h, w // 2, 4), np.uint8)
    if order == "uyvy":
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    return out.reshape(h, w, 2)


@pytest.mark.parametrize("encoding", YUV)
def test_yuv422_decodes_known_colours(encoding):
    colours = np.array(
        [
            (255, 0, 0),
            (0, 255, 0),
            (0, 0, 255),
            (255, 255, 255),
            (0, 0, 0),
            (128, 128, 128),
            (200, 100, 30),
            (30, 160, 220),
        ],
        np.uint8,
    )
    img = np.repeat(np.repeat(colours[None], 4, axis=0), 2, axis=1)  # 4 x 16, each colour on a pixel pair
    order = "uyvy" if encoding in ("yuv422", "uyvy") else "yuyv"
    out = image_to_rgb(_image(_yuv422(img, order), encoding, pad=4))
    assert out.shape == img.shape
    assert np.abs(out.astype(int) - img).max() <= 3, (encoding, out[0, ::2].tolist())
    # the other byte order decodes to something else: the order is really read from the encoding
    other = {"uyvy": "yuyv", "yuyv": "uyvy"}[order]
    assert np.abs(image_to_rgb(_image(_yuv422(img, other), encoding)).astype(int) - img).max() > 50


def test_yuv422_needs_an_even_width():
    with pytest.raises(UnsupportedImage, match="even"):
        image_to_rgb(Image(height=2, width=3, encoding="yuv422", step=6, data=bytes(12)))


def test_every_supported_encoding_is_tested(rgb):
    tested = set(_cases_8bit(rgb)) | set(_cases_16bit(rgb)) | set(YUV)
    tested |= {f"bayer_{p}{bits}" for p in BAYER for bits in (8, 16)}
    assert tested == set(SUPPORTED_ENCODINGS)


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1", "8UC3", "yuv420", "nv21", "RGB8"])
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
    prompts = [
        ObjectPrompt(points=[(1.5, 2.5, 1), (3.0, 4.0, 0)]),
        ObjectPrompt(box=(1.0, 2.0, 30.0, 40.0)),
        ObjectPrompt(points=[(5.0, 6.0, 1)], box=(0.0, 0.0, 9.0, 9.0)),
    ]
    back = prompts_from_msgs(prompts_to_msgs(prompts))
    assert back == prompts


def test_result_message_masks_decode_to_the_label_map():
    rng = np.random.default_rng(0)
    h, w = 37, 53
    masks = [rng.random((h, w)) > 0.7, np.zeros((h, w), bool), rng.random((h, w)) > 0.4]
    masks[1][3:9, 10:20] = True
    inst = [Instance(k + 1, m, 0.9, 0.8, (0, 0, w, h), int(m.sum())) for k, m in enumerate(masks)]
    msg = result_to_msg(_header(), (h, w), inst, [("remote", 0.25), ("total", 1.0)], "vit_b", "paper", (2, 2), True, 3)
    assert msg.header == _header() and (msg.image_height, msg.image_width) == (h, w)
    assert (msg.grid_rows, msg.grid_cols, msg.frames_dropped, msg.random_weights) == (2, 2, 3, True)
    for (_iid, m), src in zip(masks_from_result(msg), masks):
        assert np.array_equal(m, src)
    assert np.array_equal(label_from_result(msg), label_image(masks, [1, 2, 3], (h, w)))
    assert [(t.stage, t.seconds) for t in msg.timings] == [("remote", 0.25), ("total", 1.0)]
    assert stamp_key(msg.header) == (12, 345, "cam")
