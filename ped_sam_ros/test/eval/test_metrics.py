"""Fidelity metrics on constructed cases with known answers."""

import numpy as np
import pytest
import torch

from ped_sam_ros.eval import metrics


def _square(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_iou_known_cases():
    a = _square((10, 10), 0, 2, 0, 2)  # 4 px
    assert metrics.mask_iou(a, a) == 1.0
    assert metrics.mask_iou(a, _square((10, 10), 5, 7, 5, 7)) == 0.0
    b = _square((10, 10), 0, 2, 1, 3)  # overlaps a in 2 px, union 6
    assert metrics.mask_iou(a, b) == pytest.approx(2 / 6)
    empty = np.zeros((10, 10), bool)
    assert metrics.mask_iou(empty, empty) == 1.0  # both say "nothing": full agreement
    assert metrics.mask_iou(a, empty) == 0.0
    with pytest.raises(ValueError):
        metrics.mask_iou(a, np.zeros((5, 5), bool))


def test_embedding_cosine_and_relative_error():
    x = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    assert metrics.cosine_similarity(x, x) == pytest.approx(1.0)
    assert metrics.relative_error(x, x) == 0.0
    assert metrics.cosine_similarity(x, -x) == pytest.approx(-1.0)
    assert metrics.cosine_similarity(2 * x, x) == pytest.approx(1.0)  # scale does not change the direction
    assert metrics.relative_error(2 * x, x) == pytest.approx(1.0)  # but doubles the error: ||2x - x|| / ||x||
    a = np.array([1.0, 0.0])
    b = np.array([0.0, 1.0])
    assert metrics.cosine_similarity(a, b) == pytest.approx(0.0)
    assert metrics.relative_error(a, b) == pytest.approx(np.sqrt(2))
    assert metrics.max_abs_diff(a, b) == 1.0
    assert metrics.cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0


def test_box_iou_and_mask_box():
    assert metrics.box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert metrics.box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6)
    assert metrics.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert metrics.mask_to_box(_square((10, 10), 2, 5, 3, 9)) == (3.0, 2.0, 9.0, 5.0)
    assert metrics.mask_to_box(np.zeros((4, 4), bool)) is None


def test_match_masks_one_to_one():
    shape = (20, 20)
    ref = [_square(shape, 0, 5, 0, 5), _square(shape, 10, 20, 10, 20), _square(shape, 0, 3, 15, 20)]
    same = metrics.match_masks(ref, list(reversed(ref)))
    assert (same.matched, same.missed, same.extra) == (3, 0, 0)
    assert same.mean_matched_iou == 1.0 and same.recall == 1.0
    # candidate: the first mask shifted by one pixel (IoU 20/30), the second missing, one spurious mask
    cand = [_square(shape, 0, 5, 1, 6), ref[2], _square(shape, 15, 17, 0, 2)]
    m = metrics.match_masks(ref, cand)
    assert (m.reference, m.candidate, m.matched, m.missed, m.extra) == (3, 3, 2, 1, 1)
    assert m.mean_matched_iou == pytest.approx((20 / 30 + 1.0) / 2)
    # below the threshold a pair is not a match
    assert metrics.match_masks(ref[:1], cand[:1], threshold=0.7).matched == 0
    empty = metrics.match_masks([], cand)
    assert (empty.matched, empty.extra, empty.mean_matched_iou) == (0, 3, None)


def test_matching_maximises_the_number_of_matches_first():
    iou = np.array([[0.9, 0.55], [0.55, 0.4]])
    pairs = metrics.match_iou_matrix(iou, threshold=0.5)
    assert sorted((r, c) for r, c, _ in pairs) == [(0, 1), (1, 0)]
    # with no such trade-off it is the ordinary maximum-IoU assignment
    plain = metrics.match_iou_matrix(np.array([[0.9, 0.6], [0.6, 0.8]]))
    assert sorted((r, c) for r, c, _ in plain) == [(0, 0), (1, 1)]
    assert metrics.match_iou_matrix(np.array([[0.3, 0.2]])) == []
    assert metrics.match_iou_matrix(np.zeros((0, 3))) == []


def test_pairwise_iou_matches_single():
    rng = np.random.default_rng(1)
    a = [rng.random((16, 16)) > 0.5 for _ in range(3)]
    b = [rng.random((16, 16)) > 0.5 for _ in range(2)]
    m = metrics.pairwise_mask_iou(a, b)
    for i in range(3):
        for j in range(2):
            assert m[i, j] == pytest.approx(metrics.mask_iou(a[i], b[j]))


def test_value_stats_ignore_missing():
    s = metrics.value_stats([1.0, None, 3.0, float("nan")])
    assert s == metrics.ValueStats(mean=2.0, min=1.0, max=3.0, n=2)
    assert metrics.value_stats([]).n == 0
