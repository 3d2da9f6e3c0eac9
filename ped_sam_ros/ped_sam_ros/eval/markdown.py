"""report.md: the evaluation's results as Markdown tables and prose, one function per section."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import cost as costlib
from .cost_tables import TABLE_DTYPES
from .knob import knob_section
from .privacy import ReconstructionScores
from .records import ConfigSummary, CostSection, EvalResults, GeometryCost, Meta, PrivacyRow

MiB = 1024 * 1024
LINK_SHORT = {
    costlib.LINKS[0].name: "1 Gbit/s",
    costlib.LINKS[1].name: "100 Mbit/s",
    costlib.LINKS[2].name: "20 Mbit/s",
}


# ---------------------------------------------------------------------------
# Formatting


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


def _avg(v) -> Optional[float]:
    """Mean of the finite values (None, NaN and inf left out); None if there are none."""
    v = [x for x in v if x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))]
    return float(np.mean(v)) if v else None


def _time_range(v) -> str:
    v = [x for x in v if x is not None]
    if not v:
        return "n/a"
    return f"{secs(min(v))} ({secs(float(np.median(v)))})"


def _med(v) -> Optional[float]:
    v = [x for x in v if x is not None]
    return float(np.median(v)) if v else None


# ---------------------------------------------------------------------------
# Sections (each returns its Markdown lines)


def _random_weights_banner(meta: Meta) -> List[str]:
    if not meta.random_weights:
        return []
    return [
        "> **RANDOM WEIGHTS.** No trained SAM checkpoint was used: the model is "
        f"`{meta.model}` with random weights. Every mask figure below measures only *agreement with plain "
        "SAM on the same random weights* (how much the split changes SAM's output), **not** segmentation "
        "quality. Rerun with `--model vit_b --checkpoint sam_vit_b_01ec64.pth` for trained weights.\n"
    ]


def _settings_section(res: EvalResults) -> List[str]:
    meta, g, amg = res.meta, res.meta.geometry, res.meta.amg
    imgs = ", ".join(f"{i.name} ({i.width}x{i.height})" for i in meta.images)
    cfgs = ", ".join(f"`{c.spec}`" for c in res.configs)
    sha = f", sha256 {meta.weights.sha256[:16]}..." if meta.weights.sha256 else ""
    return [
        "## What was run\n",
        table(
            ["setting", "value"],
            [
                [
                    "model",
                    f"`{meta.model}` (embed dim {g.embed_dim}, depth {g.depth}, heads {g.num_heads}, "
                    f"global blocks {g.global_blocks})",
                ],
                ["weights", meta.weights.label + sha],
                ["images", f"{len(meta.images)}: {imgs} ({meta.image_source})"],
                ["configurations", cfgs],
                ["servers per PED-SAM configuration", "one per tile unless `@N` is given"],
                ["wire precision (fidelity runs)", meta.wire_dtype],
                ["device / precision of the stages", f"{meta.placement} (plain SAM: float32, same device)"],
                ["point prompts", meta.point_prompts],
                ["box prompts", meta.box_prompts],
                [
                    "automatic masks",
                    f"{amg.points_per_side}x{amg.points_per_side} points on the first "
                    f"{amg.images} image(s); filters {amg.options}; {amg.match}",
                ],
                ["server speed", meta.server_assumption],
                [
                    "machine",
                    f"{meta.machine}; load average (1/5/15 min) {meta.load_average.start} at the "
                    f"start, {meta.load_average.end} at the end (other processes share these cores)",
                ],
                ["command", f"`{meta.command or 'n/a'}`"],
                ["wall time", f"{meta.wall_s:.0f} s ({meta.date})"],
            ],
        ),
        "",
    ]


def _headline_section(res: EvalResults) -> List[str]:
    summary, meta = res.summary, res.meta
    g = summary[0].cost.cost_geometry if summary else "?"
    gi = res.cost.geometries.get(g)
    source = gi.timing_source if gi is not None else "n/a"
    rows = [
        [
            r.config,
            r.servers,
            f3(r.fidelity.embedding_cosine, 4),
            f3(r.fidelity.point_iou),
            pct(r.privacy.max_server_share),
            f3(r.privacy.recon_ssim_inpaint) if r.servers else "n/a (no server)",
            pct(r.cost.edge_mac_share),
            secs(r.cost.latency_100mbit_s),
        ]
        for r in summary
    ]
    return [
        "## Headline\n",
        f"Fidelity and privacy are measured on this run's model and images; MAC share and latency are for the "
        f"**{g}** geometry (counted MACs; compute time: {source}; fp16 tokens, "
        f"100 Mbit/s with 20 ms RTT; {meta.server_assumption.split(';')[0]}).\n",
        table(
            [
                "configuration",
                "servers",
                "embedding cosine",
                "point-prompt mask IoU",
                "max single-server share",
                "reconstruction SSIM (inpaint, frame)",
                f"edge MAC share ({g})",
                f"latency @100 Mbit/s ({g})",
            ],
            rows,
        ),
        "",
        "- *embedding cosine* / *mask IoU*: agreement of the configuration's image embedding and masks with "
        "plain SAM on identical weights and images (1 = identical). Cloud SAM differs from plain SAM only by the "
        f"{meta.wire_dtype} rounding of the embedding it sends back; edge-only SAM *is* the reference. PED-SAM's "
        f"tiles cross the wire as {meta.wire_dtype} tokens and {meta.pixel_codec} pixels.",
        "- *max single-server share*: the largest fraction of an image's pixels that one server receives "
        "(maximum over images). *Reconstruction SSIM*: how similar the best classical fill-in of everything that "
        "server did not see is to the original frame (mean over images; 1 = perfect).",
        "",
    ] + (_breakeven_lines(res.breakeven) if res.breakeven is not None else [])


def _breakeven_lines(hb) -> List[str]:
    """The headline's answer to "when does PED-SAM pay off?" (eval.breakeven.headline_lines)."""
    from .breakeven import headline_lines

    return headline_lines(hb)


