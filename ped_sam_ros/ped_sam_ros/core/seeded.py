"""Deterministic random weights, drawn per tensor from (seed, checkpoint key).

The edge and the servers each build only their own stage, yet given the same
seed they must hold the parts of *one* random SAM (``random_sam(spec, seed)``).
A single global random stream cannot give that without building the whole
model first, so every tensor gets its own generator, seeded from the seed and
the tensor's checkpoint name: the same name gives the same values in any stage,
in any construction order, on any device.

The distributions follow PyTorch's default initialisation of each layer type
(uniform +-1/sqrt(fan_in) for linear and convolution weights and biases, N(0, 1)
for embeddings and the prompt encoder's random Fourier matrix, LayerNorm ones
and zeros), except SAM's position tables (``pos_embed``, ``rel_pos_*``), which
SAM starts at zero and which get N(0, ``position_scale``) here so that tests are
sensitive to window placement.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Optional, Tuple

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

_UNIFORM_FAN_IN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_NORMS = (nn.LayerNorm, LayerNorm2d)
_POSITION_NAMES = ("pos_embed", "rel_pos_h", "rel_pos_w")
_FOURIER_BUFFER = "positional_encoding_gaussian_matrix"


def tensor_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed for tensor ``key`` of the model drawn with ``seed``."""
    digest = hashlib.sha256(f"ped-sam-seeded-v1:{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _fan_in(weight_shape: Tuple[int, ...]) -> int:
    # as torch.nn.init._calculate_fan_in_and_fan_out: dim 1 times the receptive field
    return int(weight_shape[1] * math.prod(weight_shape[2:]))


def draw(seed: int, key: str, shape: Tuple[int, ...], rule: str, scale: float = 1.0) -> torch.Tensor:
    """One float32 CPU tensor of checkpoint key ``key``: ``uniform`` in +-scale, ``normal`` N(0, scale)."""
    g = torch.Generator().manual_seed(tensor_seed(seed, key))
    t = torch.empty(shape, dtype=torch.float32)
    if rule == "uniform":
        return t.uniform_(-scale, scale, generator=g)
    if rule == "normal":
        return t.normal_(0.0, scale, generator=g)
    raise ValueError(f"unknown rule {rule!r}")


def initial_value(
    module: nn.Module, name: str, tensor: torch.Tensor, seed: int, key: str, position_scale: float
) -> Optional[torch.Tensor]:
    """The seeded float32 value of ``module``'s own tensor ``name`` (checkpoint key ``key``).

    Returns None for tensors that are not weights (non-float buffers).  Raises
    TypeError for a float tensor no rule covers, so a new layer type is noticed.
    """
    shape = tuple(tensor.shape)
    if name in _POSITION_NAMES:
        return draw(seed, key, shape, "normal", position_scale)
    if isinstance(module, _UNIFORM_FAN_IN) and name in ("weight", "bias"):
        bound = 1.0 / math.sqrt(_fan_in(tuple(module.weight.shape)))
        return draw(seed, key, shape, "uniform", bound)
    if isinstance(module, nn.Embedding) and name == "weight":
        return draw(seed, key, shape, "normal", 1.0)
    if isinstance(module, _NORMS) and name in ("weight", "bias"):
        return torch.ones(shape) if name == "weight" else torch.zeros(shape)
    if name == _FOURIER_BUFFER:
        return draw(seed, key, shape, "normal", 1.0)
    if not tensor.is_floating_point():
        return None
    raise TypeError(f"no seeded initialisation rule for {type(module).__name__}.{name} ({key})")


def fill_seeded_(
    root: nn.Module,
    seed: int,
    key_of: Callable[[str], str] = lambda k: k,
    position_scale: float = 0.1,
    skip: Callable[[str], bool] = lambda k: False,
) -> None:
    """Fill every persistent parameter and buffer of ``root`` in place with its seeded value.

    ``key_of`` maps a name in ``root`` to its checkpoint key (what makes a stage's
    tensors equal the whole model's).  Values are drawn in float32 on the CPU and
    copied into each tensor's own device and dtype one at a time, so the peak is
    the module plus one tensor.
    """
    with torch.no_grad():
        for mod_name, module in root.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            own = list(module.named_parameters(recurse=False))
            own += [
                (n, b) for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set
            ]
            for name, tensor in own:
                local = prefix + name
                if skip(local):
                    continue
                value = initial_value(module, name, tensor, seed, key_of(local), position_scale)
                if value is not None:
                    tensor.copy_(value)
