"""The edge <-> remote wire format (transport-agnostic; no ZeroMQ here).

A message is a list of frames: frame 0 is a UTF-8 JSON header, the following
frames are raw little-endian tensor buffers described, in order, by the
header's ``tensors`` list (``name``, ``dtype``, ``shape``).  Nothing is ever
pickled.  Every field is validated before use; violations raise
:class:`WireError` with a machine-readable ``code`` that the server echoes in
an error reply.

Header fields (protocol version 2)::

  {"v": 2, "type": "encode", "id": "<=64 chars", "model": "vit_b", "mode": "paper",
   "tile": {"rows": [r0, r1], "cols": [c0, c1], "index": 0}, "budget_ms": 2000,
   "reply_dtype": "float16", "tensors": [{"name": "pixels", "dtype": "uint8", "shape": [h, w, 3]}]}
  compressed pixels add  "pixels": {"codec": "png" | "jpeg" | "webp", "shape": [h, w, 3]}
   and send the file bytes as the "pixels" tensor: {"dtype": "uint8", "shape": [n]}
  {"v": 2, "type": "encoded", "id": ..., "tensors": [{"name": "tokens", ...}, ("scales"), ...],
   "timing": {"queue_s": .., "compute_s": ..}}
  {"v": 2, "type": "info"} -> {"v": 1, "type": "info", "model": .., "modes": [..], ...}
  {"v": 2, "type": "error", "id": ..., "code": "bad_shape", "message": "..."}

``window.index`` (optional, default 0) is the edge's number for the window; the
token grid position is ``rows`` / ``cols`` (token units, end exclusive).

Error codes: the codec's own (``empty``, ``too_large``, ``header_too_large``,
``bad_header``, ``bad_version``, ``bad_type``, ``bad_id``, ``frame_count``,
``bad_dtype``, ``bad_shape``, ``bad_length``, ``bad_tile``, ``bad_deadline``,
``bad_pixel_codec``, ``bad_pixels``, ``pixels_too_large``),
``bad_reply`` (raised on the edge by :func:`unpack_tokens` for a reply whose
tokens do not fit the request; never sent by a server), and the server's
(``wrong_model``, ``bad_mode``, ``deadline_expired``, ``busy``, ``internal``).
Over ZeroMQ the server's ``MAXMSGSIZE`` bounds each *frame*: a
larger frame makes libzmq close the connection without a reply (the client's
deadline then fires); the codec bounds the whole message.

Pixels go up as uint8 RGB (the resized, unnormalised frame crop, exactly the
values SAM's preprocessing starts from), raw or compressed (:attr:`EncodeRequest.pixel_codec`,
decoded here under strict limits, so a server gets the checks with the request); tokens
come back in one of :data:`TOKEN_DTYPES` (float32, float16, int8 with one float32 scale
per token, and the compressed ``q``/``e`` formats of :mod:`.codecs`).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import codecs
from .codecs import CodecError
from .geometry import PATCH_SIZE, TOKEN_GRID, Tile

PROTOCOL_VERSION = 2  # 2: the request names its "tile" (was "window")
MAX_HEADER_BYTES = 16 * 1024
#: the largest tensor dimension (1-D byte payloads, compressed pixels and tokens, reach
#: megabytes); the frame's length must equal what the shape declares in any case
MAX_DIM = 1 << 28
MAX_ID_CHARS = 64
# One window is at most the whole 1024x1024x3 frame: 3 MiB of pixels.
MAX_PIXEL_BYTES = (TOKEN_GRID * PATCH_SIZE) ** 2 * 3
# Header plus all pixel bytes, with room to spare; servers also set ZMQ_MAXMSGSIZE.
MAX_REQUEST_BYTES = MAX_PIXEL_BYTES + MAX_HEADER_BYTES + 4096

DTYPES: Dict[str, np.dtype] = {
    "uint8": np.dtype("<u1"),
    "int8": np.dtype("<i1"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
}
#: token formats a request may ask for (the whole q{b}g{g} / e{k} families decode, see codecs)
TOKEN_DTYPES = codecs.TOKEN_FORMATS
PIXEL_CODECS = codecs.PIXEL_CODECS
#: The edge's default wire (node parameters ``wire_precision`` and ``pixel_codec``, the edge
#: configuration): by issue 10's rule, the smallest token format and pixel codec whose embedding
#: cosine to the uncompressed run is >= 0.999 (worst image) and whose point-mask IoU is >= 0.98,
#: measured at vit_b's and vit_h's real widths with RANDOM weights (docs/wire.md, which also says
#: how to re-check it on a real checkpoint).  ``p6``: vit_h 2.54 MB per frame (float16: 10.49 MB);
#: ``jpeg444:90``: 0.33 MB per native-resolution 1024x1024 frame (raw: 3.15 MB).
DEFAULT_TOKEN_FORMAT = "p6"
DEFAULT_PIXEL_CODEC = "jpeg444:90"
#: the rule's bounds (against the same model's float32 tokens and raw pixels)
RULE_MIN_EMBEDDING_COSINE = 0.999
RULE_MIN_POINT_IOU = 0.98
MESSAGE_TYPES = ("encode", "encoded", "info", "error")

BytesLike = Union[bytes, bytearray, memoryview]


class WireError(ValueError):
    """A message that violates the protocol. ``code`` goes into error replies."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def new_request_id() -> str:
    return uuid.uuid4().hex