def _amg_cell(r: ConfigSummary) -> str:
    f = r.fidelity
    if f.amg_reference_masks is None:
        return "n/a"
    return f"{f.amg_masks} / {f.amg_matched} / {f.amg_missed} of {f.amg_reference_masks}, IoU {f3(f.amg_matched_iou)}"


def _fidelity_section(res: EvalResults, files: Dict[str, Path]) -> List[str]:
    summary, meta = res.summary, res.meta
    L = ["## 1. Fidelity: agreement with plain SAM on identical weights\n"]
    if meta.random_weights:
        L.append(
            "**RANDOM WEIGHTS**: the masks of a random-weight SAM are not segmentations of anything; these "
            "numbers say only how far each split moves SAM's output away from unsplit SAM with the same "
            "weights.\n"
        )
    L.append(
        "Embedding: cosine similarity and relative error ||e - e_SAM|| / ||e_SAM|| of the 256x64x64 image "
        "embedding. Point prompts: mask IoU per prompt, averaged (worst prompt in brackets). Box prompts: "
        "boxes of plain SAM's own point-prompt masks. Automatic masks: SAM's automatic mask generator on both "
        "embeddings, masks matched one-to-one (IoU >= 0.5); *found* = masks the configuration produced, "
        "*matched* = of plain SAM's masks, *missed* = plain SAM masks without a match.\n"
    )
    rows = [
        [
            r.config,
            f3(r.fidelity.embedding_cosine, 5),
            f3(r.fidelity.embedding_rel_error, 4),
            f"{f3(r.fidelity.point_iou)} ({f3(r.fidelity.point_iou_min)})",
            f3(r.fidelity.box_iou),
            _amg_cell(r),
        ]
        for r in summary
    ]
    L += [
        table(
            [
                "configuration",
                "embedding cosine",
                "embedding rel. error",
                "point IoU (min)",
                "box IoU",
                "AMG found / matched / missed, matched IoU",
            ],
            rows,
        ),
        "",
    ]
    if (
        meta.random_weights
        and summary
        and (summary[0].fidelity.amg_reference_masks or 0) <= 2 * max(1, meta.amg.images)
    ):
        L.append(
            "With random weights each prompt's mask is a scattered pattern whose bounding box covers most of "
            "the frame, so the generator's box NMS keeps about one mask per image: the AMG columns are close "
            "to vacuous here and become meaningful with trained weights.\n"
        )
    if "fidelity.png" in files:
        L.append("![fidelity](fidelity.png)\n")
    return L


def _mean_scores(
    rows: Sequence[PrivacyRow], attack: str, figure: Callable[[ReconstructionScores], float], worst_server: bool = False
) -> Optional[float]:
    """Mean over images of one figure of one attack (finite values only)."""
    scores = [(p.attacks_worst_server if worst_server else p.attacks).get(attack) for p in rows]
    return _avg([figure(s) for s in scores if s is not None])


