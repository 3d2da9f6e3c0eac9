"""When does PED-SAM beat edge-only SAM?  Break-even bandwidth and latency against cloud SAM.

For each model, edge profile and PED-SAM mode, with a server profile and wire formats
(:mod:`.latency`, :mod:`.profiles`): the uplink bandwidth above which PED-SAM's frame
(masks for one point prompt included) is faster than edge-only SAM on that edge, found by
bisection (:func:`.latency.break_even`; downlink = ``down_ratio`` x uplink, the RTT fixed),
and PED-SAM's latency over cloud SAM's at a reference link.  Published profiles are
(fast, slow) ranges: both devices at their fast end, then both at their slow end, and the
table gives both results.

    python -m ped_sam_ros.eval.breakeven --edge-profile agx-orin --server-profile a100 \\
        --models vit_b vit_l vit_h --wires float16/raw p6/jpeg444:90 --json out/breakeven.json

The ``ped-sam-eval`` report's headline carries :func:`headline_breakeven` (:func:`headline_lines`):
for every cost model of the run and every edge profile of the run, PED-SAM as the node runs it by
default (paper mode, 2x2 tiles, one server per tile, the node's wire, Curve on) against edge-only
SAM on that edge and cloud SAM on the server profile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.geometry import Partition
from ..core.model import get_geometry
from ..core.wire import DEFAULT_PIXEL_CODEC, DEFAULT_TOKEN_FORMAT
from . import latency as L
from .calibrate import Calibration
from .profiles import DeviceProfile, LinkProfile, get_profile, load_profiles

REFERENCE_LINK = LinkProfile.parse("100:20")  # Mbit/s both ways, 20 ms RTT
#: the report headline's profiles (``ped-sam-eval --edge-profile/--server-profile``)
HEADLINE_EDGE_PROFILES = ("agx-orin",)
HEADLINE_SERVER_PROFILE = "a100"
#: the headline's PED-SAM: the node's defaults (mode, grid), one server per tile
HEADLINE_MODE = "paper"
HEADLINE_GRID = (2, 2)
_WIDTH_MODEL = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def cached_token_sampler(cache_dir: Optional[str] = None):
    """Tokens from ``bench.codecs``' cache (random-weight real-width tokens of a photo) when
    present for that width, else N(0, 1) tokens."""
    d = Path(
        cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ped_sam_bench")
    )
    loaded: Dict[int, Tuple[np.ndarray, str]] = {}

    def sampler(channels: int, shape: Tuple[int, int]):
        if channels not in loaded:
            model = _WIDTH_MODEL.get(channels)
            path = d / f"tokens_{model}_random0_astronaut.npy" if model else None
            if path is not None and path.exists():
                loaded[channels] = (np.load(path), f"{model} random-weight tokens of astronaut")
            else:
                loaded[channels] = L.gaussian_tokens(channels, (64, 64))
        tokens, name = loaded[channels]
        return np.ascontiguousarray(tokens[: shape[0], : shape[1]]), name

    return sampler


@dataclass(frozen=True)
class BreakEvenRow:
    model: str
    edge_profile: str
    server_profile: str
    mode: str
    grid: str
    wire: str
    end: str  # "fast" or "slow"
    edge_only_s: float
    cloud_s: float  # at the reference link
    ped_s: float  # at the reference link
    break_even_mbit: Optional[float]  # None: never beats edge-only
    ped_over_cloud: float
    up_mb: float
    down_mb: float
    cloud_break_even_mbit: Optional[float]


def rows_for(
    models: Sequence[str],
    edge: DeviceProfile,
    server: DeviceProfile,
    wires: Sequence[L.Wire],
    modes: Sequence[str] = ("paper", "exact"),
    grid: Tuple[int, int] = (2, 2),
    rtt_ms: float = 20.0,
    down_ratio: float = 1.0,
    reference: LinkProfile = REFERENCE_LINK,
    calibration: Optional[Calibration] = None,
    sampler=None,
    ends: Sequence[int] = (0, 1),
) -> List[BreakEvenRow]:
    cal = calibration or Calibration()
    sampler = sampler or cached_token_sampler()
    partition = Partition.grid(*grid)
    assignment = list(range(len(partition)))  # one server per tile, as the evaluation does
    base = LinkProfile.symmetric(1.0, rtt_ms)
    out = []
    for model in models:
        geom = get_geometry(model)
        for end in ends:
            e = L.Costs(edge, cal, end=end, tokens=sampler)
            s = L.Costs(server, cal, end=end, tokens=sampler)
            edge_only = L.play(L.edge_plan(e, geom), None).total_s
            for wire in wires:
                cplan = L.cloud_plan(e, s, geom, wire)
                cloud = L.play(cplan, reference).total_s
                cloud_be = L.break_even(lambda b, p=cplan: L.play(p, base.scaled(b, down_ratio)).total_s, edge_only)
                for mode in modes:
                    plan = L.ped_plan(e, s, geom, mode, partition, assignment, wire)
                    ref = L.play(plan, reference)
                    be = L.break_even(lambda b, p=plan: L.play(p, base.scaled(b, down_ratio)).total_s, edge_only)
                    out.append(
                        BreakEvenRow(
                            model,
                            edge.name,
                            server.name,
                            mode,
                            f"{grid[0]}x{grid[1]}",
                            wire.label,
                            ("fast", "slow")[end],
                            edge_only,
                            cloud,
                            ref.total_s,
                            be,
                            ref.total_s / cloud,
                            ref.up_bytes / 1e6,
                            ref.down_bytes / 1e6,
                            cloud_be,
                        )
                    )
    return out


def _mbit(v: Optional[float]) -> str:
    if v is None:
        return "never"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def table(rows: Sequence[BreakEvenRow]) -> str:
    """One line per (model, edge, mode, wire): fast-end / slow-end figures side by side."""
    keys = list(dict.fromkeys((r.model, r.edge_profile, r.server_profile, r.mode, r.grid, r.wire) for r in rows))
    out = [
        "| model | edge / server | mode, grid | wire (tokens / pixels) | MB up / down | edge-only s "
        "| PED-SAM s @100 Mbit/s | cloud s @100 | PED / cloud | break-even Mbit/s (PED-SAM) "
        "| break-even Mbit/s (cloud SAM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in keys:
        rs = [r for r in rows if (r.model, r.edge_profile, r.server_profile, r.mode, r.grid, r.wire) == k]

        def both(f, fmt="{:.2f}", rs=rs):
            vals = [f(r) for r in rs]
            txt = [fmt.format(v) if isinstance(v, float) else str(v) for v in vals]
            return txt[0] if len(set(txt)) == 1 else " - ".join(txt)

        out.append(
            f"| {k[0]} | {k[1]} / {k[2]} | {k[3]} {k[4]} | {k[5]} | {rs[0].up_mb:.2f} / {rs[0].down_mb:.2f} | "
            f"{both(lambda r: r.edge_only_s)} | {both(lambda r: r.ped_s)} | {both(lambda r: r.cloud_s)} | "
            f"{both(lambda r: r.ped_over_cloud, '{:.1f}x')} | {both(lambda r: _mbit(r.break_even_mbit))} | "
            f"{both(lambda r: _mbit(r.cloud_break_even_mbit))} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------
# The evaluation report's headline


#: beside the node's wire: the fastest-to-code entropy format with the same pixels (its codec costs a
#: third of p6's, docs/wire.md), and the uncompressed wire the defaults replaced
LATENCY_ALTERNATIVE = "e8"


def headline_wires() -> List[L.Wire]:
    """The node's default wire, ``e8`` tokens with the node's pixels (fewer codec seconds, more bytes), and
    the uncompressed wire (float16 tokens, raw pixels); Curve on."""
    return [
        L.Wire(DEFAULT_TOKEN_FORMAT, DEFAULT_PIXEL_CODEC, True),
        L.Wire(LATENCY_ALTERNATIVE, DEFAULT_PIXEL_CODEC, True),
        L.Wire("float16", "raw", True),
    ]


@dataclass(frozen=True)
class HeadlineBreakEven:
    """The break-even answer of one evaluation run: :class:`BreakEvenRow` per model, edge profile,
    wire and profile end, for PED-SAM as the node runs it by default, with the profiles' sources."""

    server_profile: str
    edge_profiles: List[str]
    mode: str
    grid: str
    rtt_ms: float
    reference_link: str
    rows: List[BreakEvenRow]
    sources: Dict[str, str]  # profile name -> "description; source"


