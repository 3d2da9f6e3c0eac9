"""``ped-sam-eval``: fidelity, privacy and cost of PED-SAM against cloud and edge-only SAM.

Examples::

  ped-sam-eval                                     # small default run, RANDOM WEIGHTS (vit_b/w32h2)
  ped-sam-eval --model vit_b --checkpoint sam_vit_b_01ec64.pth --images photos/
  ped-sam-eval --configs paper:2x2,exact:5x5-free --max-images 2 --out out/eval/quick
  python -m ped_sam_ros.tools.evaluate --help
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

DEFAULT_MODEL = "vit_b/w32h2"
DESCRIPTION = (
    "Evaluate PED-SAM configurations against plain SAM on the same weights and images, beside the cloud "
    "(whole frame on one server) and edge-only baselines: fidelity, privacy (exposure, reconstruction and "
    "detector attacks), and compute / bytes / estimated latency. Writes a report folder "
    "(report.md, PNG plots, results.json and CSV files)."
)


def build_parser() -> argparse.ArgumentParser:
    from ..core.wire import TOKEN_DTYPES
    from ..eval.images import DEFAULT_IMAGES

    p = argparse.ArgumentParser(
        prog="ped-sam-eval", description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--model",
        default=None,
        help="model type: vit_b, vit_l, vit_h, or a narrow variant such as vit_b/w32h2 "
        "(official depth and global blocks, smaller width; for CPU runs with random weights). "
        "Default: read from --checkpoint, else vit_b/w32h2 with random weights",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="official SAM checkpoint (e.g. sam_vit_b_01ec64.pth) matching --model; "
        "without it the model gets RANDOM WEIGHTS (random_sam, saved to a temporary checkpoint)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help=f"folder of images; default: scikit-image's photos {', '.join(DEFAULT_IMAGES)}",
    )
    p.add_argument("--max-images", type=int, default=4, help="use at most this many images (0 = all)")
    p.add_argument(
        "--max-side", type=int, default=640, help="downscale images whose longest side is larger (0 = never)"
    )
    p.add_argument(
        "--configs",
        default="default",
        help="comma-separated: cloud, edge, default, MODE:RxC[-free][@SERVERS] with MODE exact, paper, k<N> "
        "(the first N groups of window blocks remote) or modes (all of them) (e.g. paper:2x2, "
        "exact:5x5-free, paper:5x5@3, k2:2x2, modes:2x2); the cloud and edge-only baselines are always included",
    )
    p.add_argument(
        "--wire-dtype",
        default="float16",
        choices=TOKEN_DTYPES,
        help="precision of the tokens (and the cloud embedding) in the fidelity runs",
    )
    p.add_argument(
        "--pixel-codec",
        default="raw",
        help="how each PED-SAM tile's pixels travel in the fidelity runs: raw, png[:L], jpeg[:Q], jpeg444[:Q], "
        "webp[:Q] (the node's default: jpeg444:90; with --configs exact:2x2 --wire-dtype p6 the report's "
        "embedding cosine and mask IoU are the wire's fidelity against the uncompressed run)",
    )
    p.add_argument(
        "--edge-profile",
        nargs="+",
        default=["agx-orin"],
        help="edge device profile(s) of the headline's break-even bandwidth (eval.profiles; this-machine: timed here)",
    )
    p.add_argument("--server-profile", default="a100", help="server device profile of the headline's break-even")
    p.add_argument("--profiles", default=None, help="YAML/JSON file of more device profiles (eval.profiles)")
    p.add_argument(
        "--calibration",
        default=None,
        help="calibration cache of this machine's codec and op timings for the break-even "
        "(default ~/.cache/ped_sam_ros/calibration.json)",
    )
    p.add_argument("--no-breakeven", action="store_true", help="leave the break-even out of the headline")
    p.add_argument(
        "--device",
        default="auto",
        help="where the stages and plain SAM run: auto (the first CUDA device when present, else the CPU), "
        "cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "float16", "bfloat16"),
        help="precision of PED-SAM's encoder blocks (plain SAM, the reference, stays float32): its fidelity "
        "cost is measured with the split's",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the stages' encoder blocks")
    p.add_argument(
        "--precision-fallback",
        action="store_true",
        help="run float32 / uncompiled instead of refusing a precision or --compile this device cannot run",
    )
    p.add_argument("--point-grid", type=int, default=3, help="N: an NxN grid of single-point prompts")
    p.add_argument(
        "--amg-points", type=int, default=4, help="automatic mask generation: points per side (0 = skip AMG)"
    )
    p.add_argument("--amg-images", type=int, default=1, help="run AMG on the first N images only (0 = all)")
    p.add_argument(
        "--cost-models",
        default="vit_b,vit_l,vit_h",
        help="full-size geometries for the MAC / latency tables (comma-separated; empty = none)",
    )
    p.add_argument(
        "--no-time-full-size",
        action="store_true",
        help="do not time the full-size components (MACs and bytes only for them)",
    )
    p.add_argument(
        "--timing-cache",
        default=None,
        help="JSON cache of component timings (default ~/.cache/ped_sam_ros/component_timings.json)",
    )
    p.add_argument(
        "--retime", action="store_true", help="measure the full-size component timings again instead of using the cache"
    )
    p.add_argument(
        "--server-speedup",
        type=float,
        default=1.0,
        help="servers are this many times faster than this CPU (1 = the same CPU)",
    )
    p.add_argument(
        "--attack-all-servers",
        action="store_true",
        help="run the reconstruction attack from every server, not only the most-exposed one",
    )
    _sensitive_arguments(p)
    p.add_argument("--out", default=None, help="report folder (default out/eval/<date-time>_<model>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _sensitive_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the sensitive-content evaluation per privacy policy and partition (eval.sensitive)."""
    from ..eval.sensitive import DEFAULT_PARTITIONS, DEFAULT_POLICIES

    g = p.add_argument_group(
        "sensitive content per privacy policy and partition",
        "what single servers receive of faces (and text) under each edge policy, what their own detector "
        "finds there, what they can reconstruct, and what each policy costs the masks and the edge",
    )
    g.add_argument(
        "--sensitive",
        action="store_true",
        help=f"run it with the defaults (policies {DEFAULT_POLICIES}; partitions {DEFAULT_PARTITIONS})",
    )
    g.add_argument(
        "--privacy-policies",
        default=None,
        metavar="LIST",
        help="comma-separated: send, local, blur, pixelate, noise[:SIGMA], drop (outside the region of interest), "
        "ACTION+drop; implies --sensitive",
    )
    g.add_argument(
        "--privacy-partitions",
        default=None,
        metavar="LIST",
        help="comma-separated: RxC (aligned grid, a server per tile), RxC@K, autoK (balanced layout for K servers); "
        "implies --sensitive",
    )
    g.add_argument("--sensitive-classes", default="face", help="face, or face,text (text: the PP-OCR detector)")
    g.add_argument(
        "--sensitive-frames", type=int, default=4, help="composited frames with known boxes per class (0 = none)"
    )
    g.add_argument(
        "--sensitive-photos",
        default="yes",
        choices=("yes", "no"),
        help="also the run's images (their faces: the attacker's detections on the whole frame)",
    )
    g.add_argument(
        "--sensitive-detector",
        default="default",
        help="the edge's detector (a make_detector spec, e.g. default, haar, mtcnn) or oracle (the known boxes)",
    )
    g.add_argument(
        "--sensitive-mode", default="exact", help="split mode of the mask agreement runs (exact, paper, k<N>)"
    )
    g.add_argument(
        "--sensitive-mask-images",
        type=int,
        default=2,
        help="mask agreement (and edge times) on the first N frames (0 = none; -1 = all)",
    )


