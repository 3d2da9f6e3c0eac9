"""Sensitive content at the edge: detectors, the per-tile policy, obfuscation, and the
policy inside the distributed encoder (ped_sam_ros.sensitive)."""

import numpy as np
import pytest

from helpers import TINY_B
from helpers.edge import RecordingTransport
from ped_sam_ros.bench.detectors import matches, score_sample
from ped_sam_ros.core.geometry import PATCH_SIZE, Partition, content_shape, round_robin_assignment
from ped_sam_ros.core.layout import best_layout, boxes_whole
from ped_sam_ros.sensitive.detectors import DetectorUnavailable, HaarFaceDetector, blazeface_anchors, make_detector
from ped_sam_ros.sensitive.obfuscate import server_view, tile_crops
from ped_sam_ros.sensitive.policy import (
    PolicyConfig,
    PolicyError,
    objects_seen_whole,
    plan_frame,
    prompt_boxes,
    server_object_views,
)
from ped_sam_ros.sensitive.types import Detection, check_rgb, nms

ORIG = (480, 640)
CONTENT = content_shape(ORIG)  # 768 x 1024: resized = 1.6 x original
S = CONTENT[0] / ORIG[0]


def _face(x0, y0, x1, y1, score=0.99, cls="face"):
    return Detection(cls, (float(x0), float(y0), float(x1), float(y1)), score, "test")


def _plan(dets, grid=(2, 2), k=4, prompts=None, **cfg):
    part = Partition.grid(*grid)
    assign = round_robin_assignment(part, k)
    config = PolicyConfig(**cfg) if cfg else PolicyConfig()
    return plan_frame(part, assign, ORIG, CONTENT, dets, config, prompts)


# ---------------------------------------------------------------------------
# The plan


def test_a_face_straddling_a_cut_keeps_every_tile_it_touches_local():
    cut = 28 * PATCH_SIZE / S  # the 2x2 grid's cut in original pixels (280)
    plan = _plan([_face(cut - 20, cut - 20, cut + 20, cut + 20)], box_margin=0.0)
    assert plan.tiles("local") == [0, 1, 2, 3]
    assert all("face" in d.reason and "edge" in d.reason for d in plan.decisions)
    inside = _plan([_face(20, 20, 60, 60)], box_margin=0.0)
    assert inside.tiles("local") == [0] and inside.tiles("send") == [1, 2, 3]
    assert inside.counts() == {"send": 3, "obfuscate": 0, "local": 1, "drop": 0}


def test_box_margin_grows_the_protected_area_across_a_cut():
    cut = 28 * PATCH_SIZE / S
    near = [_face(cut - 60, 20, cut - 5, 75)]  # ends 5 original px before the cut
    assert _plan(near, box_margin=0.0).tiles("local") == [0]
    assert _plan(near, box_margin=0.3).tiles("local") == [0, 1]


def test_obfuscation_boxes_are_clipped_to_each_tile_and_send_tiles_have_none():
    cut = 28 * PATCH_SIZE / S
    plan = _plan([_face(cut - 30, 20, cut + 30, 80)], actions={"face": "blur"}, box_margin=0.0)
    assert plan.tiles("obfuscate") == [0, 1] and plan.tiles("send") == [2, 3]
    ((op0, b0, whole0),) = plan.decisions[0].obfuscations
    ((op1, b1, whole1),) = plan.decisions[1].obfuscations
    assert op0 == op1 == "blur" and whole0 == whole1
    assert b0[2] == pytest.approx(28 * PATCH_SIZE) and b1[0] == pytest.approx(28 * PATCH_SIZE)
    assert not plan.decisions[2].obfuscations


def test_the_most_protective_action_wins_in_a_shared_tile():
    dets = [_face(20, 20, 60, 60), _face(80, 80, 200, 100, cls="text")]
    plan = _plan(dets, actions={"face": "local", "text": "blur"})
    assert plan.decisions[0].action == "local"
    plan = _plan(dets, actions={"face": "noise", "text": "blur"})
    assert plan.decisions[0].action == "obfuscate"
    assert sorted(op for op, _, _ in plan.decisions[0].obfuscations) == ["blur", "noise"]
    plan = _plan(dets, actions={"face": "drop", "text": "blur"})
    assert plan.decisions[0].action == "drop"


