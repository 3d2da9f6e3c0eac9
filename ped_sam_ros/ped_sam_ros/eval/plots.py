"""PNG plots for the evaluation report (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core.geometry import Partition, content_shape, server_shares
from . import cost as costlib
from . import privacy as priv
from .records import ConfigSummary, CostSection, EvalResults


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def server_views(image: np.ndarray, partition: Partition, assignment: Sequence[int], path: Path, title: str) -> Path:
    """One panel per server: the original image as that server holds it (unseen area grey)."""
    plt = _plt()
    tiles = priv.server_tiles(partition, assignment)
    n = len(tiles)
    one_per_tile = n == len(partition)
    rows, cols = (partition.rows, partition.cols) if one_per_tile else (int(np.ceil(n / min(n, 5))), min(n, 5))
    H, W = image.shape[:2]
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.9 * cols * W / max(H, W) + 0.4, 1.9 * rows * H / max(H, W) + 0.6), squeeze=False
    )
    shares = server_shares(partition, assignment, content_shape((H, W)))
    for ax in axes.ravel():
        ax.axis("off")
    for s, mine in tiles.items():
        if one_per_tile:
            ax = axes[mine[0].grid_row][mine[0].grid_col]
        else:
            ax = axes.ravel()[s]
        seen = priv.seen_mask(mine, (H, W))
        ax.imshow(priv.server_view(image, seen, fill=128))
        ax.set_title(f"server {s}: {shares[s]:.1%}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def reconstruction(
    image: np.ndarray, seen: np.ndarray, scores: Dict[str, priv.ReconstructionScores], path: Path, title: str
) -> Path:
    """Original | what the server holds | each reconstruction, with SSIM/PSNR over the frame and the unseen area."""
    plt = _plt()
    recons = {name: fn(image, seen) for name, fn in priv.ATTACKS.items()}
    labels = {"inpaint": "cv2.inpaint (Telea)", "nearest": "nearest seen pixel", "mean": "mean colour (floor)"}
    panels = [
        ("original", image, ""),
        ("server's view", priv.server_view(image, seen, 128), f"{seen.mean():.1%} of pixels"),
    ]
    for name, rec in recons.items():
        sc = scores.get(name)
        nan = float("nan")
        ssim, unseen, psnr = (sc.ssim_frame, sc.ssim_unseen, sc.psnr_frame) if sc is not None else (nan, nan, nan)
        panels.append((labels.get(name, name), rec, f"SSIM {ssim:.3f} (unseen {unseen:.3f})\nPSNR {psnr:.1f} dB"))
    H, W = image.shape[:2]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.6 * H / W + 0.9))
    for ax, (t, im, sub) in zip(axes, panels):
        ax.imshow(im)
        ax.set_title(t + ("\n" + sub if sub else ""), fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


GRID_COLORS = {"2x2": "tab:blue", "3x3": "tab:green", "4x3": "tab:purple", "5x5": "tab:orange"}


def _style(spec: str):
    """Baselines black / grey; PED-SAM: colour by grid, solid = paper, dashed = exact, thin = unaligned."""
    if spec == "cloud":
        return dict(color="black", ls=(0, (6, 2)), lw=2.2)
    if spec == "edge":
        return dict(color="grey", ls=":", lw=2.2)
    mode, rest = spec.split(":", 1)
    grid = rest.split("@")[0].replace("-free", "")
    free = "-free" in rest
    return dict(
        color=GRID_COLORS.get(grid, "tab:brown"),
        ls="-" if mode == "paper" else "--",
        lw=0.9 if free else 1.6,
        alpha=0.7 if free else 1.0,
    )


def _plain_log_axis(axis):
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def latency_vs_bandwidth(
    cost: CostSection,
    geometries: Sequence[str],
    path: Path,
    dtype: str = "float16",
    configs: Optional[Sequence[str]] = None,
    rtt_ms: float = 20.0,
    title_note: str = "",
) -> Path:
    """Estimated end-to-end latency against link bandwidth (log axis), one panel per geometry.

    Curves use a fixed RTT; markers show the three stated link profiles with their own RTT.
    """
    plt = _plt()
    geometries = [g for g in geometries if g in cost.geometries]
    fig, axes = plt.subplots(1, len(geometries), figsize=(4.3 * len(geometries), 3.6), squeeze=False)
    bw = np.logspace(np.log10(5), np.log10(10000), 60)
    for ax, gname in zip(axes[0], geometries):
        rows = [r for r in cost.rows_of(gname) if r.latency]
        if configs:
            rows = [r for r in rows if r.config_spec in configs]
        for r in rows:
            srv = [r.server_s_max] if r.servers else []
            b = r.bytes[dtype]
            ys = [
                costlib.estimate_latency(r.edge_s, srv, b.up, b.down, costlib.SymmetricLink("x", x, rtt_ms)).total_s
                for x in bw
            ]
            style = _style(r.config_spec)
            ax.plot(bw, ys, label=r.config, **style)
            for link in costlib.LINKS:
                y = r.latency[dtype][link.name].total_s
                ax.plot([link.mbit_s], [y], marker="o", color=style["color"], ms=3.5, ls="none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_axis(ax.xaxis)
        _plain_log_axis(ax.yaxis)
        ax.set_xlabel("link bandwidth (Mbit/s)")
        ax.set_ylabel("estimated latency per frame (s)")
        ax.set_title(f"{gname}, {dtype} tokens", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.suptitle(
        f"Latency estimate = measured compute + counted bytes (curves: {rtt_ms:g} ms RTT; markers: "
        f"1 Gbit/s 2 ms, 100 Mbit/s 20 ms, 20 Mbit/s 50 ms){title_note}",
        fontsize=8,
    )
    fig.tight_layout()
    return _save(fig, path)


def fidelity_bars(summary: List[ConfigSummary], path: Path, weights_label: str) -> Path:
    """Embedding cosine and point-prompt IoU against plain SAM, one bar per configuration."""
    plt = _plt()
    rows = summary
    names = [r.config for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, values, label in [
        (axes[0], [r.fidelity.embedding_cosine for r in rows], "embedding cosine vs plain SAM"),
        (axes[1], [r.fidelity.point_iou for r in rows], "point-prompt mask IoU vs plain SAM"),
    ]:
        vals = [v if v is not None else np.nan for v in values]
        colors = [_style(r.spec)["color"] for r in rows]
        ax.bar(range(len(rows)), vals, color=colors)
        lo = np.nanmin(vals) if np.isfinite(np.nanmin(vals)) else 0
        ax.set_ylim(max(0.0, min(0.9, lo - 0.05)), 1.005)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=70, fontsize=7, ha="right")
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Agreement with plain SAM on identical weights - {weights_label}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def collusion(res: EvalResults, path: Path) -> Path:
    """Largest share of the frame held by any k colluding servers (max over images), per PED-SAM layout."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for c in res.layouts():
        if c.kind != "ped":
            continue
        rows = res.privacy_of(c)
        n = max(len(p.collusion) for p in rows)
        ys = [max(p.collusion[k] if k < len(p.collusion) else 1.0 for p in rows) for k in range(n)]
        ax.plot(range(1, n + 1), ys, marker=".", ls="-" if c.partition.is_aligned else "-.", label=c.layout_name)
    ax.axhline(1.0, color="black", ls="--", lw=1, label="cloud SAM (1 server)")
    ax.set_xlabel("k colluding servers")
    ax.set_ylabel("max share of frame pixels")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title("Exposure to k colluding servers (max over k-sets and images)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def macs_bars(cost: CostSection, geometry: str, path: Path) -> Path:
    """Edge and busiest-server encoder MACs per configuration on one geometry."""
    plt = _plt()
    rows = cost.rows_of(geometry)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r.edge_macs / 1e9 for r in rows], 0.4, label="edge", color="tab:orange")
    ax.bar(x + 0.2, [r.server_macs_max / 1e9 for r in rows], 0.4, label="busiest server", color="tab:green")
    ax.set_xticks(x)
    ax.set_xticklabels([r.config for r in rows], rotation=70, fontsize=7, ha="right")
    ax.set_ylabel("encoder GMACs per frame")
    ax.set_title(f"{geometry}: encoder multiply-accumulates (counted with FlopCounterMode)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def knob_pareto(layouts, path: Path, weights_label: str, geometry: str) -> Path:
    """Fidelity against edge MAC share for the modes of each layout (:func:`.knob.knob_points`):
    one line per layout from ``exact`` to ``paper``, Pareto-optimal modes filled."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in [
        (axes[0], "embedding_cosine", "embedding cosine vs plain SAM"),
        (axes[1], "point_iou", "point-prompt mask IoU vs plain SAM"),
    ]:
        for n, (layout, pts) in enumerate(layouts.items()):
            pts = [p for p in pts if p.edge_mac_share is not None and getattr(p, key) is not None]
            if not pts:
                continue
            x = [100 * p.edge_mac_share for p in pts]
            y = [getattr(p, key) for p in pts]
            color = f"C{n % 10}"
            ax.plot(x, y, "-", color=color, alpha=0.6, label=layout)
            for p, xi, yi in zip(pts, x, y):
                ax.plot(xi, yi, "o", color=color, mfc=color if p.pareto else "white", ms=6)
                ax.annotate(p.mode, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel(f"edge share of the encoder MACs ({geometry}), %")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"The exact..paper knob: fidelity against edge compute (filled: Pareto) - {weights_label}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
