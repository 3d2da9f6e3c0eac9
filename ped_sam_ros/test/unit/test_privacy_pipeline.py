"""The privacy policy inside the edge pipeline (ped_sam_ros.edge.privacy, the frame hook of
core.pipeline.DistributedEncoder): parameters, exactness of `local` in exact mode, and that no
server receives a detected face whole at any grid (tiny random-weight model, LocalTransport)."""

import numpy as np
import pytest
import torch

from helpers import TINY_B
from helpers.edge import RecordingTransport
from ped_sam_ros.core.geometry import Partition, content_shape, round_robin_assignment
from ped_sam_ros.core.layout import best_layout
from ped_sam_ros.core.pipeline import ObjectPrompt, PedSamPredictor, Segmenter
from ped_sam_ros.edge import params
from ped_sam_ros.edge.config import ConfigError, EdgeConfig
from ped_sam_ros.edge.privacy import PrivacyHook, describe_decisions
from ped_sam_ros.sensitive.policy import PolicyConfig
from ped_sam_ros.sensitive.types import Detection


class _Fixed:
    """A detector that returns the same boxes (original pixels of a frame of ``hw``) every frame."""

    name, classes = "fixed", ("face",)

    def __init__(self, boxes, hw):
        self.boxes, self.hw = boxes, hw

    def detect(self, rgb):
        sy, sx = rgb.shape[0] / self.hw[0], rgb.shape[1] / self.hw[1]
        return [Detection("face", (x0 * sx, y0 * sy, x1 * sx, y1 * sy), 0.99, "fixed") for x0, y0, x1, y1 in self.boxes]


def _encoder(ckpt, mode, k, grid=(2, 2)):
    from ped_sam_ros.core.model import EdgeStage, RemoteStage
    from ped_sam_ros.core.pipeline import DistributedEncoder
    from ped_sam_ros.core.transport import LocalTransport

    remote = RemoteStage.from_checkpoint(TINY_B, ckpt)
    transport = RecordingTransport(LocalTransport(remote, num_servers=k))
    part = Partition.grid(*grid)
    enc = DistributedEncoder(
        EdgeStage.from_checkpoint(TINY_B, ckpt, mode),
        transport,
        part,
        round_robin_assignment(part, k),
        edge_remote=lambda: remote,
    )
    return enc, transport


# ---------------------------------------------------------------------------
# Parameters


def test_privacy_parameters_become_the_edge_config_and_bad_ones_are_refused():
    cfg = params.config_from_params(
        {
            "random_weights": True,
            "privacy.detector": "haar",
            "privacy.face_action": "blur",
            "privacy.classes": "text=local",
            "privacy.noise_sigma": 12.0,
            "privacy.drop_outside_roi": True,
            "privacy.drop_fill": "mean",
            "layout": "auto",
        }
    )
    pc = cfg.policy_config()
    assert pc.actions == {"face": "blur", "text": "local"} and pc.noise_sigma == 12.0
    assert pc.outside_roi == "drop" and pc.drop_fill == "mean" and cfg.layout == "auto"
    assert cfg.privacy_enabled and cfg.needs_edge_remote  # text=local
    assert not EdgeConfig(random_weights=True).privacy_enabled
    assert params.validate_parameter("privacy.face_action", "smudge")
    assert "unknown detector" in params.validate_parameter("privacy.detector", "yolo")
    assert "privacy.face_action" in params.validate_parameter("privacy.classes", "face=send")
    assert params.validate_parameter("privacy.classes", "person") and params.validate_parameter("layout", "tiles")
    assert params.validate_parameter("privacy.noise_sigma", -1.0)
    with pytest.raises(ConfigError):
        params.config_from_params({"random_weights": True, "privacy.classes": "person=zap"})