def _pair(
    rows: Sequence[PrivacyRow], attack: str, frame: Callable, unseen: Callable, d: int = 3, worst_server: bool = False
) -> str:
    """ "frame / unseen" figures of one attack, e.g. SSIM over the whole frame / over the unseen area."""
    return (
        f"{f3(_mean_scores(rows, attack, frame, worst_server), d)} / "
        f"{f3(_mean_scores(rows, attack, unseen, worst_server), d)}"
    )


def _ssim_pair(rows: Sequence[PrivacyRow], attack: str, worst_server: bool = False) -> str:
    return _pair(rows, attack, lambda s: s.ssim_frame, lambda s: s.ssim_unseen, worst_server=worst_server)


def _servers_for_half(collusion: List[List[float]]) -> Optional[int]:
    """The fewest colluding servers holding at least half of every image."""
    n = max(len(x) for x in collusion)
    for k in range(n):
        if all((x[k] if k < len(x) else 1.0) >= 0.5 for x in collusion):
            return k + 1
    return None


def _exposure_row(name: str, pr: List[PrivacyRow]) -> List:
    coll = [p.collusion for p in pr]
    k2 = max((x[1] for x in coll if len(x) > 1), default=None)
    return [
        name,
        pr[0].servers,
        pct(max(p.max_share for p in pr)),
        pct(k2) if k2 is not None else "n/a",
        _servers_for_half(coll) or "n/a",
        _ssim_pair(pr, "inpaint"),
        _pair(pr, "inpaint", lambda s: s.psnr_frame, lambda s: s.psnr_unseen, d=1),
        _ssim_pair(pr, "nearest"),
        _ssim_pair(pr, "mean"),
    ]


def _exposure_table(res: EvalResults) -> List[str]:
    rows = []
    for c in res.layouts():
        if c.kind == "edge":
            rows.append([c.layout_name, 0, "0 %", "0 %", "n/a", "n/a", "n/a", "n/a", "n/a"])
        else:
            rows.append(_exposure_row(c.layout_name, res.privacy_of(c)))
    return [
        table(
            [
                "server layout",
                "servers",
                "max single-server share",
                "max share, 2 colluding",
                "servers needed for >= 50 %",
                "inpaint SSIM frame / unseen",
                "inpaint PSNR dB frame / unseen",
                "nearest-fill SSIM frame / unseen",
                "mean-fill SSIM frame / unseen (floor)",
            ],
            rows,
        ),
        "",
    ]


def _worst_server_table(res: EvalResults) -> List[str]:
    rows = []
    for c in res.layouts():
        pr = [p for p in res.privacy_of(c) if p.attacks_worst_server]
        if pr:
            rows.append(
                [c.layout_name] + [_ssim_pair(pr, a, worst_server=True) for a in ("inpaint", "nearest", "mean")]
            )
    if not rows:
        return []
    return [
        "With `--attack-all-servers`: the same attacks from every server; the server whose reconstruction "
        "scores the highest frame SSIM (mean over images):\n",
        table(
            [
                "server layout",
                "inpaint SSIM frame / unseen",
                "nearest-fill SSIM frame / unseen",
                "mean-fill SSIM frame / unseen",
            ],
            rows,
        ),
        "",
    ]


def _detection_table(res: EvalResults) -> List[str]:
    det = res.meta.detectors
    rows = []
    for c in res.layouts():
        p = res.summary_of(c).privacy
        rows.append(
            [
                c.layout_name,
                p.faces,
                _frac(p.faces_seen_whole, p.faces),
                _frac(p.faces_detected, p.faces),
                p.people,
                _frac(p.people_seen_whole, p.people),
                _frac(p.people_detected, p.people),
            ]
        )
    return [
        "### Sensitive content (classical OpenCV detectors)\n",
        f"Faces: {det.get('face', 'Haar frontal face')}. People: {det.get('person', 'HOG people')}. The detectors "
        "run on the full original frame (the reference set) and on each server's view (the bounding rectangle of "
        "its pixels, unseen pixels black). *seen whole*: fraction of full-frame detections whose box lies "
        "entirely inside one server's view; *detected*: fraction that some single server's own detector finds "
        "(a box with IoU >= 0.5). Counts are totals over all images. The full-frame detections are taken as "
        "the sensitive content whatever they are: these classical detectors miss faces and people and also fire "
        "on other objects, so treat the counts as indicative.\n",
        table(
            [
                "server layout",
                "faces (full frame)",
                "faces seen whole",
                "faces detected by a server",
                "people (full frame)",
                "people seen whole",
                "people detected by a server",
            ],
            rows,
        ),
        "",
    ]


