"""Orchestration: run every configuration on every image and collect the raw figures.

Three parts, all in one process and on the same images and weights:

* fidelity: plain SAM (the reference) vs each PED-SAM configuration run through
  :class:`LocalTransport` (the real wire codec, in-process servers);
* privacy: what each server of each partition receives and what classical
  attacks recover from it (independent of the weights and of the mode);
* cost: MACs counted from the model, measured stage times of this run, measured
  component times of the full-size geometries, bytes and a latency estimate.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from segment_anything import SamPredictor

from ..core.geometry import TOKEN_GRID, Tile
from ..core.model import (EdgeStage, RemoteStage, SamGeometry, build_sam, get_geometry, random_sam, save_checkpoint)
from ..core.pipeline import DistributedEncoder, PedSamPredictor
from ..core.transport import LocalTransport
from ..core.wire import (TOKEN_DTYPES, EncodeRequest, encode_message, frames_nbytes, make_encode_request,
                         new_request_id, pack_tokens, unpack_tokens)
from . import cost as costlib
from . import fidelity as fid
from . import metrics
from . import privacy as priv
from .configs import EvalConfig

log = logging.getLogger(__name__)

FULL_SIZE = ("vit_b", "vit_l", "vit_h")


@dataclass
class EvalSettings:
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

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None


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
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _fastest(v: Sequence[float]) -> Optional[float]:
    v = [x for x in v if x is not None]
    return float(min(v)) if v else None


class Progress:
    """tqdm wrapper that also accepts a plain callback (or nothing)."""

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
    hwc = features[0].permute(1, 2, 0).contiguous().numpy()
    back = unpack_tokens(dict(pack_tokens(hwc, dtype)), hwc.shape)
    return torch.from_numpy(back).permute(2, 0, 1)[None].contiguous()


def _cloud_wire_bytes(resized: np.ndarray, features: torch.Tensor, model: str, dtype: str) -> Tuple[int, int]:
    """Bytes (with headers) of the cloud request (whole resized frame) and reply (embedding)."""
    win = Tile(0, 0, 0, 0, TOKEN_GRID, 0, TOKEN_GRID)
    up = make_encode_request(EncodeRequest(new_request_id(), model, "paper", win, resized, 60000, dtype))
    hwc = features[0].permute(1, 2, 0).contiguous().numpy()
    down = encode_message({"type": "encoded", "id": "x" * 32, "timing": {"compute_s": 0.0}}, pack_tokens(hwc, dtype))
    return frames_nbytes(up), frames_nbytes(down)


# ---------------------------------------------------------------------------


class Evaluation:
    def __init__(self, settings: EvalSettings, progress: bool = True, echo: Callable[[str], None] = print):
        self.s = settings
        self.echo = echo
        self.progress_enabled = progress
        self.geom: SamGeometry = get_geometry(settings.model)
        self.results: Dict = {}

    # -- weights ---------------------------------------------------------------
    def _load_models(self, tmp: str) -> Dict:
        s = self.s
        if s.checkpoint:
            ckpt = s.checkpoint
            weights = {"random": False, "checkpoint": str(Path(ckpt).resolve()), "sha256": _sha256(ckpt),
                       "label": f"checkpoint {Path(ckpt).name}"}
        else:
            ckpt = str(save_checkpoint(random_sam(self.geom, seed=s.seed), Path(tmp) / "random_sam.pth"))
            weights = {"random": True, "checkpoint": None, "seed": s.seed,
                       "label": f"RANDOM WEIGHTS (random_sam('{self.geom.spec}', seed={s.seed}); not trained SAM)"}
        ref = build_sam(self.geom, ckpt)
        remote = RemoteStage.from_checkpoint(self.geom, ckpt)
        edges = {m: EdgeStage.from_checkpoint(self.geom, ckpt, m) for m in ("paper", "exact")}
        return {"ref": ref, "remote": remote, "edges": edges, "weights": weights}

    # -- main ------------------------------------------------------------------
    def run(self) -> Dict:
        s = self.s
        t_start = time.perf_counter()
        self.load_before = _loadavg()
        peds = [c for c in s.configs if c.kind == "ped"]
        partitions = self._privacy_keys()
        amg_n = 0 if s.amg_points <= 0 else (len(s.images) if s.amg_images is None else min(s.amg_images, len(s.images)))
        amg_opts = dict(s.amg_options if s.amg_options is not None
                        else (fid.AMG_RANDOM_WEIGHTS if s.random_weights else fid.AMG_DEFAULTS))
        cost_geoms = self._cost_geometries()
        total = len(s.images) * (1 + len(peds)) + len(s.images) * len(partitions) + len(cost_geoms)
        bar = Progress(total, self.progress_enabled)
        fidelity_rows: List[Dict] = []
        measured_rows: List[Dict] = []
        privacy_rows: List[Dict] = []
        try:
            with tempfile.TemporaryDirectory(prefix="ped-sam-eval-") as tmp:
                bar.note("loading weights")
                models = self._load_models(tmp)
                ref_pred = SamPredictor(models["ref"])
                dets = priv.Detectors()
                self.detector_description = dets.description
                transports = {}
                predictors = {}
                for c in peds:
                    tr = LocalTransport(models["remote"], num_servers=c.servers, token_dtype=s.wire_dtype)
                    enc = DistributedEncoder(models["edges"][c.mode], tr, c.partition, c.assignment,
                                             timeout_s=3600.0, allow_adjacent=True)
                    predictors[c.spec] = PedSamPredictor(enc)
                for i, (name, image) in enumerate(s.images):
                    run_amg = i < amg_n
                    # ---- reference: plain SAM on the same weights
                    bar.note(f"{name}: plain SAM")
                    t0 = time.perf_counter()
                    ref_pred.set_image(image)
                    ref_s = time.perf_counter() - t0
                    ref = fid.reference_outputs(ref_pred, image, s.point_grid, s.amg_points, amg_opts, run_amg)
                    resized = ref_pred.transform.apply_image(image)
                    content = resized.shape[:2]
                    up_b, down_b = _cloud_wire_bytes(resized, ref.features, self.geom.spec, s.wire_dtype)
                    # cloud: plain SAM, embedding returned over the wire in the wire precision
                    saved = ref_pred.features
                    ref_pred.features = _embedding_roundtrip(saved, s.wire_dtype)
                    cloud_fid = fid.compare(ref, ref_pred, image, s.amg_points, amg_opts, run_amg)
                    ref_pred.features = saved
                    for c in s.configs:
                        if c.kind == "cloud":
                            fidelity_rows.append(dict(config=c.name, spec=c.spec, image=name, reference=False,
                                                      note=f"plain SAM, embedding sent as {s.wire_dtype}",
                                                      **cloud_fid))
                            measured_rows.append(dict(config=c.name, spec=c.spec, image=name, server_compute_max_s=ref_s,
                                                      edge_s=0.0, bytes_up=up_b, bytes_down=down_b,
                                                      content_hw=list(content)))
                        elif c.kind == "edge":
                            fidelity_rows.append(dict(config=c.name, spec=c.spec, image=name, reference=True,
                                                      note="is plain SAM (the reference)",
                                                      **fid.reference_self_metrics(ref, run_amg)))
                            measured_rows.append(dict(config=c.name, spec=c.spec, image=name, server_compute_max_s=0.0,
                                                      edge_s=ref_s, bytes_up=0, bytes_down=0, content_hw=list(content)))
                    bar.step(f"{name}: plain SAM")
                    # ---- PED-SAM configurations
                    for c in peds:
                        pred = predictors[c.spec]
                        pred.set_image(image)
                        st = pred.last_stats
                        row = dict(config=c.name, spec=c.spec, image=name, reference=False, note="")
                        row.update(fid.compare(ref, pred, image, s.amg_points, amg_opts, run_amg))
                        fidelity_rows.append(row)
                        comp = [p.compute_s for p in st.per_server]
                        measured_rows.append(dict(
                            config=c.name, spec=c.spec, image=name,
                            server_compute_max_s=max(comp) if comp else 0.0,
                            server_compute_sum_s=sum(comp),
                            edge_s=st.timings.get("edge_encoder", 0.0) + st.timings.get("merge", 0.0)
                            + st.timings.get("partition", 0.0),
                            edge_encoder_s=st.timings.get("edge_encoder", 0.0),
                            remote_in_process_s=st.timings.get("remote", 0.0),
                            bytes_up=st.bytes_up, bytes_down=st.bytes_down, content_hw=list(content)))
                        bar.step(f"{name}: {c.name}")
                    # ---- privacy (per partition; same for both modes)
                    privacy_rows.extend(self._privacy_for_image(name, image, content, partitions, dets, bar))
                self.weights = models["weights"]
                cost = self._cost(cost_geoms, measured_rows, bar)
        finally:
            bar.close()
        self.results = self._assemble(fidelity_rows, measured_rows, privacy_rows, cost, amg_opts, amg_n,
                                      time.perf_counter() - t_start)
        return self.results

    # -- privacy -----------------------------------------------------------------
    def _privacy_keys(self) -> Dict[str, Tuple]:
        """Unique server layouts: key -> (partition, assignment) (None for cloud / edge)."""
        keys: Dict[str, Tuple] = {}
        for c in self.s.configs:
            keys.setdefault(self._pkey(c), (c.partition, c.assignment) if c.kind == "ped" else (c.kind, None))
        return keys

    @staticmethod
    def _pkey(c: EvalConfig) -> str:
        if c.kind != "ped":
            return c.kind
        return f"{c.partition.name}|{','.join(map(str, c.assignment))}"

    def _privacy_for_image(self, name: str, image: np.ndarray, content: Tuple[int, int], layouts: Dict[str, Tuple],
                           dets: priv.Detectors, bar: Progress) -> List[Dict]:
        """``content``: the frame's size after SAM's resize."""
        H, W = image.shape[:2]
        full = {k: dets.detect(k, image) for k in dets.KINDS}
        rows = []
        for key, (part, assign) in layouts.items():
            bar.note(f"{name}: privacy {key.split('|')[0]}")
            if part == "edge":
                rows.append({"layout": key, "image": name, "servers": 0, "shares": [], "max_share": 0.0,
                             "collusion": [], "attack_server": None, "attacks": {},
                             "detection": {k: {"n_full_frame": len(full[k]), "n_seen_whole": 0, "n_detected": 0}
                                           for k in dets.KINDS}})
                bar.step(f"{name}: privacy edge")
                continue
            if part == "cloud":
                masks = [np.ones((H, W), bool)]
                shares = [1.0]
            else:
                windows = priv.server_tiles(part, assign)
                masks = [priv.seen_mask(windows[sidx], (H, W)) for sidx in sorted(windows)]
                shares = priv.exposure_shares(part, assign, content)
            worst = int(np.argmax(shares))
            targets = range(len(masks)) if self.s.attack_all_servers else [worst]
            per_server = {}
            for sidx in targets:
                res = {}
                for aname, fn in priv.ATTACKS.items():
                    rec = fn(image, masks[sidx])
                    res[aname] = priv.reconstruction_scores(image, rec, masks[sidx])
                per_server[sidx] = res
            attacks = per_server[worst]
            row = {"layout": key, "image": name, "servers": len(masks), "shares": shares,
                   "max_share": max(shares), "collusion": priv.collusion_exposure(shares),
                   "original_seen_fraction": float(masks[worst].mean()),
                   "attack_server": worst, "attacks": attacks}
            if self.s.attack_all_servers:
                row["attacks_worst_server"] = {
                    a: max((per_server[t][a] for t in per_server), key=lambda r: r["ssim_frame"]) for a in priv.ATTACKS}
            sens = priv.sensitive_content_attack(image, masks, dets, full_frame=full)
            row["detection"] = {k: v.to_dict() for k, v in sens.items()}
            rows.append(row)
            bar.step(f"{name}: privacy {key.split('|')[0]}")
        return rows

    # -- cost ----------------------------------------------------------------------
    def _cost_geometries(self) -> List[Tuple[str, SamGeometry, str]]:
        """(label, geometry, timing source) for the cost tables."""
        out = [(f"{self.geom.spec} (this run)", self.geom, "run")]
        for m in self.s.cost_models:
            g = get_geometry(m)
            out.append((g.spec, g, "components" if self.s.time_full_size else "none"))
        return out

    def _workload(self, g: SamGeometry, c: EvalConfig) -> costlib.SplitWorkload:
        if c.kind == "cloud":
            return costlib.cloud_workload(g)
        if c.kind == "edge":
            return costlib.edge_only_workload(g)
        return costlib.split_workload(g, c.mode, c.partition, c.assignment)

    def _bytes(self, g: SamGeometry, c: EvalConfig, content: Tuple[int, int], dtype: str) -> Tuple[int, int]:
        if c.kind == "cloud":
            return costlib.cloud_bytes(g, content, dtype)
        if c.kind == "edge":
            return 0, 0
        up, down = costlib.split_bytes(g, c.partition, c.assignment, content, dtype)
        return sum(up), sum(down)

    def _cost(self, geoms, measured_rows: List[Dict], bar: Progress) -> Dict:
        s = self.s
        cache = costlib.TimingCache(s.timing_cache)
        square = (TOKEN_GRID * 16, TOKEN_GRID * 16)
        out = {"frame": "a 1024x1024 frame (square image: all tokens hold content, 3 MiB of uint8 pixels)",
               "latency_model": costlib.LATENCY_MODEL, "links": [vars(l) for l in costlib.LINKS],
               "server_speedup": s.server_speedup, "decoder_macs_per_prompt": costlib.decoder_macs(),
               "mac_method": ("torch.utils.flop_counter.FlopCounterMode on meta-device segment_anything modules; "
                              "MACs = FLOPs / 2; matmul/conv only (norms, GELU, softmax not counted)"),
               "geometries": {}, "rows": []}
        for label, g, source in geoms:
            bar.note(f"cost {label}" + (" (timing components)" if source == "components" else ""))
            full = costlib.full_encoder_workload(g)
            total = sum(full.values())
            timing = None
            if source == "components":
                entry = cache.get(g, measure=True, refresh=s.retime)
                timing = entry["components"]
                gi = {"timing_source": f"measured per component on this machine (cache: {cache.path})",
                      "timing": timing, "machine": costlib.machine_signature(),
                      "measured_at": entry.get("measured_at")}
            elif source == "run":
                gi = {"timing_source": "measured stage times of this run (fastest over images: the shapes, "
                                       "hence the compute, do not depend on the image)"}
            else:
                gi = {"timing_source": "not timed (--no-time-full-size)"}
            gi.update(label=label, spec=g.spec, embed_dim=g.embed_dim, depth=g.depth, num_heads=g.num_heads,
                      global_blocks=list(g.global_attn_indexes), full_encoder_macs=total,
                      full_encoder_by_component=full)
            out["geometries"][label] = gi
            for c in s.configs:
                wl = self._workload(g, c)
                row = {"geometry": label, "spec": g.spec, "config": c.name, "config_spec": c.spec,
                       "edge_macs": wl.edge_macs, "edge_share": wl.edge_macs / total,
                       "server_macs": wl.server_macs, "server_macs_max": max(wl.server_macs, default=0),
                       "server_macs_total": sum(wl.server_macs), "servers": len(wl.servers),
                       "edge_by_component": wl.edge}
                # compute time
                if source == "components":
                    edge_s = costlib.workload_seconds(wl.edge, timing)
                    srv_s = [costlib.workload_seconds(w, timing, s.server_speedup) for w in wl.servers]
                elif source == "run":
                    mine = [m for m in measured_rows if m["spec"] == c.spec]
                    # compute does not depend on the image; the fastest run is the least disturbed
                    edge_s = _fastest([m["edge_s"] for m in mine]) or 0.0
                    smax = _fastest([m["server_compute_max_s"] for m in mine]) or 0.0
                    srv_s = [smax / s.server_speedup] if wl.servers else []
                else:
                    edge_s, srv_s = None, None
                row["edge_s"] = edge_s
                row["server_s_max"] = max(srv_s) if srv_s else (0.0 if srv_s is not None else None)
                row["bytes"] = {}
                row["latency"] = {}
                for dt in TOKEN_DTYPES:
                    up, down = self._bytes(g, c, square, dt)
                    row["bytes"][dt] = {"up": up, "down": down}
                    if edge_s is None:
                        continue
                    row["latency"][dt] = {}
                    for link in costlib.LINKS:
                        row["latency"][dt][link.name] = costlib.estimate_latency(edge_s, srv_s, up, down, link)
                out["rows"].append(row)
            bar.step(f"cost {label}")
        return out

    # -- assembling ------------------------------------------------------------------
    def _assemble(self, fidelity_rows, measured_rows, privacy_rows, cost, amg_opts, amg_n, wall_s) -> Dict:
        s = self.s
        cfgs = [c.to_dict() for c in s.configs]
        for c, d in zip(s.configs, cfgs):
            d["privacy_layout"] = self._pkey(c)
        meta = {
            "model": self.geom.spec,
            "geometry": {"embed_dim": self.geom.embed_dim, "depth": self.geom.depth,
                         "num_heads": self.geom.num_heads, "global_blocks": list(self.geom.global_attn_indexes)},
            "weights": self.weights,
            "random_weights": s.random_weights,
            "images": [{"name": n, "height": int(im.shape[0]), "width": int(im.shape[1]),
                        "resized": list(priv.resized_shape(*im.shape[:2]))} for n, im in s.images],
            "image_source": s.image_source,
            "wire_dtype": s.wire_dtype,
            "point_prompts": f"{s.point_grid}x{s.point_grid} grid of single foreground points (best of SAM's 3 "
                             f"multimask outputs by predicted IoU)",
            "box_prompts": "tight boxes of the reference's point-prompt masks (0.1%..95% of the frame, "
                           "near-duplicates dropped), single-mask output",
            "amg": {"points_per_side": s.amg_points, "images": amg_n, "options": amg_opts,
                    "match": "one-to-one matching by mask IoU: the most pairs with IoU >= 0.5, then the largest total IoU"},
            "command": s.command,
            "server_speedup": s.server_speedup,
            "server_assumption": server_assumption(s.server_speedup),
            "detectors": getattr(self, "detector_description", {}),
            "machine": costlib.machine_signature(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "load_average": {"start": getattr(self, "load_before", None), "end": _loadavg()},
            "wall_s": wall_s,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        results = {"meta": meta, "configs": cfgs, "fidelity": fidelity_rows, "measured": measured_rows,
                   "privacy": privacy_rows, "cost": cost}
        base = get_geometry(self.geom.name).spec
        timed = s.time_full_size and base in [get_geometry(m).spec for m in s.cost_models]
        headline = base if timed else f"{self.geom.spec} (this run)"
        results["summary"] = summarize(results, headline_geometry=headline)
        return results


def server_assumption(speedup: float) -> str:
    if speedup == 1.0:
        return ("servers are assumed to be this same CPU, their compute time being the one measured on this "
                "machine; pass --server-speedup to model faster servers")
    return f"servers are assumed to be {speedup:g}x faster than this CPU (--server-speedup {speedup:g})"


# ---------------------------------------------------------------------------
# Headline figures per configuration


def _mean(v):
    return metrics.summarize(v)["mean"]


def summarize(results: Dict, headline_geometry: str, dtype: str = "float16",
              link: str = costlib.LINKS[1].name) -> List[Dict]:
    rows = []
    cost_rows = {(r["geometry"], r["config_spec"]): r for r in results["cost"]["rows"]}
    for c in results["configs"]:
        fr = [f for f in results["fidelity"] if f["spec"] == c["spec"]]
        pr = [p for p in results["privacy"] if p["layout"] == c["privacy_layout"]]
        amg = [f["amg"] for f in fr if f.get("amg")]
        det = {}
        for kind in ("face", "person"):
            n = sum(p["detection"][kind]["n_full_frame"] for p in pr)
            det[kind] = {"n": n,
                         "seen_whole": (sum(p["detection"][kind]["n_seen_whole"] for p in pr) / n) if n else None,
                         "detected": (sum(p["detection"][kind]["n_detected"] for p in pr) / n) if n else None}
        k2 = [p["collusion"][1] for p in pr if len(p["collusion"]) > 1]
        row = {
            "config": c["name"], "spec": c["spec"], "kind": c["kind"], "servers": c["servers"],
            "embedding_cosine": _mean([f["embedding_cosine"] for f in fr]),
            "embedding_rel_error": _mean([f["embedding_rel_error"] for f in fr]),
            "point_iou": _mean([f["point_iou_mean"] for f in fr]),
            "point_iou_min": min((f["point_iou_min"] for f in fr if f["point_iou_min"] is not None), default=None),
            "box_iou": _mean([f["box_iou_mean"] for f in fr]),
            "amg_reference_masks": sum(a["reference"] for a in amg) if amg else None,
            "amg_masks": sum(a["candidate"] for a in amg) if amg else None,
            "amg_matched": sum(a["matched"] for a in amg) if amg else None,
            "amg_missed": sum(a["missed"] for a in amg) if amg else None,
            "amg_matched_iou": _mean([a["mean_matched_iou"] for a in amg]) if amg else None,
            "max_server_share": max((p["max_share"] for p in pr), default=None),
            "max_share_2_colluding": max(k2) if k2 else None,
            "recon_ssim_inpaint": _mean([p["attacks"].get("inpaint", {}).get("ssim_frame") for p in pr]),
            "recon_ssim_inpaint_unseen": _mean([p["attacks"].get("inpaint", {}).get("ssim_unseen") for p in pr]),
            "recon_ssim_nearest": _mean([p["attacks"].get("nearest", {}).get("ssim_frame") for p in pr]),
            "recon_ssim_mean_fill": _mean([p["attacks"].get("mean", {}).get("ssim_frame") for p in pr]),
            "recon_psnr_inpaint": _mean([p["attacks"].get("inpaint", {}).get("psnr_frame") for p in pr]),
            "faces": det["face"]["n"], "faces_seen_whole": det["face"]["seen_whole"],
            "faces_detected": det["face"]["detected"],
            "people": det["person"]["n"], "people_seen_whole": det["person"]["seen_whole"],
            "people_detected": det["person"]["detected"],
        }
        cr = cost_rows.get((headline_geometry, c["spec"]))
        row["cost_geometry"] = headline_geometry
        row["edge_mac_share"] = cr["edge_share"] if cr else None
        row["edge_gmacs"] = cr["edge_macs"] / 1e9 if cr else None
        row["server_gmacs_max"] = cr["server_macs_max"] / 1e9 if cr else None
        lat = cr["latency"].get(dtype, {}).get(link) if cr else None
        row["latency_100mbit_s"] = lat["total_s"] if lat else None
        row["latency_dtype"] = dtype
        if cr:
            row["bytes_up"] = cr["bytes"][dtype]["up"]
            row["bytes_down"] = cr["bytes"][dtype]["down"]
        rows.append(row)
    return rows
