"""Write a short rosbag2 of real photos (scikit-image's) plus a Prompts message.

    python -m ped_sam_ros.tools.make_bag out/frames_bag --frames 6 --rate 2

Frames: astronaut, coffee, chelsea, rocket, motorcycle left and right (cycled),
as ``sensor_msgs/Image`` rgb8 with increasing stamps and one frame_id; first a
``ped_sam_msgs/Prompts`` message with a few point prompts that lie inside every
frame. No ROS graph needed (``rosbags`` only).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

IMAGE_TOPIC = "/camera/image_raw"
PROMPTS_TOPIC = "/edge_node/prompts"
FRAME_ID = "camera_optical_frame"
START_SEC = 1_700_000_000


def photos() -> List[Tuple[str, np.ndarray]]:
    import skimage.data as d

    left, right, _ = d.stereo_motorcycle()
    return [
        ("astronaut", d.astronaut()),
        ("coffee", d.coffee()),
        ("chelsea", d.chelsea()),
        ("rocket", d.rocket()),
        ("motorcycle_left", left),
        ("motorcycle_right", right),
    ]


def frames(n: int, scale: int = 1) -> List[Tuple[str, np.ndarray]]:
    src = photos()
    return [(src[k % len(src)][0], np.ascontiguousarray(src[k % len(src)][1][::scale, ::scale, :3])) for k in range(n)]


def default_prompts(frames_: Sequence[np.ndarray]) -> List[Points]:
    """Two objects, as points relative to the smallest frame (so they lie inside every one):
    a foreground click near the centre; a foreground click lower left with a background one."""
    h = min(f.shape[0] for f in frames_)
    w = min(f.shape[1] for f in frames_)
    return [
        [(0.5 * w, 0.45 * h, 1)],
        [(0.25 * w, 0.7 * h, 1), (0.1 * w, 0.1 * h, 0)],
    ]


Points = List[Tuple[float, float, int]]


@dataclass(frozen=True)
class BagInfo:
    """What :func:`make_bag` wrote."""

    path: str
    frames: List[str]  # photo names, in order
    stamps: List[Tuple[int, int]]  # (sec, nanosec) of each frame
    sizes: List[Tuple[int, int]]  # (height, width) of each frame
    frame_id: str
    image_topic: str
    prompts_topic: Optional[str]
    prompts: List[Points]  # one list of (x, y, label) per object

    @property
    def keys(self) -> List[Tuple[int, int, str]]:
        """Each frame's (sec, nanosec, frame_id), as ``ros.convert.stamp_key`` gives for its outputs."""
        return [(sec, nanosec, self.frame_id) for sec, nanosec in self.stamps]


def make_bag(
    out: Path,
    n_frames: int = 6,
    rate_hz: float = 2.0,
    scale: int = 1,
    storage: str = "sqlite3",
    image_topic: str = IMAGE_TOPIC,
    prompts_topic: Optional[str] = PROMPTS_TOPIC,
    frame_id: str = FRAME_ID,
) -> BagInfo:
    """Write the bag; returns what was written."""
    from ped_sam_ros.ros.bags import typestore, writer

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; rosbag2 writes a new directory")
    ts = typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Image = T["sensor_msgs/msg/Image"]
    fr = frames(n_frames, scale)
    period_ns = int(round(1e9 / rate_hz))
    t0 = START_SEC * 1_000_000_000
    stamps = []
    objects = default_prompts([f for _, f in fr])
    with writer(out, storage) as w:
        if prompts_topic:
            Point, Box = T["ped_sam_msgs/msg/PointPrompt"], T["ped_sam_msgs/msg/BoxPrompt"]
            Prompt, Prompts = T["ped_sam_msgs/msg/Prompt"], T["ped_sam_msgs/msg/Prompts"]
            pt = t0 - period_ns // 2
            msg = Prompts(
                header=Header(stamp=Time(sec=pt // 10**9, nanosec=pt % 10**9), frame_id=frame_id),
                prompts=[
                    Prompt(
                        points=[Point(x=float(x), y=float(y), label=int(lab)) for x, y, lab in obj],
                        has_box=False,
                        box=Box(x_min=0.0, y_min=0.0, x_max=0.0, y_max=0.0),
                    )
                    for obj in objects
                ],
                automatic=False,
            )
            conn = w.add_connection(prompts_topic, "ped_sam_msgs/msg/Prompts", typestore=ts)
            w.write(conn, pt, ts.serialize_cdr(msg, "ped_sam_msgs/msg/Prompts"))
        conn = w.add_connection(image_topic, "sensor_msgs/msg/Image", typestore=ts)
        for k, (_name, rgb) in enumerate(fr):
            t = t0 + k * period_ns
            h, wd = rgb.shape[:2]
            msg = Image(
                header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=frame_id),
                height=h,
                width=wd,
                encoding="rgb8",
                is_bigendian=0,
                step=wd * 3,
                data=np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1),
            )
            w.write(conn, t, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            stamps.append((t // 10**9, t % 10**9))
    return BagInfo(
        path=str(out),
        frames=[n for n, _ in fr],
        stamps=stamps,
        sizes=[f.shape[:2] for _, f in fr],
        frame_id=frame_id,
        image_topic=image_topic,
        prompts_topic=prompts_topic,
        prompts=objects,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="ped-sam-make-bag", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="bag directory to create")
    ap.add_argument("--frames", type=int, default=6, help="number of image messages (photos are cycled)")
    ap.add_argument("--rate", type=float, default=2.0, help="frames per second of the stamps")
    ap.add_argument("--scale", type=int, default=1, help="keep every SCALE-th pixel (smaller frames)")
    ap.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    ap.add_argument("--image-topic", default=IMAGE_TOPIC)
    ap.add_argument("--prompts-topic", default=PROMPTS_TOPIC, help="'' to write no Prompts message")
    ap.add_argument("--frame-id", default=FRAME_ID)
    a = ap.parse_args(argv)
    if a.frames < 1 or a.rate <= 0 or a.scale < 1:
        ap.error("--frames and --scale must be >= 1 and --rate > 0")
    try:
        info = make_bag(
            Path(a.out), a.frames, a.rate, a.scale, a.storage, a.image_topic, a.prompts_topic or None, a.frame_id
        )
    except FileExistsError as e:
        print(f"ped-sam-make-bag: error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {info.path}: {len(info.frames)} frames on {a.image_topic} ({', '.join(info.frames)})"
        + (f", prompts on {a.prompts_topic}" if a.prompts_topic else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
