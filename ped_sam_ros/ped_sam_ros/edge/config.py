"""What the edge runs, as one plain dataclass (no ROS).

The ROS node fills an :class:`EdgeConfig` from its parameters
(:mod:`ped_sam_ros.edge.params`); tests and tools build one directly.
:meth:`EdgeConfig.validate` says everything that is wrong at once.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ped_sam_ros.core import codecs
from ped_sam_ros.core.geometry import Partition, PartitionError
from ped_sam_ros.core.model import get_geometry, parse_mode
from ped_sam_ros.core.pipeline import FALLBACKS, AmgOptions
from ped_sam_ros.core.transport import ServerAddress
from ped_sam_ros.core.wire import DEFAULT_PIXEL_CODEC, DEFAULT_TOKEN_FORMAT, TOKEN_DTYPES
from ped_sam_ros.net.curve import NAME_RE

SERVER_NAME_RE = NAME_RE  # a server's name also names its key file
ENDPOINT_RE = re.compile(r"(tcp://[^\s]+:\d+|ipc://[^\s]+)")


class ConfigError(ValueError):
    """An edge configuration that cannot run; the message lists every problem."""


def parse_servers(entries: Sequence[str]) -> List[ServerAddress]:
    """``["NAME=ENDPOINT", ...]`` (or bare endpoints, named ``remote0``...); no public keys
    (:meth:`EdgeConfig.server_addresses` adds them)."""
    out = []
    for i, entry in enumerate(entries):
        entry = str(entry).strip()
        name, sep, endpoint = entry.partition("=")
        if not sep:
            name, endpoint = f"remote{i}", entry
        name, endpoint = name.strip(), endpoint.strip()
        if not SERVER_NAME_RE.fullmatch(name):
            raise ConfigError(f"server entry {entry!r}: name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if not ENDPOINT_RE.fullmatch(endpoint):
            raise ConfigError(
                f"server entry {entry!r}: endpoint {endpoint!r} must look like tcp://HOST:PORT or ipc://PATH"
            )
        out.append(ServerAddress(name, endpoint))
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"server names must be unique, {dup} repeat")
    return out


def parse_spares(text: str, server_names: Sequence[str]) -> List[str]:
    """``"remote-e, remote-f"`` (names from the server list, comma or space separated) -> names."""
    names = [tok for tok in re.split(r"[\s,;]+", str(text).strip()) if tok]
    unknown = [n for n in names if n not in server_names]
    if unknown:
        raise ConfigError(f"spares {unknown} are not among the servers {list(server_names)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"spares repeat: {names}")
    return names


def format_servers(servers: Sequence[ServerAddress]) -> List[str]:
    return [f"{s.name}={s.endpoint}" for s in servers]


def parse_assignment(text: str, server_names: Sequence[str]) -> Optional[List[int]]:
    """``"auto"`` (None: round robin keeping neighbours apart) or one server per
    tile in row-major order, by index or name: ``"0,1,2,3"``, ``"a b b a"``."""
    text = str(text).strip()
    if text.lower() in ("", "auto"):
        return None
    out = []
    for tok in re.split(r"[\s,;]+", text):
        if not tok:
            continue
        if tok.isdigit():
            idx = int(tok)
            if idx >= len(server_names):
                raise ConfigError(f"assignment {text!r}: server index {idx} but only {len(server_names)} servers")
        elif tok in server_names:
            idx = list(server_names).index(tok)
        else:
            raise ConfigError(f"assignment {text!r}: {tok!r} is neither a server index nor one of {list(server_names)}")
        out.append(idx)
    return out


@dataclass
class EdgeConfig:
    """Everything the edge needs to build its pipeline and run it."""

    model: str = "vit_b"
    checkpoint: str = ""
    random_weights: bool = False
    seed: int = 0
    mode: str = "paper"
    grid: str = "2x2"
    aligned_cuts: bool = True
    servers: List[ServerAddress] = field(default_factory=list)
    assignment: Optional[List[int]] = None  # None: automatic
    allow_adjacent: bool = False
    max_share: float = 1.0
    client_secret_key: str = ""  # this edge's NAME.key_secret
    server_public_keys_dir: str = ""  # holds SERVER_NAME.key for every server
    deadline_s: float = 30.0
    connect_timeout_s: float = 10.0
    wire_precision: str = DEFAULT_TOKEN_FORMAT  # by the rule in docs/wire.md (p6)
    pixel_codec: str = DEFAULT_PIXEL_CODEC  # by the same rule (jpeg444:90)
    multimask: bool = True
    automatic: bool = False
    max_prompts: int = 64
    amg: AmgOptions = field(default_factory=AmgOptions)
    torch_threads: int = 0
    # where and how the edge stage runs (ped_sam_ros.core.device, .compiled)
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: str = "float32"  # float32, float16, bfloat16 (the encoder blocks)
    compile: bool = False  # torch.compile the edge's encoder blocks
    precision_fallback: bool = False  # run float32 / uncompiled instead of refusing an impossible choice
    pipelined: bool = True  # overlap frame N+1's remote stage with frame N's edge stage (edge.stream)
    # degraded mode and the checks at the doors (see docs/faults.md)
    fallback: str = "fail"  # core.pipeline.FALLBACKS
    spares: List[str] = field(default_factory=list)  # server names that get tiles only as a fallback
    deadline_floor_s: float = 1.0
    deadline_factor: float = 4.0
    token_max_abs: float = 1.0e4  # 0: off
    token_rms_factor: float = 50.0  # 0: off
    max_image_pixels: int = 25_000_000
    max_points_per_prompt: int = 64
    max_points: int = 1024
    # the privacy policy (ped_sam_ros.sensitive, ped_sam_ros.edge.privacy; docs/privacy.md)
    layout: str = "grid"  # grid: the configured grid; auto: the most balanced aligned layout per frame shape
    privacy_detector: str = "none"  # sensitive.detectors.make_detector spec: none, default, mtcnn, haar, ...
    privacy_actions: Dict[str, str] = field(default_factory=lambda: {"face": "local"})  # class -> action
    privacy_noise_sigma: float = 40.0
    privacy_drop_outside_roi: bool = False
    privacy_drop_fill: str = "blank"
    privacy_min_score: float = 0.5
    privacy_min_face_px: float = 40.0  # smallest face (camera-frame pixels) the detector looks for

    # ------------------------------------------------------------------ derived

    @property
    def partition(self) -> Partition:
        return Partition.parse(self.grid, aligned=self.aligned_cuts)

    @property
    def server_names(self) -> List[str]:
        return [s.name for s in self.servers]

    @property
    def curve(self) -> bool:
        return bool(self.server_public_keys_dir)

    @property
    def spare_indexes(self) -> List[int]:
        names = self.server_names
        return [names.index(n) for n in self.spares if n in names]

    def auto_assignment(self, part: Partition) -> List[int]:
        """The automatic assignment: round robin over the servers that are not spares."""
        from ped_sam_ros.core.geometry import round_robin_assignment

        primaries = [i for i in range(len(self.servers)) if i not in self.spare_indexes]
        return [primaries[k] for k in round_robin_assignment(part, len(primaries))]

    @property
    def privacy_enabled(self) -> bool:
        """Whether the privacy frame hook runs (a detector, dropping outside the ROI, or layout auto)."""
        return self.privacy_detector != "none" or self.privacy_drop_outside_roi or self.layout == "auto"

    @property
    def needs_edge_remote(self) -> bool:
        """Whether the edge holds the remote stage for the privacy policy (local tiles, blank fill)."""
        if not self.privacy_enabled:
            return False
        acts = set(self.privacy_actions.values()) if self.privacy_detector != "none" else set()
        drops = "drop" in acts or self.privacy_drop_outside_roi
        return "local" in acts or (drops and self.privacy_drop_fill == "blank")

    def policy_config(self):
        """The :class:`~ped_sam_ros.sensitive.policy.PolicyConfig` of the ``privacy.*`` settings."""
        from ped_sam_ros.sensitive.policy import PolicyConfig

        return PolicyConfig(
            actions=dict(self.privacy_actions),
            outside_roi="drop" if self.privacy_drop_outside_roi else "send",
            min_score=self.privacy_min_score,
            noise_sigma=self.privacy_noise_sigma,
            drop_fill=self.privacy_drop_fill,
        )

    def server_public_key(self, name: str) -> Optional[Path]:
        if not self.server_public_keys_dir:
            return None
        return Path(self.server_public_keys_dir).expanduser() / f"{name}.key"

    def server_addresses(self) -> List[ServerAddress]:
        """The servers, each with its public key file when CurveZMQ is on."""
        if not self.curve:
            return list(self.servers)
        return [dataclasses.replace(s, public_key=str(self.server_public_key(s.name))) for s in self.servers]

    # --------------------------------------------------------------- validation

    def problems(self, check_files: bool = True) -> List[str]:
        """Every reason this configuration cannot run (empty when it can)."""
        errs: List[str] = []
        try:
            get_geometry(self.model)
        except ValueError as e:
            errs.append(str(e))
        if self.random_weights and self.checkpoint:
            errs.append("give either checkpoint or random_weights, not both")
        if not self.random_weights and not self.checkpoint:
            errs.append(
                "no weights: set checkpoint to a SAM .pth file (e.g. sam_vit_b_01ec64.pth), or "
                "random_weights=true for a demo with meaningless masks"
            )
        if check_files and self.checkpoint and not Path(self.checkpoint).expanduser().is_file():
            errs.append(f"checkpoint {self.checkpoint} does not exist")
        try:
            parse_mode(self.mode, get_geometry(self.model))
        except ValueError as e:
            if not errs or str(e) != errs[0]:  # an unknown model is reported above
                errs.append(str(e))
        errs.extend(self.placement_problems())
        if self.wire_precision not in TOKEN_DTYPES:
            errs.append(f"wire_precision must be one of {TOKEN_DTYPES}, got {self.wire_precision!r}")
        try:
            codecs.pixel_codec(self.pixel_codec)
        except codecs.CodecError as e:
            errs.append(f"pixel_codec: {e}")
        if not self.servers:
            errs.append("no remote servers configured (remotes.servers)")
        try:
            part = self.partition
        except PartitionError as e:
            errs.append(str(e))
            part = None
        spare_problem = self._spare_problem()
        if spare_problem:
            errs.append(spare_problem)
        if part is not None and self.servers and not spare_problem:
            from ped_sam_ros.core.geometry import validate_assignment
            from ped_sam_ros.core.pipeline import check_share_attainable

            n = len(self.servers)
            assign = self.assignment if self.assignment is not None else self.auto_assignment(part)
            try:
                # max_share is checked per frame on its content (aspect ratio); here only that some frame can meet it
                validate_assignment(part, assign, n, allow_adjacent=self.allow_adjacent)
                check_share_attainable(part, assign, self.max_share, self.server_names)
            except PartitionError as e:
                errs.append(f"assignment: {e}")
            spares_used = sorted(set(assign) & set(self.spare_indexes))
            if spares_used:
                errs.append(f"spares {[self.servers[i].name for i in spares_used]} are also assigned tiles")
            unused = sorted(set(range(n)) - set(assign) - set(self.spare_indexes))
            if unused and len(assign) == len(part):
                errs.append(
                    f"servers {[self.servers[i].name for i in unused]} serve no tile of the "
                    f"{part.name} grid: remove them or change the grid/assignment"
                )
        if not 0.0 < self.max_share <= 1.0:
            errs.append(f"max_share must be in (0, 1], got {self.max_share}")
        if not self.deadline_s > 0:
            errs.append(f"deadline must be positive, got {self.deadline_s}")
        if self.server_public_keys_dir and not self.client_secret_key:
            errs.append(
                "keys.server_public_dir is set but keys.client_secret is not: CurveZMQ needs this "
                "edge's NAME.key_secret too"
            )
        if self.client_secret_key and not self.server_public_keys_dir:
            errs.append(
                "keys.client_secret is set but keys.server_public_dir is not: CurveZMQ needs each server's NAME.key"
            )
        if check_files and self.curve:
            if not Path(self.client_secret_key).expanduser().is_file():
                errs.append(f"client secret key {self.client_secret_key} does not exist")
            for s in self.servers:
                p = self.server_public_key(s.name)
                if not p.is_file():
                    errs.append(f"server public key {p} (for server {s.name}) does not exist")
        if self.max_prompts < 1:
            errs.append("max_prompts must be at least 1")
        if not self.deadline_floor_s > 0 or not self.deadline_factor > 0:
            errs.append("remotes.deadline_floor and remotes.deadline_factor must be positive")
        if self.token_max_abs < 0 or self.token_rms_factor < 0:
            errs.append("remotes.token_max_abs and remotes.token_rms_factor must be >= 0 (0: off)")
        for name in ("max_image_pixels", "max_points_per_prompt", "max_points"):
            if getattr(self, name) < 1:
                errs.append(f"{name} must be at least 1")
        errs.extend(self.privacy_problems())
        return errs

    def privacy_problems(self) -> List[str]:
        """Why the ``privacy.*`` and ``layout`` settings cannot run (empty when they can)."""
        from ped_sam_ros.sensitive.detectors import _FACTORIES
        from ped_sam_ros.sensitive.policy import PolicyError

        errs: List[str] = []
        if not 8.0 <= float(self.privacy_min_face_px) <= 1024.0:
            errs.append(f"privacy.min_face_px must be within [8, 1024] pixels, got {self.privacy_min_face_px}")
        if self.layout not in ("grid", "auto"):
            errs.append(f"layout must be 'grid' or 'auto', got {self.layout!r}")
        names = [n.strip() for n in str(self.privacy_detector).lower().split(",") if n.strip()]
        unknown = [n for n in names if n not in ("none", "default") and n not in _FACTORIES]
        if unknown:
            errs.append(
                f"privacy.detector: unknown detector(s) {unknown}; known: none, default, "
                f"{', '.join(sorted(_FACTORIES))}"
            )
        try:
            self.policy_config()
        except PolicyError as e:
            errs.append(f"privacy: {e}")
        return errs

    def placement_problems(self) -> List[str]:
        """Why ``device``/``precision``/``compile`` cannot run on this machine (empty when they can)."""
        from ped_sam_ros.core.device import DeviceError, resolve_placement

        try:
            placement = resolve_placement(self.device, self.precision, allow_fallback=self.precision_fallback)
        except DeviceError as e:
            return [f"device/precision: {e}"]
        if self.compile and not self.precision_fallback:
            from ped_sam_ros.core.compiled import compile_problem

            problem = compile_problem("inductor", placement.device)
            if problem:
                return [f"compile: {problem} (set compile false, or precision_fallback true to run uncompiled)"]
        return []

    def stage_options(self) -> dict:
        """Keyword arguments for the stages (:class:`~ped_sam_ros.core.model.EdgeStage`, ``RemoteStage``)."""
        return dict(
            device=self.device, precision=self.precision, compile=self.compile, allow_fallback=self.precision_fallback
        )

    def _spare_problem(self) -> str:
        if self.fallback not in FALLBACKS:
            return f"remotes.fallback must be one of {FALLBACKS}, got {self.fallback!r}"
        unknown = [n for n in self.spares if n not in self.server_names]
        if unknown:
            return f"remotes.spares {unknown} are not among the servers {self.server_names}"
        if self.fallback == "spare" and not self.spares:
            return "remotes.fallback is 'spare' but remotes.spares names no server"
        if self.servers and len(set(self.spares)) >= len(self.servers):
            return "every server is a spare: at least one must serve tiles"
        return ""

    def validate(self, check_files: bool = True) -> EdgeConfig:
        errs = self.problems(check_files)
        if errs:
            raise ConfigError("invalid edge configuration:\n  - " + "\n  - ".join(errs))
        return self

    def describe(self) -> str:
        weights = f"RANDOM weights (seed {self.seed})" if self.random_weights else f"checkpoint {self.checkpoint}"
        return (
            f"model {self.model} ({weights}), mode {self.mode}, grid {self.grid}, "
            f"{len(self.servers)} servers [{', '.join(format_servers(self.servers))}], "
            f"{self.device}/{self.precision}{' compiled' if self.compile else ''}, "
            f"wire {self.wire_precision}, curve {'on' if self.curve else 'off'}, fallback {self.fallback}"
            + (f" (spares {', '.join(self.spares)})" if self.spares else "")
        )
