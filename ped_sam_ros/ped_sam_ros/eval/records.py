"""Typed records that carry an evaluation's figures from the runner to the report, plots and CLI.

Every layer reads fields, not string keys, so renaming a field fails at once.
:func:`jsonable` turns a record tree into plain JSON data at the edge of the
program (``results.json``, the CSV files); the JSON keys are the field names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .configs import EvalConfig, layout_configs
from .cost import ComponentTiming, LatencyEstimate, SymmetricLink, WireBytes, Workload
from .fidelity import FidelityScores
from .privacy import ReconstructionScores, SensitiveContentResult


def jsonable(x: Any) -> Any:
    """Plain JSON data: records through their ``to_dict`` (else their fields), tuples as lists,
    numpy scalars as Python ones, NaN / inf as None (JSON has neither)."""
    if hasattr(x, "to_dict") and callable(x.to_dict):
        return jsonable(x.to_dict())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# ---------------------------------------------------------------------------
# Per configuration x image


@dataclass(frozen=True)
class FidelityRow:
    """One configuration's agreement with plain SAM on one image."""

    config: str
    spec: str
    image: str
    reference: bool  # True for edge-only SAM, which is plain SAM itself
    note: str
    scores: FidelityScores

    def to_dict(self) -> Dict:
        return dict(
            config=self.config,
            spec=self.spec,
            image=self.image,
            reference=self.reference,
            note=self.note,
            **self.scores.to_dict(),
        )


@dataclass(frozen=True)
class MeasuredRow:
    """Stage times and wire bytes this run measured for one configuration on one image."""

    config: str
    spec: str
    image: str
    edge_s: float  # edge compute (PED-SAM: edge encoder + partition + merge)
    server_compute_max_s: float  # the busiest server's compute
    bytes_up: int  # on the wire, headers included
    bytes_down: int
    content_hw: Tuple[int, int]  # the frame after SAM's resize
    server_compute_sum_s: Optional[float] = None  # PED-SAM only: all servers together
    edge_encoder_s: Optional[float] = None  # PED-SAM only
    remote_in_process_s: Optional[float] = None  # PED-SAM only: the in-process servers' wall time


@dataclass(frozen=True)
class PrivacyRow:
    """What the servers of one layout receive of one image, and what attacks recover from it."""

    layout: str  # EvalConfig.privacy_layout
    image: str
    servers: int
    shares: List[float]  # per server: fraction of the resized frame's content pixels
    max_share: float
    collusion: List[float]  # k = 1..servers: the largest share k servers hold together
    attack_server: Optional[int]  # the most-exposed server, whose view was attacked (None: no server)
    attacks: Dict[str, ReconstructionScores]  # attack name -> scores
    detection: Dict[str, SensitiveContentResult]  # detector kind -> result
    original_seen_fraction: Optional[float] = None  # of the attacked server, in original pixels
    attacks_worst_server: Optional[Dict[str, ReconstructionScores]] = None  # --attack-all-servers


# ---------------------------------------------------------------------------
# Cost


@dataclass(frozen=True)
class GeometryCost:
    """One geometry of the cost tables: its counted MACs and where its compute times come from."""

    label: str
    spec: str
    embed_dim: int
    depth: int
    num_heads: int
    global_blocks: List[int]
    full_encoder_macs: int
    full_encoder_by_component: Workload
    timing_source: str
    timing: Optional[Dict[str, ComponentTiming]] = None  # measured components (full-size geometries)
    machine: Optional[str] = None
    measured_at: Optional[str] = None


@dataclass(frozen=True)
class CostRow:
    """MACs, bytes, compute and estimated latency of one configuration on one geometry."""

    geometry: str  # GeometryCost.label
    spec: str  # the geometry's spec
    config: str
    config_spec: str
    servers: int
    edge_macs: int
    edge_share: float  # of plain SAM's encoder MACs
    server_macs: List[int]
    edge_by_component: Workload
    edge_s: Optional[float]  # None: not timed
    server_s_max: Optional[float]
    bytes: Dict[str, WireBytes]  # wire dtype -> bytes of a square frame
    latency: Dict[str, Dict[str, LatencyEstimate]]  # wire dtype -> link name -> estimate; {} when not timed

    @property
    def server_macs_max(self) -> int:
        return max(self.server_macs, default=0)

    @property
    def server_macs_total(self) -> int:
        return sum(self.server_macs)

    def to_dict(self) -> Dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(server_macs_max=self.server_macs_max, server_macs_total=self.server_macs_total)
        return d


@dataclass(frozen=True)
class CostSection:
    """The cost tables and the assumptions behind them."""

    frame: str
    latency_model: str
    links: List[SymmetricLink]
    server_speedup: float
    decoder_macs_per_prompt: int
    mac_method: str
    geometries: Dict[str, GeometryCost] = field(default_factory=dict)  # label -> geometry
    rows: List[CostRow] = field(default_factory=list)

    def rows_of(self, geometry: str) -> List[CostRow]:
        return [r for r in self.rows if r.geometry == geometry]

    def row(self, geometry: str, config_spec: str) -> Optional[CostRow]:
        return next((r for r in self.rows if r.geometry == geometry and r.config_spec == config_spec), None)


# ---------------------------------------------------------------------------
# Settings and machine


