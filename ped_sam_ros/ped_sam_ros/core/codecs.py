"""Codecs for what crosses the wire: pixel crops up (PNG/JPEG/WebP) and tokens down
(float, int8, bit-packed group quantisation, optional zstd entropy stage).

Both halves are strict on decode because the decoding side cannot trust the sender:

* **Pixels** (decoded by a server): the container's own header (PNG ``IHDR``, JPEG
  ``SOFn``, WebP ``VP8``/``VP8L``/``VP8X``) is parsed here, in Python, *before* any
  decoder runs, and the image is refused without allocating anything when its declared
  size is above the pixel limit or differs from the size the request declares.  Only the
  chunk/marker structure our own encoder writes is accepted (no ancillary PNG chunks, no
  animated or extended-feature WebP, no lossless/arithmetic/12-bit JPEG).  After decoding,
  the decoded shape must equal the declared one.  OpenCV does the (de)compression; it is
  imported only inside the pixel functions, so importing ``ped_sam_ros.core`` never
  imports cv2.
* **Tokens** (decoded by the edge): every format is recognised from the reply's tensor
  names and shapes alone, so a reply is self-describing; shapes, lengths, code ranges
  and the finiteness of every scale are checked, and a zstd payload is decompressed
  with its output bounded by the size the expected shape allows (``backports.zstd``,
  imported only when such a format is used).

Token formats (``h x w`` tokens of ``C`` channels; bits per value in brackets)::

  float32    "tokens" f32 (h, w, C)                                            [32]
  float16    "tokens" f16 (h, w, C)                                            [16]
  int8       "tokens" i8 (h, w, C) + "scales" f32 (h, w)                       [8 + 32/C]
  q{b}g{g}   "tokens:q{b}g{g}" u8 (h, w, C*b/8): b-bit codes, bit-packed,
             + "scales", "offsets" f16 (h, w, C/g)                             [b + 32/g]
  e{k}       "tokens:e{k}" u8 (n,): one zstd frame of int8 codes, channel-major,
             + "shifts" u8 (h, w)                                              [measured]
  p{k}       as e{k} ("tokens:p{k}"), codes of prediction residuals,
             + "predictor" f16 (2, C)                                          [measured]
  q, e and p also carry "channel_offsets", "channel_scales" f16 (C,).

``q``, ``e`` and ``p`` first normalise every channel by its mean and standard deviation
over the reply's tokens, outliers left out (channels of SAM's tokens differ in scale
several-fold, and real ViTs have outlier channels and a few massive activations).
``q{b}g{g}`` is then asymmetric group quantisation (fixed rate): each group of ``g``
consecutive channels of a token spans its own [min, max] in ``2**b`` levels. ``e{k}`` is
uniform quantisation with step ``1/k`` of a channel's standard deviation (error variance
``1/(12 k**2)`` of it), entropy-coded by zstd; a token whose values would need codes
beyond +-127 gets a coarser step ``2**shift / k`` instead of being clipped. ``p{k}`` is
``e{k}`` on the residual of a spatial prediction (closed loop, so errors do not
accumulate): each token is predicted from its reconstructed left and upper neighbours with
per-channel weights fitted by the sender (neighbouring tokens of an image are strongly
correlated: about 20 % fewer bytes than ``e{k}`` at the same error).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# ---------------------------------------------------------------------------
# Errors


class CodecError(ValueError):
    """Data a codec refuses. ``code`` is the wire error code (see :mod:`.wire`)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# Pixels

PIXEL_CODECS = ("raw", "png", "jpeg", "webp")
#: quality (JPEG/WebP, 1-100) or compression level (PNG, 0-9) when the spec names none
DEFAULT_QUALITY = {"png": 1, "jpeg": 90, "webp": 90}
_QUALITY_RANGE = {"png": (0, 9), "jpeg": (1, 100), "webp": (1, 100)}
#: the largest image a server decodes: one whole 1024x1024 model input
MAX_DECODED_PIXELS = 1024 * 1024
#: more JPEG scans than this is refused (progressive JPEGs from OpenCV have about 10)
MAX_JPEG_SCANS = 64

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class PixelCodec:
    """A parsed pixel codec spec such as ``"jpeg:85"``: the codec (its wire name), its
    encoder setting, and for JPEG whether chroma keeps full resolution (``jpeg444``; the
    default subsamples it 2x2, as most JPEG encoders do)."""

    name: str
    quality: Optional[int] = None
    full_chroma: bool = False

    @property
    def spec(self) -> str:
        base = "jpeg444" if self.full_chroma else self.name
        return base if self.quality is None else f"{base}:{self.quality}"