def test_low_scores_and_unlisted_classes_are_sent():
    plan = _plan([_face(20, 20, 60, 60, score=0.3), _face(400, 300, 450, 350, cls="person")])
    assert plan.tiles("send") == [0, 1, 2, 3]
    assert "policy sends it" in plan.decisions[3].reason


def test_tiles_outside_the_region_of_interest_are_dropped_only_with_prompts():
    prompts = prompt_boxes(points=[(30, 30)])
    plan = _plan([], grid=(4, 4), k=4, prompts=prompts, outside_roi="drop", roi_margin_tokens=0)
    assert plan.tiles("drop") and 0 not in plan.tiles("drop")
    assert all(d.reason == "outside the region of interest" for d in plan.decisions if d.action == "drop")
    # automatic mode: no prompts, the whole frame is the region of interest
    auto = _plan([], grid=(4, 4), k=4, prompts=None, outside_roi="drop")
    assert not auto.tiles("drop")
    # a wider margin keeps more tiles
    wide = _plan([], grid=(4, 4), k=4, prompts=prompts, outside_roi="drop", roi_margin_tokens=28)
    assert len(wide.tiles("drop")) < len(plan.tiles("drop"))


def test_config_is_validated_and_parsed():
    with pytest.raises(PolicyError, match="not one of"):
        PolicyConfig(actions={"face": "hide"})
    with pytest.raises(PolicyError, match="outside_roi"):
        PolicyConfig(outside_roi="local")
    with pytest.raises(PolicyError, match="drop_fill"):
        PolicyConfig(drop_fill="random")
    c = PolicyConfig.parse("face=local, text=blur, outside_roi=drop", noise_sigma=10)
    assert c.actions == {"face": "local", "text": "blur"} and c.outside_roi == "drop" and c.noise_sigma == 10
    assert c.to_dict()["actions"]["text"] == "blur"
    with pytest.raises(PolicyError):
        PolicyConfig.parse("face")


def _random_faces(rng, n=12):
    out = []
    for _ in range(n):
        size = float(rng.uniform(24, 160))
        x, y = rng.uniform(0, ORIG[1] - size), rng.uniform(0, ORIG[0] - size)
        out.append(_face(x, y, x + size, y + size))
    return out


@pytest.mark.parametrize("action", ["local", "blur", "pixelate", "noise", "drop"])
def test_no_face_is_seen_whole_by_any_server_at_any_grid(action):
    rng = np.random.default_rng(0)
    faces = _random_faces(rng)
    layouts = [
        (Partition.grid(r, c), round_robin_assignment(Partition.grid(r, c), min(r * c, 4)))
        for r in range(1, 6)
        for c in range(1, 6)
    ]
    for k in (2, 4, 9):
        lay = best_layout(CONTENT, k)
        layouts.append((lay.partition, list(lay.assignment)))
    for part, assign in layouts:
        plan = plan_frame(part, assign, ORIG, CONTENT, faces, PolicyConfig(actions={"face": action}))
        assert not any(objects_seen_whole(plan)), (part.name, action)
        assert all(not seen for seen in server_object_views(plan)), (part.name, action)


def test_with_send_faces_are_seen_whole_so_the_check_above_is_not_vacuous():
    faces = _random_faces(np.random.default_rng(0))
    plan = _plan(faces, actions={"face": "send"})
    # with everything sent, a face is seen whole exactly when no cut crosses it
    uncut = [boxes_whole(plan.partition, [tuple(v * S for v in f.box)]) == 1 for f in faces]
    assert objects_seen_whole(plan) == uncut and sum(uncut) >= 3


# ---------------------------------------------------------------------------
# Obfuscation