@dataclass(frozen=True)
class WeightsInfo:
    random: bool
    label: str
    checkpoint: Optional[str] = None
    sha256: Optional[str] = None
    seed: Optional[int] = None  # random weights only


@dataclass(frozen=True)
class GeometryInfo:
    embed_dim: int
    depth: int
    num_heads: int
    global_blocks: List[int]


@dataclass(frozen=True)
class ImageInfo:
    name: str
    height: int
    width: int
    resized: Tuple[int, int]  # after SAM's resize


@dataclass(frozen=True)
class AmgInfo:
    points_per_side: int
    images: int  # AMG ran on the first this many images
    options: Dict[str, float]
    match: str


@dataclass(frozen=True)
class LoadAverage:
    start: Optional[List[float]]
    end: Optional[List[float]]


@dataclass(frozen=True)
class Meta:
    """What was run, on what, and how."""

    model: str
    geometry: GeometryInfo
    weights: WeightsInfo
    random_weights: bool
    images: List[ImageInfo]
    image_source: str
    wire_dtype: str
    point_prompts: str
    box_prompts: str
    amg: AmgInfo
    command: Optional[str]
    server_speedup: float
    server_assumption: str
    detectors: Dict[str, str]  # detector kind -> description
    machine: str
    platform: str
    torch_threads: int
    load_average: LoadAverage
    wall_s: float
    date: str
    #: where the PED-SAM stages ran, e.g. ``cpu/float32`` (the reference: float32, same device)
    placement: str = "cpu/float32"
    #: how the PED-SAM tiles' pixels travel in the fidelity runs (``core.codecs``; ``raw``: unchanged)
    pixel_codec: str = "raw"


# ---------------------------------------------------------------------------
# The headline row per configuration, and the whole result


@dataclass(frozen=True)
class FidelitySummary:
    """Agreement with plain SAM: means over images, AMG counts totalled over the AMG images."""

    embedding_cosine: Optional[float]
    embedding_rel_error: Optional[float]
    point_iou: Optional[float]
    point_iou_min: Optional[float]  # the worst prompt of any image
    box_iou: Optional[float]
    amg_reference_masks: Optional[int]  # None: AMG did not run
    amg_masks: Optional[int]
    amg_matched: Optional[int]
    amg_missed: Optional[int]
    amg_matched_iou: Optional[float]


@dataclass(frozen=True)
class PrivacySummary:
    """Exposure (max over images), reconstruction (mean over images), detections (totals over images)."""

    max_server_share: Optional[float]
    max_share_2_colluding: Optional[float]
    recon_ssim_inpaint: Optional[float]
    recon_ssim_inpaint_unseen: Optional[float]
    recon_ssim_nearest: Optional[float]
    recon_ssim_mean_fill: Optional[float]
    recon_psnr_inpaint: Optional[float]
    faces: int  # full-frame detections
    faces_seen_whole: Optional[float]  # fractions of those; None when there are none
    faces_detected: Optional[float]
    people: int
    people_seen_whole: Optional[float]
    people_detected: Optional[float]


@dataclass(frozen=True)
class CostSummary:
    """Compute and latency on the headline geometry (None where it has no row for the configuration)."""

    cost_geometry: str
    edge_mac_share: Optional[float]
    edge_gmacs: Optional[float]
    server_gmacs_max: Optional[float]
    latency_100mbit_s: Optional[float]
    latency_dtype: str
    bytes_up: Optional[int] = None
    bytes_down: Optional[int] = None


@dataclass(frozen=True)
class ConfigSummary:
    """The headline figures of one configuration; flat in JSON and CSV."""

    config: str
    spec: str
    kind: str
    servers: int
    fidelity: FidelitySummary
    privacy: PrivacySummary
    cost: CostSummary

    def to_dict(self) -> Dict:
        return dict(
            config=self.config,
            spec=self.spec,
            kind=self.kind,
            servers=self.servers,
            **dataclasses.asdict(self.fidelity),
            **dataclasses.asdict(self.privacy),
            **dataclasses.asdict(self.cost),
        )


@dataclass(frozen=True)
class EvalResults:
    """Everything one evaluation measured (``results.json`` is :func:`jsonable` of it)."""

    meta: Meta
    configs: List[EvalConfig]
    fidelity: List[FidelityRow]
    measured: List[MeasuredRow]
    privacy: List[PrivacyRow]
    cost: CostSection
    summary: List[ConfigSummary]
    #: the headline's break-even bandwidths and latency against cloud SAM (eval.breakeven.HeadlineBreakEven)
    breakeven: Optional[Any] = None
    #: sensitive content per privacy policy and partition (``--sensitive``; eval.sensitive.SensitiveSection)
    sensitive: Optional[Any] = None

    def fidelity_of(self, config: EvalConfig) -> List[FidelityRow]:
        return [f for f in self.fidelity if f.spec == config.spec]

    def measured_of(self, config: EvalConfig) -> List[MeasuredRow]:
        return [m for m in self.measured if m.spec == config.spec]

    def privacy_of(self, config: EvalConfig) -> List[PrivacyRow]:
        return [p for p in self.privacy if p.layout == config.privacy_layout]

    def summary_of(self, config: EvalConfig) -> ConfigSummary:
        return next(r for r in self.summary if r.spec == config.spec)

    def layouts(self) -> List[EvalConfig]:
        """The first configuration of each server layout, in order (paper and exact share one)."""
        return layout_configs(self.configs)
