"""Device and link profiles for the latency model (:mod:`.latency`): small typed records.

A :class:`DeviceProfile` says how fast one machine runs SAM's encoder pieces, the codecs and
CurveZMQ.  Two kinds:

* ``measured``: this machine, timed in-process (:mod:`.calibrate`): every encoder op is timed
  on the shape it really runs on, codecs and Curve measured here.  Its figures are not
  stored in the profile; the model asks the calibration for them.
* ``published``: entered from published figures, **with their source**.  Encoder speed is
  a range of whole-encoder seconds for one reference model (``reference_model``), turned
  into MACs per second with this package's own MAC count and applied to every op of every
  model (assumption: the same MAC efficiency for all ops and models; optimistic for the
  small tiles and small models, which use a GPU less well).  Every figure is a
  ``(fast, slow)`` pair and the model reports both ends; nothing is given more precision
  than its sources have.

Profiles are selectable by name (:data:`BUILTIN_PROFILES`) or loaded from a YAML/JSON file
(:func:`load_profiles`), which is validated (:class:`ProfileError` names the bad field).

A :class:`LinkProfile` is asymmetric: uplink and downlink each have a rate (Mbit/s) and a
one-way delay (ms); the round trip is their sum.

No torch, no network.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

Range = Tuple[float, float]  # (fast, slow): the optimistic and the pessimistic end

KINDS = ("measured", "published")
MODELS = ("vit_b", "vit_l", "vit_h")


class ProfileError(ValueError):
    """A profile (or profile file) that is missing a field or holds an impossible value."""


def _range(value, what: str, positive: bool = True) -> Range:
    """``x`` or ``[fast, slow]`` -> (fast, slow), checked (finite, > 0, fast <= slow)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = hi = float(value)
    elif (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ProfileError(f"{what}: expected a number or a [fast, slow] pair, got {value!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ProfileError(f"{what}: not finite: {value!r}")
    if positive and (lo <= 0 or hi <= 0):
        raise ProfileError(f"{what}: must be > 0, got {value!r}")
    if lo > hi:
        raise ProfileError(f"{what}: the fast end {lo:g} is above the slow end {hi:g}")
    return (lo, hi)


@dataclass(frozen=True)
class DeviceProfile:
    """How fast one device (edge or server) is; see the module docstring.

    ``encoder_s``: whole-encoder seconds of ``reference_model`` (published profiles).
    ``decoder_s``: prompt encoder + mask decoder seconds for one point prompt (None:
    measured, or derived from the encoder rate).  ``cpu_factor``: codec and CurveZMQ time
    relative to this machine's measurement (>1: slower).  ``curve_mb_s``: CurveZMQ
    throughput in MB/s of payload; None: measured here, times ``cpu_factor``.
    """

    name: str
    kind: str
    description: str
    source: str
    reference_model: str = "vit_h"
    encoder_s: Optional[Range] = None
    decoder_s: Optional[Range] = None
    cpu_factor: Range = (1.0, 1.0)
    curve_mb_s: Optional[Range] = None

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ProfileError("profile name must be a non-empty string")
        if self.kind not in KINDS:
            raise ProfileError(f"profile {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not str(self.source).strip():
            raise ProfileError(f"profile {self.name!r}: 'source' is required (where its figures come from)")
        if self.kind == "published":
            if self.encoder_s is None:
                raise ProfileError(f"profile {self.name!r}: a published profile needs 'encoder_s'")
            if self.reference_model not in MODELS:
                raise ProfileError(f"profile {self.name!r}: reference_model must be one of {MODELS}")
        for f in ("encoder_s", "decoder_s", "curve_mb_s"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, _range(v, f"profile {self.name!r}: {f}"))
        object.__setattr__(self, "cpu_factor", _range(self.cpu_factor, f"profile {self.name!r}: cpu_factor"))

    @property
    def measured(self) -> bool:
        return self.kind == "measured"

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping, name: Optional[str] = None) -> DeviceProfile:
        if not isinstance(d, Mapping):
            raise ProfileError(f"profile {name!r}: expected a mapping, got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ProfileError(f"profile {name or d.get('name')!r}: unknown fields {sorted(unknown)}")
        args = dict(d)
        if name is not None:
            args.setdefault("name", name)
        for req in ("name", "kind", "description", "source"):
            if req not in args:
                raise ProfileError(f"profile {args.get('name', name)!r}: missing field {req!r}")
        return cls(**args)


# ---------------------------------------------------------------------------
# Built-in profiles.  Figures and how they were derived (see docs/evaluation.md):
#
# [SAM]   Kirillov et al., "Segment Anything", ICCV 2023, and its model card / FAQ
#         (segment-anything.com): "The image encoder takes ~0.15 seconds on an NVIDIA A100
#         GPU"; the prompt encoder and mask decoder "~50 ms on CPU in the browser".
# [EVSAM] Zhang, Cai, Han, "EfficientViT-SAM", arXiv:2402.05008 (2024), and its model card
#         (huggingface.co/mit-han-lab/efficientvit-sam): SAM-ViT-H's encoder is 2973 GMACs;
#         TensorRT fp16, Jetson AGX Orin latency (batch 1) / A100 throughput (batch 16):
#         XL0 (185 GMACs) 22.5 ms / 278 images/s, XL1 (322 GMACs) 37.2 ms / 182 images/s,
#         L0 (35 GMACs, 512 px, SAM's mask decoder included) 8.2 ms / 762 images/s; the
#         abstract's "48.9x measured TensorRT speedup on A100 over SAM-ViT-H" read against
#         L0's 762 images/s puts SAM-ViT-H near 15.6 images/s (64 ms) with TensorRT fp16.
#
# Derived: A100-class vit_h encoder 0.064 s (TensorRT fp16, [EVSAM] inference above) to
# 0.15 s ([SAM]).  AGX Orin / A100 time ratio on the same models and toolchain in [EVSAM]:
# 22.5 ms x 278/s = 6.3 (XL0), 37.2 ms x 182/s = 6.8 (XL1); applied to both A100 ends:
# AGX-Orin-class vit_h encoder 0.40 s to 1.02 s.  No source gives SAM ViT-H measured on an
# Orin directly; the range is a derivation and is labelled so.
# Orin decoder: at most 8.2 ms (EfficientViT-SAM-L0 end to end, SAM's decoder included,
# [EVSAM]); the fast end is the decoder's MACs at the encoder's rate (filled in by the model).
# cpu_factor (codecs, Curve) for the Orin's Arm Cortex-A78AE cores against this machine's
# x86 core: not measured, assumed 1.5-3x slower; servers' host CPUs assumed like this one.

BUILTIN_PROFILES: Dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            name="this-machine",
            kind="measured",
            description="this machine's CPU, every op timed in-process on its real shape",
            source="measured here (ped_sam_ros.eval.calibrate; cached per geometry, shape and machine)",
        ),
        DeviceProfile(
            name="agx-orin",
            kind="published",
            description="NVIDIA Jetson AGX Orin class edge (GPU, TensorRT fp16 at the fast end)",
            source=(
                "derived: A100 vit_h encoder 0.064-0.15 s ([SAM] model card ~0.15 s; [EVSAM] 48.9x vs L0 "
                "762 img/s) x Orin/A100 time ratio 6.3-6.8 on the same models in [EVSAM] "
                "(XL0 22.5 ms vs 278 img/s, XL1 37.2 ms vs 182 img/s); decoder <= 8.2 ms ([EVSAM] L0 end to end)"
            ),
            reference_model="vit_h",
            encoder_s=(0.40, 1.02),
            decoder_s=None,
            cpu_factor=(1.5, 3.0),
        ),
        DeviceProfile(
            name="a100",
            kind="published",
            description="NVIDIA A100 class server GPU",
            source=(
                "[SAM] model card: vit_h image encoder ~0.15 s on an A100; [EVSAM] (arXiv:2402.05008): "
                "48.9x TensorRT fp16 speedup of EfficientViT-SAM (L0: 762 img/s) over SAM-ViT-H -> ~0.064 s"
            ),
            reference_model="vit_h",
            encoder_s=(0.064, 0.15),
            decoder_s=None,
            cpu_factor=(1.0, 1.0),
        ),
    )
}