@pytest.fixture(scope="module")
def resized(astronaut):
    import cv2

    return np.ascontiguousarray(cv2.resize(astronaut, (CONTENT[1], CONTENT[0])))


def test_tile_crops_obfuscate_only_the_boxes(resized):
    face = _face(100, 30, 180, 120)
    for op in ("blur", "pixelate", "noise"):
        plan = _plan([face], actions={"face": op}, box_margin=0.0, noise_sigma=30.0)
        crops = tile_crops(plan, resized, seed=0)
        clean = tile_crops(_plan([]), resized)
        crop, ref = crops[0].astype(int), clean[0].astype(int)
        x0, y0, x1, y1 = (int(round(v * S)) for v in face.box)
        inside = np.zeros(crop.shape[:2], bool)
        inside[y0:y1, x0:x1] = True
        assert np.array_equal(crop[~inside], ref[~inside]), op  # nothing outside the box changes

        def texture(a, y0=y0, y1=y1, x0=x0, x1=x1):  # mean |difference| of horizontal neighbours in the box
            return np.abs(np.diff(a[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1], axis=1)).mean()

        if op == "noise":
            assert texture(crop) > texture(ref) + 10
        else:  # blur and pixelate remove detail
            assert texture(crop) < 0.6 * texture(ref), op
        for t in (1, 2, 3):
            assert np.array_equal(crops[t], clean[t])
    # the noise has the configured sigma (measured where no clipping happens)
    flat = np.full_like(resized, 128)
    plan = _plan([face], actions={"face": "noise"}, box_margin=0.0, noise_sigma=20.0)
    noisy = tile_crops(plan, flat, seed=1)[0][int(30 * S) + 2 : int(120 * S) - 2, int(100 * S) + 2 : int(180 * S) - 2]
    assert noisy.astype(float).std() == pytest.approx(20.0, rel=0.1)


def test_pixelate_gives_constant_cells(resized):
    face = _face(100, 30, 180, 120)
    plan = _plan([face], actions={"face": "pixelate"}, box_margin=0.0, pixelate_cells=4)
    crop = tile_crops(plan, resized)[0]
    x0, y0 = int(np.ceil(100 * S)), int(np.ceil(30 * S))
    cell = int(min(80, 90) * S / 4)
    block = crop[y0 + 1 : y0 + cell - 2, x0 + 1 : x0 + cell - 2].reshape(-1, 3)
    assert (block == block[0]).all()


def test_blur_near_a_cut_does_not_use_the_neighbouring_tile(resized):
    cut = 28 * PATCH_SIZE / S
    face = _face(cut - 40, 20, cut + 40, 100)
    plan = _plan([face], actions={"face": "blur"})
    a = tile_crops(plan, resized)
    changed = resized.copy()
    changed[:, 28 * PATCH_SIZE :] = 0  # everything right of the cut (tile 1 and 3) changes
    b = tile_crops(plan, changed)
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])


def test_local_and_dropped_tiles_never_leave_and_views_show_only_what_is_sent(resized):
    plan = _plan(
        [_face(20, 20, 60, 60)],
        prompts=prompt_boxes(points=[(30, 30)]),
        outside_roi="drop",
        grid=(3, 3),
        k=4,
        roi_margin_tokens=14,
    )
    crops = tile_crops(plan, resized)
    for d, crop in zip(plan.decisions, crops):
        assert (crop is None) == (d.action in ("local", "drop"))
    assert plan.tiles("local") == [0] and plan.tiles("drop") and plan.tiles("send")
    total = sum(server_view(plan, crops, s).any(axis=2).sum() for s in range(4))
    sent = sum(c.shape[0] * c.shape[1] for c in crops if c is not None)
    assert total <= sent and total > 0


def test_a_plan_for_another_frame_size_is_refused(resized):
    with pytest.raises(ValueError, match="plan is for"):
        tile_crops(_plan([]), resized[:500])


# ---------------------------------------------------------------------------
# Detectors


