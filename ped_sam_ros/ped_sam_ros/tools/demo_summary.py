"""The demo's summary (``summary.json``, ``summary.md``, overlay PNGs) as typed records, read
from the results bag: each result's StageTiming, the last recorded /diagnostics (typed, see
``ped_sam_ros.ros.diagnostics``), and the bag the demo replayed (``make_bag.BagInfo``)."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ped_sam_ros.core.geometry import Partition, content_shape, server_shares

from .make_bag import BagInfo


@dataclass
class WallTimes:
    """Seconds, rounded to 0.1."""

    total: float
    startup: float  # until the edge node was ready
    replay: float


@dataclass
class StageLatencyMs:
    """One stage over the frames' StageTiming."""

    mean_ms: float
    p50_ms: float
    max_ms: float
    n: int


@dataclass
class ServerSummary:
    """One remote server, from the last recorded /diagnostics."""

    endpoint: str
    tiles: List[int]
    frames: int
    state: str
    bytes_up: int
    bytes_down: int
    mean_latency_ms: float
    mean_compute_ms: float
    share_per_frame: List[float] = field(default_factory=list)  # of each frame's content

    @property
    def bytes_up_per_frame(self) -> float:
        return self.bytes_up / self.frames if self.frames else 0.0

    @property
    def bytes_down_per_frame(self) -> float:
        return self.bytes_down / self.frames if self.frames else 0.0

    @property
    def mean_share(self) -> float:
        return round(statistics.fmean(self.share_per_frame), 4) if self.share_per_frame else 0.0


@dataclass
class FrameTally:
    received: int  # frames in the bag
    results: int
    dropped: int
    failed: int
    names: List[str]


@dataclass
class DemoSummary:
    warning: Optional[str]
    random_weights: bool
    model: str
    checkpoint: Optional[str]
    seed: Optional[int]
    mode: str
    grid: str
    curve: bool
    ros_domain_id: int
    frames: FrameTally
    stage_latency_ms: Dict[str, StageLatencyMs]
    remotes: Dict[str, ServerSummary]
    overlays: List[str]
    wall_s: WallTimes

    def to_json(self) -> Dict:
        """The record, with each server's per-frame figures (properties) spelled out."""
        d = dataclasses.asdict(self)
        for name, r in self.remotes.items():
            d["remotes"][name].update(
                bytes_up_per_frame=r.bytes_up_per_frame,
                bytes_down_per_frame=r.bytes_down_per_frame,
                mean_share=r.mean_share,
            )
        d["bytes_per_frame"] = {
            "up": sum(r.bytes_up_per_frame for r in self.remotes.values()),
            "down": sum(r.bytes_down_per_frame for r in self.remotes.values()),
        }
        return d


@dataclass
class Recorded:
    """The results bag, read back."""

    results: List  # SegmentationResult, in arrival order
    overlays: Dict  # stamp key -> overlay Image
    diagnostics: List  # DiagnosticArray, in arrival order


def read_results(bag_dir: Path) -> Recorded:
    from ped_sam_ros.ros.bags import read_messages
    from ped_sam_ros.ros.convert import stamp_key

    rec = Recorded([], {}, [])
    for topic, _, _, m in read_messages(bag_dir):
        if topic.endswith("/masks"):
            rec.results.append(m)
        elif topic.endswith("/overlay"):
            rec.overlays[stamp_key(m.header)] = m
        elif topic == "/diagnostics":
            rec.diagnostics.append(m)
    return rec


def write_overlays(out: Path, bag: BagInfo, scale: int, rec: Recorded) -> List[str]:
    """One PNG per frame with a result in ``out/overlays``: the node's ~/overlay (drawn here
    from the masks if it was not recorded); paths relative to ``out``."""
    import cv2

    from ped_sam_ros.ros.convert import image_to_rgb, masks_from_result, stamp_key
    from ped_sam_ros.viz import overlay as draw_overlay

    from .make_bag import frames as make_frames

    photos = None  # loaded only if an overlay is missing
    pngs = []
    for k, key in enumerate(bag.keys):
        res = next((r for r in rec.results if stamp_key(r.header) == key), None)
        if res is None:
            continue
        if key in rec.overlays:
            rgb = image_to_rgb(rec.overlays[key])
        else:  # not recorded (should not happen): draw it the same way from the masks
            photos = photos or make_frames(len(bag.frames), scale)
            rgb = draw_overlay(photos[k][1], [m for _, m in masks_from_result(res)])
        path = out / "overlays" / f"frame_{k:02d}_{bag.frames[k]}.png"
        cv2.imwrite(str(path), rgb[:, :, ::-1])
        pngs.append(str(path.relative_to(out)))
    return pngs


