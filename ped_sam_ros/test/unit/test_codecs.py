"""Pixel and token codecs (ped_sam_ros.core.codecs): round trips, error bounds, and
strict decoding of hostile input (decompression bombs, lying headers, bad scales).

No sockets and no model: what a server and an edge rely on before compressed bytes
from the network become arrays.
"""

import struct
import time
import zlib

import numpy as np
import pytest

from ped_sam_ros.core import codecs
from ped_sam_ros.core.codecs import CodecError

pytestmark = pytest.mark.timeout(120)


def _photo(h=96, w=128, seed=0):
    """A smooth image with some texture (JPEG/WebP behave as on photos, not on noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(x / 9.0 + c) * np.cos(y / 13.0 - c) for c in range(3)], axis=-1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _code(fn, *args, **kw):
    with pytest.raises(CodecError) as ei:
        fn(*args, **kw)
    return ei.value.code


@pytest.fixture
def no_decoder(monkeypatch):
    """Fail the test if OpenCV's decoder is reached: refusals must come from the header checks."""
    import cv2

    def refuse(*a, **k):
        raise AssertionError("cv2.imdecode was called for data that should be refused from its header")

    monkeypatch.setattr(cv2, "imdecode", refuse)


# ---------------------------------------------------------------------------
# Pixel codec specs and round trips


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("raw", ("raw", None)),
        ("png", ("png", 1)),
        ("png:9", ("png", 9)),
        ("jpeg", ("jpeg", 90)),
        ("jpeg:75", ("jpeg", 75)),
        ("webp:100", ("webp", 100)),
        ("jpeg444:95", ("jpeg", 95)),
    ],
)
def test_pixel_codec_specs(spec, expected):
    c = codecs.pixel_codec(spec)
    assert (c.name, c.quality) == expected
    assert c.spec == (spec if ":" in spec or spec == "raw" else f"{spec}:{expected[1]}")
    assert c.full_chroma == spec.startswith("jpeg444")