def headline_breakeven(
    models: Sequence[str],
    edge_profiles: Sequence[str] = HEADLINE_EDGE_PROFILES,
    server_profile: str = HEADLINE_SERVER_PROFILE,
    calibration: Optional[Calibration] = None,
    extra_profiles: Optional[Dict[str, DeviceProfile]] = None,
    wires: Optional[Sequence[L.Wire]] = None,
) -> HeadlineBreakEven:
    """:func:`rows_for` for the report's headline: every model and edge profile, paper mode on 2x2
    tiles, the :func:`headline_wires`, both ends of published ranges (one end when both profiles
    are measured)."""
    server = get_profile(server_profile, extra_profiles)
    cal = calibration or Calibration()
    rows: List[BreakEvenRow] = []
    sources = {server.name: f"{server.description}; {server.source}"}
    for name in edge_profiles:
        edge = get_profile(name, extra_profiles)
        sources[edge.name] = f"{edge.description}; {edge.source}"
        ends = (0,) if edge.measured and server.measured else (0, 1)
        rows += rows_for(
            models,
            edge,
            server,
            list(wires or headline_wires()),
            (HEADLINE_MODE,),
            HEADLINE_GRID,
            calibration=cal,
            ends=ends,
        )
    grid = f"{HEADLINE_GRID[0]}x{HEADLINE_GRID[1]}"
    return HeadlineBreakEven(
        server.name, list(edge_profiles), HEADLINE_MODE, grid, REFERENCE_LINK.rtt_ms, REFERENCE_LINK.name, rows, sources
    )