def _sensitive_settings(args: argparse.Namespace, model: str):
    """The sensitive-content settings, or None when not asked for; raises ValueError for bad specs."""
    from ..core.model import parse_mode
    from ..eval import sensitive as sens

    if not (args.sensitive or args.privacy_policies is not None or args.privacy_partitions is not None):
        return None
    try:
        mode = parse_mode(args.sensitive_mode, model)
    except ValueError as e:
        raise ValueError(f"--sensitive-mode: {e}") from None
    if args.sensitive_frames < 0 or args.sensitive_mask_images < -1:
        raise ValueError("--sensitive-frames must be >= 0 and --sensitive-mask-images >= -1")
    if args.sensitive_detector.strip().lower() not in ("default", sens.ORACLE):
        from ..sensitive.detectors import make_detector

        try:
            make_detector(args.sensitive_detector)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"--sensitive-detector: {e}") from None
    return sens.SensitiveSettings(
        policies=sens.parse_policies(args.privacy_policies or sens.DEFAULT_POLICIES),
        partitions=sens.parse_partitions(args.privacy_partitions or sens.DEFAULT_PARTITIONS),
        classes=sens.parse_classes(args.sensitive_classes),
        frames=args.sensitive_frames,
        photos=args.sensitive_photos == "yes",
        detector=args.sensitive_detector,
        mode=mode,
        mask_images=None if args.sensitive_mask_images < 0 else args.sensitive_mask_images,
        seed=args.seed,
    )


class _UsageError(Exception):
    """A bad command line: printed as ``ped-sam-eval: <message>``, exit status 2."""


def _check_wire_and_profiles(args: argparse.Namespace) -> None:
    """--pixel-codec and the break-even profiles, checked before the run (ValueError naming the problem)."""
    from ..core.codecs import pixel_codec
    from ..eval.profiles import get_profile, load_profiles

    pixel_codec(args.pixel_codec)
    extra = load_profiles(args.profiles) if args.profiles else None
    for name in [*args.edge_profile, args.server_profile]:
        get_profile(name, extra)


