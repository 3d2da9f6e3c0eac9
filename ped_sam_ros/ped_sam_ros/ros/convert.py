"""Messages <-> arrays for the edge node (no rclpy context needed).

Works on rclpy's generated message classes and, for reading, on the message
objects ``rosbags`` deserializes (same field names; arrays instead of
``array.array``), so the bag tools and tests share it.
"""

from __future__ import annotations

import array
import struct
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ped_sam_ros.core.masks import label_image, mask_to_rle, rle_to_bool
from ped_sam_ros.core.pipeline import Instance, ObjectPrompt

# raw camera images (8/16-bit, Bayer, YUV 4:2:2): their own module, re-exported here
from .image_encodings import SUPPORTED_ENCODINGS, UnsupportedImage, image_to_rgb  # noqa: F401

#: compressed images larger than this (height x width, as their header declares) are refused
#: unless the caller gives another limit (the node's ``max_image_pixels``)
DEFAULT_MAX_PIXELS = 25_000_000


def _bytes_of(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


# JPEG start-of-frame markers (every coding process); 0xC4 (DHT), 0xC8 (JPG), 0xCC (DAC) are not frames
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(b: bytes) -> Tuple[int, int]:
    pos, n = 2, len(b)
    while pos + 4 <= n:
        if b[pos] != 0xFF:
            raise UnsupportedImage("malformed JPEG: no marker where one is expected")
        while pos < n and b[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos + 3 > n:
            break
        marker = b[pos]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 1
            continue
        if marker in (0xD9, 0xDA):
            break  # end of image, or the first scan before any frame header
        seg = struct.unpack_from(">H", b, pos + 1)[0]
        if marker in _JPEG_SOF:
            if seg < 7 or pos + 8 > n:
                break
            h, w = struct.unpack_from(">HH", b, pos + 4)
            if h == 0:
                raise UnsupportedImage("the JPEG defines its height later (DNL marker): not accepted")
            return w, h
        if seg < 2:
            break
        pos += 1 + seg
    raise UnsupportedImage("JPEG without a frame header (SOFn) before its first scan")


def _webp_size(b: bytes) -> Tuple[int, int]:
    if len(b) < 30:
        raise UnsupportedImage("truncated WebP header")
    kind, payload = b[12:16], b[20:]
    if kind == b"VP8X":
        return 1 + int.from_bytes(payload[4:7], "little"), 1 + int.from_bytes(payload[7:10], "little")
    if kind == b"VP8L":
        bits = int.from_bytes(payload[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":
        return int.from_bytes(payload[6:8], "little") & 0x3FFF, int.from_bytes(payload[8:10], "little") & 0x3FFF
    raise UnsupportedImage(f"WebP chunk {kind!r} is not an image")


def compressed_size(data) -> Tuple[str, int, int]:
    """(format, width, height) that a PNG, JPEG or WebP declares in its header, read without
    decoding anything (the decoder would allocate the declared size, whatever the payload);
    :class:`UnsupportedImage` for other formats or a header that cannot be read."""
    b = bytes(_bytes_of(data)[: 1 << 16])  # headers come first: 64 KiB covers EXIF/ICC segments
    if b.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(b) < 24 or b[12:16] != b"IHDR":
            raise UnsupportedImage("PNG without an IHDR chunk first")
        w, h = struct.unpack_from(">II", b, 16)
        return "png", w, h
    if b.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_size(b))
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return ("webp", *_webp_size(b))
    raise UnsupportedImage(
        "compressed image is not PNG, JPEG or WebP (the formats whose size can be read before decoding)"
    )


def compressed_to_rgb(msg, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (PNG, JPEG, WebP) -> uint8 HxWx3 RGB.

    The size the header declares is read first: an image above ``max_pixels`` (None: no
    limit) is refused before the decoder allocates anything (decompression bombs: a few
    hundred bytes can declare 16384x16384), and the decoded image must have that size."""
    import cv2

    buf = _bytes_of(msg.data)
    if buf.size == 0:
        raise UnsupportedImage("empty compressed image")
    fmt, w, h = compressed_size(buf)
    if w == 0 or h == 0:
        raise UnsupportedImage(f"the {fmt} header declares an empty image ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise UnsupportedImage(f"the {fmt} header declares {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UnsupportedImage(f"OpenCV cannot decode the compressed image (format {msg.format!r})")
    if img.dtype != np.uint8:
        raise UnsupportedImage(f"compressed image decodes to {img.dtype}, only 8-bit images are supported")
    if img.shape[:2] != (h, w):
        raise UnsupportedImage(f"the {fmt} image decodes to {img.shape[1]}x{img.shape[0]}, its header declares {w}x{h}")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def rgb_to_image(rgb: np.ndarray, header, encoding: str = "rgb8"):
    from sensor_msgs.msg import Image

    if encoding not in ("rgb8", "bgr8"):
        raise ValueError("rgb_to_image writes rgb8 or bgr8")
    arr = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    h, w = arr.shape[:2]
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3, data=arr.tobytes())


def label_to_image(label: np.ndarray, header):
    """Label map -> mono8 (uint8) or mono16 (uint16, little-endian) image."""
    from sensor_msgs.msg import Image

    if label.dtype == np.uint8:
        enc, size = "mono8", 1
    elif label.dtype == np.uint16:
        enc, size = "mono16", 2
    else:
        raise ValueError(f"label maps are uint8 or uint16, got {label.dtype}")
    arr = np.ascontiguousarray(label.astype(label.dtype.newbyteorder("<"), copy=False))
    h, w = arr.shape
    return Image(header=header, height=h, width=w, encoding=enc, is_bigendian=0, step=w * size, data=arr.tobytes())


def image_to_label(msg) -> np.ndarray:
    """mono8/mono16 label image -> uint8/uint16 HxW array."""
    if msg.encoding not in ("mono8", "mono16"):
        raise UnsupportedImage(f"label images are mono8 or mono16, got {msg.encoding!r}")
    size = 1 if msg.encoding == "mono8" else 2
    dt = np.dtype(np.uint8) if size == 1 else np.dtype(">u2" if msg.is_bigendian else "<u2")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = _bytes_of(msg.data)[: h * step].reshape(h, step)[:, : w * size]
    return np.ascontiguousarray(data).view(dt).reshape(h, w).astype(dt.newbyteorder("="))


# ---------------------------------------------------------------------------- prompts


def prompts_from_msgs(prompts: Iterable) -> List[ObjectPrompt]:
    """``ped_sam_msgs/Prompt[]`` -> :class:`ObjectPrompt` list (not validated)."""
    out = []
    for p in prompts:
        points = [(float(q.x), float(q.y), int(q.label)) for q in p.points]
        box = (float(p.box.x_min), float(p.box.y_min), float(p.box.x_max), float(p.box.y_max)) if p.has_box else None
        out.append(ObjectPrompt(points=points, box=box))
    return out


def prompts_to_msgs(prompts: Sequence[ObjectPrompt]) -> list:
    from ped_sam_msgs.msg import BoxPrompt, PointPrompt, Prompt

    out = []
    for p in prompts:
        msg = Prompt(points=[PointPrompt(x=float(x), y=float(y), label=int(lab)) for x, y, lab in p.points])
        if p.box is not None:
            msg.has_box = True
            msg.box = BoxPrompt(
                x_min=float(p.box[0]), y_min=float(p.box[1]), x_max=float(p.box[2]), y_max=float(p.box[3])
            )
        out.append(msg)
    return out


# ---------------------------------------------------------------------------- results


def instance_to_msg(inst: Instance):
    from sensor_msgs.msg import RegionOfInterest

    from ped_sam_msgs.msg import MaskInstance, MaskRle

    h, w, counts = mask_to_rle(inst.mask)
    x, y, bw, bh = (int(v) for v in inst.bbox)
    return MaskInstance(
        id=int(inst.id),
        score=float(inst.score),
        stability_score=float(inst.stability_score),
        bbox=RegionOfInterest(x_offset=x, y_offset=y, width=bw, height=bh, do_rectify=False),
        area=int(inst.area),
        mask=MaskRle(height=h, width=w, counts=array.array("I", counts)),
    )


def result_to_msg(
    header,
    size: Tuple[int, int],
    instances: Sequence[Instance],
    timings: Sequence[Tuple[str, float]],
    model: str,
    mode: str,
    grid: Tuple[int, int],
    random_weights: bool,
    frames_dropped: int,
    status: int = 0,
    reason: str = "",
    tile_decisions: Sequence[dict] = (),
):
    """``tile_decisions``: :func:`ped_sam_ros.edge.privacy.describe_decisions` rows."""
    from ped_sam_msgs.msg import SegmentationResult, StageTiming, TileDecision

    return SegmentationResult(
        header=header,
        image_height=int(size[0]),
        image_width=int(size[1]),
        model_type=model,
        mode=mode,
        grid_rows=int(grid[0]),
        grid_cols=int(grid[1]),
        random_weights=bool(random_weights),
        instances=[instance_to_msg(i) for i in instances],
        timings=[StageTiming(stage=k, seconds=float(v)) for k, v in timings],
        frames_dropped=int(frames_dropped),
        status=int(status),
        reason=str(reason)[:2000],
        tile_decisions=[
            TileDecision(
                tile=int(d["tile"]),
                row0=int(d["rows"][0]),
                row1=int(d["rows"][1]),
                col0=int(d["cols"][0]),
                col1=int(d["cols"][1]),
                server=str(d["server"]),
                action=str(d["action"]),
                reason=str(d["reason"])[:500],
                classes=[str(c) for c in d["classes"]],
            )
            for d in tile_decisions
        ],
    )


def masks_from_result(msg) -> List[Tuple[int, np.ndarray]]:
    """(id, bool HxW mask) for each instance of a ``SegmentationResult`` (rclpy or rosbags)."""
    out = []
    for inst in msg.instances:
        m = inst.mask
        out.append((int(inst.id), rle_to_bool(int(m.height), int(m.width), [int(c) for c in m.counts])))
    return out


def label_from_result(msg) -> np.ndarray:
    """The label map the node publishes on ``~/label_mask``, rebuilt from the RLE masks."""
    pairs = masks_from_result(msg)
    return label_image([m for _, m in pairs], [i for i, _ in pairs], (int(msg.image_height), int(msg.image_width)))


def stamp_key(header) -> Tuple[int, int, str]:
    """(sec, nanosec, frame_id): how outputs are matched to their inputs."""
    return (int(header.stamp.sec), int(header.stamp.nanosec), str(header.frame_id))
