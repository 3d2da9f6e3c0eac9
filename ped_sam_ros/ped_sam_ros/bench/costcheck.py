"""Check the latency model against the emulated link: measured vs predicted per frame.

Runs :mod:`.link` (real servers behind a tbf-shaped veth and the delay proxy; needs root),
or reads its ``--json`` output, then predicts every (link, token format, pixel codec) row
with :mod:`ped_sam_ros.eval.latency` fed **this machine's measured profile**: the same tiny
model's ops timed here on their real shapes (after the link run, so the benchmark's own
processes do not slow them down), the codecs measured here on tokens of the same model and
image, no Curve (the benchmark runs without it), the link's rates and delays as set.

    sudo python -m ped_sam_ros.bench.costcheck --links 20:50 100:20 --frames 3 \\
        --token-formats float16 e8 --pixel-codecs raw jpeg:90 --json /tmp/costcheck.json
    python -m ped_sam_ros.bench.costcheck --link-json /tmp/link.json   # predict an earlier run

The link notation is the benchmark's: ``RATE:ONE_WAY_DELAY_MS``.  Prints one table: the
measured mean per row (and the range over its frames), the prediction, the error, and the
split (upload / server / download / edge) of both.
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


def _tiny_tokens(model: str, seed: int, image: str):
    """A sampler of the tiny model's real tokens (paper mode, the benchmark's image), so the
    entropy-coded formats are sized on the data the servers really send."""
    import torch

    from ..core.geometry import TOKEN_GRID, Tile
    from ..core.model import RemoteStage, get_geometry
    from .codecs import load_bench_images, resize_for_sam

    geom = get_geometry(model)
    stage = RemoteStage(geom).load_random(seed)
    full = Tile(0, 0, 0, 0, TOKEN_GRID, 0, TOKEN_GRID)
    with torch.no_grad():
        tokens = stage.encode_tile(resize_for_sam(load_bench_images([image])[0][1]), full, "paper").numpy()
    name = f"{model} {image} seed {seed}"

    def sampler(channels: int, shape: Tuple[int, int]):
        if channels != tokens.shape[2]:
            from ..eval.latency import gaussian_tokens

            return gaussian_tokens(channels, shape)
        return np.ascontiguousarray(tokens[: shape[0], : shape[1]]), name

    return sampler


def predict_rows(link_out: Dict, calibration, threads: int = 1) -> List[Dict]:
    """Predicted vs measured for every summary row of a :func:`.link.run_link_benchmark` output."""
    import torch

    from ..core.geometry import Partition
    from ..core.model import get_geometry
    from ..eval import latency as L
    from ..eval.profiles import LinkProfile, get_profile
    from .codecs import load_bench_images, resize_for_sam
    from .link import summarize

    torch.set_num_threads(max(1, threads))
    geom = get_geometry(link_out["model"])
    image_name = link_out.get("image", "astronaut")
    resized = resize_for_sam(load_bench_images([image_name])[0][1])
    content_hw = resized.shape[:2]
    partition = Partition.grid(link_out["grid"], link_out["grid"])
    assignment = [i % link_out["servers"] for i in range(len(partition))]
    costs = L.Costs(
        get_profile("this-machine"),
        calibration,
        tokens=_tiny_tokens(link_out["model"], int(link_out.get("seed", 0)), image_name),
        image=(resized, image_name),
    )
    rows = []
    summary = link_out.get("summary") or summarize(link_out["results"])
    for s in summary:
        spec = s["link_spec"]
        link = LinkProfile(s["link"], spec["up_mbit"], spec["down_mbit"], spec["delay_ms"], spec["delay_ms"])
        wire = L.Wire(s["token_format"], s["pixel_codec"], curve=False)
        plan = L.ped_plan(costs, costs, geom, "paper", partition, assignment, wire, content_hw, decoder=False)
        p = L.play(plan, link)
        frames = [
            r
            for r in link_out["results"]
            if (r["link_label"], r["token_format"], r["pixel_codec"])
            == (s["link"], s["token_format"], s["pixel_codec"])
        ]
        totals = [r["total_s"] for r in frames]
        replay = [_replay(plan, f, link) for f in frames]
        rows.append(
            {
                "link": s["link"],
                "token_format": s["token_format"],
                "pixel_codec": s["pixel_codec"],
                "frames": len(frames),
                "measured": {k: s[k] for k in ("total_s", "upload_s", "server_s", "download_s", "edge_s")},
                "measured_total_range": [min(totals), max(totals)] if totals else None,
                "measured_bytes": [s["bytes_up"], s["bytes_down"]],
                "predicted": {
                    "total_s": p.total_s,
                    "upload_s": p.upload_s,
                    "server_s": p.server_s,
                    "download_s": p.download_s,
                    "edge_s": p.edge_s,
                },
                "predicted_bytes": [p.up_bytes, p.down_bytes],
                "terms": p.terms,
                "rel_error": (p.total_s - s["total_s"]) / s["total_s"],
                "remote_rel_error": _remote_error(s, p),
                "replayed_total_s": float(np.mean([q.total_s for q in replay])) if replay else None,
                "replay_rel_error": float(
                    np.mean([(q.total_s - f["total_s"]) / f["total_s"] for q, f in zip(replay, frames)])
                )
                if replay
                else None,
                "replay_remote_rel_error": float(
                    np.mean(
                        [
                            (q.total_s - q.edge_s - (f["t_remote1"] - f["t_remote0"]))
                            / (f["t_remote1"] - f["t_remote0"])
                            for q, f in zip(replay, frames)
                        ]
                    )
                )
                if replay
                else None,
            }
        )
    return rows


def _replay(plan, frame: Dict, link) -> float:
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


def _remote_error(s: Dict, p) -> Optional[float]:
    """Relative error of the remote phase alone (upload + server + download)."""
    parts = [s.get(k) for k in ("upload_s", "server_s", "download_s")]
    if any(v is None for v in parts):
        return None
    m = sum(parts)
    return (p.upload_s + p.server_s + p.download_s - m) / m


def table(rows: Sequence[Dict]) -> str:
    def ms(v):
        return "-" if v is None else f"{1e3 * v:.0f}"

    out = [
        "| link | tokens | pixels | measured ms (frames: min-max) | predicted ms | error | remote phase error "
        "| replayed ms (error; remote phase) | measured up / server / down / edge "
        "| predicted up / server / down / edge |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        m, p = r["measured"], r["predicted"]
        rng = r["measured_total_range"]
        rem = "-" if r["remote_rel_error"] is None else f"{100 * r['remote_rel_error']:+.0f} %"
        out.append(
            f"| {r['link']} | {r['token_format']} | {r['pixel_codec']} | {ms(m['total_s'])} "
            f"({ms(rng[0])}-{ms(rng[1])}) | {ms(p['total_s'])} | {100 * r['rel_error']:+.1f} % | {rem} | "
            f"{ms(r['replayed_total_s'])} ({100 * (r['replay_rel_error'] or 0):+.1f} %; "
            f"{100 * (r['replay_remote_rel_error'] or 0):+.0f} %) | "
            f"{ms(m['upload_s'])} / {ms(m['server_s'])} / {ms(m['download_s'])} / {ms(m['edge_s'])} | "
            f"{ms(p['upload_s'])} / {ms(p['server_s'])} / {ms(p['download_s'])} / {ms(p['edge_s'])} |"
        )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ped_sam_ros.bench.costcheck",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--link-json", help="predict this earlier `bench.link --json` output instead of running it")
    ap.add_argument("--links", nargs="+", default=["20:50", "100:20"], help="as bench.link: RATE:ONE_WAY_DELAY_MS")
    ap.add_argument("--model", default="vit_b/w32h2")
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--grid", type=int, default=2)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--token-formats", nargs="+", default=["float16", "e8"])
    ap.add_argument("--pixel-codecs", nargs="+", default=["raw", "jpeg:90"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the edge, the servers and the timing")
    ap.add_argument("--calibration", help="calibration cache (default: a fresh one in a temporary file)")
    ap.add_argument("--reuse-calibration", action="store_true", help="use cached timings instead of re-timing now")
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
    cal = Calibration(cal_path, refresh=not args.reuse_calibration)
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
        )
        link_out = linkbench.run_link_benchmark(run)
        link_out["summary"] = linkbench.summarize(link_out["results"])
    print(
        f"# latency model vs emulated link, {time.strftime('%Y-%m-%d')}, {machine()}, model {link_out['model']} "
        f"(RANDOM weights), {link_out['servers']} servers, {link_out['grid']}x{link_out['grid']} tiles; "
        f"profile: this machine, timed now ({cal.path})"
    )
    rows = predict_rows(link_out, cal, args.threads)
    print(table(rows))
    worst = max(abs(r["rel_error"]) for r in rows)
    worst_replay = max(abs(r["replay_rel_error"] or 0) for r in rows)
    print(
        f"\nworst |error| {100 * worst:.1f} % from the profile, {100 * worst_replay:.1f} % replayed with each "
        f"frame's own compute (target {100 * TARGET_REL_ERROR:.0f} %)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "link": link_out}, indent=1, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
