"""The report folder: report.md (tables), PNG plots, results.json and CSV files.

Folder convention: ``out/eval/<YYYYmmdd-HHMMSS>_<model>/`` under the current
directory unless ``--out`` is given (``out/`` is git-ignored)::

  report.md          the report (Markdown, tables, links to the plots)
  results.json       every raw figure (meta, configs, fidelity, measured, privacy, cost, summary):
                     the :class:`~.records.EvalResults` record as JSON
  results.csv        the headline row per configuration (same as results.json "summary")
  fidelity.csv       per configuration x image
  privacy.csv        per server layout x image
  cost.csv           per geometry x configuration x wire precision x link
  measured.csv       measured stage times and wire bytes of this run, per configuration x image
  sensitive.csv      sensitive content per privacy policy x partition (``--sensitive``)
  *.png              plots
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from . import plots
from . import privacy as priv
from .configs import EvalConfig
from .cost_tables import TABLE_DTYPES
from .knob import knob_points
from .markdown import render_markdown
from .records import CostRow, EvalResults, FidelityRow, PrivacyRow, jsonable


def default_out_dir(model: str, root: str = "out/eval") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}_{model.replace('/', '-')}"


# ---------------------------------------------------------------------------
# JSON / CSV


def _write_csv(path: Path, rows: List[Dict]) -> Path:
    """One CSV row per dict (columns: every key, in first-seen order; lists and dicts as JSON)."""
    keys: List[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in jsonable(r).items()})
    return path


def _flat_privacy(rows: List[PrivacyRow]) -> List[Dict]:
    out = []
    for p in rows:
        d = {
            "layout": p.layout,
            "image": p.image,
            "servers": p.servers,
            "max_share": p.max_share,
            "shares": p.shares,
            "collusion": p.collusion,
            "attack_server": p.attack_server,
        }
        for a, sc in p.attacks.items():
            for k, v in jsonable(sc).items():
                d[f"{a}_{k}"] = v
        for kind, det in p.detection.items():
            d[f"{kind}_n_full_frame"] = det.n
            d[f"{kind}_n_seen_whole"] = det.n_seen_whole
            d[f"{kind}_n_detected"] = det.n_detected
        out.append(d)
    return out


def _flat_fidelity(rows: List[FidelityRow]) -> List[Dict]:
    out = []
    for f in rows:
        full = f.to_dict()
        d = {k: v for k, v in full.items() if k not in ("amg", "point_ious", "box_ious")}
        for k, v in (full["amg"] or {}).items():
            d[f"amg_{k}"] = v
        out.append(d)
    return out


def _flat_cost(rows: List[CostRow]) -> List[Dict]:
    out = []
    for r in rows:
        base = dict(
            geometry=r.geometry,
            spec=r.spec,
            config=r.config,
            config_spec=r.config_spec,
            servers=r.servers,
            edge_macs=r.edge_macs,
            edge_share=r.edge_share,
            server_macs_max=r.server_macs_max,
            server_macs_total=r.server_macs_total,
            edge_s=r.edge_s,
            server_s_max=r.server_s_max,
        )
        for dt in TABLE_DTYPES:
            b = r.bytes[dt]
            if not r.latency:
                out.append(dict(base, dtype=dt, bytes_up=b.up, bytes_down=b.down, link=None))
                continue
            for link, lat in r.latency[dt].items():
                out.append(
                    dict(
                        base,
                        dtype=dt,
                        bytes_up=b.up,
                        bytes_down=b.down,
                        link=link,
                        latency_s=lat.total_s,
                        network_s=lat.network_s,
                    )
                )
    return out


def _write_data(res: EvalResults, out: Path) -> Dict[str, Path]:
    """results.json and the CSV files."""
    (out / "results.json").write_text(json.dumps(jsonable(res), indent=1))
    return {
        "results.json": out / "results.json",
        "results.csv": _write_csv(out / "results.csv", [r.to_dict() for r in res.summary]),
        "fidelity.csv": _write_csv(out / "fidelity.csv", _flat_fidelity(res.fidelity)),
        "privacy.csv": _write_csv(out / "privacy.csv", _flat_privacy(res.privacy)),
        "cost.csv": _write_csv(out / "cost.csv", _flat_cost(res.cost.rows)),
        "measured.csv": _write_csv(out / "measured.csv", [jsonable(m) for m in res.measured]),
        **_sensitive_csv(res, out),
    }


def _sensitive_csv(res: EvalResults, out: Path) -> Dict[str, Path]:
    """sensitive.csv (one row per privacy policy x partition, then per policy), when ``--sensitive`` ran."""
    if res.sensitive is None:
        return {}
    from .sensitive_records import csv_rows

    return {"sensitive.csv": _write_csv(out / "sensitive.csv", csv_rows(res.sensitive))}


# ---------------------------------------------------------------------------


def write_report(res: EvalResults, images: Sequence[Tuple[str, np.ndarray]], out_dir: Path) -> Dict[str, Path]:
    """Write every file of the report folder; returns name -> path. ``images``: the evaluated
    (name, RGB) pairs, the first of which is drawn in the per-server plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _write_data(res, out)
    files.update(_summary_plots(res, out))
    if images:
        files.update(_server_plots(res, images[0], out))
    (out / "report.md").write_text(render_markdown(res, files))
    files["report.md"] = out / "report.md"
    return files