def test_detector_input_is_checked_and_none_finds_nothing(astronaut):
    with pytest.raises(ValueError, match="RGB uint8"):
        check_rgb(astronaut.astype(np.float32))
    assert make_detector("none").detect(astronaut) == []
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("yolo")


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    a, b = _face(0, 0, 10, 10, 0.9), _face(1, 1, 11, 11, 0.8)
    c = _face(1, 1, 11, 11, 0.7, cls="text")
    assert nms([b, a, c]) == [a, c]


def test_haar_finds_the_astronaut_and_boxes_scale(astronaut):
    dets = HaarFaceDetector().detect(astronaut)
    face = (178, 60, 272, 178)  # hand-marked
    assert any(d.cls == "face" and matches(d.box, face) for d in dets)
    big = dets[0].scaled(2.0, 2.0)
    assert big.box[2] == pytest.approx(2 * dets[0].box[2])


@pytest.mark.parametrize("name", ["mtcnn", "blazeface"])
def test_packaged_face_detectors_find_the_astronaut_and_nothing_in_a_cat(name, astronaut):
    from skimage import data

    try:
        det = make_detector(name)
    except DetectorUnavailable as e:
        pytest.skip(str(e))
    dets = det.detect(astronaut)
    assert any(matches(d.box, (178, 60, 272, 178)) for d in dets)
    assert all(d.cls == "face" and 0 <= d.score <= 1 for d in dets)
    assert not det.detect(data.coffee())  # a photo without a face


def test_ppocr_finds_rendered_words():
    import cv2
    from skimage import data

    try:
        det = make_detector("ppocr")
    except DetectorUnavailable as e:
        pytest.skip(str(e))
    img = np.ascontiguousarray(data.coffee())
    cv2.rectangle(img, (40, 40), (330, 100), (240, 240, 235), -1)
    cv2.putText(img, "PASSWORD", (50, 90), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (10, 10, 10), 3)
    dets = det.detect(img)
    assert any(d.cls == "text" and matches(d.box, (50, 55, 320, 92)) for d in dets)


def test_blazeface_anchor_layouts_match_the_models_outputs():
    assert blazeface_anchors(128, (8, 16), (2, 6)).shape == (896, 2)
    assert blazeface_anchors(192, (4,), (1,)).shape == (2304, 2)
    a = blazeface_anchors(192, (4,), (1,))
    assert a.min() == pytest.approx(0.5 / 48) and a.max() == pytest.approx(1 - 0.5 / 48)


def test_bench_scoring_counts_hits_and_false_positives():
    gts = [("face", (0, 0, 40, 40), 40.0), ("face", (100, 100, 124, 124), 24.0)]
    dets = [_face(2, 5, 42, 48), _face(300, 300, 340, 340), _face(101, 98, 121, 130)]
    found, fp = score_sample(dets, gts)
    assert found == [True, True] and fp == 1
    found, fp = score_sample([], gts)
    assert found == [False, False] and fp == 0


# ---------------------------------------------------------------------------
# The policy inside the distributed encoder (prototype, LocalTransport)


@pytest.fixture(scope="module")
def tiny(sam_reference):
    """The session's checkpoint and SAM's own features of the landscape photo (conftest)."""
    ref = sam_reference["vit_b"]
    return ref.checkpoint, ref.image, ref.resized, ref.features("exact")


def _policy_encoder(ckpt, mode, k):
    from ped_sam_ros.core.model import EdgeStage, RemoteStage
    from ped_sam_ros.core.pipeline import DistributedEncoder
    from ped_sam_ros.core.transport import LocalTransport
    from ped_sam_ros.sensitive.encode import PolicyEncoder

    remote = RemoteStage.from_checkpoint(TINY_B, ckpt)
    transport = RecordingTransport(LocalTransport(remote, num_servers=k))
    enc = DistributedEncoder(
        EdgeStage.from_checkpoint(TINY_B, ckpt, mode), transport, Partition.grid(1, 1), allow_adjacent=True
    )
    return PolicyEncoder(enc, local_stage=remote), transport


