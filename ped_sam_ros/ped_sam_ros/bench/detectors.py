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

``--budget [NAME ...]`` measures the detectors the way the edge runs them
(:meth:`ped_sam_ros.edge.privacy.PrivacyHook.detect` on the frame resized for SAM, told the
smallest face that matters, 40 px of the camera frame): recall, false positives and time per
frame, interleaved with the edge stage in one run, so the time ratio comes from one machine load.
"""

from __future__ import annotations

import argparse
import json
import os
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


class MtcnnAsBefore:
    """MTCNN as the edge ran it until 2026-12-02: facenet-pytorch's ``MTCNN.detect`` on the whole
    resized frame with its smallest face at 32 px of that frame, networks in the default memory
    format; kept only to measure what :class:`MtcnnFaceDetector` gained."""

    name = "mtcnn-before"
    classes = ("face",)

    def __init__(self, min_face_size: int = 32):
        from facenet_pytorch.models.mtcnn import MTCNN

        self._mtcnn = MTCNN(
            min_face_size=min_face_size, thresholds=[0.6, 0.7, 0.7], keep_all=True, post_process=False, device="cpu"
        )

    def detect(self, rgb: np.ndarray) -> List[Detection]:
        import torch

        with torch.no_grad():
            boxes, probs = self._mtcnn.detect(rgb)
        if boxes is None:
            return []
        return [
            Detection("face", tuple(float(v) for v in b), float(p), self.name)
            for b, p in zip(boxes, probs)
            if p is not None and p >= 0.9
        ]


#: what ``--budget`` compares: each built as the edge builds its detector, and run as the edge runs
#: it (:meth:`ped_sam_ros.edge.privacy.PrivacyHook.detect` on the frame resized for SAM, told the
#: smallest face that matters, 40 px of the camera frame)
BUDGET_CANDIDATES = {
    "mtcnn": lambda: MtcnnFaceDetector(),  # make_detector("default")
    "mtcnn as before": lambda: MtcnnAsBefore(32),
    "mtcnn work 32 px": lambda: MtcnnFaceDetector(work_size=32),
    "mtcnn margin 1.0": lambda: MtcnnFaceDetector(margin=1.0),
    "haar": lambda: HaarFaceDetector(),
}
BUDGET_DEFAULT = ("mtcnn", "mtcnn as before", "haar")


def pipeline_frames(samples: Sequence[Sample]) -> List[np.ndarray]:
    """Each frame resized as SAM's preprocessing resizes it (``ResizeLongestSide(1024)``): the
    uint8 frame the edge's privacy hook receives."""
    from segment_anything.utils.transforms import ResizeLongestSide

    rs = ResizeLongestSide(1024)
    return [rs.apply_image(s.rgb) for s in samples]


