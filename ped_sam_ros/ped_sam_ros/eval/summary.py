"""The headline row per configuration: fidelity, privacy and cost figures boiled down over the images."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from . import cost as costlib
from .configs import EvalConfig
from .metrics import value_stats
from .privacy import ReconstructionScores
from .records import (
    ConfigSummary,
    CostRow,
    CostSummary,
    EvalResults,
    FidelityRow,
    FidelitySummary,
    PrivacyRow,
    PrivacySummary,
)

HEADLINE_DTYPE = "float16"
HEADLINE_LINK = costlib.LINKS[1].name  # 100 Mbit/s, 20 ms RTT


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    return value_stats(values).mean


def fidelity_summary(rows: Sequence[FidelityRow]) -> FidelitySummary:
    scores = [f.scores for f in rows]
    amg = [s.amg for s in scores if s.amg is not None]
    return FidelitySummary(
        embedding_cosine=_mean([s.embedding_cosine for s in scores]),
        embedding_rel_error=_mean([s.embedding_rel_error for s in scores]),
        point_iou=_mean([s.point_iou_mean for s in scores]),
        point_iou_min=min((s.point_iou_min for s in scores if s.point_iou_min is not None), default=None),
        box_iou=_mean([s.box_iou_mean for s in scores]),
        amg_reference_masks=sum(a.reference for a in amg) if amg else None,
        amg_masks=sum(a.candidate for a in amg) if amg else None,
        amg_matched=sum(a.matched for a in amg) if amg else None,
        amg_missed=sum(a.missed for a in amg) if amg else None,
        amg_matched_iou=_mean([a.mean_matched_iou for a in amg]) if amg else None,
    )


def attack_mean(
    rows: Sequence[PrivacyRow], attack: str, figure: Callable[[ReconstructionScores], float]
) -> Optional[float]:
    """Mean over images of one figure of one attack (images without that attack are skipped)."""
    return _mean([figure(p.attacks[attack]) for p in rows if attack in p.attacks])


def _detection_fractions(rows: Sequence[PrivacyRow], kind: str):
    """(full-frame detections, fraction seen whole by one server, fraction a server detects), over all images."""
    n = sum(p.detection[kind].n for p in rows)
    if not n:
        return n, None, None
    return (
        n,
        sum(p.detection[kind].n_seen_whole for p in rows) / n,
        sum(p.detection[kind].n_detected for p in rows) / n,
    )


def privacy_summary(rows: Sequence[PrivacyRow]) -> PrivacySummary:
    k2 = [p.collusion[1] for p in rows if len(p.collusion) > 1]
    faces, faces_whole, faces_found = _detection_fractions(rows, "face")
    people, people_whole, people_found = _detection_fractions(rows, "person")
    return PrivacySummary(
        max_server_share=max((p.max_share for p in rows), default=None),
        max_share_2_colluding=max(k2) if k2 else None,
        recon_ssim_inpaint=attack_mean(rows, "inpaint", lambda s: s.ssim_frame),
        recon_ssim_inpaint_unseen=attack_mean(rows, "inpaint", lambda s: s.ssim_unseen),
        recon_ssim_nearest=attack_mean(rows, "nearest", lambda s: s.ssim_frame),
        recon_ssim_mean_fill=attack_mean(rows, "mean", lambda s: s.ssim_frame),
        recon_psnr_inpaint=attack_mean(rows, "inpaint", lambda s: s.psnr_frame),
        faces=faces,
        faces_seen_whole=faces_whole,
        faces_detected=faces_found,
        people=people,
        people_seen_whole=people_whole,
        people_detected=people_found,
    )


def cost_summary(
    row: Optional[CostRow], geometry: str, dtype: str = HEADLINE_DTYPE, link: str = HEADLINE_LINK
) -> CostSummary:
    if row is None:
        return CostSummary(geometry, None, None, None, None, dtype)
    lat = row.latency.get(dtype, {}).get(link)
    return CostSummary(
        cost_geometry=geometry,
        edge_mac_share=row.edge_share,
        edge_gmacs=row.edge_macs / 1e9,
        server_gmacs_max=row.server_macs_max / 1e9,
        latency_100mbit_s=lat.total_s if lat else None,
        latency_dtype=dtype,
        bytes_up=row.bytes[dtype].up,
        bytes_down=row.bytes[dtype].down,
    )


def config_summary(results: EvalResults, config: EvalConfig, headline_geometry: str) -> ConfigSummary:
    return ConfigSummary(
        config=config.name,
        spec=config.spec,
        kind=config.kind,
        servers=config.servers,
        fidelity=fidelity_summary(results.fidelity_of(config)),
        privacy=privacy_summary(results.privacy_of(config)),
        cost=cost_summary(results.cost.row(headline_geometry, config.spec), headline_geometry),
    )


def config_summaries(results: EvalResults, headline_geometry: str) -> List[ConfigSummary]:
    """The headline row of every configuration; cost figures from ``headline_geometry``."""
    return [config_summary(results, c, headline_geometry) for c in results.configs]
