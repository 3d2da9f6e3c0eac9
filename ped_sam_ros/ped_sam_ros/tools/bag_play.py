"""Replay a rosbag2 (sqlite3 or MCAP) with rclpy: images, Prompts, anything recorded.

    ped-sam-bag-play BAG --topic-remap /camera/image_raw:=/robot/edge_node/image \\
        --topic-remap /edge_node/prompts:=/robot/edge_node/prompts --rate 1.0
    ped-sam-bag-play BAG ... --as-fast-as-consumed --consumed-topic /robot/edge_node/masks

Messages are published as the recorded bytes (rosbags' CDR equals rclpy's), in
log-time order: at the recorded pace scaled by ``--rate``, or, with
``--as-fast-as-consumed``, each image only after the node answered the previous
one on ``--consumed-topic`` (a message whose header stamp is at least that
image's; bounded by ``--consume-timeout``).  Publishers wait (bounded) for
subscribers before the first message.  Run with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
and your ROS_DOMAIN_ID.

Prompts before images: DDS orders messages per topic, not across topics, so an image
published right after a ped_sam_msgs/Prompts message may reach the node first.  After
a Prompts message the player publishes the next image no sooner than ``--settle``
seconds after it (time for the node's callback to take the prompts).  At ``--rate`` this only
delays an image recorded less than ``--settle`` s after the prompts (the rest keep their
recorded pace); other messages (CameraInfo, tf, ...) are never delayed.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ped_sam_ros.ros.bags import IMAGE_TYPES, message_class, typestore

PROMPTS_TYPE = "ped_sam_msgs/msg/Prompts"


def parse_remaps(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"--topic-remap {item!r} must look like FROM:=TO")
        out[src] = dst
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ped-sam-bag-play",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("bag", help="rosbag2 directory (sqlite3 or mcap)")
    ap.add_argument(
        "--topic-remap",
        action="append",
        default=[],
        metavar="FROM:=TO",
        help="publish the bag's topic FROM on TO (repeatable)",
    )
    ap.add_argument("--topics", nargs="*", help="only these bag topics (default: all)")
    pace = ap.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=1.0, help="speed factor of the recorded timing (default 1.0)")
    pace.add_argument(
        "--as-fast-as-consumed",
        action="store_true",
        help="publish each image once the previous one has an answer on --consumed-topic",
    )
    ap.add_argument(
        "--consumed-topic", help="topic whose messages (with a header) answer the images, e.g. /robot/edge_node/masks"
    )
    ap.add_argument("--consumed-type", default="ped_sam_msgs/msg/SegmentationResult")
    ap.add_argument("--consume-timeout", type=float, default=60.0, help="seconds to wait for each answer")
    ap.add_argument(
        "--wait-subscribers",
        type=float,
        default=30.0,
        help="seconds to wait for a subscriber on every topic before starting (0: do not wait)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.3,
        help="after a ped_sam_msgs/Prompts message, publish the next image no sooner than this many "
        "seconds later, so that the node holds the prompts before that image (DDS does not order "
        "messages across topics). With --rate only an image recorded closer than this to the prompts "
        "is delayed; other message types are never delayed. 0: off (default 0.3)",
    )
    return ap


class Pacer:
    """When to publish each message: at the recorded pace scaled by ``rate`` (``rate`` None:
    as soon as possible), and no image sooner than ``settle`` s after a Prompts message.
    ``clock``/``sleep`` are injectable (tests)."""

    def __init__(self, rate: Optional[float], settle: float, clock=time.monotonic, sleep=time.sleep):
        self.rate, self.settle = rate, max(0.0, settle)
        self.clock, self.sleep = clock, sleep
        self.start: Optional[float] = None
        self.first_log: Optional[int] = None
        self.image_not_before = 0.0

    def wait_for(self, msgtype: str, log_time_ns: int) -> None:
        """Sleep until the message recorded at ``log_time_ns`` is due."""
        now = self.clock()
        if self.start is None:
            self.start, self.first_log = now, log_time_ns
        due = now
        if self.rate:
            due = self.start + (log_time_ns - self.first_log) / 1e9 / self.rate
        if msgtype in IMAGE_TYPES:
            due = max(due, self.image_not_before)
        if due > now:
            self.sleep(due - now)

    def published(self, msgtype: str) -> None:
        if msgtype == PROMPTS_TYPE and self.settle > 0:
            self.image_not_before = self.clock() + self.settle


class _Consumed:
    """Latest answer stamp seen on the consumed topic."""

    def __init__(self):
        self.cond = threading.Condition()
        self.latest = (-1, -1)

    def callback(self, msg) -> None:
        with self.cond:
            self.latest = max(self.latest, (msg.header.stamp.sec, msg.header.stamp.nanosec))
            self.cond.notify_all()

    def wait(self, stamp, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        with self.cond:
            while self.latest < stamp:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
        return True


def play(args, node, log=lambda m: print(m, flush=True)) -> Dict[str, int]:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosbags.rosbag2 import Reader

    remaps = parse_remaps(args.topic_remap)
    qos = QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
        history=HistoryPolicy.KEEP_LAST,
        depth=10,
    )
    ts = typestore()
    consumed = None
    if args.as_fast_as_consumed:
        if not args.consumed_topic:
            raise ValueError("--as-fast-as-consumed needs --consumed-topic")
        consumed = _Consumed()
        node.create_subscription(message_class(args.consumed_type), args.consumed_topic, consumed.callback, 10)
    stats = {"published": 0, "images": 0, "unanswered": 0}
    with Reader(Path(args.bag)) as reader:
        conns = [c for c in reader.connections if not args.topics or c.topic in args.topics]
        if not conns:
            raise ValueError(
                f"no matching topics in {args.bag}: it has {sorted({c.topic for c in reader.connections})}"
            )
        pubs = {}
        for c in conns:
            if c.topic not in pubs:
                pubs[c.topic] = node.create_publisher(message_class(c.msgtype), remaps.get(c.topic, c.topic), qos)
        if args.wait_subscribers > 0:
            end = time.monotonic() + args.wait_subscribers
            for pub in pubs.values():
                while pub.get_subscription_count() < 1 and time.monotonic() < end:
                    time.sleep(0.05)
                if pub.get_subscription_count() < 1:
                    log(f"[bag_play] warning: nobody subscribes to {pub.topic_name} after {args.wait_subscribers:g} s")
        if consumed is not None:  # let the answer subscription match too
            time.sleep(0.3)
        log(f"[bag_play] playing {args.bag}: " + ", ".join(f"{t} -> {p.topic_name}" for t, p in pubs.items()))
        pacer = Pacer(None if consumed is not None else args.rate, args.settle)
        start = time.monotonic()
        for conn, t, raw in reader.messages(connections=conns):
            if not node.context.ok():
                log("[bag_play] interrupted")
                break
            is_image = conn.msgtype in IMAGE_TYPES
            pacer.wait_for(conn.msgtype, t)
            pubs[conn.topic].publish(bytes(raw))
            stats["published"] += 1
            pacer.published(conn.msgtype)
            if is_image:
                stats["images"] += 1
                if consumed is not None:
                    hdr = ts.deserialize_cdr(raw, conn.msgtype).header
                    t_pub = time.monotonic()
                    if not consumed.wait((hdr.stamp.sec, hdr.stamp.nanosec), args.consume_timeout):
                        stats["unanswered"] += 1
                        log(
                            f"[bag_play] no answer on {args.consumed_topic} for stamp "
                            f"{hdr.stamp.sec}.{hdr.stamp.nanosec:09d} within {args.consume_timeout:g} s; going on"
                        )
                    else:
                        log(
                            f"[bag_play] image {stats['images']} (stamp {hdr.stamp.sec}.{hdr.stamp.nanosec:09d}) "
                            f"answered after {time.monotonic() - t_pub:.2f} s"
                        )
        stats["seconds"] = round(time.monotonic() - start, 3)
        from rclpy.duration import Duration

        for pub in pubs.values():  # reliable delivery of the last messages before the process exits
            pub.wait_for_all_acked(Duration(seconds=5))
    log(
        f"[bag_play] published {stats['published']} messages ({stats['images']} images) in {stats['seconds']} s"
        + (f", {stats['unanswered']} unanswered" if consumed is not None else "")
    )
    return stats


def main(argv: Optional[List[str]] = None) -> int:
    import rclpy

    from ped_sam_ros.ros.util import BackgroundSpinner, split_ros_args

    tool_args, argv = split_ros_args(sys.argv if argv is None else argv)
    args = build_parser().parse_args(tool_args)
    if args.rate <= 0:
        print("ped-sam-bag-play: error: --rate must be positive", file=sys.stderr)
        return 2
    if args.settle < 0:
        print("ped-sam-bag-play: error: --settle must not be negative", file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    node = rclpy.create_node("ped_sam_bag_play")
    spinner = BackgroundSpinner(node)
    try:
        play(args, node)
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"ped-sam-bag-play: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
