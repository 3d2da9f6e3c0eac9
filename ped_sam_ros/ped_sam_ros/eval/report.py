"""The report folder: report.md (tables), PNG plots, results.json and CSV files.

Folder convention: ``out/eval/<YYYYmmdd-HHMMSS>_<model>/`` under the current
directory unless ``--out`` is given (``out/`` is git-ignored)::

  report.md          the report (Markdown, tables, links to the plots)
  results.json       every raw figure (meta, configs, fidelity, measured, privacy, cost, summary)
  results.csv        the headline row per configuration (same as results.json "summary")
  fidelity.csv       per configuration x image
  privacy.csv        per server layout x image
  cost.csv           per geometry x configuration x wire precision x link
  measured.csv       measured stage times and wire bytes of this run, per configuration x image
  *.png              plots
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ..core.wire import TOKEN_DTYPES
from . import cost as costlib
from . import plots
from . import privacy as priv

MiB = 1024 * 1024
LINK_SHORT = {costlib.LINKS[0].name: "1 Gbit/s", costlib.LINKS[1].name: "100 Mbit/s",
              costlib.LINKS[2].name: "20 Mbit/s"}


def default_out_dir(model: str, root: str = "out/eval") -> Path:
    import time

    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}_{model.replace('/', '-')}"


# ---------------------------------------------------------------------------
# JSON / CSV


def _clean(x):
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _write_csv(path: Path, rows: List[Dict]) -> Path:
    keys: List[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(_clean(v)) if isinstance(v, (list, dict)) else _clean(v))
                        for k, v in r.items()})
    return path


def _flat_privacy(rows: List[Dict]) -> List[Dict]:
    out = []
    for p in rows:
        d = {"layout": p["layout"], "image": p["image"], "servers": p["servers"], "max_share": p["max_share"],
             "shares": p["shares"], "collusion": p["collusion"], "attack_server": p["attack_server"]}
        for a, sc in p.get("attacks", {}).items():
            for k, v in sc.items():
                d[f"{a}_{k}"] = v
        for kind, det in p["detection"].items():
            d[f"{kind}_n_full_frame"] = det["n_full_frame"]
            d[f"{kind}_n_seen_whole"] = det["n_seen_whole"]
            d[f"{kind}_n_detected"] = det["n_detected"]
        out.append(d)
    return out


def _flat_fidelity(rows: List[Dict]) -> List[Dict]:
    out = []
    for f in rows:
        d = {k: v for k, v in f.items() if k not in ("amg", "point_ious", "box_ious")}
        for k, v in (f.get("amg") or {}).items():
            d[f"amg_{k}"] = v
        out.append(d)
    return out


def _flat_cost(rows: List[Dict]) -> List[Dict]:
    out = []
    for r in rows:
        base = {k: r[k] for k in ("geometry", "spec", "config", "config_spec", "servers", "edge_macs", "edge_share",
                                  "server_macs_max", "server_macs_total", "edge_s", "server_s_max")}
        for dt in TOKEN_DTYPES:
            b = r["bytes"][dt]
            if not r["latency"]:
                out.append(dict(base, dtype=dt, bytes_up=b["up"], bytes_down=b["down"], link=None))
                continue
            for link, lat in r["latency"][dt].items():
                out.append(dict(base, dtype=dt, bytes_up=b["up"], bytes_down=b["down"], link=link,
                                latency_s=lat["total_s"], network_s=lat["network_s"]))
    return out


# ---------------------------------------------------------------------------
# Markdown helpers


def f3(x, d: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{d}f}"


def pct(x, d: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{d}f} %"


def secs(x) -> str:
    if x is None:
        return "n/a"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _frac(x, n) -> str:
    return "n/a (none found)" if not n else f"{pct(x, 0)}"


# ---------------------------------------------------------------------------


def write_report(evaluation, out_dir: Path) -> Dict[str, Path]:
    """Write every file of the report folder; returns name -> path."""
    res = evaluation.results
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Path] = {}
    clean = _clean(res)
    (out / "results.json").write_text(json.dumps(clean, indent=1))
    files["results.json"] = out / "results.json"
    files["results.csv"] = _write_csv(out / "results.csv", res["summary"])
    files["fidelity.csv"] = _write_csv(out / "fidelity.csv", _flat_fidelity(res["fidelity"]))
    files["privacy.csv"] = _write_csv(out / "privacy.csv", _flat_privacy(res["privacy"]))
    files["cost.csv"] = _write_csv(out / "cost.csv", _flat_cost(res["cost"]["rows"]))
    files["measured.csv"] = _write_csv(out / "measured.csv", res["measured"])
    files.update(_plots(evaluation, out))
    md = render_markdown(res, files, out)
    (out / "report.md").write_text(md)
    files["report.md"] = out / "report.md"
    return files


def _plots(evaluation, out: Path) -> Dict[str, Path]:
    res, s = evaluation.results, evaluation.s
    meta = res["meta"]
    wl = "RANDOM WEIGHTS" if meta["random_weights"] else meta["weights"]["label"]
    files = {}
    files["fidelity.png"] = plots.fidelity_bars(res["summary"], out / "fidelity.png", wl)
    if any(c["kind"] == "ped" for c in res["configs"]):
        files["collusion.png"] = plots.collusion(res["privacy"], res["configs"], out / "collusion.png")
    geoms = [g for g, gi in res["cost"]["geometries"].items()
             if any(r["latency"] for r in res["cost"]["rows"] if r["geometry"] == g)]
    full = [g for g in geoms if "(this run)" not in g] or geoms
    pick = _plot_configs(res["configs"])
    if full:
        files["latency_vs_bandwidth.png"] = plots.latency_vs_bandwidth(
            res["cost"], full, out / "latency_vs_bandwidth.png", configs=pick,
            title_note=f"; {meta['server_assumption'].split(';')[0]}")
    headline = res["summary"][0]["cost_geometry"] if res["summary"] else None
    if headline in res["cost"]["geometries"]:
        files["macs.png"] = plots.macs_bars(res["cost"], headline, out / "macs.png")
    # per-server views and reconstructions of the first image, for up to two partitions
    name, image = s.images[0]
    peds = [c for c in s.configs if c.kind == "ped"]
    chosen = []
    for want in ("2x2", "5x5"):
        c = next((c for c in peds if c.partition.name == want), None)
        if c is not None:
            chosen.append(c)
    if not chosen and peds:
        chosen = peds[:1]
    for c in chosen:
        tag = f"{name}_{c.partition.name}" + ("" if c.servers == len(c.partition) else f"_{c.servers}srv")
        files[f"views_{tag}.png"] = plots.server_views(
            image, c.partition, c.assignment, out / f"views_{tag}.png",
            f"{name}: what each server of the {c.partition.name} grid receives (original pixels; grey = not sent)")
        prow = next(p for p in res["privacy"] if p["layout"] == evaluation._pkey(c) and p["image"] == name)
        w = priv.server_tiles(c.partition, c.assignment)[prow["attack_server"]]
        seen = priv.seen_mask(w, image.shape[:2])
        files[f"reconstruction_{tag}.png"] = plots.reconstruction(
            image, seen, prow["attacks"], out / f"reconstruction_{tag}.png",
            f"{name}, {c.partition.name}: reconstruction from the most-exposed server (server {prow['attack_server']})")
    return files


def _plot_configs(configs: List[Dict]) -> List[str]:
    """The baselines and the aligned 2x2 / 5x5 PED configurations (fallback: all)."""
    want = {"cloud", "edge", "paper:2x2", "exact:2x2", "paper:5x5", "exact:5x5"}
    pick = [c["spec"] for c in configs if c["spec"] in want]
    return pick if len(pick) > 2 else [c["spec"] for c in configs]


# ---------------------------------------------------------------------------


def render_markdown(res: Dict, files: Dict[str, Path], out: Path) -> str:
    meta, summary, cost = res["meta"], res["summary"], res["cost"]
    random_w = meta["random_weights"]
    L: List[str] = []
    add = L.append
    add("# PED-SAM evaluation report\n")
    if random_w:
        add("> **RANDOM WEIGHTS.** No trained SAM checkpoint was used: the model is "
            f"`{meta['model']}` with random weights. Every mask figure below measures only *agreement with plain "
            "SAM on the same random weights* (how much the split changes SAM's output), **not** segmentation "
            "quality. Rerun with `--model vit_b --checkpoint sam_vit_b_01ec64.pth` for trained weights.\n")
    add("## What was run\n")
    imgs = ", ".join(f"{i['name']} ({i['width']}x{i['height']})" for i in meta["images"])
    cfgs = ", ".join(f"`{c['spec']}`" for c in res["configs"])
    add(table(["setting", "value"], [
        ["model", f"`{meta['model']}` (embed dim {meta['geometry']['embed_dim']}, depth {meta['geometry']['depth']}, "
                  f"heads {meta['geometry']['num_heads']}, global blocks {meta['geometry']['global_blocks']})"],
        ["weights", meta["weights"]["label"] + (f", sha256 {meta['weights']['sha256'][:16]}..." if meta['weights'].get('sha256') else "")],
        ["images", f"{len(meta['images'])}: {imgs} ({meta['image_source']})"],
        ["configurations", cfgs],
        ["servers per PED-SAM configuration", "one per window unless `@N` is given"],
        ["wire precision (fidelity runs)", meta["wire_dtype"]],
        ["point prompts", meta["point_prompts"]],
        ["box prompts", meta["box_prompts"]],
        ["automatic masks", f"{meta['amg']['points_per_side']}x{meta['amg']['points_per_side']} points on the first "
                            f"{meta['amg']['images']} image(s); filters {meta['amg']['options']}; {meta['amg']['match']}"],
        ["server speed", meta["server_assumption"]],
        ["machine", f"{meta['machine']}; load average (1/5/15 min) {meta['load_average']['start']} at the "
                    f"start, {meta['load_average']['end']} at the end (other processes share these cores)"],
        ["command", f"`{meta.get('command') or 'n/a'}`"],
        ["wall time", f"{meta['wall_s']:.0f} s ({meta['date']})"],
    ]))
    add("")
    # ---------------------------------------------------------------- headline
    g = summary[0]["cost_geometry"] if summary else "?"
    add("## Headline\n")
    gi = cost["geometries"].get(g, {})
    add(f"Fidelity and privacy are measured on this run's model and images; MAC share and latency are for the "
        f"**{g}** geometry (counted MACs; compute time: {gi.get('timing_source', 'n/a')}; fp16 tokens, "
        f"100 Mbit/s with 20 ms RTT; {meta['server_assumption'].split(';')[0]}).\n")
    add(table(["configuration", "servers", "embedding cosine", "point-prompt mask IoU", "max single-server share",
               "reconstruction SSIM (inpaint, frame)", f"edge MAC share ({g})", f"latency @100 Mbit/s ({g})"],
              [[r["config"], r["servers"], f3(r["embedding_cosine"], 4), f3(r["point_iou"]),
                pct(r["max_server_share"]), f3(r["recon_ssim_inpaint"]) if r["servers"] else "n/a (no server)",
                pct(r["edge_mac_share"]), secs(r["latency_100mbit_s"])] for r in summary]))
    add("")
    add("- *embedding cosine* / *mask IoU*: agreement of the configuration's image embedding and masks with "
        "plain SAM on identical weights and images (1 = identical). Cloud SAM differs from plain SAM only by the "
        f"{meta['wire_dtype']} rounding of the embedding it sends back; edge-only SAM *is* the reference.")
    add("- *max single-server share*: the largest fraction of an image's pixels that one server receives "
        "(maximum over images). *Reconstruction SSIM*: how similar the best classical fill-in of everything that "
        "server did not see is to the original frame (mean over images; 1 = perfect).")
    add("")
    # ---------------------------------------------------------------- fidelity
    add("## 1. Fidelity: agreement with plain SAM on identical weights\n")
    if random_w:
        add("**RANDOM WEIGHTS**: the masks of a random-weight SAM are not segmentations of anything; these numbers "
            "say only how far each split moves SAM's output away from unsplit SAM with the same weights.\n")
    add("Embedding: cosine similarity and relative error ||e - e_SAM|| / ||e_SAM|| of the 256x64x64 image "
        "embedding. Point prompts: mask IoU per prompt, averaged (worst prompt in brackets). Box prompts: boxes "
        "of plain SAM's own point-prompt masks. Automatic masks: SAM's automatic mask generator on both "
        "embeddings, masks matched one-to-one (IoU >= 0.5); *found* = masks the configuration produced, "
        "*matched* = of plain SAM's masks, *missed* = plain SAM masks without a match.\n")
    rows = []
    for r in summary:
        amg = "n/a" if r["amg_reference_masks"] is None else (
            f"{r['amg_masks']} / {r['amg_matched']} / {r['amg_missed']} of {r['amg_reference_masks']}, "
            f"IoU {f3(r['amg_matched_iou'])}")
        rows.append([r["config"], f3(r["embedding_cosine"], 5), f3(r["embedding_rel_error"], 4),
                     f"{f3(r['point_iou'])} ({f3(r['point_iou_min'])})", f3(r["box_iou"]), amg])
    add(table(["configuration", "embedding cosine", "embedding rel. error", "point IoU (min)", "box IoU",
               "AMG found / matched / missed, matched IoU"], rows))
    add("")
    if random_w and summary and (summary[0]["amg_reference_masks"] or 0) <= 2 * max(1, meta["amg"]["images"]):
        add("With random weights each prompt's mask is a scattered pattern whose bounding box covers most of the "
            "frame, so the generator's box NMS keeps about one mask per image: the AMG columns are close to "
            "vacuous here and become meaningful with trained weights.\n")
    if "fidelity.png" in files:
        add(f"![fidelity](fidelity.png)\n")
    # ---------------------------------------------------------------- privacy
    add("## 2. Privacy: what one server sees and what it can recover\n")
    add("The server layout is the same in `paper` and `exact` mode, so each partition appears once. Shares are "
        "of the resized frame's image pixels (what is actually sent: uint8 crops, never SAM's padding). "
        "*k colluding*: the largest share any set of k servers holds together (the k largest shares, as windows "
        "are disjoint).\n")
    layouts = []
    for c in res["configs"]:
        if c["privacy_layout"] not in [l[0] for l in layouts]:
            layouts.append((c["privacy_layout"], c))
    prow = {}
    for key, c in layouts:
        prow[key] = [p for p in res["privacy"] if p["layout"] == key]
    rows = []
    for key, c in layouts:
        pr = prow[key]
        lname = c["layout_name"]
        if c["kind"] == "edge":
            rows.append([lname, 0, "0 %", "0 %", "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        coll = [p["collusion"] for p in pr]
        k2 = max((x[1] for x in coll if len(x) > 1), default=None)
        half = None
        n = max(len(x) for x in coll)
        for k in range(n):
            if all((x[k] if k < len(x) else 1.0) >= 0.5 for x in coll):
                half = k + 1
                break
        def m(attack, key2):
            return _avg([p["attacks"].get(attack, {}).get(key2) for p in pr])
        rows.append([lname, pr[0]["servers"], pct(max(p["max_share"] for p in pr)), pct(k2) if k2 is not None else "n/a",
                     half or "n/a",
                     f"{f3(m('inpaint', 'ssim_frame'))} / {f3(m('inpaint', 'ssim_unseen'))}",
                     f"{f3(m('inpaint', 'psnr_frame'), 1)} / {f3(m('inpaint', 'psnr_unseen'), 1)}",
                     f"{f3(m('nearest', 'ssim_frame'))} / {f3(m('nearest', 'ssim_unseen'))}",
                     f"{f3(m('mean', 'ssim_frame'))} / {f3(m('mean', 'ssim_unseen'))}"])
    add(table(["server layout", "servers", "max single-server share", "max share, 2 colluding",
               "servers needed for >= 50 %", "inpaint SSIM frame / unseen", "inpaint PSNR dB frame / unseen",
               "nearest-fill SSIM frame / unseen", "mean-fill SSIM frame / unseen (floor)"], rows))
    add("")
    add("Reconstruction attack, from the **most-exposed single server** (largest share; mean over images): "
        "OpenCV `cv2.inpaint` (Telea) of all unseen pixels; a nearest-seen-pixel fill (Euclidean distance "
        "transform); and a flat fill with the mean colour of the seen pixels as the no-skill floor. SSIM "
        "(skimage, 7x7 window, colour) and PSNR against the original, over the whole frame and over the unseen "
        "area only. Cloud SAM's server holds the whole frame: SSIM 1, PSNR infinite (shown as n/a). The frame "
        "SSIM includes the seen pixels, which are exact; the *unseen* columns say what was actually recovered.\n")
    worst_rows = []
    for key, c in layouts:
        pr = [p for p in prow[key] if p.get("attacks_worst_server")]
        if pr:
            worst_rows.append([c["layout_name"]] + [
                f"{f3(_avg([p['attacks_worst_server'][a]['ssim_frame'] for p in pr]))} / "
                f"{f3(_avg([p['attacks_worst_server'][a]['ssim_unseen'] for p in pr]))}" for a in ("inpaint", "nearest", "mean")])
    if worst_rows:
        add("With `--attack-all-servers`: the same attacks from every server; the server whose reconstruction "
            "scores the highest frame SSIM (mean over images):\n")
        add(table(["server layout", "inpaint SSIM frame / unseen", "nearest-fill SSIM frame / unseen",
                   "mean-fill SSIM frame / unseen"], worst_rows))
        add("")
    if "collusion.png" in files:
        add("![collusion](collusion.png)\n")
    for k, p in files.items():
        if k.startswith("views_"):
            add(f"![{k}]({k})\n")
        if k.startswith("reconstruction_"):
            add(f"![{k}]({k})\n")
    add("### Sensitive content (classical OpenCV detectors)\n")
    det = meta.get("detectors", {})
    add(f"Faces: {det.get('face', 'Haar frontal face')}. People: {det.get('person', 'HOG people')}. The detectors "
        "run on the full original frame (the reference set) and on each server's view (the bounding rectangle of "
        "its pixels, unseen pixels black). *seen whole*: fraction of full-frame detections whose box lies "
        "entirely inside one server's view; *detected*: fraction that some single server's own detector finds "
        "(a box with IoU >= 0.5). Counts are totals over all images. The full-frame detections are taken as "
        "the sensitive content whatever they are: these classical detectors miss faces and people and also fire "
        "on other objects, so treat the counts as indicative.\n")
    rows = []
    for key, c in layouts:
        srow = next(r for r in summary if r["spec"] == c["spec"])
        rows.append([c["layout_name"], srow["faces"], _frac(srow["faces_seen_whole"], srow["faces"]),
                     _frac(srow["faces_detected"], srow["faces"]), srow["people"],
                     _frac(srow["people_seen_whole"], srow["people"]), _frac(srow["people_detected"], srow["people"])])
    add(table(["server layout", "faces (full frame)", "faces seen whole", "faces detected by a server",
               "people (full frame)", "people seen whole", "people detected by a server"], rows))
    add("")
    # ---------------------------------------------------------------- cost
    add("## 3. Compute, bytes and latency\n")
    add(f"- **MACs**: {cost['mac_method']}. SAM's prompt encoder + mask decoder cost "
        f"{cost['decoder_macs_per_prompt'] / 1e9:.2f} GMACs per point prompt on the edge in every configuration "
        "and is left out of the tables.")
    add("- **Compute time**: for this run's model, the measured stage times of this run (fastest over images; "
        "the in-process servers ran one after another on this CPU and are treated as running in parallel). For "
        "the full-size geometries, one patch embedding (14x14 tokens), one window block on one 14x14 window, one "
        "global block on 64x64 tokens and the neck were each timed on this CPU (fastest of several runs after a "
        "warm-up; cached per geometry and machine), converted to seconds per MAC per component kind, and scaled by each configuration's MAC counts.")
    add(f"- **Servers**: {meta['server_assumption']}.")
    add(f"- **Bytes**: {cost['frame']}; uint8 pixels up, tokens down (`wire.token_bytes`; int8 adds one float32 "
        "scale per token); payload only. Cloud SAM returns the 256x64x64 image embedding (the edge keeps the "
        "prompt decoder, as in PED-SAM); edge-only sends nothing.")
    add(f"- **Latency model**: {cost['latency_model']}")
    add("")
    for gname, gi in cost["geometries"].items():
        rows_g = [r for r in cost["rows"] if r["geometry"] == gname]
        add(f"### {gname}\n")
        add(f"Full encoder: {gi['full_encoder_macs'] / 1e9:.1f} GMACs; compute time: {gi['timing_source']}.\n")
        hdr = ["configuration", "edge GMACs", "edge share", "busiest server GMACs", "up MiB",
               "down MiB f32 / f16 / i8", "edge compute", "busiest server compute"]
        hdr += [f"latency {LINK_SHORT[l.name]} (f16)" for l in costlib.LINKS]
        rows = []
        for r in rows_g:
            b = r["bytes"]
            lat = r["latency"].get("float16", {})
            rows.append([r["config"], f"{r['edge_macs'] / 1e9:.1f}", pct(r["edge_share"]),
                         f"{r['server_macs_max'] / 1e9:.1f}", f"{b['float16']['up'] / MiB:.2f}",
                         " / ".join(f"{b[d]['down'] / MiB:.2f}" for d in TOKEN_DTYPES),
                         secs(r["edge_s"]), secs(r["server_s_max"]) if r["servers"] else "-"]
                        + [secs(lat[l.name]["total_s"]) if lat else "n/a" for l in costlib.LINKS])
        add(table(hdr, rows))
        add("")
        if gi.get("timing"):
            add("Component timings on this machine: " + "; ".join(
                f"{k} ({v['shape']}): {secs(v['seconds'])} for {v['macs'] / 1e9:.2f} GMACs "
                f"({v['macs'] / v['seconds'] / 1e9:.1f} GMAC/s)" for k, v in gi["timing"].items()) + ".\n")
    if "latency_vs_bandwidth.png" in files:
        add("![latency vs bandwidth](latency_vs_bandwidth.png)\n")
    if "macs.png" in files:
        add("![MACs](macs.png)\n")
    add("### Measured on this run\n")
    add(f"Fastest over images (median in brackets), model `{meta['model']}`, {meta['wire_dtype']} tokens through "
        "the real wire codec (bytes: median, including message headers). The shapes, hence the compute, do not "
        "depend on the image, so the fastest run is the one least disturbed by other processes on this shared "
        "machine; the latency table of this run's model uses it. Cloud: plain SAM's `set_image` time stands for the server; edge-only: the "
        "same time on the edge.\n")
    rows = []
    for c in res["configs"]:
        ms = [m for m in res["measured"] if m["spec"] == c["spec"]]
        rows.append([c["name"], _time_range([m["edge_s"] for m in ms]),
                     _time_range([m["server_compute_max_s"] for m in ms]) if c["servers"] else "-",
                     _time_range([m.get("server_compute_sum_s") for m in ms]) if c["kind"] == "ped" else "-",
                     f"{_med([m['bytes_up'] for m in ms]) / MiB:.2f}", f"{_med([m['bytes_down'] for m in ms]) / MiB:.2f}"])
    add(table(["configuration", "edge", "busiest server", "all servers together", "MiB up", "MiB down"], rows))
    add("")
    # ---------------------------------------------------------------- caveats
    add("## What these figures mean, and what they do not\n")
    add("- " + ("**No trained SAM weights were available on this machine: all mask and embedding figures are for "
                "RANDOM WEIGHTS** and measure only agreement with plain SAM on the same weights. " if random_w else
                f"Weights: {meta['weights']['label']}. ")
        + "Agreement with plain SAM is not segmentation accuracy (there is no ground truth here); `exact` mode "
          "with token-aligned cuts should agree to float/wire-precision error, `paper` mode and unaligned cuts "
          "change the function and their numbers say by how much.")
    add("- Privacy attacks are classical only: there is **no learned reconstruction attacker** (a trained "
        "inpainting or diffusion model would recover more plausible content), and the detectors are OpenCV's "
        "shipped Haar face and HOG people detectors, which miss many faces and people; a server's ability to "
        "recognise content it sees whole is bounded by its detector, not by PED-SAM. The attacks use one frame; "
        "a server also sees its window of every frame of a video.")
    add("- Exposure shares count pixels, not information: a 25 % window can hold the one face in the frame. The "
        "server also learns its window's position (from the request and the `pos_embed` slice).")
    add("- Latency is an **estimate** from measured compute on this CPU plus counted bytes under the stated link "
        "model; no network was measured. Servers are assumed to be this CPU unless `--server-speedup` says "
        "otherwise; real GPUs change the balance between compute and transfer.")
    add("- The views and detections are computed on the original image's pixels; servers actually receive the "
        "frame resized to 1024 on the longest side (the same content resampled).")
    add("")
    add("## Files\n")
    for k in sorted(files):
        add(f"- [`{k}`]({k})")
    add("- [`report.md`](report.md)")
    add("")
    return "\n".join(L)


def _avg(v):
    v = [x for x in v if x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))]
    return float(np.mean(v)) if v else None


def _time_range(v) -> str:
    v = [x for x in v if x is not None]
    if not v:
        return "n/a"
    return f"{secs(min(v))} ({secs(float(np.median(v)))})"


def _med(v):
    v = [x for x in v if x is not None]
    return float(np.median(v)) if v else None
