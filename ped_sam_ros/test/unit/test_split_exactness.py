"""The encoder split is exact where method.md says it is (fp32, random weights,
SAM's real geometry: 1024 input, 64x64 tokens, window 14, vit_b and vit_h
global-block positions at narrow widths)."""

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from helpers import TINY_B, TINY_H
from ped_sam_ros.core.geometry import Partition
from ped_sam_ros.core.model import EdgeStage, RemoteStage, build_sam, reordered_encoder
from ped_sam_ros.core.pipeline import DistributedEncoder
from ped_sam_ros.core.transport import LocalTransport

GRIDS = [(1, 1), (2, 2), (3, 3), (4, 3), (5, 5)]
TOL = 1e-4


def _resized(image):
    return ResizeLongestSide(1024).apply_image(image)


def _references(spec, ckpt, resized):
    sam = build_sam(spec, ckpt)
    x = sam.preprocess(torch.from_numpy(resized).permute(2, 0, 1)[None].float())
    with torch.no_grad():
        return {
            "sam": sam.image_encoder(x),
            "paper": reordered_encoder(sam.image_encoder, x, "paper"),
            "exact": reordered_encoder(sam.image_encoder, x, "exact"),
        }


@pytest.fixture(scope="module", params=["vit_b", "vit_h"])
def setup(request, tiny_b_checkpoint, tiny_h_checkpoint, landscape):
    spec, ckpt = (TINY_B, tiny_b_checkpoint) if request.param == "vit_b" else (TINY_H, tiny_h_checkpoint)
    resized = _resized(landscape)  # 683x1024: the bottom rows are SAM's padding
    return spec, ckpt, resized, _references(spec, ckpt, resized)


@pytest.mark.parametrize("mode", ["paper", "exact"])
def test_partitioned_encoder_equals_reference(setup, mode, record_property):
    spec, ckpt, resized, ref = setup
    remote = RemoteStage.from_checkpoint(spec, ckpt)
    edge = EdgeStage.from_checkpoint(spec, ckpt, mode)
    diffs = {}
    for rows, cols in GRIDS:
        p = Partition.grid(rows, cols)
        enc = DistributedEncoder(edge, LocalTransport(remote, num_servers=len(p)), p)
        feats, _ = enc.encode_resized(resized)
        diffs[p.name] = (feats - ref[mode]).abs().max().item()
        if mode == "exact":  # exact mode is unmodified SAM
            diffs[p.name] = max(diffs[p.name], (feats - ref["sam"]).abs().max().item())
    record_property("max_abs_diff", diffs)
    print(f"\n{spec} {mode}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert all(d <= TOL for d in diffs.values()), diffs


def test_paper_mode_is_not_sam_and_free_cuts_are_not_exact(setup):
    """Guards against a vacuous comparison: the approximations do differ."""
    spec, ckpt, resized, ref = setup
    assert (ref["paper"] - ref["sam"]).abs().max().item() > 1e-2
    remote = RemoteStage.from_checkpoint(spec, ckpt)
    edge = EdgeStage.from_checkpoint(spec, ckpt, "exact")
    p = Partition.grid(2, 2, aligned=False)
    feats, _ = DistributedEncoder(edge, LocalTransport(remote, num_servers=4), p).encode_resized(resized)
    assert (feats - ref["sam"]).abs().max().item() > 1e-3


def test_window_position_matters(setup):
    """A window encoded at the wrong grid position gives different tokens
    (pos_embed and padding are taken from the window's real place)."""
    spec, ckpt, resized, _ = setup
    remote = RemoteStage.from_checkpoint(spec, ckpt)
    w0, w1 = Partition.grid(5, 5).tiles[:2]
    crop = np.ascontiguousarray(resized[:224, :224])
    a = remote.encode_tile(crop, w0)
    b = remote.encode_tile(crop, w1)
    assert (a - b).abs().max().item() > 1e-3
