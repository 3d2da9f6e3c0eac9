"""Record topics into a rosbag2 (sqlite3 or MCAP) with rclpy + rosbags.

    ped-sam-bag-record out/results_bag --topics /robot/edge_node/masks /diagnostics --count 10 --duration 120

Messages are written as received (serialized CDR, no conversion), stamped with
their arrival time.  Each topic's type is discovered from the graph (bounded by
``--discovery-timeout``) unless given as ``--type TOPIC=pkg/msg/Name``; our
``ped_sam_msgs`` types are registered from their .msg files, so the bag reads
back with rosbags or rosbag2.  The subscription follows the publishers' QoS
(reliable unless one of them is best effort).  Stops after ``--count`` messages
on ``--count-topic`` (default: the first topic) and, with ``--until-diagnostic``,
once a recorded diagnostic_msgs/DiagnosticArray reports what the caller waits for
(e.g. ``frames_out+frames_dropped+frames_failed>=6``: the diagnostics after the last
frame are in the bag); or after ``--duration`` seconds of recording (counted from
when every subscription exists, not including discovery); or on SIGINT/SIGTERM.
It always closes the bag.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ped_sam_ros.processes import write_ready_file
from ped_sam_ros.ros.bags import STORAGES, message_class, typestore, writer
from ped_sam_ros.ros.util import status_values

DIAGNOSTICS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"


def parse_condition(text: str) -> Tuple[List[str], float]:
    """``KEY[+KEY...]>=N`` -> (keys, N)."""
    lhs, sep, rhs = text.partition(">=")
    keys = [k.strip() for k in lhs.split("+")]
    try:
        bound = float(rhs)
    except ValueError:
        bound = None
    if not sep or not all(keys) or bound is None:
        raise ValueError(
            f"--until-diagnostic {text!r} must look like KEY>=N or KEY+KEY>=N "
            f"(e.g. frames_out+frames_dropped+frames_failed>=6)"
        )
    return keys, bound


def diagnostic_reports(msg, keys: List[str], bound: float) -> bool:
    """True when one status of the DiagnosticArray has every key, with values summing to >= bound."""
    for st in msg.status:
        values = status_values(st)
        if all(k in values for k in keys):
            try:
                if sum(float(values[k]) for k in keys) >= bound:
                    return True
            except ValueError:
                continue
    return False


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ped-sam-bag-record",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("out", help="bag directory to create")
    ap.add_argument("--topics", nargs="+", required=True, help="topics to record")
    ap.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="TOPIC=TYPE",
        help="message type of a topic (skips discovery), e.g. /x/masks=ped_sam_msgs/msg/SegmentationResult",
    )
    ap.add_argument("--count", type=int, default=0, help="stop after this many messages on --count-topic (0: no limit)")
    ap.add_argument("--count-topic", help="topic whose messages --count counts (default: the first topic)")
    ap.add_argument(
        "--until-diagnostic",
        metavar="KEY[+KEY...]>=N",
        help="also wait (after --count, if given) for a recorded DiagnosticArray with a status whose "
        "values KEY (summed) reach N, e.g. frames_out+frames_dropped+frames_failed>=6; needs a "
        "diagnostic_msgs/DiagnosticArray topic among --topics",
    )
    ap.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds of recording, counted once every subscription exists "
        "(after discovery) (0: no limit)",
    )
    ap.add_argument("--storage", choices=STORAGES, default="sqlite3")
    ap.add_argument(
        "--discovery-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for each topic to appear (its type and QoS)",
    )
    ap.add_argument("--ready-file", help="write 'ready' here once every subscription exists")
    return ap


class Recorder:
    def __init__(
        self,
        node,
        out: Path,
        storage: str,
        count_topic: str,
        count: int,
        until_diagnostic: Optional[Tuple[List[str], float]] = None,
    ):
        self.node = node
        self.ts = typestore()
        self.writer = writer(out, storage)
        self.writer.open()
        self.lock = threading.Lock()
        self.connections: Dict[str, object] = {}
        self.types: Dict[str, str] = {}
        self.counts: Dict[str, int] = {}
        self.count_topic, self.count = count_topic, count
        self.until_diagnostic = until_diagnostic
        self.count_reached = not count
        self.diagnostic_seen = until_diagnostic is None
        self.done = threading.Event()
        self.subs = []
        self.queue: collections.deque = collections.deque()  # written by the thread that owns the writer

    def flush(self) -> None:
        """Write what the callbacks received (sqlite3 objects belong to the creating thread)."""
        while self.queue:
            conn, t, raw = self.queue.popleft()
            self.writer.write(conn, t, raw)

    def add(self, topic: str, type_name: str, qos) -> None:
        conn = self.writer.add_connection(topic, type_name, typestore=self.ts)
        self.connections[topic] = conn
        self.types[topic] = type_name
        self.counts[topic] = 0
        watch = self.until_diagnostic is not None and type_name == DIAGNOSTICS_TYPE
        if watch:
            from rclpy.serialization import deserialize_message

            diag_cls = message_class(type_name)

        def cb(raw: bytes, topic=topic, conn=conn):
            with self.lock:
                if self.done.is_set():
                    return
                self.queue.append((conn, time.time_ns(), raw))
                self.counts[topic] += 1
                if self.count and topic == self.count_topic and self.counts[topic] >= self.count:
                    self.count_reached = True
                if watch and not self.diagnostic_seen:
                    self.diagnostic_seen = diagnostic_reports(
                        deserialize_message(raw, diag_cls), *self.until_diagnostic
                    )
                if (self.count or self.until_diagnostic) and self.count_reached and self.diagnostic_seen:
                    self.done.set()

        self.subs.append(self.node.create_subscription(message_class(type_name), topic, cb, qos, raw=True))

    def close(self) -> None:
        with self.lock:
            self.done.set()
            for s in self.subs:
                self.node.destroy_subscription(s)
            self.subs = []
        self.flush()
        self.writer.close()


def _discover(node, topic: str, timeout_s: float, stop: threading.Event):
    """(type name, publishers' QoS list) once the topic has a publisher."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not stop.is_set():
        infos = node.get_publishers_info_by_topic(topic)
        if infos:
            return infos[0].topic_type, [i.qos_profile for i in infos]
        time.sleep(0.1)
    return None, []


def _qos_for(publisher_qos):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    best_effort = any(q.reliability == ReliabilityPolicy.BEST_EFFORT for q in publisher_qos)
    return QoSProfile(
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
    )


def main(argv: Optional[List[str]] = None) -> int:
    import rclpy

    from ped_sam_ros.ros.util import BackgroundSpinner, split_ros_args

    tool_args, argv = split_ros_args(sys.argv if argv is None else argv)
    args = build_parser().parse_args(tool_args)
    out = Path(args.out)
    if out.exists():
        print(f"ped-sam-bag-record: error: {out} exists; rosbag2 writes a new directory", file=sys.stderr)
        return 2
    types = {}
    for item in args.type:
        topic, sep, tname = item.partition("=")
        if not sep:
            print(f"ped-sam-bag-record: error: --type {item!r} must look like TOPIC=pkg/msg/Name", file=sys.stderr)
            return 2
        types[topic] = tname
    count_topic = args.count_topic or args.topics[0]
    if count_topic not in args.topics:
        print(f"ped-sam-bag-record: error: --count-topic {count_topic} is not among --topics", file=sys.stderr)
        return 2
    until = None
    if args.until_diagnostic:
        try:
            until = parse_condition(args.until_diagnostic)
        except ValueError as e:
            print(f"ped-sam-bag-record: error: {e}", file=sys.stderr)
            return 2

    stop = threading.Event()
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = rclpy.create_node("ped_sam_bag_record")
    spinner = BackgroundSpinner(node)
    recorder = None
    code = 0
    t0 = time.monotonic()
    start = None  # when recording starts (every subscription exists): --duration counts from here
    try:
        recorder = Recorder(node, out, args.storage, count_topic, args.count, until)
        for topic in args.topics:
            tname, pub_qos = types.get(topic), []
            # Discovery gives the type and the publishers' QoS (a short look when the type is given).
            wait = args.discovery_timeout if tname is None else min(2.0, args.discovery_timeout)
            found, pub_qos = _discover(node, topic, wait, stop)
            tname = tname or found
            if tname is None:
                print(
                    f"[bag_record] no publisher of {topic} after {args.discovery_timeout:g} s and no --type: "
                    f"not recorded",
                    file=sys.stderr,
                )
                code = 1
                continue
            recorder.add(topic, tname, _qos_for(pub_qos))
        if not recorder.subs:
            raise RuntimeError("nothing to record")
        if until is not None and DIAGNOSTICS_TYPE not in recorder.types.values():
            raise RuntimeError(f"--until-diagnostic needs a {DIAGNOSTICS_TYPE} topic among the recorded ones")
        start = time.monotonic()
        print(
            f"[bag_record] recording {', '.join(recorder.connections)} into {out} (discovery took {start - t0:.1f} s)",
            flush=True,
        )
        if args.ready_file:
            write_ready_file(args.ready_file, "ready")
        while not stop.is_set() and not recorder.done.is_set():
            if args.duration and time.monotonic() - start >= args.duration:
                why = f"--duration {args.duration:g} s reached"
                if not recorder.count_reached:
                    why += f" before --count {args.count} on {count_topic}"
                if not recorder.diagnostic_seen:
                    why += f" without a diagnostic reporting {args.until_diagnostic}"
                print(f"[bag_record] {why}", flush=True)
                break
            recorder.flush()
            stop.wait(0.05)
    except RuntimeError as e:
        print(f"ped-sam-bag-record: error: {e}", file=sys.stderr)
        code = 2
    finally:
        spinner.stop()
        if recorder is not None:
            recorder.close()
            counts = ", ".join(f"{t}: {n}" for t, n in recorder.counts.items())
            recorded = f"{time.monotonic() - start:.1f} s of recording" if start is not None else "no recording"
            print(f"[bag_record] wrote {out} ({counts}) after {recorded}", flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
