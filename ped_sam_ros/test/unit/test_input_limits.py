"""Refusing at the door: image sizes SAM cannot take or that are too large, compressed images
by the size their header declares (decompression bombs), points per prompt and in total, and
the parameters that set these limits and the degraded mode."""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage

from ped_sam_ros.core.pipeline import ObjectPrompt
from ped_sam_ros.edge.config import ConfigError
from ped_sam_ros.edge.params import config_from_params, validate_changes, validate_parameter
from ped_sam_ros.edge.runtime import check_image_size, validate_prompts
from ped_sam_ros.ros.convert import UnsupportedImage, compressed_size, compressed_to_rgb


def test_thin_images_are_refused_with_the_reason():
    for h, w in ((1, 3000), (3000, 1)):
        with pytest.raises(ValueError, match="after SAM's resize to longest side 1024"):
            check_image_size(h, w, 10**8)
    check_image_size(2, 3000, 10**8)  # 2 x 1024/3000 rounds to 1 pixel: SAM takes it
    check_image_size(480, 640, 10**8)
    with pytest.raises(ValueError, match="exceed max_image_pixels=1000"):
        check_image_size(40, 40, 1000)
    with pytest.raises(ValueError, match="empty image"):
        check_image_size(0, 10, 1000)


def test_points_per_prompt_and_in_total_are_limited():
    one = ObjectPrompt(points=[(1.0, 2.0, 1)] * 3)
    validate_prompts([one, one], 2, 3, 6)
    with pytest.raises(ValueError, match="prompt 2: 4 points exceed max_points_per_prompt=3"):
        validate_prompts([one, ObjectPrompt(points=[(1.0, 2.0, 1)] * 4)], 5, 3, 100)
    with pytest.raises(ValueError, match="9 points in all exceed max_points=8"):
        validate_prompts([one, one, one], 5, 3, 8)
    validate_prompts([ObjectPrompt(points=[(1.0, 2.0, 1)] * 3000)], 1)  # no point limits given: as before


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\0" * 1000)  # the start of an image of zeros
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )


def _jpeg_header(w: int, h: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof + b"\xff\xda" + b"\0" * 600 + b"\xff\xd9"


def test_declared_sizes_are_read_from_the_headers():
    import cv2

    rgb = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    for ext, fmt in ((".png", "png"), (".jpg", "jpeg"), (".webp", "webp")):
        ok, buf = cv2.imencode(ext, rgb)
        assert ok
        assert compressed_size(buf.tobytes()) == (fmt, 53, 37)
        ok, gray = cv2.imencode(ext, rgb[:, :, 0])
        assert compressed_size(gray.tobytes()) == (fmt, 53, 37)
    assert compressed_size(_png_header(16384, 16384)) == ("png", 16384, 16384)
    assert compressed_size(_jpeg_header(16384, 16384)) == ("jpeg", 16384, 16384)
    with pytest.raises(UnsupportedImage, match="not PNG, JPEG or WebP"):
        compressed_size(b"BM" + b"\0" * 100)


@pytest.mark.parametrize("bomb", [_jpeg_header(16384, 16384), _png_header(16384, 16384)], ids=["jpeg", "png"])
def test_bombs_are_refused_before_decoding(bomb):
    assert len(bomb) < 1200  # a few hundred bytes declaring 805 MB of pixels
    msg = CompressedImage(format="jpeg", data=bomb)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(UnsupportedImage, match="declares 16384x16384 = 268435456 pixels, above the limit"):
        compressed_to_rgb(msg, max_pixels=25_000_000)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.05, elapsed
    assert peak < 1 << 20, peak  # nothing of the declared size was allocated


def test_a_thin_compressed_image_is_refused_by_its_declared_shape():
    _fmt, w, h = compressed_size(_png_header(3000, 1))
    with pytest.raises(ValueError, match="becomes 1024x0 after SAM's resize"):
        check_image_size(h, w, 25_000_000)


def test_degraded_mode_and_limit_parameters_are_validated():
    servers = ["a=tcp://127.0.0.1:1", "b=tcp://127.0.0.1:2", "c=tcp://127.0.0.1:3"]
    cur = {"remotes.servers": servers}
    assert validate_parameter("remotes.fallback", "retry") is not None
    assert "needs remotes.spares" in validate_parameter("remotes.fallback", "spare", cur)
    assert validate_parameter("remotes.fallback", "spare", {**cur, "remotes.spares": "c"}) is None
    assert "not among the servers" in validate_parameter("remotes.spares", "z", cur)
    assert validate_parameter("max_points_per_prompt", 0) is not None
    assert validate_parameter("max_image_pixels", 2**40) is not None
    assert validate_changes({"max_points": 5}, {"max_points": 1024}) is None  # runtime-changeable
    assert "read-only" in validate_changes({"remotes.fallback": "edge"}, {"remotes.fallback": "fail"})
    cfg = config_from_params(
        {
            "remotes.servers": servers,
            "grid": "1x2",
            "remotes.fallback": "spare",
            "remotes.spares": "c",
            "random_weights": True,
        }
    )
    assert cfg.spares == ["c"] and cfg.auto_assignment(cfg.partition) == [0, 1]
    assert cfg.problems(check_files=False) == []
    cfg.assignment = [0, 2]
    assert any("also assigned" in p for p in cfg.problems(check_files=False))
    with pytest.raises(ConfigError, match="spare. needs remotes.spares"):
        config_from_params(
            {"remotes.servers": servers, "grid": "1x2", "random_weights": True, "remotes.fallback": "spare"}
        )
