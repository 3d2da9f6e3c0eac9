"""Exposure, view geometry and classical attacks on constructed cases with known answers."""

import numpy as np
import pytest

from ped_sam_ros.core.geometry import Partition, content_shape, server_shares
from ped_sam_ros.eval import privacy as priv


def test_quarter_exposure_on_an_896_frame():
    """896x896 content = 56x56 content tokens: the aligned 2x2 cut at 28 tokens gives exact quarters."""
    p = Partition.grid(2, 2)
    assert p.row_cuts == (28,) and p.col_cuts == (28,)
    shares = server_shares(p, [0, 1, 2, 3], (896, 896))
    assert shares == [0.25, 0.25, 0.25, 0.25]
    # the pixel count is the tiles' own content: 448x448 pixels each
    assert [t.content_pixels((896, 896)) for t in p.tiles] == [448 * 448] * 4
    assert priv.collusion_exposure(shares) == [0.25, 0.5, 0.75, 1.0]


def test_exposure_with_padding_and_shared_servers():
    p = Partition.grid(5, 5)
    # landscape 400x600 -> 683x1024: the bottom row of windows (tokens 56..64) is all padding
    content = content_shape((400, 600))
    assert content == (683, 1024)
    shares = server_shares(p, list(range(25)), content)
    assert sum(shares) == pytest.approx(1.0)
    assert shares[20:] == [0.0] * 5
    assert p.tiles[20].content_box(content) is None
    # two servers in a checkerboard hold everything between them
    two = [(w.grid_row + w.grid_col) % 2 for w in p.tiles]
    s2 = server_shares(p, two, (1024, 1024))
    assert sum(s2) == pytest.approx(1.0) and len(s2) == 2
    assert priv.collusion_exposure(s2)[-1] == pytest.approx(1.0)
    assert priv.collusion_exposure([0.1, 0.5, 0.2]) == pytest.approx([0.5, 0.7, 0.8])


@pytest.mark.parametrize("hw", [(512, 512), (300, 451), (400, 600), (640, 427), (1500, 900)])
@pytest.mark.parametrize("grid,aligned", [((2, 2), True), ((5, 5), True), ((4, 3), False), ((3, 3), False)])
def test_views_tile_the_original_image(hw, grid, aligned):
    """Mapped back to original pixels (scale = 1024 / max(H, W), padding bottom/right),
    the windows cover every original pixel exactly once."""
    p = Partition.grid(*grid, aligned=aligned)
    cover = np.zeros(hw, int)
    for w in p:
        cover += priv.seen_mask([w], hw)
    assert (cover == 1).all()


def test_tile_maps_to_original_pixels():
    # 512x512 photo: scale 2, the 2x2 cut at 448 resized px is at 224 original px
    p = Partition.grid(2, 2)
    assert priv.tile_original_box(p.tiles[0], (512, 512)) == (0, 0, 224, 224)
    assert priv.tile_original_box(p.tiles[3], (512, 512)) == (224, 224, 512, 512)
    # 400x600 photo: scale 1024/600, resized 683x1024; the cut at 448 px is original row ~262.5
    x0, y0, x1, y1 = priv.tile_original_box(p.tiles[0], (400, 600))
    assert (x0, y0) == (0, 0) and abs(y1 - 448 * 400 / 683) <= 1 and abs(x1 - 448 * 600 / 1024) <= 1
    # a tile entirely in SAM's padding shows nothing of the original
    assert priv.tile_original_box(Partition.grid(5, 5).tiles[24], (400, 600)) is None


def test_ssim_psnr_of_identical_images():
    rng = np.random.default_rng(0)
    img = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    seen = np.ones(img.shape[:2], bool)
    sc = priv.reconstruction_scores(img, img.copy(), seen)
    assert sc.ssim_frame == pytest.approx(1.0)
    assert sc.psnr_frame == float("inf")
    assert np.isnan(sc.ssim_unseen) and sc.unseen_fraction == 0.0
    # a server that saw everything lets every attack recover the frame exactly
    for fn in priv.ATTACKS.values():
        assert np.array_equal(fn(img, seen), img)