def break_even_text(rows: Sequence[BreakEvenRow]) -> str:
    """The break-even bandwidth of rows that differ only in the profile end: "46" or "46 - 178" (fast end
    first), in Mbit/s; "never" where PED-SAM does not beat edge-only SAM even at 100 Gbit/s."""
    vals = list(dict.fromkeys(_mbit(r.break_even_mbit) for r in rows))
    return " - ".join(vals)


def over_cloud_text(rows: Sequence[BreakEvenRow]) -> str:
    """PED-SAM's latency over cloud SAM's at the reference link, e.g. "1.4x" or "1.4x - 1.5x"."""
    vals = list(dict.fromkeys(f"{r.ped_over_cloud:.1f}x" for r in rows))
    return " - ".join(vals)


def headline_lines(hb: HeadlineBreakEven) -> List[str]:
    """Markdown: when PED-SAM beats edge-only SAM, and its latency against cloud SAM, per model,
    edge profile and wire (fast end - slow end of the profiles' ranges)."""
    keys = list(dict.fromkeys((r.model, r.edge_profile, r.wire) for r in hb.rows))
    table_rows = []
    for k in keys:
        rs = [r for r in hb.rows if (r.model, r.edge_profile, r.wire) == k]
        node = " (the node's default)" if k[2] == headline_wires()[0].label else ""

        def both(f, rs=rs):
            return " - ".join(dict.fromkeys(f(r) for r in rs))

        table_rows.append(
            f"| {k[0]} | {k[1]} | {k[2]}{node} | **{break_even_text(rs)}** | {over_cloud_text(rs)} | "
            f"{both(lambda r: f'{r.ped_s:.2f}')} | {both(lambda r: f'{r.edge_only_s:.2f}')} | "
            f"{both(lambda r: f'{r.cloud_s:.2f}')} |"
        )
    out = [
        f"**When does PED-SAM pay off?** PED-SAM as the node runs it by default ({hb.mode} mode, {hb.grid} tiles, "
        f"one server per tile, Curve on) against edge-only SAM on each edge profile and cloud SAM on the "
        f"`{hb.server_profile}` server profile (latency model `eval.latency`; `eval.breakeven`). *Break-even*: the "
        f"link bandwidth (uplink = downlink, {hb.rtt_ms:g} ms RTT) above which PED-SAM's frame, masks of one point "
        "prompt included, is faster than edge-only SAM. Ranges: both profiles at the fast end - both at the slow end "
        "of their published figures.\n",
        "| model | edge profile | wire (tokens / pixels / Curve) | break-even Mbit/s (PED-SAM beats edge-only above) "
        f"| PED-SAM / cloud SAM @ {hb.reference_link} | PED-SAM s | edge-only SAM s | cloud SAM s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *table_rows,
        "",
        *[f"- `{name}`: {text}" for name, text in hb.sources.items()],
        "",
    ]
    return out


def parse_wire(text: str, curve: bool) -> L.Wire:
    tok, _, pix = text.partition("/")
    return L.Wire(tok or "float16", pix or "raw", curve)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ped_sam_ros.eval.breakeven",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--models", nargs="+", default=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--edge-profile", nargs="+", default=["agx-orin"], help="edge profile name(s)")
    ap.add_argument("--server-profile", default="a100")
    ap.add_argument("--profiles", help="YAML/JSON file of extra profiles (see eval.profiles)")
    ap.add_argument(
        "--wires",
        nargs="+",
        default=["float16/raw", "int8/raw", "e8/jpeg:90", f"{DEFAULT_TOKEN_FORMAT}/{DEFAULT_PIXEL_CODEC}"],
        help="TOKENS/PIXELS; the last default is the node's wire",
    )
    ap.add_argument("--no-curve", action="store_true", help="leave CurveZMQ out (it is on for remote servers)")
    ap.add_argument("--modes", nargs="+", default=["paper", "exact"])
    ap.add_argument("--grid", default="2x2")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--down-ratio", type=float, default=1.0, help="downlink rate / uplink rate")
    ap.add_argument("--calibration", help="calibration cache file (this machine's timings)")
    ap.add_argument("--json")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    extra = load_profiles(args.profiles) if args.profiles else None
    server = get_profile(args.server_profile, extra)
    rows_r, gr = [], tuple(int(x) for x in args.grid.lower().split("x"))
    wires = [parse_wire(w, not args.no_curve) for w in args.wires]
    cal = Calibration(args.calibration)
    for name in args.edge_profile:
        edge = get_profile(name, extra)
        ends = (0,) if edge.measured and server.measured else (0, 1)
        rows_r += rows_for(
            args.models, edge, server, wires, args.modes, gr, args.rtt_ms, args.down_ratio, calibration=cal, ends=ends
        )
    print(f"# break-even, {time.strftime('%Y-%m-%d')}; RTT {args.rtt_ms:g} ms, downlink {args.down_ratio:g} x uplink")
    for p in {r.edge_profile for r in rows_r} | {server.name}:
        prof = get_profile(p, extra)
        print(f"#  {p}: {prof.description}; source: {prof.source}")
    print(table(rows_r))
    if args.json:
        from dataclasses import asdict

        Path(args.json).write_text(json.dumps([asdict(r) for r in rows_r], indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
