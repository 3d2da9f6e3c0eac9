"""Sensitive content per privacy policy and partition: what single servers get of faces (and text).

For a set of frames whose sensitive objects have known boxes, every (policy x partition) cell
runs the edge's real policy path (:class:`~ped_sam_ros.edge.privacy.PrivacyHook`, the
distributed encoder's frame hook) and measures, per class:

* **seen whole**: objects some single server receives whole *and unaltered* (local and dropped
  tiles are not received; obfuscated pixels are received, but altered); also *received whole*,
  in any form (blurred, pixelated, noised);
* **found**: objects the attacker's own detector finds on what one server received.  The
  attacker runs the strongest detector available (MTCNN with its smallest face at 32 px of the
  1024-px frame a server receives, i.e. 20 px of a 640-px frame: the most sensitive setting of
  the detector benchmark; PP-OCR for text) on that server's view (its crops in place, the rest
  black), cut around each object with a margin of half the object's size.
  Only views holding some pixel of the object are attacked; cutting the view around the object
  only spares the attacker distractors, so it favours the attacker if anything.  A hit is a
  detection with IoU >= 0.3 with the object's box, or with each box's centre inside the other
  (the detector benchmark's rule);
* **reconstruction**: per object, the server whose reconstruction of the object's box is best
  (SSIM): OpenCV's Telea inpainting of everything it did not receive in a window around the
  object (the box grown by half its size on each side), obfuscated pixels kept as received;
  beside it the mean-fill floor (unreceived pixels of the window set to the mean of the received
  ones).  Servers with no pixel in the window are not candidates; when no server has one, the
  object scores as a flat mid-grey fill.  PSNR comes from the mean squared error over the
  objects (finite unless every object is recovered exactly);
* **mask agreement**: IoU of PED-SAM's masks with plain SAM's (same weights) for single-point
  prompts ON the sensitive objects (their box centres) and OFF them (a point grid, points within
  25 % of any object's box left out).  With random weights this is agreement with plain SAM on
  the same random weights, never segmentation quality.  The tokens travel as float32, so only the
  policy (and the mode) changes them;
* **edge time** the policy adds per frame: the detector (when the policy needs one), planning and
  obfuscation, and the local tiles' remote stage on the edge; and that as a share of the edge
  stage (the edge's encoder blocks) measured in the same cell.

The ``drop`` policies take one point prompt at the frame's centre as the region of interest (the
ROI is that point grown by the policy's margin, one SAM window); their mask agreement is over the
prompts inside the ROI only.  The other policies run in automatic mode (ROI = whole frame).

Frames: the detector benchmark's composited sets (:func:`ped_sam_ros.bench.detectors.face_set`,
``text_set``; known boxes) and, optionally, the run's own photos, whose reference boxes are the
attacker's detections on the full original frame.  No ROS, no network.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.geometry import Partition, PartitionError, round_robin_assignment, server_shares
from ..core.pipeline import DistributedEncoder, ObjectPrompt, PedSamPredictor
from ..core.transport import LocalTransport
from ..sensitive.policy import PolicyConfig
from ..sensitive.types import Detection
from .sensitive_records import (
    CellSummary,
    ClassFigures,
    ObjectOutcome,
    SensitiveCell,
    SensitiveImageInfo,
    SensitiveSection,
    csv_rows,
    section_lines,
    summarize,
)

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1
Region = Tuple[int, int, int, int]  # y0, y1, x0, x1 (integer pixels, exclusive ends)

#: classes this evaluation knows how to composite and attack
CLASSES: Tuple[str, ...] = ("face", "text")
ACTIONS: Tuple[str, ...] = ("send", "local", "blur", "pixelate", "noise")
DEFAULT_POLICIES = "send,local,blur,pixelate,noise:25,drop"
DEFAULT_PARTITIONS = "2x2,3x3,5x5,auto4,auto9"
#: objects whose largest unaltered fraction on one server reaches this count as seen whole
WHOLE = 0.999
#: the attack / reconstruction window: the box grown by this fraction of its size on each side
WINDOW_MARGIN = 0.5
#: OFF prompts closer than this fraction of a box's size to any sensitive box are left out
OFF_MARGIN = 0.25
ORACLE = "oracle"


__all__ = [
    "Attacker",
    "CellSummary",
    "ClassFigures",
    "ObjectOutcome",
    "PartitionSpec",
    "PolicySpec",
    "SensitiveCell",
    "SensitiveEvaluation",
    "SensitiveImage",
    "SensitiveImageInfo",
    "SensitiveSection",
    "SensitiveSettings",
    "SensitiveSpecError",
    "StageSet",
    "composited_images",
    "csv_rows",
    "parse_classes",
    "parse_partitions",
    "parse_policies",
    "photo_images",
    "section_lines",
    "summarize",
]


class SensitiveSpecError(ValueError):
    """A policy or partition spec of the sensitive-content evaluation that cannot be used."""


# ---------------------------------------------------------------------------
# Specs: policies and partitions

_POLICY = re.compile(r"(send|local|blur|pixelate|noise)(?::([^+]*))?(\+drop)?")
_GRID = re.compile(r"(\d+)x(\d+)(?:@(\d+))?")
_AUTO = re.compile(r"auto(\d+)")


@dataclass(frozen=True)
class PolicySpec:
    """One policy of the table: the action for every evaluated class, and whether tiles outside
    the region of interest are dropped.  ``name`` is the spec item (``noise:25``, ``local+drop``)."""

    name: str
    action: str
    noise_sigma: Optional[float] = None  # noise only; None = PolicyConfig's default
    drop_outside_roi: bool = False

    @property
    def needs_detector(self) -> bool:
        """Whether the edge must run its detector for this policy (``drop`` alone needs only the prompts)."""
        return self.action != "send"

    @property
    def label(self) -> str:
        """Human-readable: ``noise (sigma 25)``, ``drop outside the ROI``, ``local + drop outside the ROI``."""
        base = self.action
        if self.action == "noise":
            base = f"noise (sigma {self.config(('face',)).noise_sigma:g})"
        if not self.drop_outside_roi:
            return base
        return "drop outside the ROI" if self.action == "send" else f"{base} + drop outside the ROI"

    def config(self, classes: Sequence[str]) -> PolicyConfig:
        """The :class:`PolicyConfig` the edge runs for this policy."""
        extra = {} if self.noise_sigma is None else {"noise_sigma": float(self.noise_sigma)}
        return PolicyConfig(
            actions={c: self.action for c in classes},
            outside_roi="drop" if self.drop_outside_roi else "send",
            **extra,
        )


def parse_policies(spec: str) -> List[PolicySpec]:
    """``"send,local,blur,pixelate,noise:25,drop,local+drop"`` -> policies (duplicates dropped).

    Items: ``send`` (today: every tile sent), ``local``, ``blur``, ``pixelate``, ``noise[:SIGMA]``
    (SIGMA in 0..255 pixel units; PolicyConfig's default without it), each applied to every
    evaluated class; ``drop`` (tiles outside the region of interest are not computed, sensitive
    objects sent); ``ACTION+drop`` both."""
    out: Dict[str, PolicySpec] = {}
    for item in (p.strip().lower() for p in str(spec or "").split(",")):
        if not item:
            continue
        if item == "drop":
            out.setdefault(item, PolicySpec(item, "send", None, True))
            continue
        m = _POLICY.fullmatch(item)
        if not m:
            raise SensitiveSpecError(
                f"bad privacy policy {item!r}: use {', '.join(ACTIONS[:-1])}, noise[:SIGMA] (SIGMA in 0..255 "
                "pixel units), drop (tiles outside the region of interest), or ACTION+drop, e.g. "
                "send,local,blur,noise:25,drop"
            )
        action, sigma, drop = m.groups()
        value = None
        if sigma is not None:
            if action != "noise":
                raise SensitiveSpecError(f"bad privacy policy {item!r}: only noise takes a parameter (noise:SIGMA)")
            try:
                value = float(sigma)
            except ValueError:
                raise SensitiveSpecError(
                    f"bad privacy policy {item!r}: SIGMA must be a number, got {sigma!r}"
                ) from None
            if not 0 <= value <= 255 or not math.isfinite(value):
                raise SensitiveSpecError(f"bad privacy policy {item!r}: SIGMA must be in 0..255, got {value:g}")
        out.setdefault(item, PolicySpec(item, action, value, bool(drop)))
    if not out:
        raise SensitiveSpecError("no privacy policy given (e.g. send,local,blur,noise:25,drop)")
    return list(out.values())


@dataclass(frozen=True)
class PartitionSpec:
    """A server layout of the table: ``RxC`` (token-aligned grid, one server per tile, or ``@K``
    servers round robin) or ``autoK`` (the balanced layout of :func:`~ped_sam_ros.core.layout.best_layout`
    for each frame's content shape and K servers)."""

    name: str
    grid: Optional[Tuple[int, int]] = None
    servers: Optional[int] = None  # grid: None = one per tile; auto: K

    @property
    def is_auto(self) -> bool:
        return self.grid is None

    @property
    def max_servers(self) -> int:
        return self.servers if self.servers is not None else self.grid[0] * self.grid[1]

    def layout(self, content_hw: Tuple[int, int]) -> Tuple[Partition, List[int], str]:
        """(partition, assignment, layout name) for a frame of this content shape."""
        if self.is_auto:
            from ..core.layout import best_layout

            lay = best_layout(tuple(int(v) for v in content_hw), int(self.servers))
            return lay.partition, list(lay.assignment), f"{lay.partition.name} over {self.servers}"
        part = Partition.grid(*self.grid)
        n = self.max_servers
        assign = list(range(n)) if n == len(part) else round_robin_assignment(part, n)
        return part, assign, part.name if n == len(part) else f"{part.name} over {n}"


def parse_partitions(spec: str) -> List[PartitionSpec]:
    """``"2x2,3x3,5x5,auto4,auto9"`` -> partitions (duplicates dropped), checked now."""
    out: Dict[str, PartitionSpec] = {}
    for item in (p.strip().lower() for p in str(spec or "").split(",")):
        if not item:
            continue
        m, a = _GRID.fullmatch(item), _AUTO.fullmatch(item)
        if m:
            r, c = int(m.group(1)), int(m.group(2))
            try:
                part = Partition.grid(r, c)
            except PartitionError as e:
                raise SensitiveSpecError(f"bad partition {item!r}: {e}") from None
            if len(part) != r * c:
                raise SensitiveSpecError(f"bad partition {item!r}: not a {r}x{c} grid of aligned tiles")
            k = int(m.group(3)) if m.group(3) else None
            if k is not None and not 1 <= k <= len(part):
                raise SensitiveSpecError(f"bad partition {item!r}: servers must be 1..{len(part)} for {r}x{c}")
            out.setdefault(item, PartitionSpec(item, (r, c), k))
        elif a:
            k = int(a.group(1))
            if not 1 <= k <= 25:
                raise SensitiveSpecError(f"bad partition {item!r}: autoK needs 1 <= K <= 25 servers")
            out.setdefault(item, PartitionSpec(item, None, k))
        else:
            raise SensitiveSpecError(
                f"bad partition {item!r}: use RxC (token-aligned grid, one server per tile, R and C in 1..5), "
                "RxC@K (K servers round robin) or autoK (the balanced layout for K servers), e.g. 2x2,5x5,auto4"
            )
    if not out:
        raise SensitiveSpecError("no partition given (e.g. 2x2,3x3,5x5,auto4,auto9)")
    return list(out.values())


def parse_classes(spec: str) -> Tuple[str, ...]:
    names = tuple(dict.fromkeys(c.strip().lower() for c in str(spec or "").split(",") if c.strip()))
    bad = [c for c in names if c not in CLASSES]
    if bad or not names:
        raise SensitiveSpecError(f"sensitive classes must be among {list(CLASSES)}, got {spec!r}")
    return names


@dataclass
class SensitiveSettings:
    """What the sensitive-content evaluation runs (``ped-sam-eval --sensitive``)."""

    policies: List[PolicySpec] = field(default_factory=lambda: parse_policies(DEFAULT_POLICIES))
    partitions: List[PartitionSpec] = field(default_factory=lambda: parse_partitions(DEFAULT_PARTITIONS))
    classes: Tuple[str, ...] = ("face",)
    frames: int = 4  # composited frames per class
    frame_hw: Tuple[int, int] = (480, 640)
    photos: bool = True  # the run's own images too (reference boxes: the attacker on the full frame)
    detector: str = "default"  # the edge's detector (make_detector spec), or "oracle" (the known boxes)
    mode: str = "exact"
    mask_images: Optional[int] = 2  # mask agreement on the first N frames (None = all, 0 = none)
    off_grid: int = 3  # NxN grid of OFF prompts
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 0 or self.off_grid < 1 or (self.mask_images is not None and self.mask_images < 0):
            raise SensitiveSpecError("frames >= 0, off_grid >= 1 and mask_images >= 0 needed")
        self.classes = parse_classes(",".join(self.classes))

    @property
    def max_servers(self) -> int:
        return max(p.max_servers for p in self.partitions)


# ---------------------------------------------------------------------------
# Frames with sensitive objects


@dataclass(frozen=True)
class SensitiveImage:
    """A frame and its sensitive objects: (class, box in original pixels), with where the boxes come from."""

    name: str
    rgb: np.ndarray
    objects: Tuple[Tuple[str, Box], ...]
    truth: str


def composited_images(
    classes: Sequence[str], frames: int, frame_hw: Tuple[int, int] = (480, 640), seed: int = 0
) -> List[SensitiveImage]:
    """The detector benchmark's composited frames (known boxes): ``frames`` per class."""
    from ..bench import detectors as bench

    out: List[SensitiveImage] = []
    if frames <= 0:
        return out
    if "face" in classes:
        for i, smp in enumerate(bench.face_set(n_images=frames, frame_hw=frame_hw, seed=seed)):
            objs = tuple((c, tuple(float(v) for v in b)) for c, b, _ in smp.objects if c == "face")
            out.append(SensitiveImage(f"faces-{i}", smp.rgb, objs, "composited, known boxes"))
    if "text" in classes:
        for i, smp in enumerate(bench.text_set(n_images=frames, frame_hw=frame_hw, seed=seed + 1)):
            objs = tuple((c, tuple(float(v) for v in b)) for c, b, _ in smp.objects if c == "text")
            out.append(SensitiveImage(f"text-{i}", smp.rgb, objs, "composited, known boxes"))
    return out


def photo_images(images: Sequence[Tuple[str, np.ndarray]], attacker: Attacker) -> List[SensitiveImage]:
    """The run's photos; their faces are what the attacker's detector finds on the whole frame
    (resized as SAM resizes it, the boxes mapped back to original pixels)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    out = []
    for name, rgb in images:
        resized = ResizeLongestSide(1024).apply_image(rgb)
        sy, sx = rgb.shape[0] / resized.shape[0], rgb.shape[1] / resized.shape[1]
        boxes = [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in attacker.find("face", resized)]
        out.append(
            SensitiveImage(
                name,
                rgb,
                tuple(("face", tuple(float(v) for v in b)) for b in boxes),
                "the attacker's detector on the whole frame",
            )
        )
    return out


# ---------------------------------------------------------------------------
# The attacker and the edge's detector


class Attacker:
    """What a curious server runs on what it received: the strongest detector per class
    (MTCNN, smallest face ``min_face`` px of the resized frame; Haar where facenet-pytorch is
    missing; PP-OCR for text).  Results are cached by the pixels they were run on."""

    def __init__(self, classes: Sequence[str], min_face: int = 32):
        from ..sensitive.detectors import DetectorUnavailable, HaarFaceDetector, MtcnnFaceDetector, PpOcrTextDetector

        self.detectors: Dict[str, Any] = {}
        self.notes: Dict[str, str] = {}
        if "face" in classes:
            try:
                self.detectors["face"] = MtcnnFaceDetector(min_face_size=min_face)
                self.notes["face"] = f"MTCNN (facenet-pytorch), smallest face {min_face} px of the 1024-px frame"
            except DetectorUnavailable as e:
                self.detectors["face"] = HaarFaceDetector()
                self.notes["face"] = f"OpenCV Haar (MTCNN unavailable: {e})"
        if "text" in classes:
            self.detectors["text"] = PpOcrTextDetector()
            self.notes["text"] = "PP-OCRv4 text detector (rapidocr-onnxruntime)"
        self._cache: Dict[Tuple[str, str], List[Box]] = {}
        self.runs = 0
        self.seconds = 0.0

    def describe(self, cls: str) -> str:
        return self.notes.get(cls, "none")

    def find(self, cls: str, rgb: np.ndarray) -> List[Box]:
        """Boxes of class ``cls`` in ``rgb`` (its pixels)."""
        rgb = np.ascontiguousarray(rgb)
        key = (cls, hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode()).hexdigest())
        if key not in self._cache:
            t0 = time.perf_counter()
            dets = self.detectors[cls].detect(rgb) if min(rgb.shape[:2]) >= 12 else []
            self.seconds += time.perf_counter() - t0
            self.runs += 1
            self._cache[key] = [tuple(float(v) for v in d.box) for d in dets if d.cls == cls]
        return list(self._cache[key])


class _Fixed:
    """A detector that returns detections computed beforehand (so the policy's cells share one run)."""

    name = "precomputed"
    classes = CLASSES

    def __init__(self, detections: Sequence[Detection]):
        self.detections = list(detections)

    def detect(self, rgb: np.ndarray) -> List[Detection]:
        return list(self.detections)


def build_edge_detector(spec: str, classes: Sequence[str]):
    """The edge's detector: ``default`` = MTCNN for faces (as the node) plus PP-OCR when text is
    evaluated; any :func:`~ped_sam_ros.sensitive.detectors.make_detector` spec; or None for
    ``oracle`` (the known boxes themselves: the policy with a perfect detector)."""
    from ..sensitive.detectors import CombinedDetector, make_detector

    spec = (spec or "default").strip().lower()
    if spec == ORACLE:
        return None
    if spec == "default":
        parts = [make_detector("default")] if "face" in classes else []
        parts += [make_detector("ppocr")] if "text" in classes else []
        return CombinedDetector(parts)
    return make_detector(spec)


def _to_resized(box: Box, orig_hw, content_hw) -> Box:
    sy, sx = content_hw[0] / orig_hw[0], content_hw[1] / orig_hw[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _region(box: Box, hw: Tuple[int, int]) -> Optional[Region]:
    """Integer pixels covered by a float box, clipped to the frame (None if empty)."""
    y0, y1 = max(0, int(math.floor(box[1]))), min(int(hw[0]), int(math.ceil(box[3])))
    x0, x1 = max(0, int(math.floor(box[0]))), min(int(hw[1]), int(math.ceil(box[2])))
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None


def _grown(region: Region, frac: float, hw: Tuple[int, int], min_side: int = 0) -> Region:
    y0, y1, x0, x1 = region
    gy = max(frac * (y1 - y0), (min_side - (y1 - y0)) / 2, 0.0)
    gx = max(frac * (x1 - x0), (min_side - (x1 - x0)) / 2, 0.0)
    return (
        max(0, int(y0 - gy)),
        min(int(hw[0]), int(math.ceil(y1 + gy))),
        max(0, int(x0 - gx)),
        min(int(hw[1]), int(math.ceil(x1 + gx))),
    )


# ---------------------------------------------------------------------------
# The pipeline pieces: a recording transport, an encoder that names its token grid


class _Recording:
    """A transport that records every job (tile, server, crop) it is given, then delegates."""

    def __init__(self, inner):
        self.inner, self.jobs = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_partial(self, jobs, mode, timeout_s):
        self.jobs.extend(jobs)
        return self.inner.encode_partial(jobs, mode, timeout_s)


class _KeyedEncoder(DistributedEncoder):
    """A distributed encoder that keeps a hash of each frame's merged token grid: identical tokens
    give an identical embedding, hence identical masks, which are then decoded once (``local``
    tiles in exact mode, aligned grids with nothing changed).  The edge stage itself always runs,
    so every cell's edge time is measured in that cell."""

    last_key: str = ""

    def finish(self, tokens: torch.Tensor, stats):
        self.last_key = hashlib.sha1(tokens.numpy().tobytes()).hexdigest()
        return super().finish(tokens, stats)


# ---------------------------------------------------------------------------
# Per cell: what each server holds of each object


@dataclass
class _ServerCrops:
    """The crops that leave the edge in one cell: per server, (y0, y1, x0, x1, crop) in resized pixels."""

    by_server: Dict[int, List[Tuple[int, int, int, int, np.ndarray]]]

    def window(self, server: int, win: Region, resized: np.ndarray):
        """(view, received, unaltered) of ``server`` inside ``win`` (resized pixels)."""
        wy0, wy1, wx0, wx1 = win
        view = np.zeros((wy1 - wy0, wx1 - wx0, 3), np.uint8)
        recv = np.zeros(view.shape[:2], bool)
        same = np.zeros(view.shape[:2], bool)
        for y0, y1, x0, x1, crop in self.by_server.get(server, ()):
            iy0, iy1, ix0, ix1 = max(y0, wy0), min(y1, wy1), max(x0, wx0), min(x1, wx1)
            if iy1 <= iy0 or ix1 <= ix0:
                continue
            part = crop[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            dst = (slice(iy0 - wy0, iy1 - wy0), slice(ix0 - wx0, ix1 - wx0))
            view[dst] = part
            recv[dst] = True
            same[dst] = (part == resized[iy0:iy1, ix0:ix1]).all(axis=-1)
        return view, recv, same


def sent_crops(encoder: DistributedEncoder, plan, resized: np.ndarray) -> _ServerCrops:
    """What leaves the edge for a frame hook's :class:`~ped_sam_ros.core.pipeline.TilePlan`: every
    tile's plain crop, the plan's obfuscated crop instead where it has one, nothing for local and
    dropped tiles (as :meth:`DistributedEncoder.encode_remote` does)."""
    skip = set(plan.local) | set(plan.dropped)
    out: Dict[int, List] = {}
    for tile in encoder.partition:
        cb = tile.content_box(resized.shape[:2])
        if tile.index in skip or cb is None:
            continue
        crop = plan.crops.get(tile.index, encoder.crop_for(tile, resized))
        out.setdefault(int(encoder.assignment[tile.index]), []).append((*cb, crop))
    return _ServerCrops(out)


def _reconstruct(view: np.ndarray, recv: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(Telea inpainting, mean fill) of the unreceived pixels of a window."""
    import cv2

    if recv.all():
        return view, view
    mean = np.round(view[recv].mean(axis=0)).astype(np.uint8)
    flat = view.copy()
    flat[~recv] = mean
    inpainted = cv2.inpaint(np.ascontiguousarray(view), (~recv).astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    return inpainted, flat


def _object_outcome(
    cls: str,
    box: Box,
    orig_hw,
    resized: np.ndarray,
    sent: _ServerCrops,
    attacker: Optional[Attacker],
    edge_detected: Optional[bool],
) -> Optional[ObjectOutcome]:
    from ..bench.detectors import matches
    from .privacy import region_scores

    hw = resized.shape[:2]
    rbox = _to_resized(box, orig_hw, hw)
    reg = _region(rbox, hw)
    if reg is None:
        return None
    win = _grown(reg, WINDOW_MARGIN, hw, min_side=64)
    wy0, wy1, wx0, wx1 = win
    inside = np.zeros((wy1 - wy0, wx1 - wx0), bool)
    inside[reg[0] - wy0 : reg[1] - wy0, reg[2] - wx0 : reg[3] - wx0] = True
    original = resized[wy0:wy1, wx0:wx1]
    whole, received, found = [], [], []
    largest = 0.0
    best = (None, -2.0, float("nan"))  # server, ssim, mse
    floor = (-2.0, float("nan"))
    for s in sorted(sent.by_server):
        view, recv, same = sent.window(s, win, resized)
        if not recv.any():
            continue
        frac_recv, frac_same = float(recv[inside].mean()), float(same[inside].mean())
        largest = max(largest, frac_same)
        if frac_same >= WHOLE:
            whole.append(s)
        if frac_recv >= WHOLE:
            received.append(s)
        if attacker is not None and recv[inside].any():
            shifted = [(x0 + wx0, y0 + wy0, x1 + wx0, y1 + wy0) for x0, y0, x1, y1 in attacker.find(cls, view)]
            if any(matches(d, rbox) for d in shifted):
                found.append(s)
        inpainted, flat = _reconstruct(view, recv)
        ssim, mse = region_scores(original, inpainted, inside)
        if ssim > best[1]:
            best = (s, ssim, mse)
        fssim, fmse = region_scores(original, flat, inside)
        if fssim > floor[0]:
            floor = (fssim, fmse)
    if best[0] is None:  # nobody received anything near it: a flat mid-grey guess
        grey = np.full_like(original, 128)
        ssim, mse = region_scores(original, grey, inside)
        best, floor = (None, ssim, mse), (ssim, mse)
    return ObjectOutcome(
        cls=cls,
        box=tuple(float(v) for v in box),
        edge_detected=edge_detected,
        seen_whole_by=whole,
        received_whole_by=received,
        largest_unaltered=largest,
        found_by=found,
        recon_server=best[0],
        recon_ssim=float(best[1]),
        recon_mse=float(best[2]),
        floor_ssim=float(floor[0]),
        floor_mse=float(floor[1]),
    )


# ---------------------------------------------------------------------------
# Prompts


def prompt_points(image: SensitiveImage, classes: Sequence[str], off_grid: int):
    """(ON points per class: the centres of that class's objects; OFF points: an NxN grid with the
    points within :data:`OFF_MARGIN` of any object's box left out), (x, y) original pixels."""
    from .fidelity import point_grid

    on: Dict[str, List[Tuple[float, float]]] = {c: [] for c in classes}
    for c, (x0, y0, x1, y1) in image.objects:
        if c in on:
            on[c].append(((x0 + x1) / 2, (y0 + y1) / 2))
    h, w = image.rgb.shape[:2]
    off = []
    for x, y in point_grid(h, w, off_grid):
        near = False
        for _, (x0, y0, x1, y1) in image.objects:
            mx, my = OFF_MARGIN * (x1 - x0), OFF_MARGIN * (y1 - y0)
            if x0 - mx <= x <= x1 + mx and y0 - my <= y <= y1 + my:
                near = True
                break
        if not near:
            off.append((float(x), float(y)))
    return on, off


def _in_roi(pt, roi, orig_hw, content_hw) -> bool:
    if roi is None:
        return True
    x, y = pt[0] * content_hw[1] / orig_hw[1], pt[1] * content_hw[0] / orig_hw[0]
    return roi[0] <= x <= roi[2] and roi[1] <= y <= roi[3]


# ---------------------------------------------------------------------------
# The evaluation


@dataclass
class StageSet:
    """The weights under test: the remote stage (servers and the edge's local tiles), the edge
    stage of the evaluated mode, and plain SAM (the reference of the mask agreement)."""

    remote: Any
    edge: Any
    reference: Any


class SensitiveEvaluation:
    """Runs every (policy x partition) cell on every frame (see the module docstring)."""

    def __init__(
        self,
        settings: SensitiveSettings,
        stages: StageSet,
        images: Sequence[SensitiveImage],
        attacker: Optional[Attacker] = None,
        step: Optional[Callable[[str], None]] = None,
    ):
        self.s = settings
        self.stages = stages
        self.images = list(images)
        self.attacker = attacker if attacker is not None else Attacker(settings.classes)
        self.step = step or (lambda desc: None)
        self.detector = build_edge_detector(settings.detector, settings.classes)
        self.configs = {p.name: p.config(settings.classes) for p in settings.policies}
        self._mask_memo: Dict[Tuple[str, Tuple[int, ...]], np.ndarray] = {}
        from ..edge.privacy import PrivacyHook

        self._edge_hook = PrivacyHook(self.detector) if self.detector is not None else None  # as the node holds it
        for p in settings.policies:
            if p.needs_detector and self.detector is not None:
                missing = [c for c in settings.classes if c not in self.detector.classes]
                if missing:
                    raise SensitiveSpecError(
                        f"the edge detector {self.detector.name!r} finds {list(self.detector.classes)}, "
                        f"not {missing}: pass a detector for every evaluated class (or 'oracle')"
                    )

    @staticmethod
    def steps(settings: SensitiveSettings, n_images: int) -> int:
        return n_images * len(settings.partitions)

    def _encoder(self) -> _KeyedEncoder:
        remote = self.stages.remote
        transport = _Recording(LocalTransport(remote, num_servers=self.s.max_servers, token_dtype="float32"))
        part = Partition.grid(1, 1)
        return _KeyedEncoder(
            self.stages.edge, transport, part, [0], timeout_s=3600.0, allow_adjacent=True, edge_remote=lambda: remote
        )

    def run(self) -> SensitiveSection:
        from segment_anything import SamPredictor
        from segment_anything.utils.transforms import ResizeLongestSide

        t_start = time.perf_counter()
        s = self.s
        enc = self._encoder()
        hooks = self._hooks(enc)
        ref_pred = SamPredictor(self.stages.reference)
        resize = ResizeLongestSide(self.stages.edge.geometry.img_size)
        cells: List[SensitiveCell] = []
        infos: List[SensitiveImageInfo] = []
        n_masks = len(self.images) if s.mask_images is None else s.mask_images
        if self.images and n_masks:  # untimed runs: the first ones pay for warming up
            g = self.stages.edge.geometry
            with torch.no_grad():
                self.stages.edge(torch.zeros(1, g.token_grid, g.token_grid, g.embed_dim))
        if self.detector is not None and self.images:
            self._detect(self.images[0], np.ascontiguousarray(resize.apply_image(self.images[0].rgb)))
        for i, img in enumerate(self.images):
            resized = np.ascontiguousarray(resize.apply_image(img.rgb))
            dets, detect_s = self._detect(img, resized)
            edge_found = self._edge_found(img, dets, resized.shape[:2])
            masks = i < n_masks
            ref = self._reference(ref_pred, img) if masks else None
            self._mask_memo = {}
            for part in s.partitions:
                cells.extend(self._cells(enc, hooks, img, resized, dets, detect_s, edge_found, part, ref))
                self.step(f"sensitive {img.name} {part.name}")
            infos.append(
                SensitiveImageInfo(
                    img.name,
                    int(img.rgb.shape[0]),
                    int(img.rgb.shape[1]),
                    {c: sum(1 for o, _ in img.objects if o == c) for c in s.classes},
                    img.truth,
                    masks,
                    None if edge_found is None else {c: sum(f for o, f in edge_found if o == c) for c in s.classes},
                    detect_s if self.detector is not None else None,
                )
            )
        self._mask_memo = {}
        return SensitiveSection(
            mode=s.mode,
            edge_detector=ORACLE + " (the known boxes)" if self.detector is None else self.detector.name,
            attacker={c: self.attacker.describe(c) for c in s.classes},
            classes=list(s.classes),
            policies={p.name: dict(self.configs[p.name].to_dict(), label=p.label) for p in s.policies},
            partitions=[p.name for p in s.partitions],
            images=infos,
            wire_dtype="float32",
            roi="drop policies: one point prompt at the frame centre, grown by the policy's margin "
            f"({PolicyConfig().roi_margin_tokens} tokens); other policies: automatic mode (whole frame)",
            cells=cells,
            summary=summarize(cells, s.policies, s.partitions, s.classes),
            by_policy=summarize(cells, s.policies, None, s.classes),
            wall_s=time.perf_counter() - t_start,
            attacker_runs=self.attacker.runs,
            attacker_s=self.attacker.seconds,
        )

    # -- pieces -------------------------------------------------------------------

    def _hooks(self, enc: DistributedEncoder) -> Dict[str, Any]:
        """One PrivacyHook per policy (its drop-fill tokens are cached across frames, as on the node)."""
        from ..edge.privacy import PrivacyHook

        return {
            p.name: PrivacyHook(
                None, self.configs[p.name], layout="grid", local_stage=enc.edge_remote_stage, seed=self.s.seed
            )
            for p in self.s.policies
        }

    def _detect(self, img: SensitiveImage, resized: np.ndarray) -> Tuple[List[Detection], float]:
        """The edge's detections on the resized frame (resized pixels), and the seconds they took:
        the detector run the way the edge's privacy hook runs it (its ``detect`` where it has one)."""
        hw = resized.shape[:2]
        orig_hw = img.rgb.shape[:2]
        if self.detector is None:
            dets = [
                Detection(c, _to_resized(b, orig_hw, hw), 1.0, ORACLE) for c, b in img.objects if c in self.s.classes
            ]
            return dets, 0.0
        run = getattr(self._edge_hook, "detect", None)
        t0 = time.perf_counter()
        if run is not None:  # detections in original pixels
            found = [d.scaled(hw[1] / orig_hw[1], hw[0] / orig_hw[0]) for d in run(resized, orig_hw)]
        else:
            found = self.detector.detect(resized)
        dt = time.perf_counter() - t0
        return [d for d in found if d.cls in self.s.classes], dt

    def _edge_found(self, img: SensitiveImage, dets: Sequence[Detection], hw) -> Optional[List[Tuple[str, bool]]]:
        """Per known object: (class, whether an edge detection matches it); None for the oracle."""
        from ..bench.detectors import matches

        if self.detector is None:
            return None
        out = []
        for c, b in img.objects:
            rb = _to_resized(b, img.rgb.shape[:2], hw)
            out.append((c, any(d.cls == c and matches(d.box, rb) for d in dets)))
        return out

    def _reference(self, ref_pred, img: SensitiveImage):
        """Plain SAM's masks for the ON and OFF prompts of a frame."""
        from .fidelity import point_masks

        on, off = prompt_points(img, self.s.classes, self.s.off_grid)
        ref_pred.set_image(img.rgb)
        pts = [p for c in self.s.classes for p in on[c]] + off
        masks = point_masks(ref_pred, np.array(pts, np.float32).reshape(-1, 2)) if pts else np.zeros((0, 1, 1), bool)
        return on, off, pts, masks

    def _cells(self, enc, hooks, img, resized, dets, detect_s, edge_found, part_spec, ref) -> List[SensitiveCell]:
        hw = resized.shape[:2]
        orig_hw = img.rgb.shape[:2]
        part, assign, lname = part_spec.layout(hw)
        enc.set_layout(part, assign)
        shares = server_shares(part, assign, hw)
        centre = [ObjectPrompt(points=[(orig_hw[1] / 2.0, orig_hw[0] / 2.0, 1)])]
        out = []
        for p in self.s.policies:
            hook = hooks[p.name]
            hook.detector = _Fixed(dets) if p.needs_detector else None
            tp = hook(enc, resized, orig_hw, centre if p.drop_outside_roi else None)
            plan = tp.record.plan
            sent = sent_crops(enc, tp, resized)
            objects = []
            for k, (c, b) in enumerate(img.objects):
                if c not in self.s.classes:
                    continue
                ed = None if edge_found is None else edge_found[k][1]
                o = _object_outcome(c, b, orig_hw, resized, sent, self.attacker, ed)
                if o is not None:
                    objects.append(o)
            on_ious = off_ious = local_s = edge_s = None
            if ref is not None:
                on_ious, off_ious, local_s, edge_s = self._masks(enc, tp, img, sent, ref, plan.roi, hw)
            out.append(
                SensitiveCell(
                    policy=p.name,
                    partition=part_spec.name,
                    image=img.name,
                    layout=lname,
                    servers=len(set(assign)),
                    tiles=len(part),
                    max_share=max(shares),
                    tile_actions=plan.counts(),
                    objects=objects,
                    on_ious=on_ious,
                    off_ious=off_ious,
                    detect_s=detect_s if p.needs_detector else 0.0,
                    policy_s=float(tp.timings.get("policy", 0.0)),
                    local_s=local_s,
                    edge_stage_s=edge_s,
                    roi=None if plan.roi is None else [float(v) for v in plan.roi],
                )
            )
        return out

    def _masks(self, enc, tp, img, sent: _ServerCrops, ref, roi, hw):
        """Run the frame through PED-SAM under this plan; IoU with plain SAM per prompt in the ROI."""
        from . import metrics
        from .fidelity import point_masks

        on, off, pts, ref_masks = ref
        orig_hw = img.rgb.shape[:2]
        enc.frame_hook = lambda *_: tp  # the plan just measured (same crops, same noise)
        enc.transport.jobs = []
        pred = PedSamPredictor(enc)
        try:
            pred.set_image(img.rgb)
        finally:
            enc.frame_hook = None
        got = {
            (j.tile.index, int(j.server)): j.pixels for j in enc.transport.jobs if np.asarray(j.pixels).size
        }  # what the transport received, checked against what this evaluation attacked
        mine = {}
        for server, items in sent.by_server.items():
            for y0, y1, x0, x1, crop in items:
                t = next(t for t in enc.partition if t.content_box(hw) == (y0, y1, x0, x1))
                mine[(t.index, server)] = crop
        if got.keys() != mine.keys() or any(not np.array_equal(got[k], mine[k]) for k in got):
            raise RuntimeError("internal: the crops the transport received differ from the ones attacked")
        idx = [k for k, p in enumerate(pts) if _in_roi(p, roi, orig_hw, hw)]
        key = (enc.last_key, tuple(idx))  # the same embedding and prompts give the same masks
        if key not in self._mask_memo:
            self._mask_memo[key] = point_masks(pred, np.array([pts[k] for k in idx], np.float32).reshape(-1, 2))
        ours = self._mask_memo[key]
        iou = {k: metrics.mask_iou(ref_masks[k], m) for k, m in zip(idx, ours)}
        on_ious, n = {}, 0
        for c in self.s.classes:
            on_ious[c] = [iou[k] for k in range(n, n + len(on[c])) if k in iou]
            n += len(on[c])
        off_ious = [iou[k] for k in range(n, n + len(off)) if k in iou]
        t = pred.last_stats.timings
        return on_ious, off_ious, float(t.get("edge_local", 0.0)), float(t.get("edge_encoder", 0.0))