def _summary_plots(res: EvalResults, out: Path) -> Dict[str, Path]:
    """Fidelity bars, collusion curves, latency against bandwidth and MACs."""
    meta = res.meta
    wl = "RANDOM WEIGHTS" if meta.random_weights else meta.weights.label
    files = {"fidelity.png": plots.fidelity_bars(res.summary, out / "fidelity.png", wl)}
    if any(c.kind == "ped" for c in res.configs):
        files["collusion.png"] = plots.collusion(res, out / "collusion.png")
    geoms = [g for g in res.cost.geometries if any(r.latency for r in res.cost.rows_of(g))]
    full = [g for g in geoms if "(this run)" not in g] or geoms
    if full:
        files["latency_vs_bandwidth.png"] = plots.latency_vs_bandwidth(
            res.cost,
            full,
            out / "latency_vs_bandwidth.png",
            configs=_plot_configs(res.configs),
            title_note=f"; {meta.server_assumption.split(';')[0]}",
        )
    headline = res.summary[0].cost.cost_geometry if res.summary else None
    if headline in res.cost.geometries:
        files["macs.png"] = plots.macs_bars(res.cost, headline, out / "macs.png")
    layouts = knob_points(res)  # the exact..paper knob, where a layout ran in two or more modes
    if layouts:
        files["knob_pareto.png"] = plots.knob_pareto(layouts, out / "knob_pareto.png", wl, str(headline))
    return files


def _server_plots(res: EvalResults, image: Tuple[str, np.ndarray], out: Path) -> Dict[str, Path]:
    """Per-server views and reconstructions of one image, for up to two partitions (2x2 and 5x5 if run)."""
    name, rgb = image
    peds = [c for c in res.configs if c.kind == "ped"]
    chosen = [
        c
        for c in (next((c for c in peds if c.partition.name == want), None) for want in ("2x2", "5x5"))
        if c is not None
    ] or peds[:1]
    files = {}
    for c in chosen:
        tag = f"{name}_{c.partition.name}" + ("" if c.servers == len(c.partition) else f"_{c.servers}srv")
        files[f"views_{tag}.png"] = plots.server_views(
            rgb,
            c.partition,
            c.assignment,
            out / f"views_{tag}.png",
            f"{name}: what each server of the {c.partition.name} grid receives (original pixels; grey = not sent)",
        )
        prow = next(p for p in res.privacy_of(c) if p.image == name)
        seen = priv.seen_mask(priv.server_tiles(c.partition, c.assignment)[prow.attack_server], rgb.shape[:2])
        files[f"reconstruction_{tag}.png"] = plots.reconstruction(
            rgb,
            seen,
            prow.attacks,
            out / f"reconstruction_{tag}.png",
            f"{name}, {c.partition.name}: reconstruction from the most-exposed server (server {prow.attack_server})",
        )
    return files


def _plot_configs(configs: List[EvalConfig]) -> List[str]:
    """The baselines and the aligned 2x2 / 5x5 PED configurations (fallback: all)."""
    want = {"cloud", "edge", "paper:2x2", "exact:2x2", "paper:5x5", "exact:5x5"}
    pick = [c.spec for c in configs if c.spec in want]
    return pick if len(pick) > 2 else [c.spec for c in configs]
