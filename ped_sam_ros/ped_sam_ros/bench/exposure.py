"""Cumulative exposure across a video: how much of the scene each server has seen.

A fixed server sees the same part of every frame, so over a moving camera it
accumulates the scene.  This benchmark builds a pan across a large real photo (a
panorama of scikit-image photographs: coffee, astronaut, chelsea, rocket, side by side
at 600 px high), cuts 480x640 frames along a path that moves right and bobs up and down,
registers consecutive frames with OpenCV features (ORB + RANSAC similarity transform or
homography, chained to the first frame) and accumulates, per server, the union of the scene it has received
unaltered (sent tiles, minus obfuscated boxes) on a mosaic at 1/4 resolution.

Strategies (all keep each frame's layout, shares and non-adjacency: only which server
gets which group of tiles changes between frames):

* ``fixed``: the balanced layout of :mod:`ped_sam_ros.core.layout`, same assignment always;
* ``rotating``: the server labels shift by one every frame (a naive shuffle);
* ``scene-aware``: every frame, the groups of tiles are given to the servers that
  already saw most of what they show (a linear assignment that minimises the newly
  exposed scene area, on the registered mosaic).

Each runs with faces ``send`` and ``local`` (policy of :mod:`ped_sam_ros.sensitive`);
faces come from the scene's known face box mapped into each frame (detector misses are
measured in bench/detectors, not here), or from a real detector with ``--detector``.

``python -m ped_sam_ros.bench.exposure [--servers K] [--json PATH]`` prints the table and
writes JSON with the per-frame curves.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ped_sam_ros.core.geometry import content_shape
from ped_sam_ros.core.layout import best_layout
from ped_sam_ros.sensitive.policy import PolicyConfig, plan_frame
from ped_sam_ros.sensitive.types import Detection

FRAME_HW = (480, 640)
SCENE_H = 600
LOW = 4  # mosaic downscale for the exposure masks


def panorama() -> Tuple[np.ndarray, List[Tuple[float, float, float, float]]]:
    """The scene (RGB) and its face boxes (x0, y0, x1, y1 scene pixels)."""
    import cv2
    from skimage import data

    parts, faces, x = [], [], 0
    for name in ("coffee", "astronaut", "chelsea", "rocket"):
        img = getattr(data, name)()
        s = SCENE_H / img.shape[0]
        img = cv2.resize(img, (round(img.shape[1] * s), SCENE_H), interpolation=cv2.INTER_CUBIC)
        if name == "astronaut":  # hand-marked face: x 178..272, y 60..178 of the 512x512 photo
            faces.append((x + 178 * s, 60 * s, x + 272 * s, 178 * s))
        parts.append(img)
        x += img.shape[1]
    return np.ascontiguousarray(np.concatenate(parts, axis=1)), faces


def pan_path(scene_w: int, step: int = 60, bob: int = 60) -> List[Tuple[int, int]]:
    """Top-left corners (y, x) of the frames: left to right, bobbing up and down."""
    h, w = FRAME_HW
    xs = list(range(0, scene_w - w + 1, step))
    return [(int(round((SCENE_H - h) / 2 + bob * np.sin(i / 3.0))), x) for i, x in enumerate(xs)]


def register(frames: Sequence[np.ndarray], model: str = "similarity") -> List[np.ndarray]:
    """3x3 transforms frame -> first frame, chained from consecutive ORB matches with RANSAC
    (``model``: ``similarity`` or ``homography``)."""
    import cv2

    orb = cv2.ORB_create(2000)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    feats = [orb.detectAndCompute(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), None) for f in frames]
    hs = [np.eye(3)]
    for i in range(1, len(frames)):
        (k0, d0), (k1, d1) = feats[i - 1], feats[i]
        m = matcher.match(d1, d0)
        if len(m) < 8:
            raise RuntimeError(f"frames {i - 1} and {i}: only {len(m)} ORB matches")
        src = np.float32([k1[x.queryIdx].pt for x in m])
        dst = np.float32([k0[x.trainIdx].pt for x in m])
        if model == "homography":
            h, _ = cv2.findHomography(src, dst, cv2.RANSAC, 3.0)
        else:  # rotation, uniform scale and translation: fewer degrees of freedom, less drift
            a, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
            h = None if a is None else np.vstack([a, [0.0, 0.0, 1.0]])
        if h is None:
            raise RuntimeError(f"frames {i - 1} and {i}: no {model}")
        hs.append(hs[-1] @ h)
    return hs


def _warp_mask(mask: np.ndarray, h: np.ndarray, offset: Tuple[float, float], mosaic_hw: Tuple[int, int]):
    """A frame-pixel mask (full resolution) -> bool mask on the low-res mosaic."""
    import cv2

    s = np.diag([1.0 / LOW, 1.0 / LOW, 1.0])
    t = np.array([[1, 0, -offset[0]], [0, 1, -offset[1]], [0, 0, 1]], dtype=float)
    m = s @ t @ h
    out = cv2.warpPerspective(mask.astype(np.uint8), m, (mosaic_hw[1], mosaic_hw[0]), flags=cv2.INTER_NEAREST)
    return out > 0


def _tile_masks(plan, orig_hw) -> Dict[int, np.ndarray]:
    """Tile index -> bool mask of the original-frame pixels its server receives unaltered."""
    h, w = orig_hw
    ch, cw = plan.content_hw
    ry, rx = h / ch, w / cw
    out = {}
    tiles = plan.partition.tiles
    for d in plan.decisions:
        if not d.leaves_edge:
            continue
        cb = tiles[d.tile].content_box(plan.content_hw)
        if cb is None:
            continue
        m = np.zeros(orig_hw, bool)
        y0, y1, x0, x1 = cb
        m[int(round(y0 * ry)) : int(round(y1 * ry)), int(round(x0 * rx)) : int(round(x1 * rx))] = True
        for _, box, _ in d.obfuscations:
            bx0, by0, bx1, by1 = box
            m[int(by0 * ry) : int(np.ceil(by1 * ry)), int(bx0 * rx) : int(np.ceil(bx1 * rx))] = False
        out[d.tile] = m
    return out


def simulate(frames_h, faces_per_frame, k: int, strategy: str, face_action: str, mosaic, seed: int = 0) -> Dict:
    """Run one strategy over the sequence; exposure curves per server."""
    from scipy.optimize import linear_sum_assignment

    offset, mosaic_hw, scene_mask, face_mask = mosaic
    content = content_shape(FRAME_HW)
    lay = best_layout(content, k)
    base = list(lay.assignment)
    cum = [np.zeros(mosaic_hw, bool) for _ in range(k)]
    face_cum = [np.zeros(mosaic_hw, bool) for _ in range(k)]
    curve: List[List[float]] = []
    face_whole_frames = 0
    scene_px, face_px = float(scene_mask.sum()), float(face_mask.sum())
    for f, (h, faces) in enumerate(zip(frames_h, faces_per_frame)):
        plan = plan_frame(lay.partition, base, FRAME_HW, content, faces, PolicyConfig(actions={"face": face_action}))
        masks = _tile_masks(plan, FRAME_HW)
        groups = [np.zeros(mosaic_hw, bool) for _ in range(k)]  # group g = tiles of base server g
        for t, m in masks.items():
            groups[base[t]] |= _warp_mask(m, h, offset, mosaic_hw)
        if strategy == "fixed":
            perm = list(range(k))  # server s gets group perm[s]
        elif strategy == "rotating":
            perm = [(s + f) % k for s in range(k)]
        elif strategy == "scene-aware":
            cost = np.array([[np.count_nonzero(groups[g] & ~cum[s]) for g in range(k)] for s in range(k)])
            _, perm = linear_sum_assignment(cost)
            perm = [int(p) for p in perm]
        else:
            raise ValueError(strategy)
        for s in range(k):
            cum[s] |= groups[perm[s]]
            face_cum[s] |= groups[perm[s]] & face_mask
        # per frame: did some server get a face whole (all of its pixels in this frame)?
        for fb in faces:
            fm = np.zeros(FRAME_HW, bool)
            x0, y0, x1, y1 = (int(round(v)) for v in fb.box)
            fm[max(0, y0) : y1, max(0, x0) : x1] = True
            if fm.any():
                for g in range(k):
                    union = np.zeros(FRAME_HW, bool)
                    for t, m in masks.items():
                        if base[t] == g:
                            union |= m
                    if not (fm & ~union).any():
                        face_whole_frames += 1
                        break
        curve.append([float((c & scene_mask).sum() / scene_px) for c in cum])
    return {
        "strategy": strategy,
        "face_action": face_action,
        "servers": k,
        "layout": lay.to_dict(),
        "final_exposure": curve[-1],
        "max_final_exposure": max(curve[-1]),
        "face_exposure": [float(c.sum() / face_px) if face_px else 0.0 for c in face_cum],
        "frames_with_a_face_whole_on_one_server": face_whole_frames,
        "curve": curve,
    }


def run(k_values: Sequence[int], step: int, detector: Optional[str], model: str = "similarity") -> Dict:
    import cv2

    scene, face_boxes = panorama()
    path = pan_path(scene.shape[1], step)
    fh, fw = FRAME_HW
    frames = [np.ascontiguousarray(scene[y : y + fh, x : x + fw]) for y, x in path]
    t0 = time.perf_counter()
    hs = register(frames, model)
    reg_s = time.perf_counter() - t0
    # registration error: frame corners mapped to frame 0 vs the known pan
    errs = []
    corners = np.float32([[0, 0], [fw, 0], [fw, fh], [0, fh]])[None]
    for (y, x), h in zip(path, hs):
        got = cv2.perspectiveTransform(corners, h)[0]
        want = corners[0] + np.float32([x - path[0][1], y - path[0][0]])
        errs.append(float(np.abs(got - want).max()))
    # the mosaic: bounding box of all registered frames, at 1/LOW resolution
    allc = np.concatenate([cv2.perspectiveTransform(corners, h)[0] for h in hs])
    offset = (float(allc[:, 0].min()), float(allc[:, 1].min()))
    mosaic_hw = (
        int(np.ceil((allc[:, 1].max() - offset[1]) / LOW)) + 1,
        int(np.ceil((allc[:, 0].max() - offset[0]) / LOW)) + 1,
    )
    scene_mask = np.zeros(mosaic_hw, bool)
    full = np.ones(FRAME_HW, bool)
    for h in hs:
        scene_mask |= _warp_mask(full, h, offset, mosaic_hw)
    # faces per frame: the scene's face boxes in frame pixels (or a detector's output)
    if detector:
        from ped_sam_ros.sensitive.detectors import make_detector

        det = make_detector(detector)
        faces_per_frame = [[d for d in det.detect(f) if d.cls == "face"] for f in frames]
    else:
        faces_per_frame = []
        for y, x in path:
            fs = []
            for x0, y0, x1, y1 in face_boxes:
                bx0, by0, bx1, by1 = max(0, x0 - x), max(0, y0 - y), min(fw, x1 - x), min(fh, y1 - y)
                if bx1 > bx0 and by1 > by0:
                    fs.append(Detection("face", (bx0, by0, bx1, by1), 1.0, "ground truth"))
            faces_per_frame.append(fs)
    face_mask = np.zeros(mosaic_hw, bool)
    for h, fs in zip(hs, faces_per_frame):
        for d in fs:
            m = np.zeros(FRAME_HW, bool)
            x0, y0, x1, y1 = (int(round(v)) for v in d.box)
            m[max(0, y0) : y1, max(0, x0) : x1] = True
            face_mask |= _warp_mask(m, h, offset, mosaic_hw)
    mosaic = (offset, mosaic_hw, scene_mask, face_mask)
    results = []
    for k in k_values:
        for strategy in ("fixed", "rotating", "scene-aware"):
            for face_action in ("send", "local"):
                results.append(simulate(hs, faces_per_frame, k, strategy, face_action, mosaic))
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()}",
        "scene_hw": list(scene.shape[:2]),
        "frames": len(frames),
        "frame_hw": list(FRAME_HW),
        "step_px": step,
        "registration": {
            "method": f"ORB 2000 + BFMatcher cross-check + RANSAC {model}, chained",
            "seconds": reg_s,
            "max_corner_error_px": max(errs),
            "mean_corner_error_px": float(np.mean(errs)),
        },
        "faces_from": detector or "the scene's hand-marked face box",
        "mosaic_downscale": LOW,
        "results": results,
        "adaptive": adaptive_layouts(k_values),
    }


def adaptive_layouts(k_values: Sequence[int], n_images: int = 42, share_slack: float = 1.05) -> List[Dict]:
    """Per-frame layouts that avoid leaving a face whole in one tile, on the composited face
    set of bench/detectors (known face boxes): faces left whole in one tile, and the largest
    share, for the balanced layout of the frame shape and for the per-frame adaptive one."""
    from ped_sam_ros.bench.detectors import face_set
    from ped_sam_ros.core.layout import boxes_whole

    samples = face_set(n_images, FRAME_HW)
    content = content_shape(FRAME_HW)
    sy, sx = content[0] / FRAME_HW[0], content[1] / FRAME_HW[1]
    out = []
    for k in k_values:
        fixed = best_layout(content, k)
        n = whole_fixed = whole_adaptive = 0
        shares = []
        t0 = time.perf_counter()
        for smp in samples:
            boxes = [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for _, b, _ in smp.objects]
            lay = best_layout(content, k, avoid_boxes=boxes, share_slack=share_slack)
            n += len(boxes)
            whole_fixed += boxes_whole(fixed.partition, boxes)
            whole_adaptive += lay.boxes_whole
            shares.append(lay.max_share)
        out.append(
            {
                "servers": k,
                "faces": n,
                "share_slack": share_slack,
                "whole_in_one_tile_fixed": whole_fixed / n,
                "whole_in_one_tile_adaptive": whole_adaptive / n,
                "fixed_max_share": fixed.max_share,
                "adaptive_max_share_mean": float(np.mean(shares)),
                "adaptive_max_share_max": float(np.max(shares)),
                "seconds_per_frame": (time.perf_counter() - t0) / len(samples),
            }
        )
    return out


def print_table(rep: Dict) -> None:
    r = rep["registration"]
    print(
        f"scene {rep['scene_hw'][1]}x{rep['scene_hw'][0]}, {rep['frames']} frames of {rep['frame_hw'][1]}x"
        f"{rep['frame_hw'][0]}, step {rep['step_px']} px; {r['method']}: corner error mean "
        f"{r['mean_corner_error_px']:.1f} px, max {r['max_corner_error_px']:.1f} px"
    )
    print(
        "| K | strategy | faces | per-frame max share | scene seen by each server (end) | max | "
        "face seen by each server | frames with a face whole on one server |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for x in rep["results"]:
        exp = " / ".join(f"{v:.0%}" for v in x["final_exposure"])
        face = " / ".join(f"{v:.0%}" for v in x["face_exposure"])
        print(
            f"| {x['servers']} | {x['strategy']} | {x['face_action']} | {x['layout']['max_share']:.1%} | {exp} | "
            f"{x['max_final_exposure']:.0%} | {face} | {x['frames_with_a_face_whole_on_one_server']} |"
        )
    if rep.get("adaptive"):
        print("\nper-frame adaptive layout (composited face set, known boxes):")
        print(
            "| K | faces | whole in one tile: balanced layout | adaptive | largest share: balanced "
            "| adaptive mean, max | ms per frame |"
        )
        print("|---|---|---|---|---|---|---|")
        for a in rep["adaptive"]:
            print(
                f"| {a['servers']} | {a['faces']} | {a['whole_in_one_tile_fixed']:.0%} | "
                f"{a['whole_in_one_tile_adaptive']:.0%} | {a['fixed_max_share']:.1%} | "
                f"{a['adaptive_max_share_mean']:.1%}, {a['adaptive_max_share_max']:.1%} | "
                f"{a['seconds_per_frame'] * 1e3:.0f} |"
            )


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, nargs="+", default=[4, 9])
    ap.add_argument("--step", type=int, default=60, help="pan step between frames, scene pixels")
    ap.add_argument("--detector", default=None, help="detector spec for the faces (default: the known face box)")
    ap.add_argument(
        "--model",
        choices=["similarity", "homography"],
        default="similarity",
        help="registration model between consecutive frames",
    )
    ap.add_argument("--json", default="exposure.json")
    args = ap.parse_args(argv)
    rep = run(args.servers, args.step, args.detector, args.model)
    print_table(rep)
    with open(args.json, "w") as f:
        json.dump(rep, f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