def test_full_chroma_jpeg_keeps_colour_detail():
    """jpeg444 keeps chroma at full resolution: colour edges survive better than with the
    default 2x2 chroma subsampling (at some cost in bytes); the server decodes both as jpeg."""
    y, x = np.mgrid[0:64, 0:64]
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0] = np.where((x // 2 + y // 2) % 2, 230, 20)  # red/blue checks of 2 px: pure chroma detail
    img[..., 2] = 250 - img[..., 0]
    img[..., 1] = 120
    errs, sizes = {}, {}
    for spec in ("jpeg:95", "jpeg444:95"):
        data = codecs.encode_pixels(img, spec)
        sizes[spec] = len(data)
        errs[spec] = np.abs(codecs.decode_pixels("jpeg", data, (64, 64)).astype(int) - img).mean()
    assert errs["jpeg444:95"] < errs["jpeg:95"] / 2, errs
    assert sizes["jpeg444:95"] > sizes["jpeg:95"]


@pytest.mark.parametrize(
    "spec", ["jpg", "jpeg444:0", "webp444", "jpeg:0", "jpeg:101", "png:10", "raw:5", "webp:", "JPEG", 90, None, "gif"]
)
def test_bad_pixel_codec_specs(spec):
    assert _code(codecs.pixel_codec, spec) == "bad_pixel_codec"


def test_png_roundtrip_is_lossless():
    img = _photo()
    data = codecs.encode_pixels(img, "png")
    assert codecs.image_dimensions("png", data) == (128, 96)
    out = codecs.decode_pixels("png", data, (96, 128))
    assert out.dtype == np.uint8 and np.array_equal(out, img)


@pytest.mark.parametrize("codec", ["jpeg:90", "webp:90"])
def test_lossy_roundtrip_is_close_and_smaller(codec):
    img = _photo(160, 144)
    data = codecs.encode_pixels(img, codec)
    name = codec.split(":")[0]
    assert codecs.image_dimensions(name, data) == (144, 160)
    out = codecs.decode_pixels(name, data, (160, 144))
    assert out.shape == img.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - img.astype(int))
    assert 0 < err.mean() < 6, err.mean()  # lossy, but close (and RGB order kept: a swap would be ~100)
    assert len(data) < img.nbytes / 3


def test_jpeg_quality_trades_bytes_for_error():
    img = _photo(128, 128)
    sizes, errs = [], []
    for q in (50, 95):
        data = codecs.encode_pixels(img, f"jpeg:{q}")
        out = codecs.decode_pixels("jpeg", data, (128, 128))
        sizes.append(len(data))
        errs.append(np.abs(out.astype(int) - img.astype(int)).mean())
    assert sizes[0] < sizes[1] and errs[0] > errs[1]


def test_encode_refuses_non_images():
    with pytest.raises(ValueError):
        codecs.encode_pixels(np.zeros((0, 16, 3), np.uint8), "png")
    with pytest.raises(ValueError):
        codecs.encode_pixels(np.zeros((16, 16, 3), np.float32), "png")
    with pytest.raises(ValueError):
        codecs.encode_pixels(np.zeros((16, 16, 3), np.uint8), "raw")


# ---------------------------------------------------------------------------
# Decompression bombs and lying headers: refused from the header, before decoding


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_bomb(side: int = 16384) -> bytes:
    """A valid PNG of zeros declaring side x side RGB pixels (805 MB decoded at 16384) in
    under 1 MB: the zlib stream repeats one fully flushed block of 256 zero rows."""
    row = b"\0" * (1 + side * 3)
    chunk = row * 256
    c = zlib.compressobj(9)
    first = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    n = side // 256
    total = len(chunk) * n
    adler = ((total % 65521) << 16) | 1  # adler32 of zeros: a stays 1, b counts the bytes
    stream = first + again * (n - 1) + b"\x03\x00" + adler.to_bytes(4, "big")
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


def _patch_jpeg_size(data: bytes, h: int, w: int) -> bytes:
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", h, w) + data[i + 9 :]


def test_png_bomb_is_refused_before_decoding(no_decoder):
    bomb = png_bomb(16384)
    assert len(bomb) < 1_000_000  # tiny on the wire
    # it really is a complete zlib stream of 16384 rows (checked on its first megabyte)
    idat = bomb[8 + 25 + 8 : -12 - 4]
    assert len(zlib.decompressobj().decompress(idat, 1 << 20)) == 1 << 20
    assert codecs.image_dimensions("png", bomb) == (16384, 16384)
    t0 = time.perf_counter()
    assert _code(codecs.decode_pixels, "png", bomb, (576, 576)) == "pixels_too_large"
    # even when the request (dishonestly) declares the same size, the pixel limit holds
    assert _code(codecs.decode_pixels, "png", bomb, (16384, 16384)) == "pixels_too_large"
    assert time.perf_counter() - t0 < 1.0


def test_jpeg_declaring_a_huge_size_is_refused_before_decoding(no_decoder):
    small = codecs.encode_pixels(_photo(64, 64), "jpeg:80")
    huge = _patch_jpeg_size(small, 65000, 65000)
    assert codecs.image_dimensions("jpeg", huge) == (65000, 65000)
    assert _code(codecs.decode_pixels, "jpeg", huge, (64, 64)) == "pixels_too_large"


def test_webp_declaring_a_huge_size_is_refused_before_decoding(no_decoder):
    data = bytearray(codecs.encode_pixels(_photo(64, 64), "webp:80"))
    assert data[12:16] == b"VP8 "
    struct.pack_into("<HH", data, 20 + 6, 16383, 16383)
    assert codecs.image_dimensions("webp", bytes(data)) == (16383, 16383)
    assert _code(codecs.decode_pixels, "webp", bytes(data), (64, 64)) == "pixels_too_large"


@pytest.mark.parametrize("codec", ["png", "jpeg", "webp"])
def test_declared_size_must_match_the_request(codec, no_decoder):
    data = codecs.encode_pixels(_photo(64, 48), codec)
    assert _code(codecs.decode_pixels, codec, data, (48, 64)) == "bad_pixels"  # transposed
    assert _code(codecs.decode_pixels, codec, data, (64, 47)) == "bad_pixels"


def test_decoded_size_must_match_the_declared_size(monkeypatch):
    """A decoder result of another shape than the header promised is refused too."""
    import cv2

    data = codecs.encode_pixels(_photo(32, 32), "png")
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.zeros((32, 31, 3), np.uint8))
    assert _code(codecs.decode_pixels, "png", data, (32, 32)) == "bad_pixels"
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: None)
    assert _code(codecs.decode_pixels, "png", data, (32, 32)) == "bad_pixels"


