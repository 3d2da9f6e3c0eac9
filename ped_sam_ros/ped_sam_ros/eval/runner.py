"""Orchestration: run every configuration on every image and collect the raw figures.

Three parts, all in one process and on the same images and weights:

* fidelity: plain SAM (the reference) vs each PED-SAM configuration run through
  :class:`LocalTransport` (the real wire codec, in-process servers);
* privacy: what each server of each partition receives and what classical
  attacks recover from it (independent of the weights and of the mode);
* cost: MACs counted from the model, measured stage times of this run, measured
  component times of the full-size geometries, bytes and a latency estimate.

The figures travel as the records of :mod:`.records`; :class:`Evaluation` returns
an :class:`~.records.EvalResults`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from ..core.device import resolve_placement
from ..core.geometry import TOKEN_GRID, Tile, content_shape
from ..core.model import EdgeStage, RemoteStage, SamGeometry, build_sam, get_geometry, random_sam, save_checkpoint
from ..core.pipeline import DistributedEncoder, PedSamPredictor
from ..core.transport import LocalTransport
from ..core.wire import (
    EncodeRequest,
    encode_message,
    frames_nbytes,
    make_encode_request,
    new_request_id,
    pack_tokens,
    unpack_tokens,
)
from . import cost as costlib
from . import cost_tables, exposure
from . import fidelity as fid
from . import privacy as priv
from .configs import EvalConfig, layout_configs
from .records import (
    AmgInfo,
    CostRow,
    CostSection,
    EvalResults,
    FidelityRow,
    GeometryCost,
    GeometryInfo,
    ImageInfo,
    LoadAverage,
    MeasuredRow,
    Meta,
    PrivacyRow,
    WeightsInfo,
)
from .summary import config_summaries

FULL_SIZE = ("vit_b", "vit_l", "vit_h")


@dataclass
class EvalSettings:
    """What one evaluation runs: model and weights, configurations, images, prompts and cost options."""

    model: str = "vit_b/w32h2"
    checkpoint: Optional[str] = None
    seed: int = 0
    configs: List[EvalConfig] = field(default_factory=list)
    images: List[Tuple[str, np.ndarray]] = field(default_factory=list)
    wire_dtype: str = "float16"
    point_grid: int = 3
    amg_points: int = 4  # points per side; 0 = no automatic mask generation
    amg_images: Optional[int] = None  # run AMG on the first N images only (None = all)
    amg_options: Optional[Dict] = None  # None = SAM's filters (real weights) / filters off (random weights)
    cost_models: Sequence[str] = FULL_SIZE
    time_full_size: bool = True
    timing_cache: Optional[str] = None
    retime: bool = False
    server_speedup: float = 1.0
    attack_all_servers: bool = False
    image_source: str = "scikit-image sample photos"
    command: Optional[str] = None
    #: where the stages run (``core.device``); the plain-SAM reference runs float32 on the same device
    device: str = "auto"
    precision: str = "float32"
    compile: bool = False
    precision_fallback: bool = False
    #: how each PED-SAM tile's pixels travel in the fidelity runs (a pixel codec spec; the node's is
    #: core.wire.DEFAULT_PIXEL_CODEC)
    pixel_codec: str = "raw"
    #: the headline's break-even (eval.breakeven): edge profiles, server profile, extra profile file,
    #: calibration cache (None: the user's cache), on/off
    edge_profiles: Sequence[str] = ("agx-orin",)
    server_profile: str = "a100"
    profiles_file: Optional[str] = None
    calibration: Optional[str] = None
    breakeven: bool = True
    #: sensitive content per privacy policy and partition (``--sensitive``): an eval.sensitive.SensitiveSettings
    sensitive: Optional[object] = None

    def stage_options(self) -> Dict:
        """Keyword arguments for the PED-SAM stages."""
        return dict(
            device=self.device, precision=self.precision, compile=self.compile, allow_fallback=self.precision_fallback
        )

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None

    @property
    def amg_image_count(self) -> int:
        """How many of the images (the first ones) get automatic mask generation."""
        if self.amg_points <= 0:
            return 0
        return len(self.images) if self.amg_images is None else min(self.amg_images, len(self.images))

    @property
    def amg_filters(self) -> Dict:
        """The generator's filters: as given, else SAM's (trained weights) or none (random weights)."""
        if self.amg_options is not None:
            return dict(self.amg_options)
        return dict(fid.AMG_RANDOM_WEIGHTS if self.random_weights else fid.AMG_DEFAULTS)

    @property
    def ped_configs(self) -> List[EvalConfig]:
        return [c for c in self.configs if c.kind == "ped"]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def server_assumption(speedup: float) -> str:
    if speedup == 1.0:
        return (
            "servers are assumed to be this same CPU, their compute time being the one measured on this "
            "machine; pass --server-speedup to model faster servers"
        )
    return f"servers are assumed to be {speedup:g}x faster than this CPU (--server-speedup {speedup:g})"


class Progress:
    """A tqdm progress bar, or nothing when disabled."""

    def __init__(self, total: int, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, desc="ped-sam-eval")

    def step(self, desc: str, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(desc[:60])
            self.bar.update(n)

    def note(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(desc[:60])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------
# Wire round trip for the cloud baseline


def _embedding_roundtrip(features: torch.Tensor, dtype: str) -> torch.Tensor:
    """The 1x256x64x64 embedding after the cloud server sends it in ``dtype``."""
    hwc = features[0].permute(1, 2, 0).contiguous().cpu().numpy()
    back = unpack_tokens(dict(pack_tokens(hwc, dtype)), hwc.shape)
    return torch.from_numpy(back).permute(2, 0, 1)[None].contiguous().to(features.device)


def _cloud_wire_bytes(resized: np.ndarray, features: torch.Tensor, model: str, dtype: str) -> Tuple[int, int]:
    """Bytes (with headers) of the cloud request (whole resized frame) and reply (embedding)."""
    whole = Tile(0, 0, 0, 0, TOKEN_GRID, 0, TOKEN_GRID)
    up = make_encode_request(EncodeRequest(new_request_id(), model, "paper", whole, resized, 60000, dtype))
    hwc = features[0].permute(1, 2, 0).contiguous().cpu().numpy()
    down = encode_message({"type": "encoded", "id": "x" * 32, "timing": {"compute_s": 0.0}}, pack_tokens(hwc, dtype))
    return frames_nbytes(up), frames_nbytes(down)


# ---------------------------------------------------------------------------


@dataclass
class _Models:
    """The weights under test, loaded as plain SAM and as PED-SAM's stages."""

    reference: Sam
    remote: RemoteStage
    edges: Dict[str, EdgeStage]  # mode -> edge stage
    weights: WeightsInfo