def _settings(args: argparse.Namespace, argv: Optional[List[str]]):
    """The run's settings from the command line; raises :class:`_UsageError` for bad arguments."""
    from ..core.device import DeviceError, resolve_placement
    from ..core.model import CheckpointError, get_geometry, infer_geometry
    from ..eval.configs import parse_configs
    from ..eval.images import load_images
    from ..eval.runner import EvalSettings

    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise _UsageError(f"checkpoint {args.checkpoint} does not exist")
    if args.server_speedup <= 0:
        raise _UsageError("--server-speedup must be positive")
    try:
        if args.model:
            geom = get_geometry(args.model)
        else:
            geom = infer_geometry(args.checkpoint) if args.checkpoint else get_geometry(DEFAULT_MODEL)
        configs = parse_configs([args.configs])
        cost_models = [m.strip() for m in args.cost_models.split(",") if m.strip()]
        for m in cost_models:
            get_geometry(m)
        images = load_images(args.images, max_images=args.max_images or None, max_side=args.max_side or None)
        resolve_placement(args.device, args.precision, allow_fallback=args.precision_fallback)
        _check_wire_and_profiles(args)
        sensitive = _sensitive_settings(args, geom.spec)
    except (ValueError, FileNotFoundError, CheckpointError, DeviceError) as e:
        raise _UsageError(str(e)) from None
    return EvalSettings(
        model=geom.spec,
        checkpoint=args.checkpoint,
        seed=args.seed,
        configs=configs,
        images=images,
        wire_dtype=args.wire_dtype,
        pixel_codec=args.pixel_codec,
        edge_profiles=tuple(args.edge_profile),
        server_profile=args.server_profile,
        profiles_file=args.profiles,
        calibration=args.calibration,
        breakeven=not args.no_breakeven,
        point_grid=args.point_grid,
        amg_points=args.amg_points,
        amg_images=args.amg_images or None,
        cost_models=cost_models,
        time_full_size=not args.no_time_full_size,
        timing_cache=args.timing_cache,
        retime=args.retime,
        server_speedup=args.server_speedup,
        attack_all_servers=args.attack_all_servers,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        precision_fallback=args.precision_fallback,
        sensitive=sensitive,
        image_source=f"folder {args.images}" if args.images else "scikit-image sample photos",
        command=" ".join(["ped-sam-eval"] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]),
    )


def _announce(settings) -> None:
    """What is about to run, and under which assumption."""
    from ..core.model import get_geometry
    from ..eval.runner import server_assumption

    weights = f"checkpoint {settings.checkpoint}" if settings.checkpoint else "RANDOM WEIGHTS (no checkpoint given)"
    print(f"ped-sam-eval: model {settings.model}, {weights}, stages on {settings.device}/{settings.precision}")
    print(
        f"ped-sam-eval: {len(settings.images)} image(s) ({', '.join(n for n, _ in settings.images)}), "
        f"{len(settings.configs)} configurations ({', '.join(c.spec for c in settings.configs)})"
    )
    print(f"ped-sam-eval: assumption: {server_assumption(settings.server_speedup)}")
    ss = settings.sensitive
    if ss is not None:
        print(
            f"ped-sam-eval: sensitive content: policies {', '.join(p.name for p in ss.policies)}; partitions "
            f"{', '.join(p.name for p in ss.partitions)}; {ss.frames} composited frame(s) per class "
            f"({', '.join(ss.classes)}); edge detector {ss.detector}; mode {ss.mode}"
        )
    if get_geometry(settings.model).embed_dim >= 768 and not settings.checkpoint:
        print("ped-sam-eval: note: a full-width model with random weights is slow on a CPU", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from ..core.model import CheckpointError
    from ..eval.report import default_out_dir, write_report
    from ..eval.runner import Evaluation

    try:
        settings = _settings(args, argv)
    except _UsageError as e:
        print(f"ped-sam-eval: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_out_dir(settings.model)
    _announce(settings)
    t0 = time.perf_counter()
    try:
        results = Evaluation(settings, progress=not args.no_progress).run()
    except CheckpointError as e:
        print(f"ped-sam-eval: {e} (does --model match the checkpoint?)", file=sys.stderr)
        return 2
    files = write_report(results, settings.images, out)
    print(f"ped-sam-eval: finished in {time.perf_counter() - t0:.0f} s; report: {files['report.md']}")
    _print_headline(results.summary)
    return 0


def _print_headline(rows) -> None:
    """The headline table on the terminal (``rows``: the results' ConfigSummary list)."""
    from ..eval.markdown import f3, pct, secs

    if not rows:
        return
    g = rows[0].cost.cost_geometry
    print(
        f"{'configuration':<22}{'emb cos':>9}{'pt IoU':>8}{'max share':>11}{'SSIM':>7}"
        f"{'edge MACs':>11}{'@100Mbit/s':>12}   ({g}, fp16)"
    )
    for r in rows:
        ssim = f3(r.privacy.recon_ssim_inpaint) if r.servers else "n/a"
        print(
            f"{r.config:<22}{f3(r.fidelity.embedding_cosine, 4):>9}{f3(r.fidelity.point_iou):>8}"
            f"{pct(r.privacy.max_server_share):>11}{ssim:>7}"
            f"{pct(r.cost.edge_mac_share):>11}{secs(r.cost.latency_100mbit_s):>12}"
        )


if __name__ == "__main__":
    sys.exit(main())
