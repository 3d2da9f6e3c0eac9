"""The report's cost section: MACs, bytes, compute seconds and estimated latency per geometry x configuration.

Compute seconds come from one of three sources per geometry: this run's measured
stage times (``"run"``, the model under test), component timings measured on this
machine and scaled by MAC counts (``"components"``, full-size geometries), or none
(``"none"``: MACs and bytes only).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..core.geometry import IMAGE_SIZE
from ..core.model import SamGeometry
from . import cost as costlib
from .configs import EvalConfig
from .records import CostRow, CostSection, GeometryCost, MeasuredRow

SQUARE_FRAME = (IMAGE_SIZE, IMAGE_SIZE)  # the tables' frame: every token holds content
#: the token precisions the tables compare: the fixed-size ones (the wire's compressed formats
#: have data-dependent sizes)
TABLE_DTYPES = ("float32", "float16", "int8")
MAC_METHOD = (
    "torch.utils.flop_counter.FlopCounterMode on meta-device segment_anything modules; "
    "MACs = FLOPs / 2; matmul/conv only (norms, GELU, softmax not counted)"
)


def _fastest(v: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in v if x is not None]
    return float(min(v)) if v else None


def geometry_cost(
    label: str, g: SamGeometry, source: str, cache: costlib.TimingCache, retime: bool = False
) -> GeometryCost:
    """A geometry's counted MACs and, for ``source`` "components", its measured component timings."""
    full = costlib.full_encoder_workload(g)
    timing = machine = measured_at = None
    if source == "components":
        entry = cache.get(g, measure=True, refresh=retime)
        timing, machine, measured_at = entry.components, costlib.machine_signature(), entry.measured_at
        timing_source = f"measured per component on this machine (cache: {cache.path})"
    elif source == "run":
        timing_source = (
            "measured stage times of this run (fastest over images: the shapes, "
            "hence the compute, do not depend on the image)"
        )
    else:
        timing_source = "not timed (--no-time-full-size)"
    return GeometryCost(
        label=label,
        spec=g.spec,
        embed_dim=g.embed_dim,
        depth=g.depth,
        num_heads=g.num_heads,
        global_blocks=list(g.global_attn_indexes),
        full_encoder_macs=sum(full.values()),
        full_encoder_by_component=full,
        timing_source=timing_source,
        timing=timing,
        machine=machine,
        measured_at=measured_at,
    )


def workload(g: SamGeometry, c: EvalConfig) -> costlib.SplitWorkload:
    """Encoder MACs of a configuration on the edge and on each server."""
    if c.kind == "cloud":
        return costlib.cloud_workload(g)
    if c.kind == "edge":
        return costlib.edge_only_workload(g)
    return costlib.split_workload(g, c.mode, c.partition, c.assignment)


def frame_bytes(g: SamGeometry, c: EvalConfig, content: Tuple[int, int], dtype: str) -> costlib.WireBytes:
    """Payload bytes of one frame of a configuration, all servers together."""
    if c.kind == "cloud":
        return costlib.WireBytes(*costlib.cloud_bytes(g, content, dtype))
    if c.kind == "edge":
        return costlib.WireBytes(0, 0)
    up, down = costlib.split_bytes(g, c.partition, c.assignment, content, dtype)
    return costlib.WireBytes(sum(up), sum(down))


def compute_seconds(
    gc: GeometryCost,
    wl: costlib.SplitWorkload,
    c: EvalConfig,
    source: str,
    measured: Sequence[MeasuredRow],
    server_speedup: float = 1.0,
) -> Tuple[Optional[float], Optional[List[float]]]:
    """(edge seconds, seconds per server) of a configuration; (None, None) when not timed."""
    if source == "components":
        return (
            costlib.workload_seconds(wl.edge, gc.timing),
            [costlib.workload_seconds(w, gc.timing, server_speedup) for w in wl.servers],
        )
    if source == "run":
        mine = [m for m in measured if m.spec == c.spec]
        # compute does not depend on the image; the fastest run is the least disturbed
        edge_s = _fastest([m.edge_s for m in mine]) or 0.0
        smax = _fastest([m.server_compute_max_s for m in mine]) or 0.0
        return edge_s, ([smax / server_speedup] if wl.servers else [])
    return None, None


def cost_row(
    gc: GeometryCost,
    g: SamGeometry,
    c: EvalConfig,
    source: str,
    measured: Sequence[MeasuredRow],
    server_speedup: float = 1.0,
) -> CostRow:
    """One configuration on one geometry: MACs, square-frame bytes per wire dtype, seconds and latency per link."""
    wl = workload(g, c)
    edge_s, srv_s = compute_seconds(gc, wl, c, source, measured, server_speedup)
    wire = {dt: frame_bytes(g, c, SQUARE_FRAME, dt) for dt in TABLE_DTYPES}
    latency = {}
    if edge_s is not None:
        latency = {
            dt: {link.name: costlib.estimate_latency(edge_s, srv_s, b.up, b.down, link) for link in costlib.LINKS}
            for dt, b in wire.items()
        }
    return CostRow(
        geometry=gc.label,
        spec=g.spec,
        config=c.name,
        config_spec=c.spec,
        servers=len(wl.servers),
        edge_macs=wl.edge_macs,
        edge_share=wl.edge_macs / gc.full_encoder_macs,
        server_macs=wl.server_macs,
        edge_by_component=wl.edge,
        edge_s=edge_s,
        server_s_max=max(srv_s) if srv_s else (0.0 if srv_s is not None else None),
        bytes=wire,
        latency=latency,
    )


def cost_section(geometries: Dict[str, GeometryCost], rows: List[CostRow], server_speedup: float) -> CostSection:
    """The section with its stated assumptions (frame, latency model, links, MAC method)."""
    return CostSection(
        frame="a 1024x1024 frame (square image: all tokens hold content, 3 MiB of uint8 pixels)",
        latency_model=costlib.LATENCY_MODEL,
        links=list(costlib.LINKS),
        server_speedup=server_speedup,
        decoder_macs_per_prompt=costlib.decoder_macs(),
        mac_method=MAC_METHOD,
        geometries=geometries,
        rows=rows,
    )
