"""Masks from the distributed pipeline in exact mode equal SamPredictor's."""

import numpy as np
import pytest
from segment_anything import SamPredictor

from helpers import TINY_B
from ped_sam_ros.core.geometry import Partition, PartitionError
from ped_sam_ros.core.model import EdgeStage, RemoteStage, build_sam
from ped_sam_ros.core.pipeline import (
    AmgOptions,
    DistributedEncoder,
    ObjectPrompt,
    PedSamPredictor,
    Segmenter,
    generate_masks,
)
from ped_sam_ros.core.transport import LocalTransport


@pytest.fixture(scope="module")
def stages(tiny_b_checkpoint):
    """The exact-mode edge stage and the remote stage, loaded once for this module."""
    edge = EdgeStage.from_checkpoint(TINY_B, tiny_b_checkpoint, "exact")
    return edge, RemoteStage.from_checkpoint(TINY_B, tiny_b_checkpoint)


def _ped_predictor(stages):
    edge, remote = stages
    transport = LocalTransport(remote, num_servers=4)
    return PedSamPredictor(DistributedEncoder(edge, transport, Partition.grid(2, 2)))


@pytest.fixture(scope="module")
def predictors(sam_reference, stages, landscape):
    """SamPredictor on the photo (the session's, conftest) and ours over the 2x2 split."""
    ref = sam_reference["vit_b"].predictor
    ped = _ped_predictor(stages)
    ped.set_image(landscape)
    return ref, ped


PROMPTS = [
    ObjectPrompt(points=[(300.0, 200.0, 1)]),
    ObjectPrompt(points=[(120.0, 90.0, 1), (500.0, 350.0, 0)]),
    ObjectPrompt(box=(50.0, 40.0, 420.0, 380.0)),
    ObjectPrompt(points=[(250.0, 260.0, 1)], box=(100.0, 100.0, 590.0, 390.0)),
]


def test_embedding_equals_sam(predictors):
    ref, ped = predictors
    assert (ped.features - ref.features).abs().max().item() <= 1e-4
    assert ped.original_size == ref.original_size == (400, 600)
    assert ped.input_size == ref.input_size


def _arrays(p: ObjectPrompt):
    """A prompt as SamPredictor.predict's point coordinates, labels and box."""
    coords = np.array([[x, y] for x, y, _ in p.points], np.float32) if p.points else None
    labels = np.array([lab for *_, lab in p.points]) if p.points else None
    box = np.array(p.box, np.float32) if p.box else None
    return coords, labels, box


@pytest.fixture(scope="module")
def sam_logits(predictors):
    """``(k, multimask) -> (logits, scores)`` of SamPredictor for PROMPTS[k], each decoded once
    for the module (SAM's full-size mask decoder is most of these tests' time)."""
    ref, _ = predictors
    memo = {}

    def get(k: int, multimask: bool):
        if (k, multimask) not in memo:
            out = ref.predict(*_arrays(PROMPTS[k]), multimask_output=multimask, return_logits=True)
            memo[k, multimask] = out[:2]
        return memo[k, multimask]

    return get


@pytest.mark.parametrize("multimask", [True, False])
def test_prompt_masks_equal_sam_predictor(predictors, sam_logits, multimask):
    """Same masks as SamPredictor. The embeddings differ by float error (~1e-5),
    so a pixel may only flip where SAM's own logit lies within that error of the
    threshold; everywhere else the masks are identical."""
    _, ped = predictors
    for k, p in enumerate(PROMPTS):
        l_ref, s_ref = sam_logits(k, multimask)
        l_ped, s_ped, _ = ped.predict(*_arrays(p), multimask_output=multimask, return_logits=True)
        assert l_ref.shape == l_ped.shape == (3 if multimask else 1, 400, 600)
        scale = float(np.abs(l_ref).max())
        tol = 1e-3 * scale
        np.testing.assert_allclose(l_ped, l_ref, rtol=0, atol=tol)
        np.testing.assert_allclose(s_ped, s_ref, atol=1e-4)
        m_ref, m_ped = l_ref > 0, l_ped > 0
        flips = m_ref != m_ped
        assert flips.mean() < 1e-4
        assert np.all(np.abs(l_ref[flips]) <= tol)
        sure = np.abs(l_ref) > tol
        assert np.array_equal(m_ref[sure], m_ped[sure])
        assert sure.mean() > 0.5, "the equality must cover most pixels, not only near-ties"


def test_segmenter_instances_in_original_pixels(predictors, sam_logits):
    """Per prompt, SAM's best-scored of its three masks (SamPredictor's own decode), in original pixels."""
    _, ped = predictors
    b = Segmenter(ped).segment(PROMPTS)
    assert [i.id for i in b] == [1, 2, 3, 4]
    for k, y in enumerate(b):
        logits, scores = sam_logits(k, True)
        want = logits[int(np.argmax(scores))] > ped.model.mask_threshold
        assert y.mask.shape == (400, 600) and y.mask.dtype == bool
        iou = (want & y.mask).sum() / max(1, (want | y.mask).sum())
        assert iou > 0.999 and abs(int(want.sum()) - y.area) <= 1e-4 * want.size
        assert y.area == int(y.mask.sum())
        if y.area:
            ys, xs = np.nonzero(y.mask)
            assert y.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert 0.0 <= y.stability_score <= 1.0


