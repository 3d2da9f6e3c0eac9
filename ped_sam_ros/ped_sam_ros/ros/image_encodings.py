"""``sensor_msgs/Image`` pixel layouts -> uint8 HxWx3 RGB, for the encodings cameras publish.

* 8-bit colour and grey: rgb8, bgr8, rgba8, bgra8, mono8 (copied, reordered);
* 16-bit: rgb16, bgr16, rgba16, bgra16, mono16, scaled to 8 bits over the full 16-bit range
  (``round(v * 255 / 65535)``; a 12-bit sensor's values therefore come out dark, as in
  cv_bridge's scaling), byte order from ``is_bigendian``;
* Bayer mosaics rggb8, bggr8, gbrg8, grbg8 (and their 16-bit forms, scaled first), demosaiced
  with OpenCV's bilinear method;
* YUV 4:2:2: ``yuv422``/``uyvy`` (U Y0 V Y1) and ``yuv422_yuy2``/``yuyv`` (Y0 U Y1 V), converted
  with OpenCV (ITU-R BT.601, video range); the width must be even.

Every layout honours ``step`` (row padding) and refuses short data with the reason.
Works on rclpy's message objects and on those ``rosbags`` deserializes (same field names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np


class UnsupportedImage(ValueError):
    """An image the node cannot use (encoding, size or data length)."""


@dataclass(frozen=True)
class PixelLayout:
    """How one encoding's bytes are laid out, and how they become RGB."""

    channels: int  # values per pixel (2 for YUV 4:2:2: one luma and one alternating chroma byte)
    bits: int  # 8 or 16
    to_rgb: Callable[[np.ndarray], np.ndarray]  # (H, W, channels) native-endian -> uint8 (H, W, 3)


def scale16(values: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 over the full range, rounded: 0 -> 0, 257 -> 1, 65535 -> 255."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _to8(a: np.ndarray) -> np.ndarray:
    return scale16(a) if a.dtype == np.uint16 else a


def _order(idx) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: _to8(a)[:, :, list(idx)]


def _mono(a: np.ndarray) -> np.ndarray:
    return np.repeat(_to8(a), 3, axis=2)


def _cv2(code_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenCV colour conversion, looked up when first used (cv2 loads only for these layouts)."""

    def convert(a: np.ndarray) -> np.ndarray:
        import cv2

        src = _to8(a)
        src = src[:, :, 0] if src.shape[2] == 1 else src
        return cv2.cvtColor(np.ascontiguousarray(src), getattr(cv2, code_name))

    return convert


# OpenCV names a Bayer pattern after the 2x2 block that starts at its second row and column,
# so ROS's rggb is OpenCV's BG (the same pairs as cv_bridge's table).
_BAYER = {
    "rggb": "COLOR_BayerBG2RGB",
    "bggr": "COLOR_BayerRG2RGB",
    "gbrg": "COLOR_BayerGR2RGB",
    "grbg": "COLOR_BayerGB2RGB",
}

LAYOUTS: Dict[str, PixelLayout] = {
    "rgb8": PixelLayout(3, 8, _order((0, 1, 2))),
    "bgr8": PixelLayout(3, 8, _order((2, 1, 0))),
    "rgba8": PixelLayout(4, 8, _order((0, 1, 2))),
    "bgra8": PixelLayout(4, 8, _order((2, 1, 0))),
    "mono8": PixelLayout(1, 8, _mono),
    "rgb16": PixelLayout(3, 16, _order((0, 1, 2))),
    "bgr16": PixelLayout(3, 16, _order((2, 1, 0))),
    "rgba16": PixelLayout(4, 16, _order((0, 1, 2))),
    "bgra16": PixelLayout(4, 16, _order((2, 1, 0))),
    "mono16": PixelLayout(1, 16, _mono),
    **{f"bayer_{p}8": PixelLayout(1, 8, _cv2(code)) for p, code in _BAYER.items()},
    **{f"bayer_{p}16": PixelLayout(1, 16, _cv2(code)) for p, code in _BAYER.items()},
    "yuv422": PixelLayout(2, 8, _cv2("COLOR_YUV2RGB_UYVY")),
    "uyvy": PixelLayout(2, 8, _cv2("COLOR_YUV2RGB_UYVY")),
    "yuv422_yuy2": PixelLayout(2, 8, _cv2("COLOR_YUV2RGB_YUYV")),
    "yuyv": PixelLayout(2, 8, _cv2("COLOR_YUV2RGB_YUYV")),
}
SUPPORTED_ENCODINGS = tuple(LAYOUTS)


def _bytes_of(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def pixels(msg, layout: Optional[PixelLayout] = None) -> np.ndarray:
    """The message's pixels as a native-endian (H, W, channels) uint8/uint16 array (no copy
    when possible); ``step`` padding dropped, ``is_bigendian`` applied."""
    enc = msg.encoding
    layout = layout or LAYOUTS.get(enc)
    if layout is None:
        raise UnsupportedImage(f"encoding {enc!r} is not supported (use one of {', '.join(SUPPORTED_ENCODINGS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise UnsupportedImage(f"empty image ({w}x{h})")
    if layout.channels == 2 and w % 2:
        raise UnsupportedImage(f"{enc} packs two pixels in four bytes: the width must be even, got {w}")
    size = layout.bits // 8
    row = w * layout.channels * size
    if step < row:
        raise UnsupportedImage(f"step {step} is smaller than width x bytes per pixel = {row}")
    data = _bytes_of(msg.data)
    if data.size < h * step:
        raise UnsupportedImage(f"{data.size} data bytes, expected height x step = {h * step}")
    rows = data[: h * step].reshape(h, step)[:, :row]
    if size == 1:
        return rows.reshape(h, w, layout.channels)
    dt = np.dtype(">u2" if msg.is_bigendian else "<u2")
    return np.ascontiguousarray(rows).view(dt).reshape(h, w, layout.channels).astype(np.uint16)


def image_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/Image`` of any :data:`SUPPORTED_ENCODINGS` -> contiguous uint8 HxWx3 RGB;
    :class:`UnsupportedImage` with the reason otherwise."""
    layout = LAYOUTS.get(msg.encoding)
    if layout is None:
        raise UnsupportedImage(
            f"encoding {msg.encoding!r} is not supported (use one of {', '.join(SUPPORTED_ENCODINGS)})"
        )
    return np.ascontiguousarray(layout.to_rgb(pixels(msg, layout)), dtype=np.uint8)