def _read_mapping(path: Path) -> Mapping:
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ProfileError(f"{path}: not valid JSON: {e}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ProfileError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ProfileError(f"{path}: expected a mapping of profile name -> fields (or 'profiles:' of one)")
    return data.get("profiles", data) if isinstance(data.get("profiles"), Mapping) else data


def load_profiles(path: Union[str, Path]) -> Dict[str, DeviceProfile]:
    """Profiles from a YAML or JSON file: ``{name: {kind, description, source, encoder_s, ...}}``
    (optionally under a top-level ``profiles:`` key).  Raises :class:`ProfileError`."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"profile file {p} does not exist")
    data = _read_mapping(p)
    out = {}
    for name, fields in data.items():
        prof = DeviceProfile.from_dict(fields, name=str(name))
        if prof.name != str(name):
            raise ProfileError(f"{p}: profile key {name!r} differs from its name {prof.name!r}")
        out[prof.name] = prof
    if not out:
        raise ProfileError(f"{p}: no profiles")
    return out


def get_profile(name: str, extra: Optional[Mapping[str, DeviceProfile]] = None) -> DeviceProfile:
    """A profile by name: from ``extra`` (a loaded file) first, then the built-ins."""
    table = {**BUILTIN_PROFILES, **(extra or {})}
    if name not in table:
        raise ProfileError(f"unknown profile {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


# ---------------------------------------------------------------------------
# Links


@dataclass(frozen=True)
class LinkProfile:
    """An asymmetric link: rate (Mbit/s) and one-way delay (ms) each way."""

    name: str
    up_mbit: float
    down_mbit: float
    up_delay_ms: float = 0.0
    down_delay_ms: float = 0.0
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        for f in ("up_mbit", "down_mbit"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ProfileError(f"link {self.name!r}: {f} must be > 0, got {v!r}")
        for f in ("up_delay_ms", "down_delay_ms"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ProfileError(f"link {self.name!r}: {f} must be >= 0, got {v!r}")

    @classmethod
    def symmetric(cls, mbit: float, rtt_ms: float, name: Optional[str] = None) -> LinkProfile:
        return cls(name or f"{mbit:g} Mbit/s, {rtt_ms:g} ms RTT", mbit, mbit, rtt_ms / 2, rtt_ms / 2)

    @classmethod
    def parse(cls, text: str) -> LinkProfile:
        """``UP[/DOWN]:RTT_MS``, e.g. ``100:20`` or ``20/100:50`` (Mbit/s; RTT split evenly)."""
        rates, _, rtt = str(text).partition(":")
        up, _, down = rates.partition("/")
        try:
            u, d, r = float(up), float(down or up), float(rtt or 0)
        except ValueError:
            raise ProfileError(f"bad link {text!r}: expected UP[/DOWN]:RTT_MS in Mbit/s and ms") from None
        label = f"{u:g}" if u == d else f"{u:g}/{d:g}"
        return cls(f"{label} Mbit/s, {r:g} ms RTT", u, d, r / 2, r / 2)

    @property
    def rtt_ms(self) -> float:
        return self.up_delay_ms + self.down_delay_ms

    @property
    def up_bytes_per_s(self) -> float:
        return self.up_mbit * 1e6 / 8

    @property
    def down_bytes_per_s(self) -> float:
        return self.down_mbit * 1e6 / 8

    def scaled(self, up_mbit: float, down_ratio: float = 1.0) -> LinkProfile:
        """The same delays at another rate (downlink = ``down_ratio`` x uplink)."""
        return LinkProfile(f"{up_mbit:g} Mbit/s", up_mbit, up_mbit * down_ratio, self.up_delay_ms, self.down_delay_ms)
