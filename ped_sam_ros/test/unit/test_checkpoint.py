"""Official-format checkpoints load into both stages; each holds only its own weights."""

import pytest
import torch

from helpers import TINY_B
from ped_sam_ros.core.model import (
    CheckpointError,
    EdgeStage,
    RemoteStage,
    build_sam,
    get_geometry,
    infer_geometry,
    load_state_dict,
)


def test_checkpoint_is_a_plain_sam_state_dict(tiny_b_checkpoint):
    state = torch.load(tiny_b_checkpoint, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    assert "image_encoder.pos_embed" in state and "mask_decoder.iou_token.weight" in state
    # the whole model loads strictly through segment_anything's own Sam
    sam = build_sam(TINY_B, tiny_b_checkpoint)
    assert torch.equal(sam.image_encoder.pos_embed, state["image_encoder.pos_embed"])


@pytest.mark.parametrize("mode", ["paper", "exact"])
def test_stages_hold_only_their_own_weights(tiny_b_checkpoint, mode):
    geom = get_geometry(TINY_B)
    state = load_state_dict(tiny_b_checkpoint)
    remote = RemoteStage.from_checkpoint(TINY_B, tiny_b_checkpoint)
    edge = EdgeStage.from_checkpoint(TINY_B, tiny_b_checkpoint, mode)
    rkeys, ekeys = set(remote.checkpoint_keys()), set(edge.checkpoint_keys())

    def blocks(keys):
        return {int(k.split(".")[2]) for k in keys if k.startswith("image_encoder.blocks.")}

    # remote: embedding + window blocks only; never a global block, the neck or the decoder
    assert blocks(rkeys) == set(geom.window_blocks)
    assert not blocks(rkeys) & set(geom.global_attn_indexes)
    assert all(
        k.startswith(("image_encoder.patch_embed", "image_encoder.pos_embed", "image_encoder.blocks.")) for k in rkeys
    )
    # edge: no patch embedding, no position table, only the blocks from the split on
    assert blocks(ekeys) == set(geom.edge_blocks(mode))
    assert not any(k.startswith(("image_encoder.patch_embed", "image_encoder.pos_embed")) for k in ekeys)
    assert any(k.startswith("mask_decoder.") for k in ekeys) and any(k.startswith("prompt_encoder.") for k in ekeys)
    # every tensor equals the checkpoint's
    for stage in (remote, edge):
        for k, v in stage.state_dict().items():
            assert torch.equal(v, state[stage.checkpoint_key(k)]), k
    if mode == "paper":  # together the two stages are the whole model, no tensor twice
        assert rkeys | ekeys == set(state) and not rkeys & ekeys


def test_exact_edge_excludes_early_window_blocks(tiny_b_checkpoint):
    edge = EdgeStage.from_checkpoint(TINY_B, tiny_b_checkpoint, "exact")
    assert sorted(int(k) for k in edge.blocks) == list(range(2, 12))


def test_wrong_checkpoint_is_refused_clearly(tmp_path, tiny_b_checkpoint):
    with pytest.raises(CheckpointError, match="shape"):
        RemoteStage.from_checkpoint("vit_b/w64h2", tiny_b_checkpoint)
    with pytest.raises(CheckpointError, match="lacks"):
        EdgeStage.from_checkpoint("vit_h/w32h2", tiny_b_checkpoint)
    with pytest.raises(CheckpointError, match="does not exist"):
        RemoteStage.from_checkpoint(TINY_B, tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    torch.save([1, 2, 3], junk)
    with pytest.raises(CheckpointError, match="not a SAM state dict"):
        RemoteStage.from_checkpoint(TINY_B, junk)


def test_infer_geometry_from_checkpoint(tiny_b_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="vit_b/w32hHEADS"):
        infer_geometry(tiny_b_checkpoint)  # narrow: the head count is not in the weights
    full = tmp_path / "full_b.pth"
    # the official vit_b layout: infer_geometry reads shapes only, so the tensors hold no values
    # (built on the meta device, saved as zero-stride views of one element)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_sam("vit_b").state_dict().items()}
    torch.save({k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}, full)
    assert infer_geometry(full) == get_geometry("vit_b")
    assert get_geometry("vit_h").spec == "vit_h" and get_geometry("vit_b/w32h2").spec == "vit_b/w32h2"
    with pytest.raises(ValueError):
        get_geometry("vit_x")