def pixel_codec(spec: str) -> PixelCodec:
    """``"raw"``, ``"png"``, ``"png:L"`` (zlib level 0-9), ``"jpeg"``/``"jpeg:Q"``,
    ``"jpeg444"``/``"jpeg444:Q"`` (full-resolution chroma), ``"webp"``/``"webp:Q"``
    (quality 1-100) -> :class:`PixelCodec` (raises CodecError)."""
    if not isinstance(spec, str):
        raise CodecError("bad_pixel_codec", f"pixel codec must be a string, got {type(spec).__name__}")
    m = re.fullmatch(r"(raw|png|jpeg|jpeg444|webp)(?::(\d{1,3}))?", spec.strip())
    if not m:
        raise CodecError(
            "bad_pixel_codec",
            f"unknown pixel codec {spec!r}: use raw, png[:0-9], jpeg[:1-100], jpeg444[:1-100] or webp[:1-100]",
        )
    name, full_chroma = m.group(1), m.group(1) == "jpeg444"
    if full_chroma:
        name = "jpeg"
    if name == "raw":
        if m.group(2):
            raise CodecError("bad_pixel_codec", "raw pixels take no quality")
        return PixelCodec("raw")
    q = int(m.group(2)) if m.group(2) else DEFAULT_QUALITY[name]
    lo, hi = _QUALITY_RANGE[name]
    if not lo <= q <= hi:
        raise CodecError("bad_pixel_codec", f"{name} quality {q} is outside {lo}..{hi}")
    return PixelCodec(name, q, full_chroma)


def encode_pixels(rgb: np.ndarray, spec: str) -> bytes:
    """Compress a non-empty uint8 (h, w, 3) RGB crop with a png/jpeg/webp spec."""
    import cv2

    codec = pixel_codec(spec)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty uint8 HxWx3 image, got {rgb.dtype} {rgb.shape}")
    params = {
        "png": [cv2.IMWRITE_PNG_COMPRESSION, codec.quality],
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, codec.quality],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, codec.quality],
    }.get(codec.name)
    if params is None:
        raise ValueError(f"{codec.name} is not a compressed pixel codec")
    if codec.full_chroma:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ext = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}[codec.name]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb.shape} image as {codec.spec}")
    return buf.tobytes()


def _be32(b: bytes, i: int) -> int:
    return struct.unpack_from(">I", b, i)[0]


def _png_dimensions(data: bytes) -> Tuple[int, int]:
    """(width, height) from a PNG's IHDR; the chunk sequence must be IHDR IDAT+ IEND."""
    if not data.startswith(_PNG_SIGNATURE):
        raise CodecError("bad_pixels", "not a PNG stream (bad signature)")
    pos, n = len(_PNG_SIGNATURE), len(data)
    dims: Optional[Tuple[int, int]] = None
    state = "start"  # start -> ihdr -> idat -> end
    prev = b""
    while pos < n:
        if pos + 12 > n:
            raise CodecError("bad_pixels", "truncated PNG chunk")
        length, ctype = _be32(data, pos), data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            raise CodecError("bad_pixels", f"PNG chunk {ctype!r} runs past the end of the data")
        if ctype == b"IHDR":
            if state != "start" or length != 13:
                raise CodecError("bad_pixels", "PNG IHDR must be the first chunk and 13 bytes long")
            if zlib.crc32(data[pos + 4 : pos + 8 + length]) != _be32(data, pos + 8 + length):
                raise CodecError("bad_pixels", "PNG IHDR checksum mismatch")
            w, h = _be32(data, pos + 8), _be32(data, pos + 12)
            depth, color, comp, filt, interlace = data[pos + 16 : pos + 21]
            if not (w and h) or depth != 8 or color != 2 or comp != 0 or filt != 0 or interlace not in (0, 1):
                raise CodecError(
                    "bad_pixels",
                    f"PNG must be 8-bit RGB (depth {depth}, color type {color}), non-empty and standard-compressed",
                )
            dims, state = (w, h), "ihdr"
        elif ctype == b"IDAT":
            if state not in ("ihdr", "idat") or (state == "idat" and prev != b"IDAT"):
                raise CodecError("bad_pixels", "PNG IDAT chunks must follow IHDR, contiguously")
            state = "idat"
        elif ctype == b"IEND":
            if state != "idat" or length != 0 or end != n:
                raise CodecError("bad_pixels", "PNG IEND must be empty, after the IDATs, and last")
            state = "end"
        else:
            raise CodecError("bad_pixels", f"PNG chunk {ctype!r} is not accepted (only IHDR, IDAT, IEND)")
        prev = ctype
        pos = end
    if state != "end" or dims is None:
        raise CodecError("bad_pixels", "PNG stream ends before IEND")
    return dims