def test_request_above_the_pixel_limit_is_refused(no_decoder):
    data = codecs.encode_pixels(_photo(64, 64), "png")
    assert _code(codecs.decode_pixels, "png", data, (64, 64), max_pixels=64 * 63) == "pixels_too_large"


def _png_with(chunks):
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(t, p) for t, p in chunks)


def test_png_structure_is_strict(no_decoder):
    good = codecs.encode_pixels(_photo(16, 16), "png")
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    idat = good[good.index(b"IDAT") + 4 : good.index(b"IEND") - 8]
    cases = {
        "signature": b"\x89PNX" + good[4:],
        "truncated": good[:-5],
        "trailing": good + b"\0",
        "text chunk": _png_with([(b"IHDR", ihdr), (b"tEXt", b"k\0v"), (b"IDAT", idat), (b"IEND", b"")]),
        "no ihdr": _png_with([(b"IDAT", idat), (b"IEND", b"")]),
        "two ihdr": _png_with([(b"IHDR", ihdr), (b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")]),
        "no iend": _png_with([(b"IHDR", ihdr), (b"IDAT", idat)]),
        "16-bit": _png_with(
            [(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 16, 2, 0, 0, 0)), (b"IDAT", idat), (b"IEND", b"")]
        ),
        "palette": _png_with(
            [(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 3, 0, 0, 0)), (b"IDAT", idat), (b"IEND", b"")]
        ),
        "zero width": _png_with(
            [(b"IHDR", struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)), (b"IDAT", idat), (b"IEND", b"")]
        ),
        "bad crc": good[:29] + bytes([good[29] ^ 1]) + good[30:],
        "chunk past end": good[:8] + struct.pack(">I", 1 << 30) + good[12:],
    }
    for name, data in cases.items():
        assert _code(codecs.image_dimensions, "png", data) == "bad_pixels", name


def test_jpeg_structure_is_strict(no_decoder):
    good = codecs.encode_pixels(_photo(16, 16), "jpeg")
    sof = good.index(b"\xff\xc0")
    cases = {
        "no soi": b"\0\0" + good[2:],
        "no eoi": good[:-2],
        "lossless": good[: sof + 1] + b"\xc3" + good[sof + 2 :],
        "arithmetic": good[: sof + 1] + b"\xc9" + good[sof + 2 :],
        "12-bit": good[: sof + 4] + b"\x0c" + good[sof + 5 :],
        "zero height": _patch_jpeg_size(good, 0, 16),
        "two frames": good[:sof] + good[sof : sof + 19] + good[sof:],
        "no frame": good[:sof] + good[sof + 19 :],
        "segment past end": good[:4] + b"\xff\xff" + good[6:],
        "too many scans": good[:-2] + b"\xff\xda" * (codecs.MAX_JPEG_SCANS + 1) + b"\xff\xd9",
    }
    assert good[sof + 2 : sof + 4] == b"\x00\x11"  # 17-byte SOF0 segment (+2 marker bytes = 19)
    for name, data in cases.items():
        assert _code(codecs.image_dimensions, "jpeg", data) == "bad_pixels", name


