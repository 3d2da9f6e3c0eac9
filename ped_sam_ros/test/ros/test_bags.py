"""Replay: a bag of real frames in, a bag of results out, through the real edge
node and real remote servers (separate processes, DDS on this machine only).

Faster than the node: results + counted drops == frames. Paced by the node's
outputs (--as-fast-as-consumed): one result per frame. Both bags read back with
our message types (rosbags and rclpy).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.ros import REPO, TEST_MODEL, edge_stack, new_domain, ros_env, stop_process
from ped_sam_ros.ros.diagnostics import read_pipeline

pytestmark = pytest.mark.timeout(300)

NS = "/bags"
PREFIX = f"{NS}/edge_node"


def _tool(module: str, args, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"ped_sam_ros.tools.{module}", *map(str, args)],
        cwd=str(REPO),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


def _wait_file(path: Path, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    end = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{path.name} not written:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


# ------------------------------------------------------------------ no ROS graph


def test_made_bag_reads_back_with_rosbags_and_rclpy(tmp_path):
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import Image

    from ped_sam_msgs.msg import Prompts
    from ped_sam_ros.ros.bags import bag_topics, read_messages
    from ped_sam_ros.ros.convert import image_to_rgb, prompts_from_msgs
    from ped_sam_ros.tools.make_bag import frames, make_bag

    for storage in ("sqlite3", "mcap"):
        out = tmp_path / f"bag_{storage}"
        info = make_bag(out, n_frames=7, rate_hz=5.0, scale=4, storage=storage)
        assert bag_topics(out) == {
            "/edge_node/prompts": ("ped_sam_msgs/msg/Prompts", 1),
            "/camera/image_raw": ("sensor_msgs/msg/Image", 7),
        }
        msgs = list(read_messages(out))
        assert msgs[0][0] == "/edge_node/prompts"  # before every frame
        stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for t, _, _, m in msgs if t == "/camera/image_raw"]
        assert stamps == info.stamps and stamps == sorted(stamps) and len(set(stamps)) == 7
        expected = frames(7, 4)
        with Reader(out) as reader:
            images = [deserialize_message(raw, Image) for c, _, raw in reader.messages() if c.msgtype.endswith("Image")]
            prompts = [
                deserialize_message(raw, Prompts) for c, _, raw in reader.messages() if c.msgtype.endswith("Prompts")
            ]
        assert [m.header.frame_id for m in images] == [info.frame_id] * 7
        for m, (_, rgb) in zip(images, expected):
            assert m.encoding == "rgb8"
            assert np.array_equal(image_to_rgb(m), rgb)  # real photos, bit-exact
        objs = prompts_from_msgs(prompts[0].prompts)
        assert len(objs) == 2 and objs[0].points[0][2] == 1 and objs[1].points[1][2] == 0
        h = min(s[0] for s in info.sizes)
        w = min(s[1] for s in info.sizes)
        assert all(0 <= x < w and 0 <= y < h for o in objs for x, y, _ in o.points)


class _FakeClock:
    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def __call__(self):
        return self.now

    def sleep(self, s):
        assert s > 0
        self.sleeps.append(round(s, 6))
        self.now += s


def _pace(rate, settle, messages):
    """Run the player's pacing over (msgtype, log time in s, seconds the publish itself takes);
    returns the times (relative to the first message) each message went out and the sleeps."""
    from ped_sam_ros.tools.bag_play import Pacer

    clock = _FakeClock()
    pacer = Pacer(rate, settle, clock=clock, sleep=clock.sleep)
    t0, sent = clock.now, []
    for msgtype, t_s, cost in messages:
        pacer.wait_for(msgtype, int(t_s * 1e9))
        sent.append(round(clock.now - t0, 6))
        clock.now += cost
        pacer.published(msgtype)
    return sent, clock.sleeps


PROMPTS, IMAGE, INFO, TF = (
    "ped_sam_msgs/msg/Prompts",
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CameraInfo",
    "tf2_msgs/msg/TFMessage",
)


def test_bag_play_settles_only_images_after_prompts():
    # Recorded pace (--rate 1): CameraInfo and tf keep their times; only an image recorded closer than
    # --settle to the prompts waits for it, and later ones keep the recorded pace.
    msgs = [
        (PROMPTS, 0.0, 0.0),
        (INFO, 0.05, 0.0),
        (TF, 0.06, 0.0),
        (IMAGE, 0.1, 0.0),
        (INFO, 0.5, 0.0),
        (TF, 0.55, 0.0),
        (IMAGE, 0.6, 0.0),
        (IMAGE, 1.1, 0.0),
    ]
    sent, _ = _pace(1.0, 0.3, msgs)
    assert sent == [0.0, 0.05, 0.06, 0.3, 0.5, 0.55, 0.6, 1.1]
    # at --rate 2 the recorded gaps halve; an image 1 s after the prompts needs no settling
    sent, _ = _pace(2.0, 0.3, [(PROMPTS, 0.0, 0.0), (INFO, 0.2, 0.0), (IMAGE, 1.0, 0.0), (IMAGE, 2.0, 0.0)])
    assert sent == [0.0, 0.1, 0.5, 1.0]
    # as fast as consumed (no rate): nothing waits except the image right after the prompts
    sent, sleeps = _pace(
        None,
        0.3,
        [
            (INFO, 0.0, 0.0),
            (PROMPTS, 1.0, 0.0),
            (INFO, 2.0, 0.0),
            (TF, 2.5, 0.0),
            (IMAGE, 3.0, 0.0),
            (INFO, 4.0, 0.0),
            (IMAGE, 5.0, 0.0),
        ],
    )
    assert sent == [0.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3] and sleeps == [0.3]
    # time already spent after the prompts counts towards the settling; --settle 0 is off
    sent, _ = _pace(None, 0.3, [(PROMPTS, 0.0, 0.0), (INFO, 0.1, 0.2), (IMAGE, 0.2, 0.0)])
    assert sent == [0.0, 0.0, 0.3]
    sent, sleeps = _pace(None, 0.0, [(PROMPTS, 0.0, 0.0), (IMAGE, 0.1, 0.0)])
    assert sent == [0.0, 0.0] and sleeps == []


def test_bag_record_until_diagnostic_condition():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from ped_sam_ros.tools.bag_record import diagnostic_reports, parse_condition

    keys, n = parse_condition("frames_out+frames_dropped+frames_failed>=6")
    assert keys == ["frames_out", "frames_dropped", "frames_failed"] and n == 6
    for bad in ("frames_out=6", "frames_out>=", ">=6", "a++b>=1", "frames_out>=x"):
        with pytest.raises(ValueError, match="KEY>=N"):
            parse_condition(bad)

    def arr(**values):
        remote = DiagnosticStatus(name="remote a", values=[KeyValue(key="frames", value="9")])
        pipe = DiagnosticStatus(name="pipeline", values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        return DiagnosticArray(status=[remote, pipe])

    assert diagnostic_reports(arr(frames_out=4, frames_dropped=1, frames_failed=1), keys, n)
    assert not diagnostic_reports(arr(frames_out=4, frames_dropped=1, frames_failed=0), keys, n)
    assert not diagnostic_reports(arr(frames_out=9), keys, n), "every key must be in the same status"
    assert not diagnostic_reports(arr(frames_out="?", frames_dropped=9, frames_failed=0), keys, n)


def test_bag_record_duration_counts_from_when_recording_starts(tmp_path):
    # Two typed topics nobody publishes: discovery looks for each one 2 s, longer than --duration.
    # The recorder must still record for the full --duration after it is ready (the ready file's
    # time is when recording starts).
    env = ros_env(new_domain())
    ready, log = tmp_path / "rec.ready", tmp_path / "rec.log"
    duration = 3.0
    rec = _tool(
        "bag_record",
        [
            tmp_path / "bag",
            "--topics",
            "/nobody/a",
            "/nobody/b",
            "--type",
            "/nobody/a=std_msgs/msg/String",
            "--type",
            "/nobody/b=std_msgs/msg/String",
            "--duration",
            duration,
            "--ready-file",
            ready,
        ],
        env,
        log,
    )
    try:
        _wait_file(ready, rec, 60, log)
        assert rec.wait(60) == 0, log.read_text()
        exited = time.time()  # not before the process really exited
    finally:
        stop_process(rec)
    text = log.read_text()
    assert "discovery took" in text, text
    # the ready file is written just before the recording clock starts
    assert exited - ready.stat().st_mtime >= duration, text


# ------------------------------------------------------------------ through the node


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray

    work = tmp_path_factory.mktemp("bag_replay")
    dom = new_domain()
    with edge_stack(work, dom, ["bag-a", "bag-b"], "bag_test", namespace=NS) as (_, edge, test_node):
        diags = test_node.collect(DiagnosticArray, "/diagnostics")
        yield work, dom, edge, test_node, diags


def _pipeline(diags):
    return read_pipeline(diags, PREFIX)


def _count(status, name: str) -> int:
    """A frame count of a PipelineStatus (0 before the first one)."""
    return 0 if status is None else getattr(status, name)


def _read_results(bag: Path):
    from ped_sam_ros.ros.bags import read_messages

    results, labels = [], []
    for topic, _, _, m in read_messages(bag):
        (results if topic.endswith("/masks") else labels).append(m)
    return results, labels


def _replay(stack, name: str, n: int, play_args, record_count: int):
    from ped_sam_ros.tools.make_bag import make_bag

    work, dom, edge, node, diags = stack
    env = ros_env(dom)
    bag_in, bag_out = work / f"{name}_in", work / f"{name}_out"
    info = make_bag(bag_in, n_frames=n, rate_hz=2.0, scale=4)
    ready = work / f"{name}.ready"
    rec_log, play_log = work / f"{name}_record.log", work / f"{name}_play.log"
    before = _pipeline(diags)
    rec = _tool(
        "bag_record",
        [
            bag_out,
            "--topics",
            f"{PREFIX}/masks",
            f"{PREFIX}/label_mask",
            "--count",
            record_count,
            "--count-topic",
            f"{PREFIX}/label_mask",
            "--duration",
            150,
            "--ready-file",
            ready,
        ],
        env,
        rec_log,
    )
    play = None
    try:
        _wait_file(ready, rec, 60, rec_log)
        play = _tool(
            "bag_play",
            [
                bag_in,
                "--topic-remap",
                f"/camera/image_raw:={PREFIX}/image",
                "--topic-remap",
                f"/edge_node/prompts:={PREFIX}/prompts",
                *play_args,
            ],
            env,
            play_log,
        )
        assert play.wait(150) == 0, play_log.read_text()
        # The node has seen every frame and finished (a result or a counted drop for each).
        want_in = _count(before, "frames_in") + n

        def settled():
            v = _pipeline(diags)
            return v is not None and v.frames_in == want_in and v.settled

        try:
            node.wait_until(settled, 90, "the node to finish the replayed frames")
        except TimeoutError:
            raise AssertionError(f"{_pipeline(diags)}\n{edge.log_text()}") from None
        after = _pipeline(diags)
        if after.frames_out - _count(before, "frames_out") >= record_count:
            rec.wait(30)  # the recorder stops by itself after --count results
        else:
            time.sleep(1.5)  # let the last results reach the recorder, then stop it
    finally:
        stop_process(play)
        stop_process(rec)
    assert rec.returncode == 0, rec_log.read_text()
    results, labels = _read_results(bag_out)
    return info, before, after, results, labels


def _check_results(info, results, labels):
    from ped_sam_ros.ros.convert import image_to_label, label_from_result, stamp_key

    in_keys = info.keys
    out_keys = [stamp_key(r.header) for r in results]
    assert set(out_keys) <= set(in_keys), "every result carries an input header"
    assert out_keys == sorted(out_keys, key=in_keys.index), "results in input order"
    assert out_keys[-1] == in_keys[-1], "latest frame wins: the last frame is always processed"
    label_by_key = {stamp_key(m.header): m for m in labels}
    for r in results:
        k = in_keys.index(stamp_key(r.header))
        assert (r.image_height, r.image_width) == tuple(info.sizes[k])
        assert r.random_weights and r.model_type == TEST_MODEL and (r.grid_rows, r.grid_cols) == (1, 2)
        assert [i.id for i in r.instances] == [1, 2], "the bag's Prompts (two objects) were applied"
        assert np.array_equal(label_from_result(r), image_to_label(label_by_key[stamp_key(r.header)]))


def test_replay_faster_than_the_node_counts_drops(stack):
    n = 5
    # 5 frames stamped 0.5 s apart, played 20x faster: all arrive while the first is processed.
    info, before, after, results, labels = _replay(stack, "fast", n, ["--rate", "20"], record_count=n)
    drops = after.frames_dropped - _count(before, "frames_dropped")
    failed = after.frames_failed - _count(before, "frames_failed")
    print(f"replay at 20x: {n} frames in, {len(results)} results, {drops} dropped (latest frame wins)")
    assert failed == 0, (before, after)
    assert drops >= 1, "the node is slower than the bag rate: some frames must be dropped"
    assert len(results) + drops == n
    assert results[-1].frames_dropped - _count(before, "frames_dropped") == drops  # the count each result carries
    _check_results(info, results, labels)


def test_replay_paced_by_the_node_gives_one_result_per_frame(stack):
    n = 3
    info, before, after, results, labels = _replay(
        stack,
        "paced",
        n,
        ["--as-fast-as-consumed", "--consumed-topic", f"{PREFIX}/masks", "--consume-timeout", "60"],
        record_count=n,
    )
    assert after.frames_dropped == _count(before, "frames_dropped")
    assert len(results) == n
    _check_results(info, results, labels)
