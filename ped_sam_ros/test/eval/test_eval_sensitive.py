"""Sensitive content per privacy policy and partition (ped_sam_ros.eval.sensitive, ``ped-sam-eval
--sensitive``): on a composited frame with known face boxes, what single servers receive, what the
attacker's MTCNN finds there, reconstructions, mask agreement with plain SAM (tiny random-weight
model), and the command line's handling of bad specs."""

import importlib.util
import json

import numpy as np
import pytest

from helpers import TINY_B
from ped_sam_ros.eval import sensitive as sens

needs_mtcnn = pytest.mark.skipif(
    importlib.util.find_spec("facenet_pytorch") is None,
    reason="facenet-pytorch (MTCNN, the attacker's detector) is not installed",
)

GRIDS = "1x1,2x2,3x3,4x4,5x5"


@pytest.fixture(scope="module")
def stages(tiny_b_checkpoint):
    from ped_sam_ros.core.model import EdgeStage, RemoteStage, build_sam

    return sens.StageSet(
        RemoteStage.from_checkpoint(TINY_B, tiny_b_checkpoint),
        EdgeStage.from_checkpoint(TINY_B, tiny_b_checkpoint, "exact"),
        build_sam(TINY_B, tiny_b_checkpoint),
    )


@pytest.fixture(scope="module")
def frame():
    """One 640x480 composited frame: four faces of 24, 32, 40 and 56 px (38..90 px once resized)."""
    (img,) = sens.composited_images(("face",), 1, (480, 640), seed=0)
    assert len(img.objects) == 4
    return img


def _whole_in_one_tile(img, grid: str) -> int:
    """Faces whose pixels (in the frame resized for SAM) all lie in one tile of the grid: computed
    from the geometry alone, independently of the evaluation."""
    from ped_sam_ros.core.geometry import Partition, content_shape

    hw = content_shape(img.rgb.shape[:2])
    tiles = [t.content_box(hw) for t in Partition.parse(grid)]
    n = 0
    for _, box in img.objects:
        y0, y1, x0, x1 = sens._region(sens._to_resized(box, img.rgb.shape[:2], hw), hw)
        n += any(b is not None and b[0] <= y0 and y1 <= b[1] and b[2] <= x0 and x1 <= b[3] for b in tiles)
    return n


@pytest.fixture(scope="module")
def privacy_run(stages, frame):
    """send, local, blur and drop at every grid 1x1..5x5 and on the balanced layouts for 4 and 9
    servers; the edge acts on the known boxes (oracle); no masks."""
    settings = sens.SensitiveSettings(
        policies=sens.parse_policies("send,local,blur,drop,local+drop"),
        partitions=sens.parse_partitions(GRIDS + ",auto4,auto9"),
        detector="oracle",
        mask_images=0,
    )
    return sens.SensitiveEvaluation(settings, stages, [frame]).run()


def _cell(sec, policy, partition):
    (c,) = [c for c in sec.cells if c.policy == policy and c.partition == partition]
    return c


@needs_mtcnn
def test_local_and_blur_leave_no_face_whole_nor_found_on_any_server(privacy_run, frame):
    sec = privacy_run
    assert sec.attacker["face"].startswith("MTCNN")
    for part in sec.partitions:
        local, blur = _cell(sec, "local", part), _cell(sec, "blur", part)
        assert len(local.objects) == len(blur.objects) == 4
        for o in local.objects:  # not a pixel of a face leaves the edge
            assert not o.seen_whole_by and not o.received_whole_by and not o.found_by, part
            assert o.largest_unaltered == 0.0
        for o in blur.objects:  # received, but blurred: neither whole nor found
            assert not o.seen_whole_by and not o.found_by, part
        assert any(o.received_whole_by for o in blur.objects), part  # not vacuous: the faces did arrive
        assert local.tile_actions["local"] >= 1 and blur.tile_actions["obfuscate"] >= 1
        assert not any(o.seen_whole_by for o in _cell(sec, "local+drop", part).objects)
    # the summaries say the same
    for r in sec.by_policy:
        if r.policy in ("local", "blur"):
            assert r.classes["face"].seen_whole == 0.0 and r.classes["face"].found == 0.0


