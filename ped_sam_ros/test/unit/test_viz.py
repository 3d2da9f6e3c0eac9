"""Overlays drawn for people (ped_sam_ros.viz)."""

import numpy as np
import pytest

from ped_sam_ros.viz import draw_boxes, overlay, palette


def test_overlay_changes_only_masked_pixels_and_draws_points():
    rgb = np.full((40, 60, 3), 100, np.uint8)
    m = np.zeros((40, 60), bool)
    m[10:30, 10:30] = True
    out = overlay(rgb, [m])
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(out[0:5, 40:60], rgb[0:5, 40:60])
    assert not np.array_equal(out[15:25, 15:25], rgb[15:25, 15:25])
    pts = overlay(rgb, [], points=[(50, 5, 1)])
    assert tuple(pts[5, 50]) == (40, 220, 40)
    gray = overlay(rgb[..., 0], [m])  # a gray frame comes back as RGB with the same colouring
    assert np.array_equal(gray, out)
    with pytest.raises(ValueError, match="mask 0 has shape"):
        overlay(rgb, [m[:20]])


def test_boxes_and_palette():
    out = draw_boxes(np.zeros((20, 20, 3), np.uint8), [(2, 3, 10, 12)], color=(1, 2, 3), thickness=1)
    assert tuple(out[3, 5]) == (1, 2, 3) and tuple(out[12, 10]) == (1, 2, 3)
    assert tuple(out[7, 6]) == (0, 0, 0)  # inside the box: untouched
    colors = palette(12)
    assert colors.shape == (12, 3) and len({tuple(c) for c in colors}) == 12
    assert np.array_equal(palette(12), colors)  # deterministic
