"""RLE and label maps."""

import numpy as np
import pytest

from ped_sam_ros.core.masks import label_dtype, label_image, mask_to_rle, rle_to_bool


def test_rle_round_trip_and_sam_convention():
    m = np.zeros((3, 4), bool)
    m[1, 0] = m[2, 0] = m[0, 1] = True  # column-major: col0 = 0,1,1 ; col1 = 1,0,0
    h, w, counts = mask_to_rle(m)
    assert (h, w) == (3, 4)
    assert counts == [1, 3, 8]  # starts with zeros, Fortran order
    assert np.array_equal(rle_to_bool(h, w, counts), m)
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((37, 53)) > 0.6
        assert np.array_equal(rle_to_bool(*mask_to_rle(m)), m)
    full = np.ones((2, 2), bool)
    assert mask_to_rle(full)[2] == [0, 4]


def test_rle_with_wrong_total_is_refused():
    with pytest.raises(ValueError, match="sum"):
        rle_to_bool(2, 2, [1, 2])


def test_label_image_small_objects_on_top_and_mono16():
    big = np.zeros((10, 10), bool)
    big[2:9, 2:9] = True
    small = np.zeros((10, 10), bool)
    small[4:6, 4:6] = True
    lab = label_image([small, big], [1, 2], (10, 10))
    assert lab.dtype == np.uint8
    assert lab[5, 5] == 1 and lab[2, 2] == 2 and lab[0, 0] == 0
    assert label_dtype(255) == np.uint8 and label_dtype(256) == np.uint16
    assert label_image([small], [300], (10, 10)).dtype == np.uint16