def test_webp_structure_is_strict(no_decoder):
    lossy = codecs.encode_pixels(_photo(16, 16), "webp:80")

    def riff(body):
        return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body

    vp8 = lossy[12:]
    anim = b"VP8X" + struct.pack("<I", 10) + bytes([0x02, 0, 0, 0]) + (15).to_bytes(3, "little") * 2
    ext = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (15).to_bytes(3, "little") + (31).to_bytes(3, "little")
    cases = {
        "riff size": lossy[:4] + struct.pack("<I", 9999) + lossy[8:],
        "not webp": lossy[:8] + b"WAVE" + lossy[12:],
        "animated": riff(anim + vp8),
        "canvas differs": riff(ext + vp8),
        "extra chunk": riff(vp8 + b"EXIF" + struct.pack("<I", 2) + b"ab"),
        "not a key frame": lossy[:20] + bytes([lossy[20] | 1]) + lossy[21:],
        "no start code": lossy[:23] + b"\0\0\0" + lossy[26:],
    }
    for name, data in cases.items():
        assert _code(codecs.image_dimensions, "webp", data) == "bad_pixels", name
    ok_ext = riff(b"VP8X" + struct.pack("<I", 10) + bytes(4) + (15).to_bytes(3, "little") * 2 + vp8)
    assert codecs.image_dimensions("webp", ok_ext) == (16, 16)


def test_webp_lossless_dimensions():
    # VP8L header: signature 0x2f, then 14 bits width-1, 14 bits height-1, alpha, version 0
    bits = (99 - 1) | ((57 - 1) << 14)
    body = b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", bits) + b"\0"
    data = b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body
    assert codecs.image_dimensions("webp", data) == (99, 57)


# ---------------------------------------------------------------------------
# Token formats


def _gauss(shape=(6, 10, 64), seed=0):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.3, 3.0, shape[-1]).astype(np.float32)  # channels of different scale, like SAM's
    mean = rng.normal(0, 1, shape[-1]).astype(np.float32)
    return (rng.normal(0, 1, shape).astype(np.float32) * scale + mean).astype(np.float32)


def _roundtrip(t, fmt):
    return codecs.unpack_tokens(dict(codecs.pack_tokens(t, fmt)), t.shape, fmt)


def _cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_packing_roundtrip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, 8 * 37, dtype=np.uint8)
    packed = codecs.pack_bits(codes, bits)
    assert packed.size == codes.size * bits // 8
    assert np.array_equal(codecs.unpack_bits(packed, bits, codes.size), codes)


def test_bit_packing_layout_is_little_endian():
    # codes 1, 2, 3, 0, ... at 4 bits: first byte holds 1 (low nibble) and 2 (high nibble)
    packed = codecs.pack_bits(np.array([1, 2, 3, 0, 0, 0, 0, 15], np.uint8), 4)
    assert packed.tolist() == [0x21, 0x03, 0x00, 0xF0]