def test_reconstructions_of_a_partial_view():
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    seen = np.zeros((64, 64), bool)
    seen[:, :16] = True
    for name, fn in priv.ATTACKS.items():
        rec = fn(img, seen)
        assert rec.shape == img.shape and rec.dtype == np.uint8
        assert np.array_equal(rec[seen], img[seen]), name  # seen pixels are kept
        sc = priv.reconstruction_scores(img, rec, seen)
        assert sc.ssim_frame < 0.5 and sc.unseen_fraction == 0.75  # noise cannot be recovered
    # nearest fill copies the nearest seen column
    near = priv.nearest_fill_reconstruction(img, seen)
    assert np.array_equal(near[:, 40], img[:, 15])
    # a flat image is recovered exactly by the fills (Telea's gradient term drifts by a few levels)
    flat = np.full((32, 32, 3), 77, np.uint8)
    s2 = np.zeros((32, 32), bool)
    s2[:8, :8] = True
    for name in ("nearest", "mean"):
        assert np.array_equal(priv.ATTACKS[name](flat, s2), flat)
    assert np.abs(priv.inpaint_reconstruction(flat, s2).astype(int) - 77).max() <= 8
    # gray frames work too, and keep their shape
    gray = img[..., 0]
    for name, fn in priv.ATTACKS.items():
        rec = fn(gray, seen)
        assert rec.shape == gray.shape and np.array_equal(rec[seen], gray[seen]), name
        assert priv.reconstruction_scores(gray, rec, seen).unseen_fraction == 0.75
    assert np.all(priv.mean_fill_reconstruction(gray, seen)[~seen] == np.round(gray[seen].mean()))


def test_box_helpers():
    seen = np.zeros((10, 10), bool)
    seen[:, :5] = True
    assert priv.box_fully_seen((0, 0, 5, 10), seen)
    assert not priv.box_fully_seen((3, 3, 6, 6), seen)
    assert not priv.box_fully_seen((-1, 0, 3, 3), seen)


class _BrightBlobDetector:
    """Stub detector: finds the bounding box of bright pixels (one object at most)."""

    KINDS = ("face",)

    def detect(self, kind, rgb):
        ys, xs = np.nonzero(rgb[..., 0] > 200)
        return [] if ys.size == 0 else [(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)]

    detect_in_view = priv.Detectors.detect_in_view


def test_sensitive_content_seen_whole_and_detected():
    img = np.zeros((60, 60, 3), np.uint8)
    img[10:20, 10:20] = 255  # the "face"
    det = _BrightBlobDetector()
    left = np.zeros((60, 60), bool)
    left[:, :30] = True
    # one server holds the whole face, the other nothing of it
    r = priv.sensitive_content_attack(img, [left, ~left], det, kinds=("face",))["face"]
    assert r.n == 1 and r.seen_whole_by == [[0]] and r.detected_by == [[0]]
    # a cut through the face at x=13: neither server sees it whole; server 1 sees 7 of 10 columns (IoU 0.7)
    cut = np.zeros((60, 60), bool)
    cut[:, :13] = True
    r = priv.sensitive_content_attack(img, [cut, ~cut], det, kinds=("face",))["face"]
    assert r.seen_whole_by == [[]] and r.detected_by == [[1]]
    assert (r.n_seen_whole, r.n_detected) == (0, 1)
    # a cut at x=16: server 0 holds 6 of the 10 columns (IoU 0.6, found), server 1 only 4 (IoU 0.4)
    cut[:, :16] = True
    r = priv.sensitive_content_attack(img, [cut, ~cut], det, kinds=("face",))["face"]
    assert r.detected_by == [[0]]


def test_opencv_detectors_find_the_astronauts_face(astronaut):
    d = priv.Detectors()
    faces = d.detect("face", astronaut)
    assert len(faces) >= 1
    x0, y0, x1, y1 = faces[0]
    assert 150 < (x0 + x1) / 2 < 300 and 50 < (y0 + y1) / 2 < 200  # Eileen Collins' face
    whole = np.ones(astronaut.shape[:2], bool)
    r = priv.sensitive_content_attack(astronaut, [whole], d, kinds=("face",))["face"]
    assert r.n_seen_whole == r.n_detected == r.n  # the cloud server sees and finds everything
    assert d.detect("person", astronaut[:100, :50]) == []  # smaller than HOG's 64x128 window