def stage_latency(results) -> Dict[str, StageLatencyMs]:
    """Per stage over the results' StageTiming, in the order the stages first appear."""
    per: Dict[str, List[float]] = {}
    for r in results:
        for t in r.timings:
            per.setdefault(t.stage, []).append(1000.0 * t.seconds)
    return {k: StageLatencyMs(statistics.fmean(v), statistics.median(v), max(v), len(v)) for k, v in per.items()}


def server_summaries(
    node_fqn: str, grid: Partition, bag: BagInfo, endpoints: Dict[str, str], diagnostics: List
) -> Dict[str, ServerSummary]:
    """Each server from the last recorded /diagnostics of ``node_fqn``, with its share of each
    frame's content (its tiles' content pixels over the frame's, for each frame size in the bag)."""
    from ped_sam_ros.ros.diagnostics import read_remote

    out = {}
    for name, endpoint in endpoints.items():
        st = read_remote(diagnostics, node_fqn, name)
        if st is None:
            out[name] = ServerSummary(endpoint, [], 0, "?", 0, 0, float("nan"), float("nan"))
            continue
        nan = float("nan")
        out[name] = ServerSummary(
            endpoint,
            list(st.tiles),
            st.frames,
            st.state,
            st.bytes_up,
            st.bytes_down,
            nan if st.mean_latency_ms is None else st.mean_latency_ms,
            nan if st.mean_compute_ms is None else st.mean_compute_ms,
        )
    names = list(endpoints)
    assignment = [0] * len(grid)
    for i, name in enumerate(names):
        for t in out[name].tiles:
            assignment[t] = i
    for h, w in bag.sizes:
        for name, share in zip(names, server_shares(grid, assignment, content_shape((h, w)))):
            out[name].share_per_frame.append(round(share, 4))
    return out


def summary_markdown(s: DemoSummary) -> str:
    lines = ["# PED-SAM demo", ""]
    if s.random_weights:
        lines += [f"> **WARNING: {s.warning}**", ""]
    f, t = s.frames, s.wall_s
    lines += [
        f"- model: `{s.model}`"
        + (f" (random weights, seed {s.seed})" if s.random_weights else f" from `{s.checkpoint}`"),
        f"- mode: {s.mode}, grid {s.grid} ({len(s.remotes)} remote servers on loopback, CurveZMQ on)",
        f"- frames in: {f.received}, results out: {f.results}, dropped: {f.dropped}, failed: {f.failed} "
        "(replay paced by the node's results)",
        f"- wall time: {t.total} s (start-up {t.startup} s, replay {t.replay} s)",
        "",
        "## Per-stage latency (ms per frame, from each result's StageTiming)",
        "",
        "| stage | mean | p50 | max |",
        "|---|---:|---:|---:|",
    ]
    for k, v in s.stage_latency_ms.items():
        lines.append(f"| {k} | {v.mean_ms:.1f} | {v.p50_ms:.1f} | {v.max_ms:.1f} |")
    lines += [
        "",
        "`remote` is the wall time of the parallel round trip to all servers; `total` runs from the "
        "image's arrival to the result (including waiting while busy).",
        "",
        "## Remote servers (from the last /diagnostics)",
        "",
        "| server | tiles | mean share of frame | frames | bytes up | bytes down | mean latency ms | mean compute ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in s.remotes.items():
        lines.append(
            f"| {name} | {r.tiles} | {100 * r.mean_share:.1f} % | {r.frames} | {r.bytes_up:,} | "
            f"{r.bytes_down:,} | {r.mean_latency_ms:.1f} | {r.mean_compute_ms:.1f} |"
        )
    up = sum(r.bytes_up_per_frame for r in s.remotes.values())
    down = sum(r.bytes_down_per_frame for r in s.remotes.values())
    lines += [
        "",
        f"Bytes per frame: {up:,.0f} up (tile pixels in the node's `pixel_codec`), {down:,.0f} "
        "down (tokens in its `wire_precision`): each server's bytes over the frames it encoded, summed.",
        "",
        "## Overlays",
        "",
    ]
    lines += [f"- [{p}]({p})" for p in s.overlays]
    return "\n".join(lines) + "\n"