@dataclass
class _Rows:
    """Per-image rows collected while the images are run."""

    fidelity: List[FidelityRow] = field(default_factory=list)
    measured: List[MeasuredRow] = field(default_factory=list)
    privacy: List[PrivacyRow] = field(default_factory=list)


@dataclass(frozen=True)
class _Image:
    """One image being evaluated, with its size after SAM's resize and whether AMG runs on it."""

    name: str
    rgb: np.ndarray
    content_hw: Tuple[int, int]
    run_amg: bool


class Evaluation:
    """One evaluation run: :meth:`run` measures fidelity, privacy and cost on every image and
    configuration of the settings and returns (and keeps in ``results``) the :class:`EvalResults`."""

    def __init__(self, settings: EvalSettings, progress: bool = True):
        self.s = settings
        self.progress_enabled = progress
        self.geom: SamGeometry = get_geometry(settings.model)
        #: the resolved device and precision (raises DeviceError, with the reason, for an impossible one)
        self.placement = resolve_placement(
            settings.device, settings.precision, allow_fallback=settings.precision_fallback
        )
        self.amg_filters = settings.amg_filters
        self.results: Optional[EvalResults] = None
        self.detector_description: Dict[str, str] = {}
        self.load_before: Optional[List[float]] = None
        self.breakeven_result = None  # eval.breakeven.HeadlineBreakEven
        self.sensitive_result = None  # eval.sensitive.SensitiveSection when settings.sensitive is set

    # -- main ------------------------------------------------------------------
    def run(self) -> EvalResults:
        """Run every configuration on every image, then the cost tables; keeps and returns the results."""
        t_start = time.perf_counter()
        self.load_before = _loadavg()
        cost_geoms = self._cost_geometries()
        s = self.s
        steps = len(s.images) * (1 + len(s.ped_configs) + len(layout_configs(s.configs))) + len(cost_geoms)
        steps += self._sensitive_steps()
        bar = Progress(steps, self.progress_enabled)
        rows = _Rows()
        try:
            with tempfile.TemporaryDirectory(prefix="ped-sam-eval-") as tmp:
                bar.note("loading weights")
                models = self._load_models(tmp)
                self._run_images(models, rows, bar)
                if s.sensitive is not None:
                    self.sensitive_result = self._run_sensitive(models, tmp, bar)
            cost = self._cost(cost_geoms, rows.measured, bar)
            self.breakeven_result = self._breakeven(bar)
        finally:
            bar.close()
        self.results = self._assemble(rows, cost, models.weights, time.perf_counter() - t_start)
        return self.results

    # -- weights ---------------------------------------------------------------
    def _load_models(self, tmp: str) -> _Models:
        s = self.s
        if s.checkpoint:
            ckpt = s.checkpoint
            weights = WeightsInfo(
                random=False,
                label=f"checkpoint {Path(ckpt).name}",
                checkpoint=str(Path(ckpt).resolve()),
                sha256=_sha256(ckpt),
            )
        else:
            ckpt = str(save_checkpoint(random_sam(self.geom, seed=s.seed), Path(tmp) / "random_sam.pth"))
            label = f"RANDOM WEIGHTS (random_sam('{self.geom.spec}', seed={s.seed}); not trained SAM)"
            weights = WeightsInfo(random=True, seed=s.seed, label=label)
        opts = s.stage_options()
        modes = [m for m in self.geom.modes if m in {c.mode for c in s.ped_configs}]
        return _Models(
            reference=build_sam(self.geom, ckpt).to(self.placement.device),
            remote=RemoteStage.from_checkpoint(self.geom, ckpt, **opts),
            edges={m: EdgeStage.from_checkpoint(self.geom, ckpt, m, **opts) for m in modes},
            weights=weights,
        )

    # -- fidelity and measured stage times ---------------------------------------
    def _run_images(self, models: _Models, rows: _Rows, bar: Progress) -> None:
        """Plain SAM, the baselines and every PED-SAM configuration on each image, then its privacy."""
        s = self.s
        ref_pred = SamPredictor(models.reference)
        dets = priv.Detectors()
        self.detector_description = dets.description
        predictors = [(c, self._ped_predictor(models, c)) for c in s.ped_configs]
        layouts = layout_configs(s.configs)
        for i, (name, rgb) in enumerate(s.images):
            bar.note(f"{name}: plain SAM")
            img = _Image(name, rgb, content_shape(rgb.shape[:2]), i < s.amg_image_count)
            ref = self._run_baselines(ref_pred, img, rows)
            bar.step(f"{name}: plain SAM")
            for c, pred in predictors:
                self._run_ped(c, pred, ref, img, rows)
                bar.step(f"{name}: {c.name}")
            rows.privacy.extend(self._privacy_for_image(img, layouts, dets, bar))

    def _ped_predictor(self, models: _Models, c: EvalConfig) -> PedSamPredictor:
        tr = LocalTransport(
            models.remote, num_servers=c.servers, token_dtype=self.s.wire_dtype, pixel_codec=self.s.pixel_codec
        )
        enc = DistributedEncoder(
            models.edges[c.mode], tr, c.partition, c.assignment, timeout_s=3600.0, allow_adjacent=True
        )
        return PedSamPredictor(enc)

    def _run_baselines(self, ref_pred: SamPredictor, img: _Image, rows: _Rows) -> fid.ReferenceOutputs:
        """Plain SAM on the image (the reference), and the rows of cloud and edge-only SAM."""
        s = self.s
        t0 = time.perf_counter()
        ref_pred.set_image(img.rgb)
        ref_s = time.perf_counter() - t0
        ref = fid.reference_outputs(ref_pred, img.rgb, s.point_grid, s.amg_points, self.amg_filters, img.run_amg)
        resized = ref_pred.transform.apply_image(img.rgb)
        up_b, down_b = _cloud_wire_bytes(resized, ref.features, self.geom.spec, s.wire_dtype)
        # cloud: plain SAM, embedding returned over the wire in the wire precision
        saved = ref_pred.features
        ref_pred.features = _embedding_roundtrip(saved, s.wire_dtype)
        cloud_scores = fid.compare(ref, ref_pred, img.rgb, s.amg_points, self.amg_filters, img.run_amg)
        ref_pred.features = saved
        for c in s.configs:
            if c.kind == "cloud":
                rows.fidelity.append(
                    FidelityRow(
                        c.name, c.spec, img.name, False, f"plain SAM, embedding sent as {s.wire_dtype}", cloud_scores
                    )
                )
                rows.measured.append(
                    MeasuredRow(
                        c.name,
                        c.spec,
                        img.name,
                        edge_s=0.0,
                        server_compute_max_s=ref_s,
                        bytes_up=up_b,
                        bytes_down=down_b,
                        content_hw=img.content_hw,
                    )
                )
            elif c.kind == "edge":
                rows.fidelity.append(
                    FidelityRow(
                        c.name,
                        c.spec,
                        img.name,
                        True,
                        "is plain SAM (the reference)",
                        fid.reference_self_scores(ref, img.run_amg),
                    )
                )
                rows.measured.append(
                    MeasuredRow(
                        c.name,
                        c.spec,
                        img.name,
                        edge_s=ref_s,
                        server_compute_max_s=0.0,
                        bytes_up=0,
                        bytes_down=0,
                        content_hw=img.content_hw,
                    )
                )
        return ref

    def _run_ped(
        self, c: EvalConfig, pred: PedSamPredictor, ref: fid.ReferenceOutputs, img: _Image, rows: _Rows
    ) -> None:
        s = self.s
        pred.set_image(img.rgb)
        st = pred.last_stats
        rows.fidelity.append(
            FidelityRow(
                c.name,
                c.spec,
                img.name,
                False,
                "",
                fid.compare(ref, pred, img.rgb, s.amg_points, self.amg_filters, img.run_amg),
            )
        )
        comp = [p.compute_s for p in st.per_server]
        t = st.timings
        rows.measured.append(
            MeasuredRow(
                c.name,
                c.spec,
                img.name,
                edge_s=t.get("edge_encoder", 0.0) + t.get("merge", 0.0) + t.get("partition", 0.0),
                server_compute_max_s=max(comp) if comp else 0.0,
                bytes_up=st.bytes_up,
                bytes_down=st.bytes_down,
                content_hw=img.content_hw,
                server_compute_sum_s=sum(comp),
                edge_encoder_s=t.get("edge_encoder", 0.0),
                remote_in_process_s=t.get("remote", 0.0),
            )
        )

    # -- privacy -----------------------------------------------------------------
    def _privacy_for_image(
        self, img: _Image, layouts: List[EvalConfig], dets: priv.Detectors, bar: Progress
    ) -> List[PrivacyRow]:
        full = {k: dets.detect(k, img.rgb) for k in dets.KINDS}
        rows = []
        for c in layouts:
            bar.note(f"{img.name}: privacy {c.layout_name}")
            if c.kind == "edge":
                rows.append(exposure.edge_privacy(img.name, full))
            else:
                rows.append(
                    exposure.server_privacy(c, img.name, img.rgb, img.content_hw, dets, full, self.s.attack_all_servers)
                )
            bar.step(f"{img.name}: privacy {c.layout_name}")
        return rows

    # -- sensitive content per policy and partition ---------------------------------
    def _sensitive_steps(self) -> int:
        from . import sensitive as sens

        ss = self.s.sensitive
        if ss is None:
            return 0
        frames = ss.frames * len(ss.classes) + (len(self.s.images) if ss.photos and "face" in ss.classes else 0)
        return sens.SensitiveEvaluation.steps(ss, frames)

    def _run_sensitive(self, models: _Models, tmp: str, bar: Progress):
        """Every privacy policy x partition on the composited frames (and the run's photos): eval.sensitive."""
        from . import sensitive as sens

        s, ss = self.s, self.s.sensitive
        bar.note("sensitive: frames and detectors")
        attacker = sens.Attacker(ss.classes)
        images = sens.composited_images(ss.classes, ss.frames, ss.frame_hw, ss.seed)
        if ss.photos and "face" in ss.classes:
            images += sens.photo_images(s.images, attacker)
        edge = models.edges.get(ss.mode)
        if edge is None:
            ckpt = s.checkpoint or str(Path(tmp) / "random_sam.pth")
            edge = EdgeStage.from_checkpoint(self.geom, ckpt, ss.mode, **s.stage_options())
        stages = sens.StageSet(models.remote, edge, models.reference)
        return sens.SensitiveEvaluation(ss, stages, images, attacker, step=bar.step).run()

    # -- cost ----------------------------------------------------------------------
    def _cost_geometries(self) -> List[Tuple[str, SamGeometry, str]]:
        """(label, geometry, timing source) for the cost tables; source: "run", "components" or "none"."""
        out = [(f"{self.geom.spec} (this run)", self.geom, "run")]
        for m in self.s.cost_models:
            g = get_geometry(m)
            out.append((g.spec, g, "components" if self.s.time_full_size else "none"))
        return out

    def _cost(
        self, geoms: List[Tuple[str, SamGeometry, str]], measured: List[MeasuredRow], bar: Progress
    ) -> CostSection:
        s = self.s
        cache = costlib.TimingCache(s.timing_cache)
        geometries: Dict[str, GeometryCost] = {}
        rows: List[CostRow] = []
        for label, g, source in geoms:
            bar.note(f"cost {label}" + (" (timing components)" if source == "components" else ""))
            gc = cost_tables.geometry_cost(label, g, source, cache, s.retime)
            geometries[label] = gc
            rows.extend(cost_tables.cost_row(gc, g, c, source, measured, s.server_speedup) for c in s.configs)
            bar.step(f"cost {label}")
        return cost_tables.cost_section(geometries, rows, s.server_speedup)

    def _breakeven(self, bar: Progress):
        """The headline's break-even per cost model and edge profile (eval.breakeven), or None."""
        from . import breakeven
        from .calibrate import Calibration
        from .profiles import load_profiles

        s = self.s
        models = [get_geometry(m).spec for m in s.cost_models if get_geometry(m).spec in FULL_SIZE]
        if not s.breakeven or not models:
            return None
        bar.note("break-even (latency model)")
        extra = load_profiles(s.profiles_file) if s.profiles_file else None
        return breakeven.headline_breakeven(
            models, s.edge_profiles, s.server_profile, Calibration(s.calibration), extra_profiles=extra
        )

    # -- assembling ------------------------------------------------------------------
    def _assemble(self, rows: _Rows, cost: CostSection, weights: WeightsInfo, wall_s: float) -> EvalResults:
        results = EvalResults(
            meta=self._meta(weights, wall_s),
            configs=list(self.s.configs),
            fidelity=rows.fidelity,
            measured=rows.measured,
            privacy=rows.privacy,
            cost=cost,
            summary=[],
            breakeven=self.breakeven_result,
            sensitive=self.sensitive_result,
        )
        return dataclasses.replace(results, summary=config_summaries(results, self._headline_geometry()))

    def _headline_geometry(self) -> str:
        """The full-size geometry of this run's model when it was timed, else this run's own."""
        s = self.s
        base = get_geometry(self.geom.name).spec
        timed = s.time_full_size and base in [get_geometry(m).spec for m in s.cost_models]
        return base if timed else f"{self.geom.spec} (this run)"

    def _meta(self, weights: WeightsInfo, wall_s: float) -> Meta:
        s, g = self.s, self.geom
        return Meta(
            model=g.spec,
            geometry=GeometryInfo(g.embed_dim, g.depth, g.num_heads, list(g.global_attn_indexes)),
            weights=weights,
            random_weights=s.random_weights,
            images=[
                ImageInfo(n, int(im.shape[0]), int(im.shape[1]), content_shape(im.shape[:2])) for n, im in s.images
            ],
            image_source=s.image_source,
            wire_dtype=s.wire_dtype,
            point_prompts=f"{s.point_grid}x{s.point_grid} grid of single foreground points (best of SAM's 3 "
            f"multimask outputs by predicted IoU)",
            box_prompts="tight boxes of the reference's point-prompt masks (0.1%..95% of the frame, "
            "near-duplicates dropped), single-mask output",
            amg=AmgInfo(
                s.amg_points,
                s.amg_image_count,
                self.amg_filters,
                "one-to-one matching by mask IoU: the most pairs with IoU >= 0.5, then the largest total IoU",
            ),
            command=s.command,
            server_speedup=s.server_speedup,
            server_assumption=server_assumption(s.server_speedup),
            detectors=self.detector_description,
            machine=costlib.machine_signature(),
            platform=platform.platform(),
            torch_threads=torch.get_num_threads(),
            load_average=LoadAverage(self.load_before, _loadavg()),
            wall_s=wall_s,
            date=time.strftime("%Y-%m-%d %H:%M:%S"),
            placement=self.placement.describe() + (" compiled" if s.compile else ""),
            pixel_codec=s.pixel_codec,
        )