def test_local_faces_in_exact_mode_give_sams_embedding_and_never_reach_a_server(tiny):
    ckpt, orig, resized, ref = tiny
    orig_hw, content = orig.shape[:2], resized.shape[:2]
    lay = best_layout(content, 4)
    cut = lay.partition.col_cuts[0] * PATCH_SIZE * orig_hw[1] / content[1]
    faces = [_face(cut - 30, 40, cut + 30, 110), _face(20, 300, 70, 350)]  # one straddles a cut
    plan = plan_frame(lay.partition, lay.assignment, orig_hw, content, faces, PolicyConfig())
    assert len(plan.tiles("local")) >= 3 and plan.tiles("send")
    penc, transport = _policy_encoder(ckpt, "exact", 4)
    feats, stats = penc.encode(resized, plan)
    assert (feats - ref).abs().max().item() <= 1e-4
    sent = {j.tile.index for j in transport.jobs}
    assert sent == set(plan.tiles("send")) and not sent & set(plan.tiles("local"))
    assert stats.counts["local"] == len(plan.tiles("local"))


def test_obfuscated_and_dropped_tiles_change_the_embedding(tiny):
    ckpt, orig, resized, ref = tiny
    orig_hw, content = orig.shape[:2], resized.shape[:2]
    lay = best_layout(content, 4)
    faces = [_face(20, 300, 70, 350)]
    penc, transport = _policy_encoder(ckpt, "exact", 4)
    blurred, _ = penc.encode(
        resized,
        plan_frame(lay.partition, lay.assignment, orig_hw, content, faces, PolicyConfig(actions={"face": "blur"})),
    )
    assert (blurred - ref).abs().max().item() > 1e-3
    diffs = {}
    for fill in ("blank", "zeros"):
        plan = plan_frame(
            lay.partition,
            lay.assignment,
            orig_hw,
            content,
            [],
            PolicyConfig(outside_roi="drop", drop_fill=fill, roi_margin_tokens=0),
            prompts=prompt_boxes(points=[(40, 40)]),
        )
        assert plan.tiles("drop")
        transport.jobs.clear()
        feats, stats = penc.encode(resized, plan)
        assert {j.tile.index for j in transport.jobs}.isdisjoint(plan.tiles("drop"))
        diffs[fill] = (feats - ref).abs().max().item()
    assert all(d > 1e-3 for d in diffs.values()), diffs


def test_default_detector_is_mtcnn_or_haar_where_facenet_is_missing():
    det = make_detector("default")
    assert det.name in ("mtcnn", "haar") and det.classes == ("face",)


def test_exposure_bench_registers_a_known_pan_and_counts_only_what_leaves_the_edge():
    from ped_sam_ros.bench.exposure import FRAME_HW, _tile_masks, pan_path, panorama, register

    scene, faces = panorama()
    path = pan_path(scene.shape[1])[:3]
    frames = [np.ascontiguousarray(scene[y : y + FRAME_HW[0], x : x + FRAME_HW[1]]) for y, x in path]
    hs = register(frames)
    for (y, x), h in zip(path, hs):
        # frame pixel (0, 0) lies at the frame's offset from the first frame
        assert h[0, 2] == pytest.approx(x - path[0][1], abs=1.5) and h[1, 2] == pytest.approx(y - path[0][0], abs=1.5)
    lay = best_layout(CONTENT, 4)
    face = [_face(20, 20, 60, 60)]
    sent = _tile_masks(plan_frame(lay.partition, lay.assignment, ORIG, CONTENT, face, PolicyConfig()), ORIG)
    allsent = _tile_masks(
        plan_frame(lay.partition, lay.assignment, ORIG, CONTENT, face, PolicyConfig(actions={"face": "send"})), ORIG
    )
    assert len(allsent) == len(lay.partition) and len(sent) == len(lay.partition) - 1
    assert sum(m.sum() for m in allsent.values()) == ORIG[0] * ORIG[1]  # tiles cover the frame once