def _frame_buffer(frame) -> memoryview:
    if hasattr(frame, "buffer"):  # zmq.Frame
        frame = frame.buffer
    return memoryview(frame)


def frames_nbytes(frames) -> int:
    """Total size of a multipart message's frames (bytes, memoryviews or zmq.Frames)."""
    return sum(_frame_buffer(f).nbytes for f in frames)


def encode_message(header: dict, arrays: Sequence[Tuple[str, np.ndarray]] = ()) -> List[BytesLike]:
    """Header dict + named arrays -> frames. Adds ``v`` and the ``tensors`` list."""
    header = dict(header)
    header["v"] = PROTOCOL_VERSION
    specs, bufs = [], []
    for name, arr in arrays:
        dt = np.dtype(arr.dtype).newbyteorder("<")
        kind = next((k for k, v in DTYPES.items() if v == dt), None)
        if kind is None:
            raise WireError("bad_dtype", f"tensor {name!r} has unsupported dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=dt)
        specs.append({"name": name, "dtype": kind, "shape": list(arr.shape)})
        bufs.append(memoryview(arr).cast("B") if arr.size else b"")
    header["tensors"] = specs
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError("header_too_large", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    return [raw] + bufs


def decode_message(frames: Sequence, max_total_bytes: int = MAX_REQUEST_BYTES) -> Tuple[dict, Dict[str, np.ndarray]]:
    """Frames -> (header, {name: array}); validates everything before touching buffers.

    Arrays are read-only views of the frames (no copy).
    """
    if not frames:
        raise WireError("empty", "empty message")
    total = frames_nbytes(frames)
    if total > max_total_bytes:
        raise WireError("too_large", f"message of {total} bytes exceeds the limit of {max_total_bytes}")
    head = _frame_buffer(frames[0])
    if head.nbytes > MAX_HEADER_BYTES:
        raise WireError("header_too_large", f"header of {head.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(head.tobytes().decode("utf-8"))
    except RecursionError:
        raise WireError("bad_header", "header JSON is nested too deeply") from None
    except ValueError as e:  # not UTF-8, not JSON, or a number json will not convert (> 4300 digits)
        raise WireError("bad_header", f"header is not readable UTF-8 JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise WireError("bad_header", "header must be a JSON object")
    v = header.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise WireError("bad_version", f"protocol version {v!r} is not supported (this end speaks {PROTOCOL_VERSION})")
    mtype = header.get("type")
    if mtype not in MESSAGE_TYPES:
        raise WireError("bad_type", f"unknown message type {mtype!r}")
    rid = header.get("id")
    if rid is not None and (not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID_CHARS):
        raise WireError("bad_id", f"id must be a string of 1..{MAX_ID_CHARS} characters")
    specs = header.get("tensors", [])
    if not isinstance(specs, list):
        raise WireError("bad_header", "'tensors' must be a list")
    if len(specs) != len(frames) - 1:
        raise WireError("frame_count", f"header describes {len(specs)} tensors but {len(frames) - 1} buffers followed")
    arrays: Dict[str, np.ndarray] = {}
    for spec, frame in zip(specs, frames[1:]):
        if not isinstance(spec, dict):
            raise WireError("bad_header", "each tensor spec must be an object")
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or not name or name in arrays:
            raise WireError("bad_header", f"bad or duplicate tensor name {name!r}")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise WireError("bad_dtype", f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        if (
            not isinstance(shape, list)
            or len(shape) > 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape)
        ):
            raise WireError("bad_shape", f"tensor {name!r}: shape {shape!r} must be a list of <= 4 non-negative ints")
        dt = DTYPES[dtype]
        expected = math.prod(shape) * dt.itemsize
        buf = _frame_buffer(frame)
        if buf.nbytes != expected:
            raise WireError(
                "bad_length",
                f"tensor {name!r}: {dtype}{shape} needs {expected} bytes, the frame has {buf.nbytes}",
            )
        arrays[name] = np.frombuffer(buf, dtype=dt).reshape(shape)
    return header, arrays


# ---------------------------------------------------------------------------
# Encode requests


@dataclass
class EncodeRequest:
    id: str
    model: str
    mode: str
    tile: Tile
    pixels: np.ndarray
    budget_ms: float
    reply_dtype: str = "float16"
    #: how the pixels travel: "raw", or e.g. "png", "jpeg:90", "webp:85" (codecs.pixel_codec);
    #: a parsed request holds the codec's name ("raw", "png", "jpeg", "webp")
    pixel_codec: str = "raw"


def _int_pair(value, name: str) -> Tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise WireError("bad_tile", f"window {name} must be [start, end] integers")
    a, b = value
    if not 0 <= a < b <= TOKEN_GRID:
        raise WireError("bad_tile", f"window {name} [{a}, {b}) is outside the {TOKEN_GRID}-token grid")
    return a, b


def make_encode_request(req: EncodeRequest) -> List[BytesLike]:
    """The request's frames; pixels compressed with ``req.pixel_codec`` (an empty crop,
    in SAM's padding, always goes raw)."""
    w = req.tile
    try:
        codec = codecs.pixel_codec(req.pixel_codec)
    except CodecError as e:
        raise WireError(e.code, e.message) from None
    header = {
        "type": "encode",
        "id": req.id,
        "model": req.model,
        "mode": req.mode,
        "tile": {"rows": [w.row0, w.row1], "cols": [w.col0, w.col1], "index": w.index},
        "budget_ms": float(req.budget_ms),
        "reply_dtype": req.reply_dtype,
    }
    pixels = np.asarray(req.pixels)
    if codec.name == "raw" or 0 in pixels.shape:
        return encode_message(header, [("pixels", pixels)])
    data = codecs.encode_pixels(pixels, codec.spec)
    header["pixels"] = {"codec": codec.name, "shape": list(pixels.shape)}
    return encode_message(header, [("pixels", np.frombuffer(data, np.uint8))])


def _decode_pixels(desc, pixels: np.ndarray, window: Tile) -> Tuple[np.ndarray, str]:
    """The request's ``pixels`` header object and file bytes -> (decoded RGB, codec name)."""
    if not isinstance(desc, dict) or set(desc) != {"codec", "shape"}:
        raise WireError("bad_header", "'pixels' must be an object with exactly 'codec' and 'shape'")
    codec, shape = desc["codec"], desc["shape"]
    if codec not in PIXEL_CODECS[1:]:
        raise WireError("bad_pixel_codec", f"pixel codec {codec!r} is not one of {list(PIXEL_CODECS[1:])}")
    ph, pw = window.pixel_shape
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or shape[2] != 3
        or not 0 < shape[0] <= ph
        or not 0 < shape[1] <= pw
    ):
        raise WireError(
            "bad_shape",
            f"compressed pixels of shape {shape!r} do not fit the tile's {ph}x{pw}x3 pixels (and must not be empty)",
        )
    if pixels.dtype != DTYPES["uint8"] or pixels.ndim != 1:
        raise WireError("bad_shape", "compressed pixels travel as a 1-D uint8 tensor")
    try:
        rgb = codecs.decode_pixels(
            codec, pixels, (shape[0], shape[1]), max_pixels=min(codecs.MAX_DECODED_PIXELS, ph * pw)
        )
    except CodecError as e:
        raise WireError(e.code, e.message) from None
    return rgb, codec


def parse_encode_request(header: dict, arrays: Dict[str, np.ndarray]) -> EncodeRequest:
    """Validate a decoded ``encode`` message (beyond what decode_message checks)."""
    if header.get("type") != "encode":
        raise WireError("bad_type", "not an encode request")
    rid = header.get("id")
    if not isinstance(rid, str):
        raise WireError("bad_id", "encode request needs an id")
    model, mode = header.get("model"), header.get("mode")
    if not isinstance(model, str) or not isinstance(mode, str):
        raise WireError("bad_header", "model and mode must be strings")
    win = header.get("tile")
    if not isinstance(win, dict):
        raise WireError("bad_tile", "window must be an object with rows and cols")
    r0, r1 = _int_pair(win.get("rows"), "rows")
    c0, c1 = _int_pair(win.get("cols"), "cols")
    index = win.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < TOKEN_GRID**2:
        raise WireError("bad_tile", "window index must be a small non-negative int")
    window = Tile(index, 0, 0, r0, r1, c0, c1)
    budget = header.get("budget_ms")
    if (
        not isinstance(budget, (int, float))
        or isinstance(budget, bool)
        or not math.isfinite(budget)
        or not 0 < budget <= 3_600_000
    ):
        raise WireError("bad_deadline", "budget_ms must be a positive number of milliseconds (<= 1 h)")
    reply_dtype = header.get("reply_dtype", "float16")
    try:
        codecs.token_format(reply_dtype)
    except CodecError as e:
        raise WireError("bad_dtype", f"reply_dtype: {e.message}") from None
    pixels = arrays.get("pixels")
    if pixels is None or set(arrays) != {"pixels"}:
        raise WireError("bad_header", "an encode request carries exactly one tensor, 'pixels'")
    codec = "raw"
    if "pixels" in header:
        pixels, codec = _decode_pixels(header["pixels"], pixels, window)
    if pixels.dtype != DTYPES["uint8"]:
        raise WireError("bad_dtype", f"pixels must be uint8, got {pixels.dtype}")
    ph, pw = window.pixel_shape
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] > ph or pixels.shape[1] > pw:
        raise WireError(
            "bad_shape",
            f"pixels of shape {list(pixels.shape)} do not fit the window's {ph}x{pw}x3 pixels",
        )
    return EncodeRequest(rid, model, mode, window, pixels, float(budget), reply_dtype, codec)


# ---------------------------------------------------------------------------
# Token payloads


def pack_tokens(tokens: np.ndarray, dtype: str) -> List[Tuple[str, np.ndarray]]:
    """(h, w, C) float tokens -> named arrays for the reply, in format ``dtype``
    (one of :data:`TOKEN_DTYPES` or its families; see :mod:`.codecs`).

    ``int8`` quantises each token symmetrically with its own float32 scale
    (max |value| / 127), so a token's error is at most half a step of its own range.
    """
    try:
        return codecs.pack_tokens(tokens, dtype)
    except CodecError as e:
        raise WireError(e.code, e.message) from None


def unpack_tokens(
    arrays: Dict[str, np.ndarray], expected_shape: Tuple[int, int, int], expected_format: Optional[str] = None
) -> np.ndarray:
    """Reply arrays -> (h, w, C) float32 tokens, checking the shape the edge expects (and
    the format, when ``expected_format`` is given); raises ``WireError("bad_reply")``."""
    try:
        return codecs.unpack_tokens(arrays, expected_shape, expected_format)
    except CodecError as e:
        raise WireError(e.code, e.message) from None


def fixed_rate(dtype: str) -> bool:
    """Whether a token format's payload size depends only on the shape (float32, float16, int8,
    ``q{b}g{g}``); the entropy-coded ``e{k}`` / ``p{k}`` formats' size depends on the tokens."""
    try:
        return codecs.token_format(dtype).base not in ("e", "p")
    except CodecError as e:
        raise WireError(e.code, e.message) from None


def token_bytes(num_tokens: int, channels: int, dtype: str, *, at_most: bool = False) -> int:
    """Payload bytes for ``num_tokens`` tokens of ``channels`` values in ``dtype``: exact for the
    fixed-rate formats (:func:`fixed_rate`).

    The entropy-coded ``e``/``p`` formats have no size before their data is seen: for them this
    is only *at most* the size (one byte per value before zstd, plus their side tensors; the
    measured sizes are 25-45 % of it, ``bench.codecs``), and it is refused (``bad_dtype``) unless
    the caller says ``at_most=True``, so that no caller presents the bound as the size.  Sizes of
    real replies come from :func:`frames_nbytes` or the calibration's measured bytes per token."""
    try:
        fmt = codecs.token_format(dtype)
    except CodecError as e:
        raise WireError(e.code, e.message) from None
    if fmt.base in ("e", "p") and not at_most:
        raise WireError(
            "bad_dtype",
            f"{dtype} is entropy coded: its size depends on the tokens (measure it, or ask token_bytes(..., "
            "at_most=True) for a bound)",
        )
    try:
        return fmt.payload_bytes(num_tokens, channels)
    except CodecError as e:
        raise WireError(e.code, e.message) from None


def error_reply(req_id: Optional[str], code: str, message: str) -> List[BytesLike]:
    return encode_message({"type": "error", "id": req_id, "code": code, "message": message[:1000]})