def test_min_face_px_reaches_the_detector_in_resized_pixels_and_bad_values_are_refused():
    from ped_sam_ros.edge.privacy import build_privacy_hook

    cfg = params.config_from_params({"random_weights": True, "privacy.detector": "haar", "privacy.min_face_px": 64.0})
    assert cfg.privacy_min_face_px == 64.0
    hook = build_privacy_hook(cfg, type("Enc", (), {"edge_remote_stage": None})())
    assert hook.min_face_px == 64.0

    class _Sized:
        name, classes = "sized", ("face",)

        def __init__(self):
            self.asked = []

        def detect(self, rgb, min_size=None):
            self.asked.append(min_size)
            return []

    sized = _Sized()
    hook = PrivacyHook(sized, PolicyConfig(), min_face_px=64.0)
    hook.detect(np.zeros((768, 1024, 3), np.uint8), orig_hw=(1536, 2048))  # camera frame twice the resized one
    assert sized.asked == [pytest.approx(32.0)]
    assert params.validate_parameter("privacy.min_face_px", 2.0)
    with pytest.raises(ConfigError, match="min_face_px"):
        EdgeConfig(random_weights=True, privacy_min_face_px=4.0).validate()


def test_ros_doc_table_lists_the_privacy_parameters():
    from helpers import WORKSPACE

    doc = (WORKSPACE / "docs" / "ros.md").read_text()
    for name in (
        "privacy.detector",
        "privacy.face_action",
        "privacy.classes",
        "privacy.drop_outside_roi",
        "privacy.min_face_px",
        "layout",
    ):
        assert f"`{name}`" in doc


# ---------------------------------------------------------------------------
# Through the distributed encoder


@pytest.fixture(scope="module")
def tiny(sam_reference):
    """The session's checkpoint and SAM's own outputs on the landscape photo (conftest):
    (checkpoint, photo, resized photo, SAM's features, SamPredictor with the photo set)."""
    ref = sam_reference["vit_b"]
    return ref.checkpoint, ref.image, ref.resized, ref.features("exact"), ref.predictor


def test_local_faces_in_exact_mode_give_plain_sams_embedding_and_masks(tiny):
    ckpt, orig, resized, ref, plain = tiny
    h, w = orig.shape[:2]
    faces = [(w / 2 - 30, 40, w / 2 + 30, 100), (20, h - 80, 70, h - 30)]  # the first straddles the 2x2 cut
    enc, transport = _encoder(ckpt, "exact", 4)
    hook = PrivacyHook(_Fixed(faces, (h, w)), PolicyConfig(), local_stage=enc.edge_remote_stage)
    enc.frame_hook = hook
    seg = Segmenter(PedSamPredictor(enc))
    prompt = [ObjectPrompt(points=[(w * 0.3, h * 0.6, 1)])]
    stats = seg.set_image(orig, prompt)
    plan = stats.privacy.plan
    local = set(plan.tiles("local"))
    assert len(local) >= 3 and plan.tiles("send") and stats.edge_tiles == sorted(local)
    assert {j.tile.index for j in transport.jobs} == set(plan.tiles("send"))
    assert (seg.predictor.features - ref).abs().max().item() <= 1e-4
    ours = seg.segment(prompt)[0].mask
    masks, scores, _ = plain.predict(np.array([[w * 0.3, h * 0.6]]), np.array([1]), multimask_output=True)
    assert (ours == masks[int(np.argmax(scores))]).mean() >= 0.999
    assert "detect" in stats.timings and "edge_local" in stats.timings and not stats.degraded
    rows = describe_decisions(stats.privacy, transport.server_names)
    assert {r["action"] for r in rows} == {"local", "send"}
    assert all(r["classes"] == ["face"] for r in rows if r["action"] == "local")


def test_drop_outside_roi_sends_only_the_tiles_near_the_prompt(tiny):
    ckpt, orig, resized, ref, _ = tiny
    enc, transport = _encoder(ckpt, "exact", 4, grid=(4, 4))
    cfg = PolicyConfig(actions={}, outside_roi="drop", drop_fill="mean", roi_margin_tokens=0)
    enc.frame_hook = PrivacyHook(None, cfg, local_stage=enc.edge_remote_stage)
    seg = Segmenter(PedSamPredictor(enc))
    stats = seg.set_image(orig, [ObjectPrompt(points=[(10, 10, 1)])])
    plan = stats.privacy.plan
    dropped = set(plan.tiles("drop"))
    assert dropped and {j.tile.index for j in transport.jobs}.isdisjoint(dropped)
    assert "outside the region of interest" in plan.decisions[min(dropped)].reason
    assert torch.isfinite(seg.predictor.features).all()
    assert (seg.predictor.features - ref).abs().max().item() > 1e-3  # the fill changes the embedding


