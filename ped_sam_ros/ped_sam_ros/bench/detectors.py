"""Benchmark of the edge's sensitive-content detectors on a composited set with known boxes.

The face set: real faces (the 100 faces of scikit-image's ``lfw_subset``, 25x25 grey
crops, and the astronaut's face from ``skimage.data.astronaut``) scaled so the face is
24..160 px and pasted, with feathered edges, at known non-overlapping positions onto
real photographs from ``skimage.data`` (coffee, chelsea, rocket, the Hubble deep field,
the stereo motorcycle, brick, gravel, coins) resized to the frame size.  The text set:
words drawn with OpenCV's Hershey fonts, 10..48 px high, on the same backgrounds.

A ground-truth object counts as found when some detection of its class has IoU >= 0.3
with it, or when each box's centre lies inside the other (detectors disagree on how
much forehead and chin a face box holds).  Every detection that matches no object is a
false positive.  Time per frame: min and median over the set, after one warm-up frame.

For the time budget the detector's time is compared with a vit_b edge stage (paper mode,
full width, random weights, 1024 input) measured in the same process.

``python -m ped_sam_ros.bench.detectors [--images N] [--json PATH]`` prints the table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ped_sam_ros.sensitive.detectors import (
    BlazeFaceDetector,
    DetectorUnavailable,
    HaarFaceDetector,
    HogPersonDetector,
    MtcnnFaceDetector,
    PpOcrTextDetector,
)
from ped_sam_ros.sensitive.types import Box, Detection, box_iou

FACE_SIZES: Tuple[int, ...] = (24, 32, 40, 56, 80, 112, 160)
TEXT_HEIGHTS: Tuple[int, ...] = (10, 14, 20, 28, 40)
WORDS = ("PRIVATE", "Invoice 2041", "password", "John Smith", "SSN 078-05", "ACME Corp", "screen", "42 Main St")


@dataclass
class Sample:
    rgb: np.ndarray
    objects: List[Tuple[str, Box, float]] = field(default_factory=list)  # class, box, size (px)


# ---------------------------------------------------------------------------
# The composited sets


def backgrounds(frame_hw: Tuple[int, int]) -> List[np.ndarray]:
    """Real photographs from skimage.data with no human face, cropped to the frame's aspect
    ratio and resized to ``frame_hw`` (grey ones replicated to RGB)."""
    import cv2
    from skimage import data

    raw = [
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        data.hubble_deep_field(),
        data.stereo_motorcycle()[0],
        data.brick(),
        data.gravel(),
        data.coins(),
    ]
    h, w = frame_hw
    out = []
    for img in raw:
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        ih, iw = img.shape[:2]
        if ih * w > iw * h:  # too tall: crop rows
            ch = iw * h // w
            img = img[(ih - ch) // 2 : (ih - ch) // 2 + ch]
        else:
            cw = ih * w // h
            img = img[:, (iw - cw) // 2 : (iw - cw) // 2 + cw]
        out.append(np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)))
    return out


def face_sources() -> List[Tuple[np.ndarray, Box]]:
    """(patch RGB uint8, face box inside the patch) for every face source."""
    from skimage import data

    out = []
    astro = data.astronaut()[20:220, 130:320]  # head and shoulders; the face is x 48..142, y 40..158
    out.append((np.ascontiguousarray(astro), (48.0, 40.0, 142.0, 158.0)))
    lfw = data.lfw_subset()[:100]  # the first 100 are faces (the rest are non-faces)
    for f in lfw:
        g = np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)
        out.append((np.stack([g] * 3, axis=-1), (0.0, 0.0, 25.0, 25.0)))
    return out


def _feathered_paste(canvas: np.ndarray, patch: np.ndarray, y: int, x: int, feather: float = 0.08) -> None:
    ph, pw = patch.shape[:2]
    fy = np.minimum(np.arange(ph) + 0.5, ph - np.arange(ph) - 0.5) / max(1.0, feather * ph)
    fx = np.minimum(np.arange(pw) + 0.5, pw - np.arange(pw) - 0.5) / max(1.0, feather * pw)
    alpha = np.clip(np.minimum(fy[:, None], fx[None, :]), 0.0, 1.0)[..., None]
    region = canvas[y : y + ph, x : x + pw].astype(np.float32)
    canvas[y : y + ph, x : x + pw] = (alpha * patch + (1 - alpha) * region + 0.5).astype(np.uint8)


def _place(rng, frame_hw, ph, pw, taken, tries=200) -> Optional[Tuple[int, int]]:
    h, w = frame_hw
    for _ in range(tries):
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        if all(
            y + ph + 8 <= ty or ty + th + 8 <= y or x + pw + 8 <= tx or tx + tw + 8 <= x for ty, tx, th, tw in taken
        ):
            return y, x
    return None


def face_set(
    n_images: int = 40,
    frame_hw: Tuple[int, int] = (480, 640),
    sizes: Sequence[int] = FACE_SIZES,
    per_image: int = 4,
    seed: int = 0,
) -> List[Sample]:
    """``n_images`` frames with ``per_image`` faces each; sizes are dealt round robin so each
    size gets the same count; every 4th face is the astronaut's, the others LFW faces."""
    import cv2

    rng = np.random.default_rng(seed)
    bgs = backgrounds(frame_hw)
    sources = face_sources()
    out, k = [], 0
    for i in range(n_images):
        canvas = bgs[i % len(bgs)].copy()
        sample, taken = Sample(canvas), []
        for _ in range(per_image):
            size = sizes[k % len(sizes)]
            src = sources[0] if k % 4 == 0 else sources[1 + int(rng.integers(0, len(sources) - 1))]
            k += 1
            patch, (fx0, fy0, fx1, fy1) = src
            scale = size / ((fx1 - fx0) * (fy1 - fy0)) ** 0.5
            ph, pw = max(1, round(patch.shape[0] * scale)), max(1, round(patch.shape[1] * scale))
            pos = _place(rng, frame_hw, ph, pw, taken)
            if pos is None:
                continue
            y, x = pos
            taken.append((y, x, ph, pw))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            _feathered_paste(canvas, cv2.resize(patch, (pw, ph), interpolation=interp), y, x)
            box = (x + fx0 * scale, y + fy0 * scale, x + fx1 * scale, y + fy1 * scale)
            sample.objects.append(("face", box, float(size)))
        out.append(sample)
    return out