def budget(
    names: Sequence[str],
    samples: Sequence[Sample],
    rounds: int = 6,
    model: str = "vit_b",
    min_face_px: float = 40.0,
) -> Dict:
    """Recall, false positives and time of each detector as the edge runs it, and the edge stage's
    time, in one run: ``rounds`` rounds of (edge stage once, then every detector on the round's
    share of the frames), so the detectors and the edge stage see the same machine load.
    Ratios: detector min / edge min, detector median / edge median, and per round the detector's
    median over the round's frames / the round's edge run (median and worst over the rounds:
    the load changes between rounds on a shared machine)."""
    import torch

    from ped_sam_ros.edge.privacy import PrivacyHook

    edge = _edge_stage(model)
    g = edge.geometry
    x = torch.randn(1, g.token_grid, g.token_grid, g.embed_dim)
    hooks = {n: PrivacyHook(BUDGET_CANDIDATES[n](), min_face_px=min_face_px) for n in names}
    frames = pipeline_frames(samples)
    for h in hooks.values():
        h.detect(frames[0], samples[0].rgb.shape[:2])  # warm-up (first-call allocations)
    times: Dict[str, List[float]] = {"edge": [], **{n: [] for n in names}}
    round_ratio: Dict[str, List[float]] = {n: [] for n in names}  # per round: detector median / that edge run
    hits: Dict[str, Dict[float, List[bool]]] = {n: {float(s): [] for s in FACE_SIZES} for n in names}
    fps: Dict[str, List[int]] = {n: [] for n in names}
    per_round = -(-len(samples) // rounds)
    with torch.no_grad():
        for r in range(rounds):
            t0 = time.perf_counter()
            edge(x)
            times["edge"].append(time.perf_counter() - t0)
            chunk = range(r * per_round, min(len(samples), (r + 1) * per_round))
            for n, hook in hooks.items():
                start = len(times[n])
                for k in chunk:
                    smp, frame = samples[k], frames[k]
                    t0 = time.perf_counter()
                    dets = hook.detect(frame, smp.rgb.shape[:2])
                    times[n].append(time.perf_counter() - t0)
                    found, fp = score_sample([d for d in dets if d.cls == "face"], smp.objects)
                    for (_, _, size), f in zip(smp.objects, found):
                        hits[n][float(size)].append(f)
                    fps[n].append(fp)
                if len(times[n]) > start:
                    round_ratio[n].append(statistics.median(times[n][start:]) / times["edge"][-1])
    e_min, e_med = min(times["edge"]), statistics.median(times["edge"])
    out: Dict = {
        "model": f"{model} paper edge stage (random weights, 1024 input)",
        "torch_threads": torch.get_num_threads(),
        "min_face_px": min_face_px,
        "frames": len(samples),
        "faces": sum(len(s.objects) for s in samples),
        "frame_hw": list(samples[0].rgb.shape[:2]),
        "rounds": rounds,
        "edge_s": times["edge"],
        "edge_min_s": e_min,
        "edge_median_s": e_med,
        "detectors": {},
    }
    for n in names:
        v = times[n]
        res = {
            "recall_by_size": {str(int(s)): (sum(h) / len(h) if h else None) for s, h in hits[n].items()},
            "count_by_size": {str(int(s)): len(h) for s, h in hits[n].items()},
            "fp_per_image": float(np.mean(fps[n])),
            "time_min_s": min(v),
            "time_median_s": statistics.median(v),
        }
        res["recall_40px_up"] = recall_at_least(res, 40)
        res["ratio_min"] = res["time_min_s"] / e_min
        res["ratio_median"] = res["time_median_s"] / e_med
        res["ratio_per_round"] = round_ratio[n]
        res["ratio_per_round_median"] = statistics.median(round_ratio[n])
        res["ratio_per_round_max"] = max(round_ratio[n])
        out["detectors"][n] = res
    return out


def print_budget(rep: Dict) -> None:
    h, w = rep["frame_hw"]
    print(
        f"{rep['faces']} faces in {rep['frames']} frames of {w}x{h}, run as the edge runs them (frame resized "
        f"for SAM, smallest face {rep['min_face_px']:.0f} px of the camera frame); torch threads "
        f"{rep['torch_threads']}; {rep['rounds']} rounds"
    )
    print(
        f"edge stage: {rep['model']}: min {rep['edge_min_s']:.2f} s, median {rep['edge_median_s']:.2f} s "
        f"(runs {', '.join(f'{t:.1f}' for t in rep['edge_s'])})"
    )
    head = (
        "| detector | "
        + " | ".join(f"{s} px" for s in FACE_SIZES)
        + " | recall >= 40 px | FP / frame | ms min | ms median | min / edge min | median / edge median"
        + " | per round: median, worst |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for n, r in rep["detectors"].items():
        cells = " | ".join(
            "-" if r["recall_by_size"][str(s)] is None else f"{r['recall_by_size'][str(s)]:.2f}" for s in FACE_SIZES
        )
        print(
            f"| {n} | {cells} | {r['recall_40px_up']:.3f} | {r['fp_per_image']:.2f} | {r['time_min_s'] * 1e3:.0f} | "
            f"{r['time_median_s'] * 1e3:.0f} | {100 * r['ratio_min']:.2f} % | {100 * r['ratio_median']:.2f} % | "
            f"{100 * r['ratio_per_round_median']:.2f} %, {100 * r['ratio_per_round_max']:.2f} % |"
        )


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
        "--budget",
        nargs="*",
        metavar="NAME",
        help=f"recall, false positives and time of these detectors as the edge runs them, interleaved with the "
        f"edge stage (one of {sorted(BUDGET_CANDIDATES)}; none given: {list(BUDGET_DEFAULT)})",
    )
    ap.add_argument("--rounds", type=int, default=6, help="--budget: edge-stage runs (the frames are split among them)")
    ap.add_argument(
        "--min-face", type=float, default=40.0, help="--budget: smallest face that matters (px of the frame)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as the edge node)")
    ap.add_argument("--edge-model", default="vit_b", help="--budget: the edge stage timed beside the detectors")
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.frame.lower().split("x"))
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.budget is not None:
        names = list(args.budget) or list(BUDGET_DEFAULT)
        unknown = [n for n in names if n not in BUDGET_CANDIDATES]
        if unknown:
            ap.error(f"unknown detector(s) {unknown}; known: {sorted(BUDGET_CANDIDATES)}")
        load_start = list(os.getloadavg())
        rep = budget(
            names, face_set(args.images, (h, w)), rounds=args.rounds, model=args.edge_model, min_face_px=args.min_face
        )
        rep["load_average_start"] = load_start
        rep["date"] = time.strftime("%Y-%m-%d")
        rep["machine"] = f"{platform.machine()} {platform.processor()}, {os.cpu_count()} CPUs"
        rep["load_average"] = list(os.getloadavg())
        print_budget(rep)
        print(
            "load average (1, 5, 15 min) at the start: "
            + ", ".join(f"{v:.2f}" for v in load_start)
            + "; at the end: "
            + ", ".join(f"{v:.2f}" for v in rep["load_average"])
        )
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
        print(f"wrote {args.json}")
        return 0
    rep = run(args.images, args.text_images, (h, w), args.only, not args.no_edge)
    print_table(rep)
    with open(args.json, "w") as f:
        json.dump(rep, f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