@pytest.mark.parametrize("fmt", ["q8g64", "q6g64", "q5g32", "q4g16", "q3g8", "q2g64"])
def test_group_quantisation_error_within_half_a_step(fmt):
    t = _gauss()
    f = codecs.token_format(fmt)
    arrays = dict(codecs.pack_tokens(t, fmt))
    out = codecs.unpack_tokens(arrays, t.shape, fmt)
    # the bound, in the normalised domain: half the group's step (+ float16 rounding of the offset)
    mean = arrays["channel_offsets"].astype(np.float32)
    std = arrays["channel_scales"].astype(np.float32)
    z, zo = (t - mean) / std, (out - mean) / std
    step = np.repeat(arrays["scales"].astype(np.float32), f.group, axis=-1)
    off = np.repeat(np.abs(arrays["offsets"].astype(np.float32)), f.group, axis=-1)
    assert np.all(np.abs(z - zo) <= 0.5 * step + off * 2**-10 + 1e-5)
    assert arrays[f.key].shape == (6, 10, 64 * f.bits // 8)


def test_more_bits_more_fidelity_fewer_bits_fewer_bytes():
    t = _gauss((16, 16, 64))
    cos = {f: _cos(t, _roundtrip(t, f)) for f in ("q3g32", "q4g32", "q5g32", "q6g32", "q8g32")}
    size = {f: sum(a.nbytes for _, a in codecs.pack_tokens(t, f)) for f in cos}
    names = list(cos)
    assert all(cos[a] < cos[b] for a, b in zip(names, names[1:])), cos
    assert all(size[a] < size[b] for a, b in zip(names, names[1:])), size
    assert cos["q8g32"] > 0.99999 and cos["q3g32"] < 0.999


@pytest.mark.parametrize("fmt", ["e4", "e8", "e16", "p4", "p8", "p16"])
def test_entropy_format_error_is_a_fraction_of_a_step(fmt):
    t = _gauss((16, 16, 64))
    arrays = dict(codecs.pack_tokens(t, fmt))
    out = codecs.unpack_tokens(arrays, t.shape, fmt)
    k = codecs.token_format(fmt).steps
    std = arrays["channel_scales"].astype(np.float32)
    assert np.all(arrays["shifts"] == 0)  # no outliers in Gaussian data
    assert np.all(np.abs(out - t) <= 0.5 * std / k * (1 + 1e-3) + 1e-4 * (1 + np.abs(t)))
    # error variance close to uniform quantisation's 1/(12 k^2) of each channel's variance
    rel = np.mean(((out - t) / std) ** 2) * 12 * k * k
    assert 0.8 < rel < 1.2, rel


def test_entropy_format_is_smaller_than_its_fixed_rate_neighbour_at_equal_or_better_fidelity():
    t = _gauss((32, 32, 64), seed=3)
    e = dict(codecs.pack_tokens(t, "e8"))
    q = dict(codecs.pack_tokens(t, "q5g64"))
    assert sum(a.nbytes for a in e.values()) < sum(a.nbytes for a in q.values())
    assert _cos(t, codecs.unpack_tokens(e, t.shape)) > _cos(t, codecs.unpack_tokens(q, t.shape))


def _field(shape=(24, 20, 32), rho=0.8, seed=5):
    """Gaussian tokens correlated with their neighbours (as an image's tokens are)."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    x = rng.normal(0, 1, (h, w, c)).astype(np.float32)
    for i in range(1, h):
        x[i] = rho * x[i - 1] + np.sqrt(1 - rho**2) * x[i]
    for j in range(1, w):
        x[:, j] = rho * x[:, j - 1] + np.sqrt(1 - rho**2) * x[:, j]
    return x * rng.uniform(0.5, 2.0, c).astype(np.float32) + rng.normal(0, 1, c).astype(np.float32)


def test_prediction_makes_correlated_tokens_smaller_at_the_same_error():
    t = _field()
    e, p = dict(codecs.pack_tokens(t, "e8")), dict(codecs.pack_tokens(t, "p8"))
    assert p["tokens:p8"].nbytes < 0.85 * e["tokens:e8"].nbytes
    err_e = np.mean((codecs.unpack_tokens(e, t.shape) - t) ** 2)
    err_p = np.mean((codecs.unpack_tokens(p, t.shape) - t) ** 2)
    assert 0.8 < err_p / err_e < 1.25  # closed loop: the same error as without prediction
    w = p["predictor"].astype(np.float32)
    assert w.shape == (2, 32) and 0.3 < w.mean() < 0.7  # left and up weights of a rho=0.8 field


def test_prediction_on_tiny_replies():
    for shape in ((1, 1, 16), (1, 7, 16), (5, 1, 16), (2, 2, 8)):
        t = _gauss(shape)
        assert np.allclose(_roundtrip(t, "p16"), t, atol=0.05 * np.abs(t).max() + 0.1), shape


@pytest.mark.parametrize("fmt", ["e8", "p8"])
def test_outlier_token_is_not_clipped_in_entropy_format(fmt):
    t = _gauss((8, 8, 32))
    t[3, 4, 5] = 5e3  # a massive activation in one token
    arrays = dict(codecs.pack_tokens(t, fmt))
    out = codecs.unpack_tokens(arrays, t.shape)
    assert arrays["shifts"][3, 4] > 0
    if fmt == "e8":
        assert arrays["shifts"].sum() == arrays["shifts"][3, 4]
    assert abs(out[3, 4, 5] - 5e3) / 5e3 < 0.01
    others = np.ones(t.shape[:2], bool)
    others[3, 4] = False
    assert _cos(t[others], out[others]) > 0.999


def test_outlier_channel_keeps_other_channels_accurate():
    t = _gauss((8, 8, 64))
    t[..., 7] *= 1000.0  # an outlier channel, as real ViTs have
    for fmt in ("q5g64", "e8", "p8"):
        out = _roundtrip(t, fmt)
        rest = np.ones(64, bool)
        rest[7] = False
        assert _cos(t[..., rest], out[..., rest]) > 0.998, fmt


def test_constant_and_empty_inputs():
    flat = np.full((4, 4, 16), 2.5, np.float32)
    for fmt in ("q4g16", "e8", "p8", "int8"):
        assert np.allclose(_roundtrip(flat, fmt), flat, atol=1e-3), fmt
    empty = np.zeros((0, 5, 16), np.float32)
    for fmt in ("q4g16", "e8", "p8", "float16"):
        assert _roundtrip(empty, fmt).shape == (0, 5, 16)


def test_narrow_models_use_all_channels_as_one_group():
    t = _gauss((4, 4, 16))
    arrays = dict(codecs.pack_tokens(t, "q5g64"))
    assert arrays["scales"].shape == (4, 4, 1)
    with pytest.raises(CodecError):
        codecs.pack_tokens(_gauss((4, 4, 12)), "q5g64")  # not bit-packable


def test_payload_bytes_are_exact_for_fixed_rate_and_a_bound_for_entropy():
    t = _gauss((7, 9, 64))
    for fmt in codecs.TOKEN_FORMATS:
        f = codecs.token_format(fmt)
        got = sum(a.nbytes for _, a in codecs.pack_tokens(t, fmt))
        if f.base in ("e", "p"):
            assert got < f.payload_bytes(63, 64), fmt
        else:
            assert got == f.payload_bytes(63, 64), fmt


@pytest.mark.parametrize(
    "name",
    [
        "q9g64",
        "q1g64",
        "q4g63",
        "q4g512",
        "e0",
        "e65",
        "e07",
        "p0",
        "p99",
        "d8",
        "float64",
        "q4g64+zstd",
        "int4",
        "",
        None,
        8,
    ],
)
def test_unknown_token_formats(name):
    assert _code(codecs.token_format, name) == "bad_dtype"


def test_tokens_must_be_finite_to_pack():
    t = _gauss((2, 2, 16))
    t[0, 0, 0] = np.nan
    for fmt in ("int8", "q4g16", "e8", "p8"):
        with pytest.raises(ValueError):
            codecs.pack_tokens(t, fmt)


# -- strict decoding of hostile replies


def _bad(arrays, shape=(6, 10, 64), fmt=None):
    return _code(codecs.unpack_tokens, arrays, shape, fmt)


def test_reply_format_must_match_the_request():
    t = _gauss()
    arrays = dict(codecs.pack_tokens(t, "q4g64"))
    assert _bad(arrays, fmt="q5g64") == "bad_reply"
    assert _bad(dict(codecs.pack_tokens(t, "float32")), fmt="float16") == "bad_reply"
    assert codecs.unpack_tokens(arrays, t.shape, "q4g64").shape == t.shape


@pytest.mark.parametrize("fmt", ["q4g64", "e8", "p8"])
def test_bad_side_tensors(fmt):
    t = _gauss()
    good = dict(codecs.pack_tokens(t, fmt))
    side = [k for k in good if not k.startswith("tokens")]
    for name in side:
        a = good[name]
        cases = {
            "missing": {k: v for k, v in good.items() if k != name},
            "shape": {**good, name: np.concatenate([a.reshape(-1), a.reshape(-1)[:1]])},
            "dtype": {**good, name: a.astype(np.float32) if a.dtype != np.float32 else a.astype(np.float16)},
        }
        for case, arrays in cases.items():
            assert _bad(arrays) == "bad_reply", (name, case)
    assert _bad({**good, "extra": np.zeros(1, np.uint8)}) == "bad_reply"
    for name in ("channel_scales", "channel_offsets") + (("scales", "offsets") if fmt.startswith("q") else ()):
        for value in (np.nan, np.inf):
            a = good[name].copy()
            a.reshape(-1)[0] = value
            assert _bad({**good, name: a}) == "bad_reply", (name, value)
    zero = good["channel_scales"].copy()
    zero[3] = 0
    assert _bad({**good, "channel_scales": zero}) == "bad_reply"
    if fmt == "p8":
        for value in (np.nan, 2.5, -2.5):
            w = good["predictor"].copy()
            w[1, 7] = value
            assert _bad({**good, "predictor": w}) == "bad_reply", value


def test_negative_group_scale_is_refused():
    good = dict(codecs.pack_tokens(_gauss(), "q4g64"))
    neg = good["scales"].copy()
    neg[0, 0, 0] = -1
    assert _bad({**good, "scales": neg}) == "bad_reply"


def test_bad_packed_codes_length():
    good = dict(codecs.pack_tokens(_gauss(), "q4g64"))
    short = good["tokens:q4g64"][:, :, :-1]
    assert _bad({**good, "tokens:q4g64": np.ascontiguousarray(short)}) == "bad_reply"


def test_entropy_payload_bombs_and_garbage_are_refused():
    t = _gauss()
    good = dict(codecs.pack_tokens(t, "e8"))
    zstd = codecs._zstd()
    n = t.size
    cases = {
        "bomb": np.frombuffer(zstd.compress(bytes(100 * n)), np.uint8),  # declares 100x the expected size
        "short": np.frombuffer(zstd.compress(bytes(n - 1)), np.uint8),
        "garbage": np.frombuffer(b"\x28\xb5\x2f\xfd" + bytes(64), np.uint8),
        "not zstd": np.zeros(100, np.uint8),
        "trailing": np.concatenate([good["tokens:e8"], np.zeros(3, np.uint8)]),
        "minus 128": np.frombuffer(zstd.compress(bytes([0x80]) * n), np.uint8),
        "2-D": good["tokens:e8"].reshape(1, -1),
    }
    # a stream without a declared size that would inflate far beyond: refused after `size` bytes
    c = zstd.ZstdCompressor()
    cases["undeclared bomb"] = np.frombuffer(c.compress(bytes(100 * n)) + c.flush(), np.uint8)
    for name, payload in cases.items():
        t0 = time.perf_counter()
        assert _bad({**good, "tokens:e8": payload}) == "bad_reply", name
        assert time.perf_counter() - t0 < 1.0, name
    big = good["shifts"].copy()
    big[0, 0] = codecs.MAX_SHIFT + 1
    assert _bad({**good, "shifts": big}) == "bad_reply"


def test_payload_under_the_wrong_name_is_refused():
    good = dict(codecs.pack_tokens(_gauss(), "q4g64"))
    renamed = {("tokens:q4g64 " if k.startswith("tokens") else k): v for k, v in good.items()}
    assert _bad(renamed) == "bad_reply"
    two = {**good, "tokens": np.zeros((6, 10, 64), np.float16)}
    assert _bad(two) == "bad_reply"


def test_the_rule_for_defaults_picks_the_smallest_format_that_passes():
    from ped_sam_ros.bench.codecs import choose

    summary = [
        {"format": "float16", "embedding_cosine_min": 1.0, "point_iou": 1.0},
        {"format": "e8", "embedding_cosine_min": 0.9995, "point_iou": 0.99},
        {"format": "p6", "embedding_cosine_min": 0.9991, "point_iou": 0.985},
        {"format": "p3", "embedding_cosine_min": 0.998, "point_iou": 0.99},  # cosine too low
        {"format": "p4", "embedding_cosine_min": 0.9992, "point_iou": 0.97},
    ]  # IoU too low
    sizes = {"float16": 10.0, "e8": 3.4, "p6": 2.5, "p3": 2.0, "p4": 2.2}
    assert choose(summary, "format", sizes)["format"] == "p6"
    assert choose(summary[3:], "format", sizes) is None
