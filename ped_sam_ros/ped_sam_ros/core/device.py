"""Where a stage runs and in which float precision: parsing and validation.

Plain functions, so every rule can be tested on a machine without a GPU (the
CUDA facts are arguments that default to what this machine reports).

* ``device``: ``auto`` (the first CUDA device when one is present, else the
  CPU), ``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N``.
* ``precision``: ``float32``, ``float16`` or ``bfloat16`` (``fp32``/``fp16``/
  ``bf16``/``half`` are accepted as aliases) for the encoder blocks.

An impossible or pointless choice is an error that says why: CUDA asked where
none is present; ``float16`` on the CPU (PyTorch's CPU kernels for it are slow
or missing); ``bfloat16`` on a GPU without bf16 support.  With
``allow_fallback=True`` the stage runs in ``float32`` instead and the
:class:`Placement` records why (``fallback``), so a caller can log it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISION_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


class DeviceError(ValueError):
    """A device or precision this machine cannot (or should not) run."""


@dataclass(frozen=True)
class Placement:
    """A resolved device and float dtype for a stage's encoder weights and activations."""

    device: torch.device
    dtype: torch.dtype
    #: why the requested precision was replaced (only with ``allow_fallback=True``), else None
    fallback: Optional[str] = None

    @property
    def precision(self) -> str:
        """The dtype's name as the options spell it (``float32``, ``float16``, ``bfloat16``)."""
        return precision_name(self.dtype)

    def describe(self) -> str:
        """A short label for logs and benchmark records, e.g. ``cuda:0/bfloat16``."""
        return f"{self.device}/{self.precision}"


def precision_name(dtype: torch.dtype) -> str:
    for name, d in PRECISIONS.items():
        if d == dtype:
            return name
    raise DeviceError(f"unsupported dtype {dtype}: use one of {list(PRECISIONS)}")


def parse_precision(precision: Union[str, torch.dtype]) -> torch.dtype:
    """``"float16"``, ``"bf16"``, ``torch.bfloat16``... -> the torch dtype (no device check)."""
    if isinstance(precision, torch.dtype):
        precision_name(precision)  # validates
        return precision
    key = str(precision).strip().lower()
    key = PRECISION_ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise DeviceError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[key]


def resolve_device(
    device: Union[str, torch.device, None] = "auto",
    *,
    cuda_available: Optional[bool] = None,
    cuda_count: Optional[int] = None,
) -> torch.device:
    """The torch device for a ``device`` option; raises :class:`DeviceError` where it does not exist.

    ``cuda_available``/``cuda_count`` default to this machine's facts (tests pass them).
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if cuda_available else 0
    spec = "auto" if device is None else str(device).strip().lower()
    if spec == "auto":
        return torch.device("cuda", 0) if cuda_available and cuda_count > 0 else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device must be one of {DEVICE_CHOICES}, got {device!r}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise DeviceError(f"device must be one of {DEVICE_CHOICES}, got {device!r}")
    if not cuda_available or cuda_count == 0:
        raise DeviceError(
            f"device {spec!r} was asked for, but this machine has no usable CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): "
            f"use device 'cpu' or 'auto'"
        )
    index = 0 if dev.index is None else dev.index
    if index >= cuda_count:
        raise DeviceError(
            f"device {spec!r} does not exist: this machine has {cuda_count} CUDA device(s), "
            f"cuda:0..cuda:{cuda_count - 1}"
        )
    return torch.device("cuda", index)


def resolve_placement(
    device: Union[str, torch.device, None] = "auto",
    precision: Union[str, torch.dtype] = "float32",
    *,
    allow_fallback: bool = False,
    cuda_available: Optional[bool] = None,
    cuda_count: Optional[int] = None,
    bf16_supported: Optional[bool] = None,
) -> Placement:
    """Validate a (device, precision) pair together.

    ``float16`` on the CPU and ``bfloat16`` on a GPU without bf16 support are
    refused unless ``allow_fallback`` is set, in which case the placement runs
    ``float32`` and ``Placement.fallback`` says why.  ``bfloat16`` on the CPU is
    allowed (supported everywhere; fast only on CPUs with bf16 instructions).
    """
    dev = resolve_device(device, cuda_available=cuda_available, cuda_count=cuda_count)
    dtype = parse_precision(precision)
    problem = None
    if dev.type == "cpu" and dtype == torch.float16:
        problem = (
            "float16 on the CPU: PyTorch's CPU kernels for float16 are slower than float32 (or missing); "
            "use float32, or bfloat16 on a CPU with bf16 instructions"
        )
    elif dev.type == "cuda" and dtype == torch.bfloat16:
        if bf16_supported is None:
            with torch.cuda.device(dev):
                bf16_supported = torch.cuda.is_bf16_supported()
        if not bf16_supported:
            problem = f"bfloat16 on {dev}: this GPU has no bfloat16 support (pre-Ampere); use float16"
    if problem is None:
        return Placement(dev, dtype)
    if not allow_fallback:
        raise DeviceError(problem + " (or allow the fallback to float32)")
    return Placement(dev, torch.float32, fallback=problem + "; running float32 instead")