# JPEG frame markers: baseline, extended sequential, progressive (Huffman, 8-bit) accepted;
# lossless, hierarchical and arithmetic-coded processes are refused.
_JPEG_SOF_OK = (0xC0, 0xC1, 0xC2)
_JPEG_SOF_REFUSED = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def _jpeg_dimensions(data: bytes) -> Tuple[int, int]:
    """(width, height) from the single SOFn of a JPEG, read from the marker segments before
    the first scan; 8-bit, 3 components, at most :data:`MAX_JPEG_SCANS` scans."""
    n = len(data)
    if n < 4 or data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        raise CodecError("bad_pixels", "not a complete JPEG stream (SOI ... EOI)")
    pos = 2
    dims: Optional[Tuple[int, int]] = None
    while True:
        if pos + 4 > n or data[pos] != 0xFF:
            raise CodecError("bad_pixels", "malformed JPEG marker segment before the first scan")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos + 3 > n:
            raise CodecError("bad_pixels", "truncated JPEG header")
        marker = data[pos]
        if marker == 0xDA:  # start of scan: the header is complete
            break
        if marker in (0x00, 0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
            raise CodecError("bad_pixels", f"JPEG marker {marker:#04x} before the first scan")
        seg_len = struct.unpack_from(">H", data, pos + 1)[0]
        if seg_len < 2 or pos + 1 + seg_len > n:
            raise CodecError("bad_pixels", "JPEG marker segment runs past the end of the data")
        if marker in _JPEG_SOF_REFUSED:
            raise CodecError(
                "bad_pixels",
                f"JPEG coding process {marker:#04x} is not accepted (baseline, extended or progressive Huffman only)",
            )
        if marker in _JPEG_SOF_OK:
            if dims is not None:
                raise CodecError("bad_pixels", "JPEG has more than one frame header")
            if seg_len < 8:
                raise CodecError("bad_pixels", "JPEG frame header too short")
            precision, h, w, comps = struct.unpack_from(">BHHB", data, pos + 3)
            if precision != 8 or comps != 3 or seg_len != 8 + 3 * comps:
                raise CodecError(
                    "bad_pixels", f"JPEG must be 8-bit with 3 components (got {precision}-bit, {comps} components)"
                )
            if not (w and h):
                raise CodecError("bad_pixels", "JPEG declares a zero (or DNL-defined) size")
            dims = (w, h)
        pos += 1 + seg_len
    if dims is None:
        raise CodecError("bad_pixels", "JPEG has no frame header before its first scan")
    if data.count(b"\xff\xda") > MAX_JPEG_SCANS:
        raise CodecError("bad_pixels", f"JPEG has more than {MAX_JPEG_SCANS} scans")
    return dims


def _le(b: bytes, i: int, size: int) -> int:
    return int.from_bytes(b[i : i + size], "little")


def _webp_bitstream_dimensions(fourcc: bytes, payload: bytes) -> Tuple[int, int]:
    if fourcc == b"VP8 ":
        if len(payload) < 10:
            raise CodecError("bad_pixels", "WebP VP8 chunk too short")
        if _le(payload, 0, 3) & 1:
            raise CodecError("bad_pixels", "WebP VP8 data is not a key frame")
        if payload[3:6] != b"\x9d\x01\x2a":
            raise CodecError("bad_pixels", "WebP VP8 start code missing")
        w, h = _le(payload, 6, 2), _le(payload, 8, 2)
        if (w | h) >> 14:
            raise CodecError("bad_pixels", "WebP VP8 upscaling bits are not accepted")
        return w, h
    if fourcc == b"VP8L":
        if len(payload) < 5 or payload[0] != 0x2F:
            raise CodecError("bad_pixels", "WebP VP8L signature missing")
        bits = _le(payload, 1, 4)
        if bits >> 29:
            raise CodecError("bad_pixels", "WebP VP8L version is not 0")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise CodecError("bad_pixels", f"WebP chunk {fourcc!r} is not an image bitstream")


def _webp_dimensions(data: bytes) -> Tuple[int, int]:
    """(width, height) of a still WebP: simple lossy (VP8), lossless (VP8L), or extended
    (VP8X canvas, no animation) whose bitstream must have the canvas size."""
    n = len(data)
    if n < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise CodecError("bad_pixels", "not a WebP stream (RIFF/WEBP header)")
    if _le(data, 4, 4) + 8 != n:
        raise CodecError("bad_pixels", "WebP RIFF size does not match the data length")
    chunks: List[Tuple[bytes, bytes]] = []
    pos = 12
    while pos < n:
        if pos + 8 > n:
            raise CodecError("bad_pixels", "truncated WebP chunk header")
        size = _le(data, pos + 4, 4)
        end = pos + 8 + size + (size & 1)
        if end > n:
            raise CodecError("bad_pixels", "WebP chunk runs past the end of the data")
        chunks.append((data[pos : pos + 4], data[pos + 8 : pos + 8 + size]))
        pos = end
        if len(chunks) > 4:
            raise CodecError("bad_pixels", "WebP has too many chunks")
    kinds = [c for c, _ in chunks]
    if kinds in ([b"VP8 "], [b"VP8L"]):
        return _webp_bitstream_dimensions(*chunks[0])
    if kinds and kinds[0] == b"VP8X":
        head = chunks[0][1]
        if len(head) < 10:
            raise CodecError("bad_pixels", "WebP VP8X chunk too short")
        if head[0] & 0x02:
            raise CodecError("bad_pixels", "animated WebP is not accepted")
        canvas = (_le(head, 4, 3) + 1, _le(head, 7, 3) + 1)
        rest = kinds[1:]
        if rest not in ([b"VP8 "], [b"VP8L"], [b"ALPH", b"VP8 "]):
            raise CodecError("bad_pixels", f"WebP VP8X chunks {rest} are not accepted")
        if _webp_bitstream_dimensions(*chunks[-1]) != canvas:
            raise CodecError("bad_pixels", "WebP canvas and bitstream sizes differ")
        return canvas
    raise CodecError("bad_pixels", f"WebP chunk layout {kinds} is not accepted")


_DIMENSIONS = {"png": _png_dimensions, "jpeg": _jpeg_dimensions, "webp": _webp_dimensions}


def image_dimensions(codec: str, data) -> Tuple[int, int]:
    """(width, height) that a compressed image declares, from its header alone (no
    decoding); raises CodecError for anything but the structure our encoder writes."""
    fn = _DIMENSIONS.get(codec)
    if fn is None:
        raise CodecError("bad_pixel_codec", f"{codec!r} is not a compressed pixel codec {PIXEL_CODECS[1:]}")
    return fn(bytes(data))


def decode_pixels(codec: str, data, shape: Tuple[int, int], max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Compressed ``codec`` bytes -> uint8 (h, w, 3) RGB of exactly ``shape`` = (h, w).

    The declared size is read from the container header first: above ``max_pixels`` it is
    refused (``pixels_too_large``) and different from ``shape`` it is refused
    (``bad_pixels``), both before the decoder allocates anything."""
    data = bytes(data)
    h, w = shape
    if h * w > max_pixels:
        raise CodecError("pixels_too_large", f"{h}x{w} pixels exceed the limit of {max_pixels}")
    dw, dh = image_dimensions(codec, data)
    if dw * dh > max_pixels:
        raise CodecError(
            "pixels_too_large", f"the {codec} data declares {dw}x{dh} pixels, above the limit of {max_pixels}"
        )
    if (dh, dw) != (h, w):
        raise CodecError("bad_pixels", f"the {codec} data declares {dh}x{dw} pixels, the request {h}x{w}")
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise CodecError("bad_pixels", f"the {codec} data does not decode")
    if img.dtype != np.uint8 or img.shape != (h, w, 3):
        raise CodecError(
            "bad_pixels", f"the {codec} data decoded to {img.dtype} {list(img.shape)}, not uint8 {[h, w, 3]}"
        )
    return np.ascontiguousarray(img[:, :, ::-1])


# ---------------------------------------------------------------------------
# Tokens

#: the formats servers list in ``info`` and the edge config accepts; other members of
#: the q{b}g{g}, e{k} and p{k} families decode too
TOKEN_FORMATS = (
    "float32",
    "float16",
    "int8",
    "q8g64",
    "q6g64",
    "q5g32",
    "q5g64",
    "q5g128",
    "q4g32",
    "q4g64",
    "q3g32",
    "e16",
    "e12",
    "e10",
    "e8",
    "e6",
    "e5",
    "e4",
    "e3",
    "p16",
    "p12",
    "p10",
    "p8",
    "p6",
    "p5",
    "p4",
    "p3",
)
QUANT_BITS = range(2, 9)
QUANT_GROUPS = (8, 16, 32, 64, 128, 256)
ENTROPY_STEPS = range(1, 65)
#: a token whose normalised values need more than 127 steps gets a coarser step, 2**shift
#: times the format's; a shift above this is refused
MAX_SHIFT = 30
#: zstd level of the entropy stage (level 1: within 3 % of level 3 on tokens at a tenth of the
#: time), and the largest window a decoder accepts (2^24 = 16 MiB)
ZSTD_LEVEL = 1
ZSTD_WINDOW_LOG_MAX = 24
#: largest magnitude a float16 scale or offset holds, with room for rounding
_F16_LIMIT = float(np.finfo(np.float16).max) / 2

_F16, _F32, _U8, _I8 = np.dtype("<f2"), np.dtype("<f4"), np.dtype("u1"), np.dtype("i1")


@dataclass(frozen=True)
class TokenFormat:
    """A parsed token format name: ``base`` is float32, float16, int8, q (group
    quantised, fixed rate), e (entropy coded) or p (predicted, entropy coded);
    ``bits``/``group`` for q, ``steps`` for e and p."""

    name: str
    base: str
    bits: int = 0
    group: int = 0
    steps: int = 0

    @property
    def key(self) -> str:
        """Name of the reply's payload tensor."""
        return "tokens" if self.base in ("float32", "float16", "int8") else f"tokens:{self.name}"

    def group_for(self, channels: int) -> int:
        """The group size used for ``channels`` channels: ``group``, or all channels of a
        narrower model (so one format name serves the narrow test models too)."""
        g = min(self.group, channels)
        if self.base != "q" or channels < 8 or channels % g or channels % 8:
            raise CodecError(
                "bad_dtype",
                f"token format {self.name} needs a channel count divisible by 8 and "
                f"by its group {self.group} (or below it), the model has {channels}",
            )
        return g

    def check_channels(self, channels: int) -> None:
        if self.base == "q":
            self.group_for(channels)

    def payload_bytes(self, num_tokens: int, channels: int) -> int:
        """Bytes of the tensors for ``num_tokens`` tokens of one reply.  For ``e`` and ``p``
        formats this is the size *before* the entropy stage (one byte per value): the real
        size depends on the data, measure it (``bench.codecs``)."""
        if self.base in ("float32", "float16"):
            return num_tokens * channels * (4 if self.base == "float32" else 2)
        if self.base == "int8":
            return num_tokens * (channels + 4)
        per_channel = 2 * 2 * channels  # channel offsets and scales, float16
        if self.base == "q":
            groups = channels // self.group_for(channels)
            return num_tokens * (channels * self.bits // 8 + 2 * 2 * groups) + per_channel
        predictor = 2 * 2 * channels if self.base == "p" else 0
        return num_tokens * (channels + 1) + per_channel + predictor


def token_format(name: str) -> TokenFormat:
    """Parse ``float32``, ``float16``, ``int8``, ``q{bits}g{group}``, ``e{steps}`` or ``p{steps}``."""
    if not isinstance(name, str):
        raise CodecError("bad_dtype", f"token format must be a string, got {type(name).__name__}")
    m = re.fullmatch(r"float32|float16|int8|q(\d)g(\d{1,3})|([ep])(\d{1,2})", name)
    if not m:
        raise CodecError(
            "bad_dtype",
            f"unknown token format {name!r} (float32, float16, int8, q<bits>g<group> "
            f"e<steps> or p<steps>, e.g. {', '.join(TOKEN_FORMATS[3:])})",
        )
    if m.group(1) is not None:
        bits, group = int(m.group(1)), int(m.group(2))
        if bits not in QUANT_BITS or group not in QUANT_GROUPS:
            raise CodecError("bad_dtype", f"{name}: bits must be in 2..8 and the group one of {QUANT_GROUPS}")
        return TokenFormat(name, "q", bits=bits, group=group)
    if m.group(3) is not None:
        steps = int(m.group(4))
        if steps not in ENTROPY_STEPS or m.group(4).startswith("0"):
            raise CodecError("bad_dtype", f"{name}: steps must be in 1..64")
        return TokenFormat(name, m.group(3), steps=steps)
    return TokenFormat(name, name)


def _format_of(arrays: Dict[str, np.ndarray]) -> TokenFormat:
    keys = [k for k in arrays if k == "tokens" or k.startswith("tokens:")]
    if len(keys) != 1:
        raise CodecError("bad_reply", f"reply must carry exactly one token payload, found {keys or 'none'}")
    key = keys[0]
    if key == "tokens":
        dt = arrays[key].dtype
        base = {_F32: "float32", _F16: "float16", _I8: "int8"}.get(dt)
        if base is None:
            raise CodecError("bad_reply", f"tokens of dtype {dt} are not a token dtype")
        return TokenFormat(base, base)
    try:
        fmt = token_format(key[len("tokens:") :])
    except CodecError as e:
        raise CodecError("bad_reply", f"reply payload {key!r}: {e.message}") from None
    if fmt.key != key:
        raise CodecError("bad_reply", f"payload {key!r} must be sent as {fmt.key!r}")
    return fmt


# -- bit packing: 8 codes of b bits <-> b bytes (little-endian bit order)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes (< 2**bits; size divisible by 8) -> uint8 bytes, ``bits`` bytes per 8 codes."""
    c = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, 8)
    if bits == 8:
        return c.reshape(-1).copy()
    acc = np.zeros(len(c), np.uint64)
    for i in range(8):
        acc |= c[:, i].astype(np.uint64) << np.uint64(bits * i)
    return np.ascontiguousarray(acc.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :bits]).reshape(-1)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` (divisible by 8) uint8 codes."""
    p = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    if p.size * 8 != count * bits or count % 8:
        raise CodecError("bad_reply", f"{p.size} packed bytes do not hold {count} codes of {bits} bits")
    if bits == 8:
        return p.copy()
    wide = np.zeros((count // 8, 8), np.uint8)
    wide[:, :bits] = p.reshape(-1, bits)
    acc = wide.view("<u8").reshape(-1)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((count // 8, 8), np.uint8)
    for i in range(8):
        out[:, i] = (acc >> np.uint64(bits * i)) & mask
    return out.reshape(-1)


# -- zstd stage


def _zstd():
    from backports import zstd  # the PEP 784 backport (compression.zstd of Python 3.14)

    return zstd


def zstd_compress(data: np.ndarray, level: int = ZSTD_LEVEL) -> np.ndarray:
    return np.frombuffer(_zstd().compress(np.ascontiguousarray(data).tobytes(), level=level), np.uint8)


def zstd_decompress(data: np.ndarray, size: int) -> np.ndarray:
    """Exactly ``size`` bytes from one zstd frame; a frame that declares or produces any
    other size, or has trailing data, is refused (no output beyond ``size`` is made)."""
    zstd = _zstd()
    raw = memoryview(np.ascontiguousarray(data, dtype=np.uint8)).cast("B")
    try:
        declared = zstd.get_frame_info(raw).decompressed_size
        if declared is not None and declared != size:
            raise CodecError("bad_reply", f"zstd frame declares {declared} bytes, {size} expected")
        d = zstd.ZstdDecompressor(options={zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX})
        out = d.decompress(raw, max_length=size)
        if len(out) != size or not d.eof or d.unused_data:
            raise CodecError("bad_reply", f"zstd payload is not one frame of exactly {size} bytes")
    except (zstd.ZstdError, EOFError) as e:
        raise CodecError("bad_reply", f"zstd payload does not decompress: {e}") from None
    return np.frombuffer(out, np.uint8)


# -- per-channel normalisation (both q and e formats)

#: values further than this many standard deviations from their channel's mean are left out
#: of the channel statistics (one refinement pass), so a few massive activations cannot
#: coarsen the whole channel; they get a coarser step of their own (q: their group's
#: range; e: their token's shift)
OUTLIER_SIGMAS = 4.0


def channel_stats(tokens: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over a reply's tokens, outliers left out,
    as float16 (what is sent); a constant channel gets scale 1."""
    c = tokens.shape[-1]
    flat = tokens.reshape(-1, c)
    if not len(flat):
        return np.zeros(c, np.float16), np.ones(c, np.float16)
    count = len(flat)
    s1 = flat.sum(axis=0, dtype=np.float64)
    s2 = np.einsum("ij,ij->j", flat, flat, dtype=np.float64)
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    rows, cols = np.nonzero(np.abs(flat - mean.astype(np.float32)) > OUTLIER_SIGMAS * std.astype(np.float32))
    if len(cols):  # take the outliers' share out of the sums
        v = flat[rows, cols].astype(np.float64)
        n = count - np.bincount(cols, minlength=c)
        mean = (s1 - np.bincount(cols, v, minlength=c)) / n
        std = np.sqrt(np.maximum((s2 - np.bincount(cols, v * v, minlength=c)) / n - mean**2, 0.0))
    if max(float(np.abs(mean).max(initial=0)), float(std.max(initial=0))) > _F16_LIMIT:
        raise ValueError(f"token values beyond +-{_F16_LIMIT:g} do not fit the float16 channel statistics")
    mean16 = mean.astype(np.float16)
    std16 = std.astype(np.float16)
    std16[~(std16.astype(np.float32) > 0)] = 1.0  # constant (or subnormal-spread) channels
    return mean16, std16


def _normalize(tokens: np.ndarray, mean16: np.ndarray, std16: np.ndarray) -> np.ndarray:
    return (tokens - mean16.astype(np.float32)) / std16.astype(np.float32)


def _denormalize(z: np.ndarray, mean16: np.ndarray, std16: np.ndarray) -> np.ndarray:
    return z * std16.astype(np.float32) + mean16.astype(np.float32)


# -- group quantisation (q formats)


def quantize_groups(x: np.ndarray, bits: int, group: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., C) float32 -> codes uint8 (..., C), scales and offsets float16 (..., C/group):
    asymmetric, each group of ``group`` channels spans its own [min, max] in 2**bits levels."""
    lead, channels = x.shape[:-1], x.shape[-1]
    g = x.reshape(*lead, channels // group, group)
    lo, hi = g.min(axis=-1), g.max(axis=-1)
    levels = (1 << bits) - 1
    if max(float(np.abs(lo).max(initial=0)), float(np.abs(hi).max(initial=0))) > _F16_LIMIT:
        raise ValueError(f"normalised token values beyond +-{_F16_LIMIT:g} do not fit float16 group scales")
    offset = lo.astype(np.float16)
    scale = ((hi - offset.astype(np.float32)) / levels).astype(np.float16)
    # a scale rounded down would clip the group maximum: take the next float16 up
    short = scale.astype(np.float32) * levels < hi - offset.astype(np.float32)
    scale = np.where(short, np.nextafter(scale, np.float16(np.inf)), scale)
    s32 = scale.astype(np.float32)[..., None]
    inv = np.divide(1.0, s32, out=np.zeros_like(s32), where=s32 > 0)
    codes = np.rint((g - offset.astype(np.float32)[..., None]) * inv)
    codes = np.clip(codes, 0, levels).astype(np.uint8).reshape(*lead, channels)
    return codes, scale, offset


def dequantize_groups(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, group: int) -> np.ndarray:
    lead, channels = codes.shape[:-1], codes.shape[-1]
    g = codes.reshape(*lead, channels // group, group).astype(np.float32)
    out = g * scale.astype(np.float32)[..., None] + offset.astype(np.float32)[..., None]
    return out.reshape(*lead, channels)


# -- uniform quantisation for the entropy stage (e formats)


def quantize_uniform(z: np.ndarray, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """Normalised (h, w, C) -> int8 codes ``round(z * steps / 2**shift)`` and the per-token
    uint8 ``shift`` that keeps every code within +-127 (0 for all but outlier tokens)."""
    peak = np.abs(z).max(axis=-1, initial=0.0) * steps if z.size else np.zeros(z.shape[:-1], np.float32)
    shift = np.ceil(np.log2(np.maximum(peak, 1e-30) / 127.0)).clip(0, None)
    if shift.size and shift.max() > MAX_SHIFT:
        raise ValueError("normalised token values too large for the entropy format")
    shift = shift.astype(np.uint8)
    step = np.ldexp(np.float32(1.0 / steps), shift.astype(np.int32))[..., None]
    codes = np.clip(np.rint(z / step), -127, 127).astype(np.int8)
    return codes, shift


def dequantize_uniform(codes: np.ndarray, shift: np.ndarray, steps: int) -> np.ndarray:
    step = np.ldexp(np.float32(1.0 / steps), shift.astype(np.int32))[..., None]
    return codes.astype(np.float32) * step


# -- spatial prediction (p formats)

#: a predictor weight beyond this is refused on decoding (fitted weights are about 0.5)
MAX_PREDICTOR_WEIGHT = 2.0


def fit_predictor(z: np.ndarray) -> np.ndarray:
    """Per-channel weights (2, C) float16 of the least-squares prediction of each token from
    its left and upper neighbours (zeros when the reply is too small to fit them)."""
    h, w, c = z.shape
    if h < 2 or w < 2:
        return np.zeros((2, c), np.float16)
    y = z[1:, 1:].reshape(-1, c).astype(np.float64)
    a = z[1:, :-1].reshape(-1, c).astype(np.float64)
    b = z[:-1, 1:].reshape(-1, c).astype(np.float64)
    aa, bb, ab = (a * a).sum(0), (b * b).sum(0), (a * b).sum(0)
    ay, by = (a * y).sum(0), (b * y).sum(0)
    det = aa * bb - ab * ab
    ok = det > 1e-9 * np.maximum(aa * bb, 1e-30)
    wl = np.where(ok, (ay * bb - by * ab) / np.where(ok, det, 1), 0.0)
    wu = np.where(ok, (by * aa - ay * ab) / np.where(ok, det, 1), 0.0)
    return np.clip(np.stack([wl, wu]), -MAX_PREDICTOR_WEIGHT / 2, MAX_PREDICTOR_WEIGHT / 2).astype(np.float16)


def _diagonals(h: int, w: int):
    """Token rows and columns by anti-diagonal, and which of them lie on the first row or
    column: every token's left and upper neighbours lie on the previous diagonal, so each
    diagonal is predicted in one vectorised step."""
    for d in range(h + w - 1):
        i = np.arange(max(0, d - w + 1), min(h, d + 1))
        j = d - i
        yield i, j, np.flatnonzero((i == 0) | (j == 0))


def _prediction(
    rec: np.ndarray, i: np.ndarray, j: np.ndarray, border: np.ndarray, wl: np.ndarray, wu: np.ndarray
) -> np.ndarray:
    """Prediction of tokens (i, j) from the reconstruction ``rec``, padded with a zero first
    row and column; a token on the first row or column uses its one neighbour with both
    weights, the first token is predicted as 0."""
    left, up = rec[i + 1, j], rec[i, j + 1]
    pred = wl * left + wu * up
    if border.size:
        pred[border] += wu * left[border] + wl * up[border]
    return pred


def quantize_predicted(z: np.ndarray, steps: int, weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Closed-loop DPCM of normalised (h, w, C) tokens: int8 codes of each token's residual
    from its prediction, and per-token shifts as in :func:`quantize_uniform`."""
    h, w, c = z.shape
    wl, wu = (weights[k].astype(np.float32) for k in (0, 1))
    rec = np.zeros((h + 1, w + 1, c), np.float32)
    codes = np.zeros((h, w, c), np.int8)
    shift = np.zeros((h, w), np.uint8)
    inv = np.float32(1.0 / steps)
    for i, j, border in _diagonals(h, w):
        pred = _prediction(rec, i, j, border, wl, wu)
        scaled = (z[i, j] - pred) * np.float32(steps)
        q = np.rint(scaled)
        if np.abs(q).max(initial=0) <= 127:  # the usual case: no token needs a coarser step
            codes[i, j] = q
            rec[i + 1, j + 1] = pred + q * inv
            continue
        q, s = quantize_uniform((z[i, j] - pred)[None], steps)
        codes[i, j], shift[i, j] = q[0], s[0]
        rec[i + 1, j + 1] = pred + dequantize_uniform(q, s, steps)[0]
    return codes, shift


def dequantize_predicted(codes: np.ndarray, shift: np.ndarray, steps: int, weights: np.ndarray) -> np.ndarray:
    h, w, c = codes.shape
    wl, wu = (weights[k].astype(np.float32) for k in (0, 1))
    residual = dequantize_uniform(codes, shift, steps)
    rec = np.zeros((h + 1, w + 1, c), np.float32)
    for i, j, border in _diagonals(h, w):
        rec[i + 1, j + 1] = _prediction(rec, i, j, border, wl, wu) + residual[i, j]
    return rec[1:, 1:]


# -- pack / unpack


def pack_tokens(tokens: np.ndarray, fmt: str) -> List[Tuple[str, np.ndarray]]:
    """(h, w, C) float tokens -> named arrays for the reply, in format ``fmt``."""
    f = token_format(fmt)
    tokens = np.asarray(tokens, dtype=np.float32)
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (h, w, C), got {tokens.shape}")
    if f.base == "float32":
        return [("tokens", tokens)]
    if f.base == "float16":
        return [("tokens", tokens.astype(np.float16))]
    if not np.isfinite(tokens).all():
        raise ValueError("tokens hold non-finite values")
    if f.base == "int8":
        scale = np.abs(tokens).max(axis=-1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(tokens / scale[..., None]), -127, 127).astype(np.int8)
        return [("tokens", q), ("scales", scale)]
    f.check_channels(tokens.shape[2])
    mean16, std16 = channel_stats(tokens)
    z = _normalize(tokens, mean16, std16)
    stats = [("channel_offsets", mean16), ("channel_scales", std16)]
    if f.base == "q":
        h, w, c = tokens.shape
        codes, scale, offset = quantize_groups(z, f.bits, f.group_for(c))
        payload = pack_bits(codes, f.bits).reshape(h, w, c * f.bits // 8)
        return [(f.key, payload), ("scales", scale), ("offsets", offset)] + stats
    if f.base == "p":
        weights = fit_predictor(z)
        codes, shift = quantize_predicted(z, f.steps, weights)
        stats.append(("predictor", weights))
    else:
        codes, shift = quantize_uniform(z, f.steps)
    # channel-major order: each channel's codes are contiguous (the entropy stage adapts better)
    payload = zstd_compress(np.ascontiguousarray(codes.transpose(2, 0, 1)))
    return [(f.key, payload), ("shifts", shift)] + stats


def _require(arrays: Dict[str, np.ndarray], name: str, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    a = arrays.get(name)
    if a is None or a.dtype != dtype or tuple(a.shape) != tuple(shape):
        got = "missing" if a is None else f"{a.dtype} {list(a.shape)}"
        raise CodecError("bad_reply", f"{name!r} must be {dtype} {list(shape)}, got {got}")
    return a


def _finite(a: np.ndarray, name: str, positive: bool = False) -> None:
    a32 = a.astype(np.float32)
    if not np.isfinite(a32).all() or (positive and not (a32 > 0).all()):
        raise CodecError("bad_reply", f"{name!r} must be finite{' and > 0' if positive else ''}")


_EXTRA = {
    "float32": (),
    "float16": (),
    "int8": ("scales",),
    "q": ("scales", "offsets", "channel_offsets", "channel_scales"),
    "e": ("shifts", "channel_offsets", "channel_scales"),
    "p": ("shifts", "channel_offsets", "channel_scales", "predictor"),
}


def unpack_tokens(
    arrays: Dict[str, np.ndarray], expected_shape: Tuple[int, int, int], expected_format: Optional[str] = None
) -> np.ndarray:
    """Reply arrays -> (h, w, C) float32 tokens. The format is read from the tensors'
    names and dtypes; every tensor's shape must fit ``expected_shape``, no other tensor
    may be present, and when ``expected_format`` is given the reply must be in it."""
    f = _format_of(arrays)
    if expected_format is not None and f.name != token_format(expected_format).name:
        raise CodecError("bad_reply", f"reply tokens are {f.name}, {expected_format} was requested")
    h, w, c = (int(v) for v in expected_shape)
    wanted = {f.key, *_EXTRA[f.base]}
    if set(arrays) != wanted:
        raise CodecError("bad_reply", f"a {f.name} reply carries {sorted(wanted)}, got {sorted(arrays)}")
    if f.base in ("float32", "float16"):
        return _require(arrays, "tokens", arrays["tokens"].dtype, (h, w, c)).astype(np.float32)
    if f.base == "int8":
        q = _require(arrays, "tokens", _I8, (h, w, c))
        scales = _require(arrays, "scales", _F32, (h, w))
        _finite(scales, "scales")
        return q.astype(np.float32) * scales[..., None]
    f.check_channels(c)
    mean16 = _require(arrays, "channel_offsets", _F16, (c,))
    std16 = _require(arrays, "channel_scales", _F16, (c,))
    _finite(mean16, "channel_offsets")
    _finite(std16, "channel_scales", positive=True)
    if f.base == "q":
        group = f.group_for(c)
        groups = c // group
        scales = _require(arrays, "scales", _F16, (h, w, groups))
        offsets = _require(arrays, "offsets", _F16, (h, w, groups))
        _finite(scales, "scales")
        _finite(offsets, "offsets")
        if (scales.astype(np.float32) < 0).any():
            raise CodecError("bad_reply", "'scales' must be >= 0")
        packed = _require(arrays, f.key, _U8, (h, w, c * f.bits // 8))
        codes = unpack_bits(packed, f.bits, h * w * c).reshape(h, w, c)
        z = dequantize_groups(codes, scales, offsets, group)
    else:
        payload = arrays[f.key]
        if payload.dtype != _U8 or payload.ndim != 1:
            raise CodecError("bad_reply", f"{f.key!r} must be a 1-D uint8 buffer")
        shifts = _require(arrays, "shifts", _U8, (h, w))
        if shifts.size and int(shifts.max()) > MAX_SHIFT:
            raise CodecError("bad_reply", f"'shifts' above {MAX_SHIFT}")
        codes = zstd_decompress(payload, h * w * c).view(np.int8).reshape(c, h, w).transpose(1, 2, 0)
        if codes.size and int(codes.min()) < -127:
            raise CodecError("bad_reply", "entropy-coded tokens hold the code -128")
        if f.base == "p":
            weights = _require(arrays, "predictor", _F16, (2, c))
            _finite(weights, "predictor")
            if (np.abs(weights.astype(np.float32)) > MAX_PREDICTOR_WEIGHT).any():
                raise CodecError("bad_reply", f"'predictor' weights beyond +-{MAX_PREDICTOR_WEIGHT}")
            z = dequantize_predicted(codes, shifts, f.steps, weights)
        else:
            z = dequantize_uniform(codes, shifts, f.steps)
    out = _denormalize(z, mean16, std16)
    if not np.isfinite(out).all():  # finite scales can still overflow float32 in theory
        raise CodecError("bad_reply", "decoded tokens are not finite")
    return out