@needs_mtcnn
def test_send_lets_faces_that_fit_a_tile_be_seen_whole_and_found(privacy_run, frame):
    sec = privacy_run
    total = 0
    for grid in GRIDS.split(","):
        cell = _cell(sec, "send", grid)
        expected = _whole_in_one_tile(frame, grid)  # one server per tile: whole = inside one tile
        assert sum(1 for o in cell.objects if o.seen_whole_by) == expected, grid
        total += expected
    assert total > 0 and _whole_in_one_tile(frame, "5x5") > 0  # the smaller faces fit a 5x5 tile
    one = _cell(sec, "send", "1x1")
    assert all(o.seen_whole_by == [0] and o.recon_ssim == pytest.approx(1.0) for o in one.objects)
    assert sum(1 for o in one.objects if o.found_by) >= 3  # the attacker's detector does find faces
    # the balanced layouts: at least the faces inside one tile are seen whole
    for k in ("auto4", "auto9"):
        assert sum(1 for o in _cell(sec, "send", k).objects if o.seen_whole_by) >= 1


@needs_mtcnn
def test_mean_fill_floor_is_below_the_inpainting_for_send(privacy_run):
    sec = privacy_run
    for r in sec.summary:
        f = r.classes["face"]
        assert f.objects == 4 and f.recon_ssim is not None and f.floor_ssim is not None
        if r.policy == "send":
            assert f.floor_ssim <= f.recon_ssim + 1e-9, r.partition
        if r.policy == "local":
            assert f.recon_ssim < 0.6, r.partition  # nothing of the faces received: far from the original


@needs_mtcnn
def test_drop_outside_the_roi_sends_nothing_of_the_faces_far_from_the_prompt(privacy_run, frame):
    from ped_sam_ros.core.geometry import Partition, content_shape
    from ped_sam_ros.sensitive.policy import intersect

    sec = privacy_run
    hw = content_shape(frame.rgb.shape[:2])
    cell = _cell(sec, "drop", "5x5")
    assert cell.tile_actions["drop"] >= 1 and cell.roi is not None
    kept = [
        (b[2], b[0], b[3], b[1])  # as x0, y0, x1, y1
        for b in (t.content_box(hw) for t in Partition.parse("5x5"))
        if b is not None and intersect((b[2], b[0], b[3], b[1]), tuple(cell.roi)) is not None
    ]
    far = 0
    for (_, box), o in zip(frame.objects, cell.objects):
        rb = sens._to_resized(box, frame.rgb.shape[:2], hw)
        if all(intersect(rb, k) is None for k in kept):
            far += 1
            assert o.largest_unaltered == 0.0 and not o.found_by
    assert far >= 1  # some face lies outside the tiles near the centre prompt
    assert _cell(sec, "drop", "1x1").tile_actions["drop"] == 0  # one tile always holds the ROI


def test_local_in_exact_mode_agrees_with_plain_sam_on_and_off_the_faces(stages, frame):
    settings = sens.SensitiveSettings(
        policies=sens.parse_policies("send,local"),
        partitions=sens.parse_partitions("2x2"),
        detector="oracle",
        mask_images=1,
    )
    sec = sens.SensitiveEvaluation(settings, stages, [frame], attacker=_NoAttacker()).run()
    send, local = _cell(sec, "send", "2x2"), _cell(sec, "local", "2x2")
    assert local.tile_actions["local"] >= 1
    for cell in (send, local):
        on, off = cell.on_ious["face"], cell.off_ious
        assert len(on) == 4 and len(off) >= 3
        assert min(on) >= 0.999 and min(off) >= 0.999, cell.policy  # the bound of test_privacy_pipeline
        assert cell.edge_stage_s > 0
    assert send.local_s == 0.0 and local.local_s > 0  # the local tiles' remote stage ran on the edge
    r = next(r for r in sec.by_policy if r.policy == "local")
    assert r.classes["face"].iou_on >= 0.999 and r.added_share > 0


