"""Check the latency model against the emulated link: measured vs predicted per frame and per term.

Runs :mod:`.link` (real servers behind a tbf-shaped veth and the delay proxy; needs root) with
``calibrate`` on: the edge process times this machine's profile (:mod:`ped_sam_ros.eval.calibrate`,
the ``this-machine`` profile) **in its own process, right before every measured frame and after
the last one** (calibrate, measure, re-calibrate, measure, ...), with the torch threads the edge and
every server run with (``--threads``), every encoder op on the shape it really runs on (each tile's
token map for the servers' patch embedding and window blocks, 64x64 for the edge's global blocks
and neck), the codecs on the model's real tokens of the benchmark image, the median of a few runs
after a warm-up; the servers' side (pixel decoding, compute, token encoding) with as many copies
running at once as servers compute at once, since the emulated servers share this machine's
cores.  Each frame is then predicted by :mod:`ped_sam_ros.eval.latency` twice, with the
calibration right before it and the one right after it; its prediction is their mean, a row's
the mean over its frames, and the difference between the two is the *spread* (how much the
machine's speed moved during one frame).  No Curve (the benchmark runs without it); the link's rates and
delays as set.

    sudo python -m ped_sam_ros.bench.costcheck --links 20:50 100:20 --frames 3 \\
        --token-formats float16 p6 --pixel-codecs raw jpeg444:90 --json /tmp/costcheck.json
    python -m ped_sam_ros.bench.costcheck --link-json /tmp/link.json   # predict an earlier run

An earlier ``bench.link --json`` without calibrations (no ``--calibrate``) is predicted with a
profile timed now, in this process (the old way; it cannot follow the load the run saw).

The link notation is the benchmark's: ``RATE:ONE_WAY_DELAY_MS``.  Prints one table: the measured
mean per row (and the range over its frames), the prediction (before / after), the error, and
each term measured / predicted: upload, server, download, edge, and the servers' compute per
tile as they report it.  On a machine shared with other jobs the absolute times move with the
load; the error of each row is a ratio within the same minute, which is what is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

TARGET_REL_ERROR = 0.15
TERMS = ("upload_s", "server_s", "download_s", "edge_s")


def _named_tokens(name: str, channels: int):
    """A sampler that only names the real tokens the edge process timed (their figures are in the
    shipped calibration, looked up by shape and name); other widths: N(0, 1), as there."""

    def sampler(c: int, shape: Tuple[int, int]):
        if c != channels:
            from ..eval.latency import gaussian_tokens

            return gaussian_tokens(c, shape)
        return np.zeros((shape[0], shape[1], c), np.float32), name

    return sampler


def _shipped(entry: Dict):
    """(edge, servers) :class:`~ped_sam_ros.eval.calibrate.Calibration` s holding one calibration the
    edge process took (the servers' side timed with as many copies at once as servers computed)."""
    from ..eval.calibrate import Calibration

    stat = entry.get("statistic", "median")
    edge = Calibration(persist=False, data=entry["data"], statistic=stat)
    server = Calibration(
        persist=False,
        data=entry.get("server_data", entry["data"]),
        statistic=stat,
        concurrency=entry.get("server_concurrency", 1),
    )
    for cal in (edge, server):
        cal.machine = entry["machine"]  # its keys name the machine it was taken on
    return edge, server


def _plan(costs, server_costs, link_out: Dict, token_format: str, pixel_codec: str, content_hw: Tuple[int, int]):
    from ..core.geometry import Partition
    from ..core.model import get_geometry
    from ..eval import latency as L

    geom = get_geometry(link_out["model"])
    partition = Partition.grid(link_out["grid"], link_out["grid"])
    assignment = [i % link_out["servers"] for i in range(len(partition))]
    wire = L.Wire(token_format, pixel_codec, curve=False)
    plan = L.ped_plan(costs, server_costs, geom, "paper", partition, assignment, wire, content_hw, decoder=False)
    tile_compute = [server_costs.ops_s(geom, L.tile_ops(geom, t, "paper")) for t in partition.tiles]
    return plan, tile_compute


def _prediction_dict(p, tile_compute: Sequence[float]) -> Dict:
    return {
        "total_s": p.total_s,
        "upload_s": p.upload_s,
        "server_s": p.server_s,
        "download_s": p.download_s,
        "edge_s": p.edge_s,
        "tile_compute_s": float(np.mean(tile_compute)),
        "up_bytes": p.up_bytes,
        "down_bytes": p.down_bytes,
    }


def _frames_of(link_out: Dict, key: Tuple[str, str, str]) -> List[Dict]:
    return [r for r in link_out["results"] if (r["link_label"], r["token_format"], r["pixel_codec"]) == key]


def predict_rows(link_out: Dict, calibration=None, threads: int = 1) -> List[Dict]:
    """Predicted vs measured for every summary row of a :func:`.link.run_link_benchmark` output.

    With the calibrations the edge process shipped, each frame is predicted twice, with the
    calibration taken right before it and the one right after it; the frame's prediction is their
    mean, the row's the mean over its frames (as the measured figures are).  Without them (an
    older run), every frame is predicted with ``calibration``, timed now in this process."""
    import torch

    from ..eval import latency as L
    from ..eval.profiles import LinkProfile, get_profile
    from .codecs import load_bench_images, resize_for_sam
    from .link import image_tokens_sampler, summarize

    torch.set_num_threads(max(1, threads))
    image_name = link_out.get("image", "astronaut")
    resized = resize_for_sam(load_bench_images([image_name])[0][1])
    content_hw = resized.shape[:2]
    seed = int(link_out.get("seed", 0))
    shipped = {(c["link_label"], c["token_format"], c["pixel_codec"]): c for c in link_out.get("calibrations", [])}
    if shipped:
        from ..core.model import get_geometry

        channels = get_geometry(link_out["model"]).embed_dim
        tokens = _named_tokens(f"{link_out['model']} {image_name} seed {seed}", channels)
    else:
        tokens = image_tokens_sampler(link_out["model"], seed, image_name)
    profile = get_profile("this-machine")
    rows = []
    summary = link_out.get("summary") or summarize(link_out["results"])
    for s in summary:
        spec = s["link_spec"]
        link = LinkProfile(s["link"], spec["up_mbit"], spec["down_mbit"], spec["delay_ms"], spec["delay_ms"])
        key = (s["link"], s["token_format"], s["pixel_codec"])
        frames = _frames_of(link_out, key)
        entry = shipped.get(key)
        series = [_shipped(c) for c in entry["series"]] if entry else [(calibration, calibration)]
        predicted = {}  # calibration index -> (prediction dict, plan)
        for i, (cal, server_cal) in enumerate(series):
            costs = L.Costs(profile, cal, tokens=tokens, image=(resized, image_name))
            server_costs = L.Costs(profile, server_cal, tokens=tokens, image=(resized, image_name))
            plan, tile_compute = _plan(costs, server_costs, link_out, s["token_format"], s["pixel_codec"], content_hw)
            predicted[i] = (_prediction_dict(L.play(plan, link), tile_compute), plan)
        timed_here = entry is not None and any(c._fresh for pair in series for c in pair)
        pairs = [tuple(f["calibration"]) if entry else (0, 0) for f in frames]
        per_frame = [{k: (predicted[a][0][k] + predicted[b][0][k]) / 2 for k in predicted[a][0]} for a, b in pairs]
        pred = {k: float(np.mean([p[k] for p in per_frame])) for k in per_frame[0]}
        before = float(np.mean([predicted[a][0]["total_s"] for a, _ in pairs]))
        after = float(np.mean([predicted[b][0]["total_s"] for _, b in pairs]))
        totals = [r["total_s"] for r in frames]
        plan0 = predicted[0][1]
        replay = [_replay(plan0, f, link) for f in frames]
        measured = {k: s[k] for k in ("total_s",) + TERMS}
        measured["tile_compute_s"] = float(np.mean([t["compute_s"] for f in frames for t in f["tiles"]]))
        loads = [v for c in (entry["series"] if entry else []) for v in c["load_average"]]
        rows.append(
            {
                "link": s["link"],
                "token_format": s["token_format"],
                "pixel_codec": s["pixel_codec"],
                "frames": len(frames),
                "measured": measured,
                "measured_total_range": [min(totals), max(totals)] if totals else None,
                "measured_bytes": [s["bytes_up"], s["bytes_down"]],
                "predicted": pred,
                "predicted_before_after": [before, after],
                "frame_rel_errors": [(p["total_s"] - f["total_s"]) / f["total_s"] for p, f in zip(per_frame, frames)],
                "spread": float(
                    np.mean([abs(predicted[b][0]["total_s"] - predicted[a][0]["total_s"]) for a, b in pairs])
                )
                / pred["total_s"],
                "profile": "timed in the edge process between the frames" if entry else "timed now, after the run",
                "timed_at_analysis": timed_here,
                "load_average": [min(loads), max(loads)] if loads else None,
                "threads": entry["series"][0]["threads"] if entry else threads,
                "terms": plan0.terms,
                "rel_error": (pred["total_s"] - s["total_s"]) / s["total_s"],
                "term_rel_error": {
                    k: (pred[k] - measured[k]) / measured[k] if measured.get(k) else None
                    for k in TERMS + ("tile_compute_s",)
                },
                "replayed_total_s": float(np.mean([q.total_s for q in replay])) if replay else None,
                "replay_rel_error": float(
                    np.mean([(q.total_s - f["total_s"]) / f["total_s"] for q, f in zip(replay, frames)])
                )
                if replay
                else None,
            }
        )
    return rows


def _replay(plan, frame: Dict, link):
    """The model on one measured frame with that frame's own compute (each tile's server
    compute and the edge's stage times as reported), the codecs and the link as predicted:
    checks the transfer and overlap part of the model apart from this machine's load swings."""
    from dataclasses import replace

    from ..eval import latency as L

    reqs = []
    for r, t in zip(plan.requests, frame["tiles"]):
        modelled = plan.terms.get("server_compute_s", 0.0) / max(len(plan.requests), 1)
        reqs.append(replace(r, server_s=r.server_s - modelled + t["compute_s"]))
    edge = sum(v for k, v in frame["timings"].items() if k != "remote")
    return L.play(L.LatencyPlan(tuple(reqs), edge, 0.0), link)


def table(rows: Sequence[Dict]) -> str:
    def ms(v):
        return "-" if v is None else f"{1e3 * v:.0f}"

    def term(r, k):
        m, p = r["measured"].get(k), r["predicted"].get(k)
        return f"{ms(m)} / {ms(p)}"

    out = [
        "| link | tokens | pixels | measured ms (frames: min-max) | predicted ms (before / after) | error "
        "| upload ms meas / pred | server | download | edge | server compute per tile | replayed (error) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m, p = r["measured"], r["predicted"]
        rng = r["measured_total_range"]
        ba = r["predicted_before_after"]
        ba_txt = " / ".join(ms(v) for v in ba)
        out.append(
            f"| {r['link']} | {r['token_format']} | {r['pixel_codec']} | {ms(m['total_s'])} "
            f"({ms(rng[0])}-{ms(rng[1])}) | {ms(p['total_s'])} ({ba_txt}) | {100 * r['rel_error']:+.1f} % | "
            + " | ".join(term(r, k) for k in TERMS + ("tile_compute_s",))
            + f" | {ms(r['replayed_total_s'])} ({100 * (r['replay_rel_error'] or 0):+.1f} %) |"
        )
    return "\n".join(out)


def verdict(rows: Sequence[Dict]) -> str:
    """One paragraph: worst error against the target, the calibration spread, the load."""
    worst = max(abs(r["rel_error"]) for r in rows)
    worst_replay = max(abs(r["replay_rel_error"] or 0) for r in rows)
    spread = max(abs(r["spread"]) for r in rows)
    loads = [v for r in rows for v in (r["load_average"] or [])]
    within = sum(abs(r["rel_error"]) <= TARGET_REL_ERROR for r in rows)
    text = (
        f"{within} of {len(rows)} rows within {100 * TARGET_REL_ERROR:.0f} %; worst |error| {100 * worst:.1f} % "
        f"from the profile, {100 * worst_replay:.1f} % replayed with each frame's own compute; largest "
        f"calibration spread (after vs before a row) {100 * spread:.1f} %"
    )
    if loads:
        text += f"; 1-minute load average {min(loads):.1f}-{max(loads):.1f} during the calibrations"
    if any(r["timed_at_analysis"] for r in rows):
        text += "; WARNING: some figures were missing from the shipped calibration and were timed at analysis"
    return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ped_sam_ros.bench.costcheck",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from ..core.wire import DEFAULT_PIXEL_CODEC, DEFAULT_TOKEN_FORMAT

    ap.add_argument("--link-json", help="predict this earlier `bench.link --json` output instead of running it")
    ap.add_argument("--links", nargs="+", default=["20:50", "100:20"], help="as bench.link: RATE:ONE_WAY_DELAY_MS")
    ap.add_argument("--model", default="vit_b/w32h2")
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--grid", type=int, default=2)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument(
        "--token-formats", nargs="+", default=["float16", DEFAULT_TOKEN_FORMAT], help="default: float16 and the node's"
    )
    ap.add_argument(
        "--pixel-codecs", nargs="+", default=["raw", DEFAULT_PIXEL_CODEC], help="default: raw and the node's"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the edge, each server and the calibration")
    ap.add_argument("--calibration-repeats", type=int, default=5, help="runs per op in each calibration (median)")
    ap.add_argument("--calibration", help="calibration cache for --link-json without shipped calibrations")
    ap.add_argument("--json", help="write the rows here")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import tempfile

    import torch

    from ..eval.calibrate import Calibration
    from . import link as linkbench
    from .codecs import machine

    torch.set_num_threads(max(1, args.threads))
    cal_path = args.calibration or os.path.join(tempfile.mkdtemp(prefix="ped_sam_costcheck_"), "calibration.json")
    load0 = os.getloadavg()
    if args.link_json:
        link_out = json.loads(Path(args.link_json).read_text())
    else:
        reason = linkbench.unavailable_reason()
        if reason:
            print(f"ped_sam_ros.bench.costcheck: skipped: {reason}")
            return 0
        run = linkbench.LinkRun(
            [linkbench.LinkSpec.parse(s) for s in args.links],
            args.model,
            args.servers,
            args.grid,
            args.frames,
            [(t, p) for t in args.token_formats for p in args.pixel_codecs],
            threads=args.threads,
            calibrate=True,
            calibration_repeats=args.calibration_repeats,
        )
        link_out = linkbench.run_link_benchmark(run)
        link_out["summary"] = linkbench.summarize(link_out["results"])
    # only used for an earlier run without shipped calibrations (timed now, median, this process)
    cal = Calibration(cal_path, refresh=True, statistic="median")
    rows = predict_rows(link_out, cal, args.threads)
    print(
        f"# latency model vs emulated link, {time.strftime('%Y-%m-%d')}, {machine()}, model {link_out['model']} "
        f"(RANDOM weights), {link_out['servers']} servers, {link_out['grid']}x{link_out['grid']} tiles, "
        f"{rows[0]['threads']} torch thread(s) per process; profile: {rows[0]['profile']}; load average "
        f"{load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    print(table(rows))
    print("\n" + verdict(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "link": link_out}, indent=1, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
