"""Device and precision options: parsing, clear errors, fallbacks only when asked; the
stages move weights once and hand back CPU float32 at the wire boundary (CPU only here:
the CUDA rules are checked with the machine's CUDA facts passed in)."""

import pytest
import torch

from helpers import TINY_B
from ped_sam_ros.core.device import DeviceError, parse_precision, resolve_device, resolve_placement
from ped_sam_ros.core.geometry import Partition
from ped_sam_ros.core.model import EdgeStage, RemoteStage, sam_head

NO_CUDA = dict(cuda_available=False, cuda_count=0)
TWO_GPUS = dict(cuda_available=True, cuda_count=2)


def test_auto_takes_cuda_when_present():
    assert resolve_device("auto", **NO_CUDA) == torch.device("cpu")
    assert resolve_device(None, **NO_CUDA) == torch.device("cpu")
    assert resolve_device("auto", **TWO_GPUS) == torch.device("cuda", 0)
    assert resolve_device("cuda", **TWO_GPUS) == torch.device("cuda", 0)
    assert resolve_device("CUDA:1", **TWO_GPUS) == torch.device("cuda", 1)
    assert resolve_device("cpu", **TWO_GPUS) == torch.device("cpu")


def test_impossible_devices_are_clear_errors():
    with pytest.raises(DeviceError, match="no usable CUDA device"):
        resolve_device("cuda", **NO_CUDA)
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        resolve_device("cuda:2", **TWO_GPUS)
    for bad in ("gpu", "tpu", "cuda:x", "mps"):
        with pytest.raises(DeviceError, match="device must be one of"):
            resolve_device(bad, **TWO_GPUS)


def test_precision_names():
    assert parse_precision("float32") == parse_precision("fp32") == torch.float32
    assert parse_precision("half") == parse_precision("FP16") == torch.float16
    assert parse_precision("bf16") == parse_precision(torch.bfloat16) == torch.bfloat16
    with pytest.raises(DeviceError, match="precision must be one of"):
        parse_precision("int8")
    with pytest.raises(DeviceError):
        parse_precision(torch.float64)


def test_half_precision_rules_and_fallback():
    assert resolve_placement("cpu", "bfloat16", **NO_CUDA).dtype == torch.bfloat16
    with pytest.raises(DeviceError, match="float16 on the CPU.*allow the fallback"):
        resolve_placement("cpu", "float16", **NO_CUDA)
    p = resolve_placement("cpu", "float16", allow_fallback=True, **NO_CUDA)
    assert p.dtype == torch.float32 and "running float32 instead" in p.fallback
    gpu = resolve_placement("cuda:1", "float16", **TWO_GPUS)
    assert (gpu.device, gpu.dtype, gpu.fallback, gpu.describe()) == (
        torch.device("cuda", 1),
        torch.float16,
        None,
        "cuda:1/float16",
    )
    with pytest.raises(DeviceError, match="no bfloat16 support"):
        resolve_placement("cuda", "bf16", bf16_supported=False, **TWO_GPUS)
    assert resolve_placement("cuda", "bf16", bf16_supported=True, **TWO_GPUS).dtype == torch.bfloat16
    assert (
        resolve_placement("cuda", "bf16", bf16_supported=False, allow_fallback=True, **TWO_GPUS).precision == "float32"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_stage_asked_for_cuda_on_this_machine():
    with pytest.raises(DeviceError, match="no usable CUDA device"):
        RemoteStage(TINY_B, device="cuda")
    stage = EdgeStage(TINY_B, device="auto")
    assert stage.device == torch.device("cpu")


def test_stage_fp16_on_cpu_refused_or_falls_back():
    with pytest.raises(DeviceError, match="float16 on the CPU"):
        EdgeStage(TINY_B, precision="float16")
    stage = EdgeStage(TINY_B, precision="float16", allow_fallback=True)
    assert stage.dtype == torch.float32 and stage.placement.fallback
    assert stage.blocks["2"].attn.qkv.weight.dtype == torch.float32


def test_bfloat16_stages_keep_the_wire_float32_and_stay_close():
    """Weights in bf16 once at construction (encoder parts; neck, prompt encoder and decoder in
    float32); tokens back as CPU float32; the embedding close to float32 with the same weights."""
    tile = Partition.grid(2, 2).tiles[0]
    px = torch.randint(0, 256, (*tile.pixel_shape, 3), dtype=torch.uint8).numpy()
    r32, r16 = RemoteStage(TINY_B, seed=4), RemoteStage(TINY_B, seed=4, precision="bfloat16")
    assert r16.blocks["0"].mlp.lin1.weight.dtype == torch.bfloat16 and r16.pos_embed.dtype == torch.bfloat16
    t32, t16 = r32.encode_tile(px, tile), r16.encode_tile(px, tile)
    assert t16.dtype == torch.float32 and t16.device.type == "cpu" and t16.shape == t32.shape
    e32, e16 = EdgeStage(TINY_B, seed=4), EdgeStage(TINY_B, seed=4, precision="bf16")
    assert e16.neck[0].weight.dtype == torch.float32 and e16.mask_decoder.iou_token.weight.dtype == torch.float32
    tokens = torch.randn(1, 16, 16, 32)  # the edge blocks take any token grid: a sixteenth of 64x64's cost
    f32, f16 = e32(tokens), e16(tokens)
    assert f16.dtype == torch.float32
    for a, b in ((t32, t16), (f32, f16)):
        cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
        assert cos > 0.99, cos  # close...
        assert (a - b).abs().max().item() > 1e-4  # ...and not secretly float32
    head = sam_head(e16)
    assert head.device == e16.device