def test_stats_count_bytes_and_shares(predictors):
    _, ped = predictors
    st = ped.last_stats
    assert set(st.timings) >= {"remote", "edge_encoder"}
    # 400x600 -> 683x1024 resized: uint8 pixels up are about that many bytes (plus headers)
    assert 683 * 1024 * 3 <= st.bytes_up <= 683 * 1024 * 3 + 4 * 2048
    assert st.bytes_down >= 64 * 64 * 32 * 4  # float32 tokens of width 32
    assert sum(s.share for s in st.per_server) == pytest.approx(1.0)


def test_bad_prompts_are_refused(predictors):
    _, ped = predictors
    seg = Segmenter(ped)
    with pytest.raises(ValueError, match="at least one point or a box"):
        seg.segment([ObjectPrompt()])
    with pytest.raises(ValueError, match="label"):
        seg.segment([ObjectPrompt(points=[(1, 1, 3)])])
    with pytest.raises(ValueError, match="x_min < x_max"):
        seg.segment([ObjectPrompt(box=(10, 10, 5, 20))])


def test_automatic_mode_runs_over_the_distributed_embedding(stages, landscape, monkeypatch):
    """On a 200x300 frame with a 2x2 point grid and every filter off (SAM's generator copies
    each mask's RLE a few times, so fewer and smaller masks keep this test fast)."""
    ped = _ped_predictor(stages)
    frame = np.ascontiguousarray(landscape[::2, ::2])
    encodings = []
    real = ped.encoder.encode_resized
    monkeypatch.setattr(ped.encoder, "encode_resized", lambda *a, **k: encodings.append(1) or real(*a, **k))
    seg = Segmenter(
        ped,
        amg_options=dict(
            points_per_side=2, points_per_batch=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
        ),
    )
    inst = seg.segment_everything(frame)
    assert encodings == [1], "the frame is encoded once; the generator decodes that embedding"
    assert len(inst) > 3, "with all filters off the generator keeps masks from several batches"
    assert all(i.mask.shape == (200, 300) for i in inst)
    assert [i.area for i in inst] == sorted((i.area for i in inst), reverse=True)
    for i in inst:  # same box convention as prompted instances: tight, width = x_max - x_min + 1
        ys, xs = np.nonzero(i.mask)
        assert i.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert i.area == int(i.mask.sum())
    assert seg.stats is not None and seg.stats.bytes_up > 0


def test_max_share_is_enforced_on_each_frames_content(stages, landscape, astronaut):
    """2x2 on 4 servers: on the square grid the worst share is 31.6 %, which a 0.33 limit
    allows; but the 400x600 frame fills only 683 of 1024 pixel rows, so one server would
    get 448x576 of its 683x1024 content pixels (36.9 %). That frame is refused before anything is sent."""
    edge, remote = stages
    sent = []

    class Recording(LocalTransport):
        def encode(self, jobs, *args, **kwargs):
            sent.append(len(jobs))
            return super().encode(jobs, *args, **kwargs)

    transport = Recording(remote, num_servers=4, names=["a", "b", "c", "d"])
    strict = PedSamPredictor(DistributedEncoder(edge, transport, Partition.grid(2, 2), max_share=0.33))
    with pytest.raises(PartitionError, match=r"server 1 \(b\) would see 36\.9% of this 683x1024 frame"):
        strict.set_image(landscape)
    assert sent == []
    with pytest.raises(PartitionError, match=r"server 2 \(c\) would see 36\.9% of this 1024x683 frame"):
        strict.set_image(np.ascontiguousarray(landscape.transpose(1, 0, 2)))  # portrait
    assert sent == []
    strict.set_image(astronaut)  # square: the shares are the grid's own
    assert sent == [4]
    assert max(s.share for s in strict.last_stats.per_server) <= 0.33


def test_amg_options_default_to_sams_own_and_need_the_embedding(tiny_b_checkpoint, astronaut):
    """One source of AMG defaults (SamAutomaticMaskGenerator's signature); the generator is only
    ever given an embedding already computed for the same image."""
    import inspect

    from segment_anything import SamAutomaticMaskGenerator

    sam_defaults = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    opts = AmgOptions().to_kwargs()
    assert opts and all(v == sam_defaults[k].default for k, v in opts.items())
    off = AmgOptions(points_per_side=4).without_score_filters()
    assert (off.points_per_side, off.pred_iou_thresh, off.stability_score_thresh) == (4, 0.0, 0.0)
    assert off.box_nms_thresh == sam_defaults["box_nms_thresh"].default
    pred = SamPredictor(build_sam(TINY_B, tiny_b_checkpoint))
    with pytest.raises(RuntimeError, match="set_image"):
        generate_masks(pred, astronaut, off.to_kwargs())
    with pytest.raises(ValueError, match="crop_n_layers"):
        generate_masks(pred, astronaut, dict(crop_n_layers=1))
