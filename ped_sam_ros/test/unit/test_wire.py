"""The wire codec (ped_sam_ros.core.wire): round trips and every validation error.

Pure Python + numpy, no sockets: what the server and client rely on before any
byte from the network becomes an array.
"""

import json
import time

import numpy as np
import pytest

from ped_sam_ros.core import wire
from ped_sam_ros.core.geometry import Partition, Tile
from ped_sam_ros.core.wire import (
    EncodeRequest,
    WireError,
    decode_message,
    encode_message,
    error_reply,
    make_encode_request,
    pack_tokens,
    parse_encode_request,
    token_bytes,
    unpack_tokens,
)

pytestmark = pytest.mark.timeout(60)

WIN = Partition.grid(2, 2).tiles[3]  # rows [28, 64), cols [28, 64): 36x36 tokens, 576x576 px


def _tokens(shape=(5, 7, 32), seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    t = rng.normal(0, scale, shape).astype(np.float32)
    t[0, 0] = 0.0  # an all-zero token (int8 scale must not divide by zero)
    t[1, 1, 3] = 1e4  # one outlier token
    return t


def _request(window=WIN, pixels=None, **over):
    if pixels is None:
        h, w = window.pixel_shape
        pixels = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    req = EncodeRequest(
        over.pop("id", "req-1"),
        over.pop("model", "vit_b"),
        over.pop("mode", "paper"),
        window,
        pixels,
        over.pop("budget_ms", 1500),
        over.pop("reply_dtype", "float16"),
    )
    assert not over
    return req


def _roundtrip(frames):
    """Frames as they come off a socket: bytes copies."""
    return decode_message([bytes(f) for f in frames])


def _hdr(frames) -> dict:
    return json.loads(bytes(frames[0]))


def _with_header(frames, **changes):
    h = _hdr(frames)
    for k, v in changes.items():
        if v is _DELETE:
            h.pop(k, None)
        else:
            h[k] = v
    return [json.dumps(h).encode()] + [bytes(f) for f in frames[1:]]


_DELETE = object()


def _code(frames, parse=False, **kw):
    with pytest.raises(WireError) as ei:
        header, arrays = decode_message(frames, **kw)
        if parse:
            parse_encode_request(header, arrays)
    return ei.value.code


# ---------------------------------------------------------------------------
# Round trips


def test_encode_request_roundtrip():
    req = _request()
    header, arrays = _roundtrip(make_encode_request(req))
    got = parse_encode_request(header, arrays)
    assert header["v"] == wire.PROTOCOL_VERSION and header["type"] == "encode"
    assert (got.id, got.model, got.mode, got.budget_ms, got.reply_dtype) == ("req-1", "vit_b", "paper", 1500, "float16")
    assert (got.tile.row0, got.tile.row1, got.tile.col0, got.tile.col1) == (28, 64, 28, 64)
    assert got.pixels.dtype == np.uint8 and np.array_equal(got.pixels, req.pixels)
    assert not got.pixels.flags.writeable  # a view of the received buffer, not a copy


def test_empty_crop_in_padding_roundtrips():
    """Windows entirely in SAM's bottom padding carry a 0-row crop."""
    win = Partition.grid(5, 5).tiles[-1]
    px = np.zeros((0, 128, 3), np.uint8)
    got = parse_encode_request(*_roundtrip(make_encode_request(_request(win, px))))
    assert got.pixels.shape == (0, 128, 3)


def test_float32_tokens_exact():
    t = _tokens()
    frames = encode_message({"type": "encoded", "id": "x"}, pack_tokens(t, "float32"))
    _, arrays = _roundtrip(frames)
    out = unpack_tokens(arrays, t.shape)
    assert out.dtype == np.float32 and np.array_equal(out, t)


# float16 keeps 11 significant bits: relative error <= 2**-11 for normal numbers.
FLOAT16_REL_TOL = 2.0**-11


def test_float16_tokens_within_half_ulp():
    t = _tokens()
    _, arrays = _roundtrip(encode_message({"type": "encoded", "id": "x"}, pack_tokens(t, "float16")))
    out = unpack_tokens(arrays, t.shape)
    err = np.abs(out - t)
    assert np.all(err <= FLOAT16_REL_TOL * np.abs(t) + 1e-7), float((err / (np.abs(t) + 1e-7)).max())
    assert err.max() > 0  # really went through float16


def test_int8_tokens_within_half_step_of_own_scale():
    t = _tokens()
    packed = pack_tokens(t, "int8")
    assert [n for n, _ in packed] == ["tokens", "scales"]
    _, arrays = _roundtrip(encode_message({"type": "encoded", "id": "x"}, packed))
    out = unpack_tokens(arrays, t.shape)
    step = np.abs(t).max(axis=-1, keepdims=True) / 127.0
    err = np.abs(out - t)
    # at most half a quantisation step of the token's own range (+ float rounding)
    assert np.all(err <= 0.5 * step * (1 + 1e-5) + 1e-12), float((err / (step + 1e-12)).max())
    assert np.all(out[0, 0] == 0)  # zero token stays zero
    # the outlier only coarsens its own token
    assert err[1, 1].max() > 10 * err[2, 2].max()


def test_token_bytes_match_payload():
    """Exact for the fixed-rate formats; for the entropy-coded e and p formats, a bound."""
    t = _tokens((4, 6, 32))
    for dt in wire.TOKEN_DTYPES:
        frames = encode_message({"type": "encoded", "id": "x"}, pack_tokens(t, dt))
        sent = sum(memoryview(f).nbytes for f in frames[1:])
        if dt[0] in "ep":
            assert not wire.fixed_rate(dt) and sent < token_bytes(24, 32, dt, at_most=True), dt
            with pytest.raises(WireError, match="entropy coded"):
                token_bytes(24, 32, dt)  # a bound is never handed out as the size
        else:
            assert sent == token_bytes(24, 32, dt), dt


@pytest.mark.parametrize("fmt", wire.TOKEN_DTYPES)
def test_every_token_format_roundtrips_through_frames(fmt):
    t = _tokens((5, 7, 32), scale=1.0)
    _, arrays = _roundtrip(encode_message({"type": "encoded", "id": "x"}, pack_tokens(t, fmt)))
    out = unpack_tokens(arrays, t.shape, expected_format=fmt)
    assert out.shape == t.shape and out.dtype == np.float32 and np.isfinite(out).all()
    ok = np.ones(t.shape[:2], bool)
    ok[1, 1] = False  # the outlier token: only its own error bound applies
    a, b = t[ok].ravel(), out[ok].ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.98, fmt


def test_reply_in_another_format_than_requested_is_refused():
    t = _tokens((3, 4, 32))
    arrays = dict(pack_tokens(t, "q4g32"))
    with pytest.raises(WireError) as ei:
        unpack_tokens(arrays, t.shape, expected_format="e8")
    assert ei.value.code == "bad_reply"


@pytest.mark.parametrize("fmt", ["q5g64", "e8", "q3g16", "e40"])
def test_compressed_reply_formats_are_accepted_in_requests(fmt):
    got = parse_encode_request(*_roundtrip(make_encode_request(_request(reply_dtype=fmt))))
    assert got.reply_dtype == fmt


# ---------------------------------------------------------------------------
# Compressed pixels in requests


def _photo_crop(h, w, seed=2):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([120 + 90 * np.sin(x / 11.0 + c) * np.cos(y / 7.0 + c) for c in range(3)], axis=-1)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def _codec_request(codec, pixels=None, window=WIN):
    if pixels is None:
        pixels = _photo_crop(*window.pixel_shape)
    req = _request(window, pixels)
    req.pixel_codec = codec
    return req, make_encode_request(req)


def test_png_request_roundtrips_exactly_and_is_smaller():
    req, frames = _codec_request("png")
    hdr = _hdr(frames)
    assert hdr["pixels"] == {"codec": "png", "shape": list(req.pixels.shape)}
    assert hdr["tensors"][0]["dtype"] == "uint8" and len(hdr["tensors"][0]["shape"]) == 1
    got = parse_encode_request(*_roundtrip(frames))
    assert got.pixel_codec == "png" and np.array_equal(got.pixels, req.pixels)
    assert wire.frames_nbytes(frames) < wire.frames_nbytes(make_encode_request(_request(WIN, req.pixels)))


@pytest.mark.parametrize("codec,wire_name", [("jpeg:90", "jpeg"), ("jpeg444:90", "jpeg"), ("webp:90", "webp")])
def test_lossy_request_roundtrips_close(codec, wire_name):
    req, frames = _codec_request(codec)
    assert _hdr(frames)["pixels"]["codec"] == wire_name
    got = parse_encode_request(*_roundtrip(frames))
    assert got.pixel_codec == wire_name and got.pixels.shape == req.pixels.shape
    assert np.abs(got.pixels.astype(int) - req.pixels.astype(int)).mean() < 6
    assert wire.frames_nbytes(frames) < req.pixels.nbytes / 4


def test_partial_and_empty_crops_with_a_codec():
    small = Tile(0, 0, 0, 0, 14, 0, 14)
    req, frames = _codec_request("png", _photo_crop(100, 224), small)  # bottom padding: fewer rows
    assert np.array_equal(parse_encode_request(*_roundtrip(frames)).pixels, req.pixels)
    req, frames = _codec_request("jpeg", np.zeros((0, 224, 3), np.uint8), small)  # all padding: goes raw
    assert "pixels" not in _hdr(frames)
    got = parse_encode_request(*_roundtrip(frames))
    assert got.pixels.shape == (0, 224, 3) and got.pixel_codec == "raw"


def test_bad_pixel_codec_in_the_builder():
    req = _request()
    req.pixel_codec = "gif"
    with pytest.raises(WireError) as ei:
        make_encode_request(req)
    assert ei.value.code == "bad_pixel_codec"


def _with_payload(frames, payload: bytes, **pixels_header):
    h = _hdr(frames)
    h["pixels"] = dict(h.get("pixels", {}), **pixels_header)
    h["tensors"] = [{"name": "pixels", "dtype": "uint8", "shape": [len(payload)]}]
    return [json.dumps(h).encode(), payload]


def test_png_bomb_in_a_request_is_refused_before_decoding(monkeypatch):
    import cv2
    from test_codecs import png_bomb

    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoder reached"))
    _, frames = _codec_request("png")
    bomb = _with_payload(frames, png_bomb(16384))
    assert wire.frames_nbytes(bomb) < wire.MAX_REQUEST_BYTES
    t0 = time.perf_counter()
    assert _code(bomb, parse=True) == "pixels_too_large"
    assert time.perf_counter() - t0 < 1.0


def test_jpeg_declaring_a_huge_size_in_a_request(monkeypatch):
    import cv2
    from test_codecs import _patch_jpeg_size

    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoder reached"))
    _, frames = _codec_request("jpeg")
    huge = _patch_jpeg_size(bytes(frames[1]), 60000, 60000)
    assert _code(_with_payload(frames, huge), parse=True) == "pixels_too_large"


def test_compressed_pixels_must_match_the_declared_shape():
    _, frames = _codec_request("png")
    h, w = WIN.pixel_shape
    assert _code(_with_payload(frames, bytes(frames[1]), shape=[h - 16, w, 3]), parse=True) == "bad_pixels"


@pytest.mark.parametrize(
    "change,code",
    [
        ({"codec": "gif"}, "bad_pixel_codec"),
        ({"codec": "raw"}, "bad_pixel_codec"),
        ({"codec": None}, "bad_pixel_codec"),
        ({"shape": [577, 576, 3]}, "bad_shape"),  # larger than the tile
        ({"shape": [0, 576, 3]}, "bad_shape"),
        ({"shape": [576, 576, 4]}, "bad_shape"),
        ({"shape": [576, 576]}, "bad_shape"),
        ({"shape": [576.0, 576, 3]}, "bad_shape"),
        ({"shape": "576x576x3"}, "bad_shape"),
        ({"quality": 90}, "bad_header"),
    ],
)
def test_bad_pixels_header(change, code):
    _, frames = _codec_request("png")
    assert _code(_with_payload(frames, bytes(frames[1]), **change), parse=True) == code


def test_pixels_header_must_be_an_object():
    _, frames = _codec_request("png")
    assert _code(_with_header(frames, pixels="png"), parse=True) == "bad_header"


def test_compressed_pixels_must_be_a_flat_byte_tensor():
    _, frames = _codec_request("png")
    h = _hdr(frames)
    payload = bytes(frames[1])
    h["tensors"] = [{"name": "pixels", "dtype": "uint8", "shape": [1, len(payload)]}]
    assert _code([json.dumps(h).encode(), payload], parse=True) == "bad_shape"


def test_garbage_with_a_codec_is_refused():
    _, frames = _codec_request("jpeg")
    assert _code(_with_payload(frames, b"\xff\xd8" + bytes(500) + b"\xff\xd9"), parse=True) == "bad_pixels"
    assert _code(_with_payload(frames, bytes(frames[1]), codec="png"), parse=True) == "bad_pixels"


def test_error_reply_roundtrip_and_truncated_message():
    header, arrays = _roundtrip(error_reply("abc", "bad_shape", "x" * 5000))
    assert header["type"] == "error" and header["id"] == "abc" and header["code"] == "bad_shape"
    assert len(header["message"]) == 1000 and arrays == {}
    header, _ = _roundtrip(error_reply(None, "bad_header", "?"))
    assert header["id"] is None


def test_encode_message_refuses_unsupported_dtype():
    with pytest.raises(WireError) as ei:
        encode_message({"type": "encoded"}, [("tokens", np.zeros(3, np.float64))])
    assert ei.value.code == "bad_dtype"


# ---------------------------------------------------------------------------
# Validation: every error code


def test_empty_message():
    assert _code([]) == "empty"


def test_too_large():
    assert _code([b"{}", b"\0" * 100], max_total_bytes=50) == "too_large"


def test_header_too_large():
    big = json.dumps({"v": wire.PROTOCOL_VERSION, "type": "info", "pad": "x" * wire.MAX_HEADER_BYTES}).encode()
    assert _code([big]) == "header_too_large"
    with pytest.raises(WireError) as ei:
        encode_message({"type": "info", "pad": "x" * wire.MAX_HEADER_BYTES})
    assert ei.value.code == "header_too_large"


@pytest.mark.parametrize("garbage", [b"", b"\xff\xfe\x00garbage", b"not json", b'{"v": 1,', b"[1, 2]", b"42", b"null"])
def test_garbage_header(garbage):
    assert _code([garbage]) == "bad_header"


def test_deeply_nested_json_header_is_refused():
    """A 16 KiB header of '[' nests deeper than json's recursion limit: refused
    as a bad header, not a crash."""
    with pytest.raises(WireError) as e:
        decode_message([b"[" * (wire.MAX_HEADER_BYTES - 1)])
    assert e.value.code == "bad_header"


@pytest.mark.parametrize("number", [b"7" * 5000, b"-" + b"7" * 4301])
def test_header_number_json_will_not_convert_is_a_wire_error(number):
    """json refuses integers of more than 4300 digits with a plain ValueError: it must
    come out as WireError bad_header (the server answers it, the client reports it)."""
    raw = b'{"v": 2, "type": "info", "id": "n-1", "n": ' + number + b"}"
    assert len(raw) <= wire.MAX_HEADER_BYTES
    with pytest.raises(WireError) as ei:
        decode_message([raw])
    assert ei.value.code == "bad_header" and "4300" in str(ei.value)


@pytest.mark.parametrize("v", [None, 0, 1, 3, "2", 99, 2.0, True])
def test_unknown_version(v):
    frames = _with_header(make_encode_request(_request()), v=v if v is not None else _DELETE)
    assert _code(frames) == "bad_version"


@pytest.mark.parametrize("t", ["encrypt", None, 5, "ENCODE"])
def test_unknown_type(t):
    assert _code(_with_header(make_encode_request(_request()), type=t)) == "bad_type"


@pytest.mark.parametrize("rid", ["", "x" * 65, 12, ["a"]])
def test_bad_id(rid):
    assert _code(_with_header(make_encode_request(_request()), id=rid)) == "bad_id"


def test_encode_without_id():
    frames = _with_header(make_encode_request(_request()), id=_DELETE)
    assert _code(frames, parse=True) == "bad_id"


def test_truncated_buffer():
    frames = [bytes(f) for f in make_encode_request(_request())]
    assert _code([frames[0], frames[1][:-1]]) == "bad_length"
    assert _code([frames[0], frames[1] + b"\0"]) == "bad_length"


def test_missing_and_extra_frames():
    frames = [bytes(f) for f in make_encode_request(_request())]
    assert _code(frames[:1]) == "frame_count"  # header promises a buffer that never came
    assert _code(frames + [b"extra"]) == "frame_count"
    assert _code(frames + [b""] * 50) == "frame_count"


def test_shape_byte_mismatch():
    frames = make_encode_request(_request())
    h, w = WIN.pixel_shape
    spec = [{"name": "pixels", "dtype": "uint8", "shape": [h, w - 16, 3]}]
    assert _code(_with_header(frames, tensors=spec)) == "bad_length"


def test_huge_declared_shape_is_refused_without_allocating():
    frames = make_encode_request(_request())
    # 2**20 x 2**20 x 3 bytes = 3 TiB declared, a few hundred KiB present
    spec = [{"name": "pixels", "dtype": "uint8", "shape": [1 << 20, 1 << 20, 3]}]
    t0 = time.perf_counter()
    assert _code(_with_header(frames, tensors=spec)) == "bad_length"
    assert time.perf_counter() - t0 < 0.5
    # dimensions beyond MAX_DIM, negative, non-int, too many axes
    for shape in ([wire.MAX_DIM + 1, 1, 3], [-1, 4, 3], [1.5, 2, 3], [1, 1, 1, 1, 1], "576x576x3", [True, 1, 3]):
        spec = [{"name": "pixels", "dtype": "uint8", "shape": shape}]
        assert _code(_with_header(frames, tensors=spec)) == "bad_shape", shape


@pytest.mark.parametrize(
    "spec",
    [
        "pixels",
        [["pixels", "uint8", [1]]],
        [{"name": "", "dtype": "uint8", "shape": [1]}],
    ],
)
def test_bad_tensor_specs(spec):
    frames = [json.dumps({"v": wire.PROTOCOL_VERSION, "type": "encode", "tensors": spec}).encode(), b"\0"]
    assert _code(frames) == "bad_header"


def test_duplicate_tensor_name():
    frames = [
        json.dumps(
            {
                "v": wire.PROTOCOL_VERSION,
                "type": "encoded",
                "tensors": [
                    {"name": "t", "dtype": "uint8", "shape": [1]},
                    {"name": "t", "dtype": "uint8", "shape": [1]},
                ],
            }
        ).encode(),
        b"\0",
        b"\0",
    ]
    assert _code(frames) == "bad_header"


@pytest.mark.parametrize("dtype", ["float64", "object", "<f4", "uint16", None, ["uint8"], {"uint8": 1}, 8])
def test_unknown_dtype(dtype):
    frames = make_encode_request(_request())
    h, w = WIN.pixel_shape
    spec = [{"name": "pixels", "dtype": dtype, "shape": [h, w, 3]}]
    assert _code(_with_header(frames, tensors=spec)) == "bad_dtype"


def test_wrong_pixel_dtype():
    """Well-formed float32 tensor, but pixels must be uint8."""
    px = np.zeros((224, 224, 3), np.float32)
    frames = encode_message(
        {
            "type": "encode",
            "id": "r",
            "model": "vit_b",
            "mode": "paper",
            "tile": {"rows": [0, 14], "cols": [0, 14]},
            "budget_ms": 100,
        },
        [("pixels", px)],
    )
    assert _code(frames, parse=True) == "bad_dtype"


def test_bad_reply_dtype():
    frames = _with_header(make_encode_request(_request()), reply_dtype="bfloat16")
    assert _code(frames, parse=True) == "bad_dtype"


@pytest.mark.parametrize(
    "window",
    [
        {"rows": [0, 65], "cols": [0, 14]},  # past the 64-token grid
        {"rows": [-1, 14], "cols": [0, 14]},
        {"rows": [14, 14], "cols": [0, 14]},  # empty
        {"rows": [20, 10], "cols": [0, 14]},  # reversed
        {"rows": [0, 14]},  # cols missing
        {"rows": [0, 14.0], "cols": [0, 14]},
        {"rows": [0, 14, 28], "cols": [0, 14]},
        {"rows": [0, 14], "cols": [0, 14], "index": -1},
        {"rows": [0, 14], "cols": [0, 14], "index": 1 << 20},
        "0:14,0:14",
    ],
)
def test_window_out_of_grid(window):
    frames = _with_header(make_encode_request(_request()), tile=window)
    assert _code(frames, parse=True) == "bad_tile"


def test_pixels_bigger_than_window():
    small = Tile(0, 0, 0, 0, 14, 0, 14)  # 224x224 px
    px = np.zeros((224, 240, 3), np.uint8)
    assert _code(make_encode_request(_request(small, px)), parse=True) == "bad_shape"
    px = np.zeros((224, 224, 4), np.uint8)  # RGBA
    assert _code(make_encode_request(_request(small, px)), parse=True) == "bad_shape"
    px = np.zeros((224, 224), np.uint8)  # mono
    assert _code(make_encode_request(_request(small, px)), parse=True) == "bad_shape"
    # smaller than the window is fine (the bottom/right padding of SAM)
    parse_encode_request(*_roundtrip(make_encode_request(_request(small, np.zeros((100, 224, 3), np.uint8)))))


@pytest.mark.parametrize("budget", [0, -5, "100", None, True, 3_600_001, float("nan"), float("inf")])
def test_bad_budget(budget):
    frames = make_encode_request(_request())
    h = _hdr(frames)
    h["budget_ms"] = budget
    raw = json.dumps(h).encode()  # NaN/Infinity are what Python's json writes for them
    assert _code([raw] + [bytes(f) for f in frames[1:]], parse=True) == "bad_deadline"


def test_encode_needs_exactly_one_pixels_tensor():
    base = _hdr(make_encode_request(_request()))
    base.pop("tensors"), base.pop("v")
    none = encode_message(base)
    assert _code(none, parse=True) == "bad_header"
    two = encode_message(base, [("pixels", np.zeros((16, 16, 3), np.uint8)), ("extra", np.zeros(1, np.uint8))])
    assert _code(two, parse=True) == "bad_header"
    other = encode_message(base, [("image", np.zeros((16, 16, 3), np.uint8))])
    assert _code(other, parse=True) == "bad_header"


def test_model_and_mode_must_be_strings():
    assert _code(_with_header(make_encode_request(_request()), model=3), parse=True) == "bad_header"
    assert _code(_with_header(make_encode_request(_request()), mode=None), parse=True) == "bad_header"


@pytest.mark.parametrize("case", ["missing", "shape", "scales", "dtype"])
def test_bad_reply(case):
    t = _tokens((3, 4, 8))
    arrays = dict(pack_tokens(t, "int8"))
    if case == "missing":
        arrays = {}
    elif case == "shape":
        arrays = dict(pack_tokens(t[:2], "float16"))
    elif case == "scales":
        arrays.pop("scales")
    elif case == "dtype":
        arrays = {"tokens": t.astype(np.uint8)}
    with pytest.raises(WireError) as ei:
        unpack_tokens(arrays, (3, 4, 8))
    assert ei.value.code == "bad_reply"


def test_unknown_token_dtype_for_packing():
    with pytest.raises(WireError) as ei:
        pack_tokens(_tokens(), "bfloat16")
    assert ei.value.code == "bad_dtype"