def _privacy_section(res: EvalResults, files: Dict[str, Path]) -> List[str]:
    L = [
        "## 2. Privacy: what one server sees and what it can recover\n",
        "The server layout is the same in `paper` and `exact` mode, so each partition appears once. Shares are "
        "of the resized frame's image pixels (what is actually sent: uint8 crops, never SAM's padding). "
        "*k colluding*: the largest share any set of k servers holds together (the k largest shares, as tiles "
        "are disjoint).\n",
    ]
    L += _exposure_table(res)
    L.append(
        "Reconstruction attack, from the **most-exposed single server** (largest share; mean over images): "
        "OpenCV `cv2.inpaint` (Telea) of all unseen pixels; a nearest-seen-pixel fill (Euclidean distance "
        "transform); and a flat fill with the mean colour of the seen pixels as the no-skill floor. SSIM "
        "(skimage, 7x7 window, colour) and PSNR against the original, over the whole frame and over the unseen "
        "area only. Cloud SAM's server holds the whole frame: SSIM 1, PSNR infinite (shown as n/a). The frame "
        "SSIM includes the seen pixels, which are exact; the *unseen* columns say what was actually "
        "recovered.\n"
    )
    L += _worst_server_table(res)
    if "collusion.png" in files:
        L.append("![collusion](collusion.png)\n")
    L += [f"![{k}]({k})\n" for k in files if k.startswith(("views_", "reconstruction_"))]
    return L + _detection_table(res)


def _cost_intro(cost: CostSection, meta: Meta) -> List[str]:
    return [
        "## 3. Compute, bytes and latency\n",
        f"- **MACs**: {cost.mac_method}. SAM's prompt encoder + mask decoder cost "
        f"{cost.decoder_macs_per_prompt / 1e9:.2f} GMACs per point prompt on the edge in every configuration "
        "and is left out of the tables.",
        "- **Compute time**: for this run's model, the measured stage times of this run (fastest over images; "
        "the in-process servers ran one after another on this CPU and are treated as running in parallel). For "
        "the full-size geometries, one patch embedding (14x14 tokens), one window block on one 14x14 window, one "
        "global block on 64x64 tokens and the neck were each timed on this CPU (fastest of several runs after a "
        "warm-up; cached per geometry and machine), converted to seconds per MAC per component kind, and scaled "
        "by each configuration's MAC counts.",
        f"- **Servers**: {meta.server_assumption}.",
        f"- **Bytes**: {cost.frame}; uint8 pixels up, tokens down (`wire.token_bytes`; int8 adds one float32 "
        "scale per token); payload only. Cloud SAM returns the 256x64x64 image embedding (the edge keeps the "
        "prompt decoder, as in PED-SAM); edge-only sends nothing.",
        f"- **Latency model**: {cost.latency_model}",
        "",
    ]


def _geometry_table(cost: CostSection, gname: str, gi: GeometryCost) -> List[str]:
    hdr = [
        "configuration",
        "edge GMACs",
        "edge share",
        "busiest server GMACs",
        "up MiB",
        "down MiB f32 / f16 / i8",
        "edge compute",
        "busiest server compute",
    ]
    hdr += [f"latency {LINK_SHORT[link.name]} (f16)" for link in costlib.LINKS]
    rows = []
    for r in cost.rows_of(gname):
        b = r.bytes
        lat = r.latency.get("float16", {})
        rows.append(
            [
                r.config,
                f"{r.edge_macs / 1e9:.1f}",
                pct(r.edge_share),
                f"{r.server_macs_max / 1e9:.1f}",
                f"{b['float16'].up / MiB:.2f}",
                " / ".join(f"{b[d].down / MiB:.2f}" for d in TABLE_DTYPES),
                secs(r.edge_s),
                secs(r.server_s_max) if r.servers else "-",
            ]
            + [secs(lat[link.name].total_s) if lat else "n/a" for link in costlib.LINKS]
        )
    L = [
        f"### {gname}\n",
        f"Full encoder: {gi.full_encoder_macs / 1e9:.1f} GMACs; compute time: {gi.timing_source}.\n",
        table(hdr, rows),
        "",
    ]
    if gi.timing:
        L.append(
            "Component timings on this machine: "
            + "; ".join(
                f"{k} ({t.shape}): {secs(t.seconds)} for {t.macs / 1e9:.2f} GMACs "
                f"({t.macs / t.seconds / 1e9:.1f} GMAC/s)"
                for k, t in gi.timing.items()
            )
            + ".\n"
        )
    return L