def text_set(
    n_images: int = 16,
    frame_hw: Tuple[int, int] = (480, 640),
    heights: Sequence[int] = TEXT_HEIGHTS,
    per_image: int = 4,
    seed: int = 1,
) -> List[Sample]:
    """Frames with words of known boxes (dark on a light plate or light on a dark one)."""
    import cv2

    rng = np.random.default_rng(seed)
    bgs = backgrounds(frame_hw)
    out, k = [], 0
    for i in range(n_images):
        canvas = bgs[i % len(bgs)].copy()
        sample, taken = Sample(canvas), []
        for _ in range(per_image):
            height = heights[k % len(heights)]
            word = WORDS[int(rng.integers(0, len(WORDS)))]
            k += 1
            font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, height // 10)
            scale = cv2.getFontScaleFromHeight(font, height, thick)
            (tw, th), base = cv2.getTextSize(word, font, scale, thick)
            pad = max(3, height // 3)
            ph, pw = th + base + 2 * pad, tw + 2 * pad
            if pw >= frame_hw[1]:
                continue
            pos = _place(rng, frame_hw, ph, pw, taken)
            if pos is None:
                continue
            y, x = pos
            taken.append((y, x, ph, pw))
            dark = bool(rng.integers(0, 2))
            plate, ink = ((235, 235, 225), (20, 20, 30)) if dark else ((30, 30, 40), (240, 240, 230))
            canvas[y : y + ph, x : x + pw] = plate
            cv2.putText(canvas, word, (x + pad, y + pad + th), font, scale, ink, thick, cv2.LINE_AA)
            sample.objects.append(
                (
                    "text",
                    (float(x + pad), float(y + pad), float(x + pad + tw), float(y + pad + th + base)),
                    float(height),
                )
            )
        out.append(sample)
    return out


# ---------------------------------------------------------------------------
# Scoring


def matches(det: Box, gt: Box, iou: float = 0.3) -> bool:
    """IoU >= ``iou``, or each box's centre inside the other."""
    if box_iou(det, gt) >= iou:
        return True
    dcx, dcy = (det[0] + det[2]) / 2, (det[1] + det[3]) / 2
    gcx, gcy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
    return gt[0] <= dcx <= gt[2] and gt[1] <= dcy <= gt[3] and det[0] <= gcx <= det[2] and det[1] <= gcy <= det[3]


def score_sample(dets: Sequence[Detection], objects: Sequence[Tuple[str, Box, float]]) -> Tuple[List[bool], int]:
    """(found flag per object, number of false positives); one detection matches one object."""
    used = [False] * len(dets)
    found = []
    for cls, box, _ in objects:
        hit = False
        for j in sorted(range(len(dets)), key=lambda j: -box_iou(dets[j].box, box)):
            if not used[j] and dets[j].cls == cls and matches(dets[j].box, box):
                used[j], hit = True, True
                break
        found.append(hit)
    classes = {c for c, _, _ in objects}
    fp = sum(1 for j, d in enumerate(dets) if not used[j] and (d.cls in classes or not classes))
    return found, fp


def evaluate(detector, samples: Sequence[Sample], sizes: Sequence[float], cls: str) -> Dict:
    """Recall per object size, false positives per image, time per frame."""
    detector.detect(samples[0].rgb)  # warm-up
    hits: Dict[float, List[bool]] = {float(s): [] for s in sizes}
    fps, times = [], []
    for smp in samples:
        t0 = time.perf_counter()
        dets = [d for d in detector.detect(smp.rgb) if d.cls == cls]
        times.append(time.perf_counter() - t0)
        found, fp = score_sample(dets, [o for o in smp.objects if o[0] == cls])
        for (_, _, size), f in zip([o for o in smp.objects if o[0] == cls], found):
            hits[float(size)].append(f)
        fps.append(fp)
    recall = {str(int(s)): (sum(v) / len(v) if v else None) for s, v in hits.items()}
    counts = {str(int(s)): len(v) for s, v in hits.items()}
    return {
        "recall_by_size": recall,
        "count_by_size": counts,
        "fp_per_image": float(np.mean(fps)),
        "time_min_s": min(times),
        "time_median_s": statistics.median(times),
    }


def recall_at_least(result: Dict, min_size: float) -> Optional[float]:
    """Recall over all objects of at least ``min_size`` pixels."""
    n = k = 0
    for s, r in result["recall_by_size"].items():
        if r is not None and float(s) >= min_size:
            c = result["count_by_size"][s]
            n += c
            k += r * c
    return k / n if n else None


def _edge_stage(model: str):
    """A paper-mode edge stage with random weights (full width)."""
    from ped_sam_ros.core.model import EdgeStage

    edge = EdgeStage(model, "paper")  # random weights (seed 0) by default
    if getattr(edge, "weights", None) is None and hasattr(edge, "load_random"):
        edge.load_random(0)
    return edge.eval()


def edge_stage_time(model: str = "vit_b", repeats: int = 2) -> Optional[float]:
    """Min seconds of one paper-mode edge stage forward (full width, random weights)."""
    import torch

    edge = _edge_stage(model)
    g = edge.geometry
    x = torch.randn(1, g.token_grid, g.token_grid, g.embed_dim)
    best = None
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            edge(x)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
    return best


def interleaved_timing(
    names: Sequence[str], samples: Sequence[Sample], rounds: int = 3, frames_per_round: int = 4
) -> Dict:
    """Edge stage and detectors timed in alternation (edge, each detector on a few frames,
    edge, ...), so both see the same machine load; min over everything per component."""
    import torch

    edge = _edge_stage("vit_b")
    g = edge.geometry
    x = torch.randn(1, g.token_grid, g.token_grid, g.embed_dim)
    dets = {n: FACE_CANDIDATES[n]() for n in names}
    for d in dets.values():
        d.detect(samples[0].rgb)
    times: Dict[str, List[float]] = {"edge": [], **{n: [] for n in names}}
    with torch.no_grad():
        for r in range(rounds):
            t0 = time.perf_counter()
            edge(x)
            times["edge"].append(time.perf_counter() - t0)
            for n, d in dets.items():
                for smp in samples[r * frames_per_round : (r + 1) * frames_per_round]:
                    t0 = time.perf_counter()
                    d.detect(smp.rgb)
                    times[n].append(time.perf_counter() - t0)
    edge_min = min(times["edge"])
    return {
        "edge_stage_vit_b_paper_min_s": edge_min,
        "edge_stage_all_s": times["edge"],
        "detectors": {
            n: {
                "min_s": min(v),
                "median_s": statistics.median(v),
                "ratio_min_to_edge_min": min(v) / edge_min,
                "ratio_median_to_edge_min": statistics.median(v) / edge_min,
            }
            for n, v in times.items()
            if n != "edge"
        },
    }


FACE_CANDIDATES = {
    "haar": lambda: HaarFaceDetector(),
    "mtcnn (min face 20)": lambda: MtcnnFaceDetector(min_face_size=20),
    "mtcnn (min face 32)": lambda: MtcnnFaceDetector(min_face_size=32),
    "blazeface full": lambda: BlazeFaceDetector("full"),
    "blazeface full + 320 px tiles": lambda: BlazeFaceDetector("full", tile=320),
    "blazeface short + 256 px tiles": lambda: BlazeFaceDetector("short", tile=256),
}


def run(
    n_images: int, text_images: int, frame_hw: Tuple[int, int], only: Optional[Sequence[str]] = None, edge: bool = True
) -> Dict:
    faces = face_set(n_images, frame_hw)
    texts = text_set(text_images, frame_hw)
    report: Dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()}",
        "frame_hw": list(frame_hw),
        "face_images": len(faces),
        "faces": sum(len(s.objects) for s in faces),
        "text_images": len(texts),
        "words": sum(len(s.objects) for s in texts),
        "match_rule": "IoU >= 0.3, or each box's centre inside the other",
        "face": {},
        "text": {},
        "person": {},
    }
    for name, make in FACE_CANDIDATES.items():
        if only and not any(o in name for o in only):
            continue
        try:
            det = make()
        except DetectorUnavailable as e:
            report["face"][name] = {"unavailable": str(e)}
            continue
        report["face"][name] = evaluate(det, faces, FACE_SIZES, "face")
        report["face"][name]["recall_40px_up"] = recall_at_least(report["face"][name], 40)
    if not only or any("ppocr" in o for o in only):
        try:
            det = PpOcrTextDetector()
            report["text"]["ppocr"] = evaluate(det, texts, TEXT_HEIGHTS, "text")
            report["text"]["ppocr"]["fp_per_image_on_face_set"] = evaluate(det, faces, (), "text")["fp_per_image"]
        except DetectorUnavailable as e:
            report["text"]["ppocr"] = {"unavailable": str(e)}
    if not only or any("hog" in o for o in only):
        # no person ground truth in the set: false positives per image and time only
        r = evaluate(HogPersonDetector(), faces, (), "person")
        report["person"]["hog"] = {
            "fp_per_image": r["fp_per_image"],
            "time_min_s": r["time_min_s"],
            "time_median_s": r["time_median_s"],
        }
    if edge:
        report["edge_stage_vit_b_paper_s"] = edge_stage_time()
    return report