def test_layout_auto_balances_the_frame_and_keeps_the_spare_out(tiny):
    ckpt, orig, resized, _, _ = tiny
    enc, transport = _encoder(ckpt, "paper", 4)
    enc.frame_hook = PrivacyHook(None, PolicyConfig(actions={}), layout="auto", primaries=[0, 1, 2])
    stats = Segmenter(PedSamPredictor(enc)).set_image(orig)
    best = best_layout(content_shape(orig.shape[:2]), 3)
    assert enc.partition == best.partition and 3 not in enc.assignment
    assert max(s.share for s in stats.per_server) == pytest.approx(best.max_share, abs=1e-9)


# ---------------------------------------------------------------------------
# The target: no detected face whole on any one server, at any grid (the astronaut, a real detector)


@pytest.fixture(scope="module")
def astronaut_faces(astronaut):
    """The astronaut's top 384 rows (a 4:3 camera frame; the face stays whole), resized as SAM
    does, and the default detector's faces in it, detected once: the same frame at every grid."""
    from ped_sam_ros.sensitive.detectors import make_detector

    photo = np.ascontiguousarray(astronaut[:384])
    hw = photo.shape[:2]
    resized = np.ascontiguousarray(
        torch.nn.functional.interpolate(
            torch.from_numpy(photo).permute(2, 0, 1)[None].float(), size=content_shape(hw), mode="bilinear"
        )[0]
        .permute(1, 2, 0)
        .round()
        .clamp(0, 255)
        .byte()
        .numpy()
    )
    return hw, resized, make_detector("default").detect(resized)


@pytest.mark.parametrize("action", ["local", "blur"])
def test_no_detected_face_reaches_any_server_whole_at_any_grid(tiny, astronaut_faces, action):
    from ped_sam_ros.sensitive.obfuscate import tile_crops  # noqa: F401 - the crops checked below

    ckpt = tiny[0]
    enc, transport = _encoder(ckpt, "paper", 4)
    hw, resized, found = astronaut_faces
    detector = type("Once", (), {"name": "default", "classes": ("face",), "detect": lambda self, rgb: list(found)})()
    hook = PrivacyHook(detector, PolicyConfig(actions={"face": action}), local_stage=enc.edge_remote_stage)
    layouts = [(Partition.grid(r, c), None) for r in range(1, 6) for c in range(1, 6)]
    layouts += [
        (best_layout(content_shape(hw), k).partition, best_layout(content_shape(hw), k).assignment) for k in (2, 3, 4)
    ]
    faces_checked = 0
    for part, assign in layouts:
        k = 4 if assign is None else max(assign) + 1
        assign = list(assign) if assign is not None else round_robin_assignment(part, min(k, len(part)))
        enc.allow_adjacent = True
        enc.set_layout(part, assign)
        tp = hook(enc, resized, hw, None)
        plan = tp.record.plan
        faces = [o for o in plan.objects if o.cls == "face"]
        assert faces, f"the detector found no face at grid {part.name}"
        faces_checked += len(faces)
        assert tp.record.objects_seen_whole() == 0, part.name
        # what would leave the edge: no local tile, and every crop of a face tile differs from the plain one
        for d in plan.decisions:
            if d.objects:
                assert d.action == ("local" if action == "local" else "obfuscate")
                if action == "local":
                    assert d.tile in tp.local and d.tile not in tp.crops
                else:
                    cb = part.tiles[d.tile].content_box(resized.shape[:2])
                    assert not np.array_equal(tp.crops[d.tile], resized[cb[0] : cb[1], cb[2] : cb[3]])
    assert faces_checked >= len(layouts)
    # not vacuous: with `send` the same faces are seen whole (one tile, one server)
    hook_send = PrivacyHook(detector, PolicyConfig(actions={"face": "send"}))
    enc.set_layout(Partition.grid(1, 1), [0])
    assert hook_send(enc, resized, hw, None).record.objects_seen_whole() >= 1