def _measured_table(res: EvalResults) -> List[str]:
    meta = res.meta
    rows = []
    for c in res.configs:
        ms = res.measured_of(c)
        rows.append(
            [
                c.name,
                _time_range([m.edge_s for m in ms]),
                _time_range([m.server_compute_max_s for m in ms]) if c.servers else "-",
                _time_range([m.server_compute_sum_s for m in ms]) if c.kind == "ped" else "-",
                f"{_med([m.bytes_up for m in ms]) / MiB:.2f}",
                f"{_med([m.bytes_down for m in ms]) / MiB:.2f}",
            ]
        )
    return [
        "### Measured on this run\n",
        f"Fastest over images (median in brackets), model `{meta.model}`, {meta.wire_dtype} tokens through "
        "the real wire codec (bytes: median, including message headers). The shapes, hence the compute, do not "
        "depend on the image, so the fastest run is the one least disturbed by other processes on this shared "
        "machine; the latency table of this run's model uses it. Cloud: plain SAM's `set_image` time stands for "
        "the server; edge-only: the same time on the edge.\n",
        table(["configuration", "edge", "busiest server", "all servers together", "MiB up", "MiB down"], rows),
        "",
    ]


def _cost_section(res: EvalResults, files: Dict[str, Path]) -> List[str]:
    L = _cost_intro(res.cost, res.meta)
    for gname, gi in res.cost.geometries.items():
        L += _geometry_table(res.cost, gname, gi)
    if "latency_vs_bandwidth.png" in files:
        L.append("![latency vs bandwidth](latency_vs_bandwidth.png)\n")
    if "macs.png" in files:
        L.append("![MACs](macs.png)\n")
    return L + _measured_table(res)


def _caveats_section(meta: Meta) -> List[str]:
    weights = (
        "**No trained SAM weights were available on this machine: all mask and embedding figures are for "
        "RANDOM WEIGHTS** and measure only agreement with plain SAM on the same weights. "
        if meta.random_weights
        else f"Weights: {meta.weights.label}. "
    )
    return [
        "## What these figures mean, and what they do not\n",
        "- " + weights + "Agreement with plain SAM is not segmentation accuracy (there is no ground truth here); "
        "`exact` mode with token-aligned cuts should agree to float/wire-precision error, `paper` mode and "
        "unaligned cuts change the function and their numbers say by how much.",
        "- Privacy attacks are classical only: there is **no learned reconstruction attacker** (a trained "
        "inpainting or diffusion model would recover more plausible content), and the detectors are OpenCV's "
        "shipped Haar face and HOG people detectors, which miss many faces and people; a server's ability to "
        "recognise content it sees whole is bounded by its detector, not by PED-SAM. The attacks use one frame; "
        "a server also sees its tile of every frame of a video.",
        "- Exposure shares count pixels, not information: a 25 % tile can hold the one face in the frame. The "
        "server also learns its tile's position (from the request and the `pos_embed` slice).",
        "- Latency is an **estimate** from measured compute on this CPU plus counted bytes under the stated link "
        "model; no network was measured. Servers are assumed to be this CPU unless `--server-speedup` says "
        "otherwise; real GPUs change the balance between compute and transfer.",
        "- The views and detections are computed on the original image's pixels; servers actually receive the "
        "frame resized to 1024 on the longest side (the same content resampled).",
        "",
    ]


def _sensitive_section(res: EvalResults) -> List[str]:
    """Sensitive content per privacy policy and partition (``--sensitive``), when it ran."""
    if res.sensitive is None:
        return []
    from .sensitive_records import section_lines

    return section_lines(res.sensitive, res.meta.random_weights)


def _files_section(files: Dict[str, Path]) -> List[str]:
    return ["## Files\n"] + [f"- [`{k}`]({k})" for k in sorted(files)] + ["- [`report.md`](report.md)", ""]


def render_markdown(res: EvalResults, files: Dict[str, Path]) -> str:
    """The whole report.md; ``files`` (name -> path) are the report folder's other files, linked and shown."""
    L = ["# PED-SAM evaluation report\n"]
    L += _random_weights_banner(res.meta)
    L += _settings_section(res)
    L += _headline_section(res)
    L += _fidelity_section(res, files)
    L += _privacy_section(res, files)
    L += _sensitive_section(res)
    L += _cost_section(res, files)
    L += knob_section(res, files)  # the exact..paper knob (k modes), when run
    L += _caveats_section(res.meta)
    L += _files_section(files)
    return "\n".join(L)