def print_table(rep: Dict) -> None:
    edge = rep.get("edge_stage_vit_b_paper_s")
    print(
        f"faces: {rep['faces']} in {rep['face_images']} frames of {rep['frame_hw'][1]}x{rep['frame_hw'][0]}; "
        f"match: {rep['match_rule']}"
    )
    head = "| detector | " + " | ".join(f"{s} px" for s in FACE_SIZES) + " | >=40 px | FP/img | ms min | ms med |"
    if edge:
        head += " % of edge |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, r in rep["face"].items():
        if "unavailable" in r:
            print(f"| {name} | unavailable: {r['unavailable']} |")
            continue
        cells = [
            ("-" if r["recall_by_size"][str(s)] is None else f"{r['recall_by_size'][str(s)]:.2f}") for s in FACE_SIZES
        ]
        line = (
            f"| {name} | " + " | ".join(cells) + f" | {r['recall_40px_up']:.3f} | {r['fp_per_image']:.2f} | "
            f"{r['time_min_s'] * 1e3:.0f} | {r['time_median_s'] * 1e3:.0f} |"
        )
        if edge:
            line += f" {100 * r['time_min_s'] / edge:.1f} |"
        print(line)
    for name, r in rep["text"].items():
        if "unavailable" in r:
            print(f"text {name}: unavailable: {r['unavailable']}")
            continue
        rec = ", ".join(f"{h} px {v:.2f}" for h, v in r["recall_by_size"].items() if v is not None)
        print(
            f"text {name} ({rep['words']} words): recall {rec}; FP/img {r['fp_per_image']:.2f} "
            f"(on the face set {r['fp_per_image_on_face_set']:.2f}); ms min {r['time_min_s'] * 1e3:.0f}, "
            f"median {r['time_median_s'] * 1e3:.0f}"
        )
    for name, r in rep["person"].items():
        print(
            f"person {name}: FP/img on the face set {r['fp_per_image']:.2f}; ms min {r['time_min_s'] * 1e3:.0f}, "
            f"median {r['time_median_s'] * 1e3:.0f}"
        )
    if edge:
        print(f"vit_b paper edge stage (full width, random weights, 1024 input): {edge:.2f} s (min)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=42, help="face frames (4 faces each)")
    ap.add_argument("--text-images", type=int, default=16, help="text frames (4 words each)")
    ap.add_argument("--frame", default="480x640", help="frame HxW")
    ap.add_argument("--only", nargs="*", help="substrings of the detector names to run")
    ap.add_argument("--no-edge", action="store_true", help="skip timing the vit_b edge stage")
    ap.add_argument("--json", default="detectors.json", help="where to write the results")
    ap.add_argument(
        "--interleaved",
        nargs="*",
        metavar="NAME",
        help="only time these face detectors against the edge stage, in alternation",
    )
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.frame.lower().split("x"))
    if args.interleaved:
        rep = interleaved_timing(args.interleaved, face_set(12, (h, w)))
        print(
            f"vit_b paper edge stage: min {rep['edge_stage_vit_b_paper_min_s']:.2f} s "
            f"(runs: {', '.join(f'{t:.1f}' for t in rep['edge_stage_all_s'])})"
        )
        for n, r in rep["detectors"].items():
            print(
                f"{n}: min {r['min_s'] * 1e3:.0f} ms ({100 * r['ratio_min_to_edge_min']:.1f} % of the edge stage), "
                f"median {r['median_s'] * 1e3:.0f} ms ({100 * r['ratio_median_to_edge_min']:.1f} %)"
            )
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
        return 0
    rep = run(args.images, args.text_images, (h, w), args.only, not args.no_edge)
    print_table(rep)
    with open(args.json, "w") as f:
        json.dump(rep, f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