class _NoAttacker(sens.Attacker):
    """No detector (the mask test does not need one)."""

    def __init__(self):
        super().__init__(())

    def find(self, cls, rgb):
        return []


def test_bad_specs_raise_clear_errors():
    for spec, words in [
        ("send,zap", "bad privacy policy 'zap'"),
        ("noise:300", "0..255"),
        ("noise:abc", "must be a number"),
        ("blur:3", "only noise takes a parameter"),
        ("", "no privacy policy"),
    ]:
        with pytest.raises(sens.SensitiveSpecError, match=words):
            sens.parse_policies(spec)
    for spec, words in [
        ("6x6", "bad partition '6x6'"),
        ("2x2@9", "servers must be 1..4"),
        ("auto0", "1 <= K <= 25"),
        ("tiles", "use RxC"),
        (",", "no partition"),
    ]:
        with pytest.raises(sens.SensitiveSpecError, match=words):
            sens.parse_partitions(spec)
    with pytest.raises(sens.SensitiveSpecError, match="among"):
        sens.parse_classes("face,person")
    p = sens.parse_policies("send, noise:25 ,local+drop,drop,send")
    assert [x.name for x in p] == ["send", "noise:25", "local+drop", "drop"]
    assert p[1].config(("face",)).noise_sigma == 25.0 and p[1].label == "noise (sigma 25)"
    assert p[2].config(("face",)).outside_roi == "drop" and p[2].config(("face",)).actions == {"face": "local"}
    assert not p[3].needs_detector and p[3].label == "drop outside the ROI"
    q = sens.parse_partitions("2x2,5x5@3,auto9")
    assert [x.max_servers for x in q] == [4, 3, 9] and q[2].is_auto


@pytest.mark.parametrize(
    "args,words",
    [
        (["--privacy-policies", "zap"], "bad privacy policy"),
        (["--privacy-partitions", "7x1"], "bad partition"),
        (["--sensitive", "--sensitive-detector", "yolo"], "unknown detector"),
        (["--sensitive", "--sensitive-mode", "k9"], "--sensitive-mode"),
    ],
)
def test_the_command_line_refuses_bad_specs(args, words, capsys):
    from ped_sam_ros.tools import evaluate

    assert evaluate.main(args + ["--max-images", "1", "--no-progress"]) == 2
    assert words in capsys.readouterr().err


def test_ped_sam_eval_writes_the_section(tmp_path, astronaut):
    """The command line end to end: the report's section, results.json and sensitive.csv."""
    import cv2

    from ped_sam_ros.tools import evaluate

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), cv2.cvtColor(cv2.resize(astronaut, (128, 128)), cv2.COLOR_RGB2BGR))
    out = tmp_path / "report"
    rc = evaluate.main(
        ["--model", TINY_B, "--images", str(images), "--configs", "cloud", "--point-grid", "1", "--amg-points", "0"]
        + ["--cost-models", "", "--no-time-full-size", "--no-progress", "--out", str(out)]
        + ["--privacy-policies", "send,local", "--privacy-partitions", "2x2", "--sensitive-frames", "1"]
        + ["--sensitive-photos", "no", "--sensitive-detector", "oracle", "--sensitive-mask-images", "0"]
    )
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "## Sensitive content per policy and partition" in report
    assert "### Faces: per policy (all partitions together)" in report
    data = json.loads((out / "results.json").read_text())["sensitive"]
    assert [r["policy"] for r in data["by_policy"]] == ["send", "local"]
    local = data["by_policy"][1]["classes"]["face"]
    assert local["objects"] == 4 and local["seen_whole"] == 0.0
    assert data["policies"]["local"]["actions"] == {"face": "local"}
    assert (out / "sensitive.csv").read_text().startswith("policy,")
    assert np.isfinite(data["wall_s"])
