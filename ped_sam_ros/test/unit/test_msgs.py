"""ped_sam_msgs: the generated types serialize with rclpy, and rosbags reads/writes them.

No DDS traffic here: only (de)serialization, so no ROS context or domain is needed.
"""

import json
import pathlib
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from helpers import WORKSPACE
from ped_sam_msgs.msg import (
    BoxPrompt,
    MaskInstance,
    MaskRle,
    PointPrompt,
    Prompt,
    Prompts,
    SegmentationResult,
    StageTiming,
)
from ped_sam_msgs.srv import SegmentImage

MSG_DIR = WORKSPACE / "ped_sam_msgs" / "msg"
MSG_NAMES = [
    "PointPrompt",
    "BoxPrompt",
    "Prompt",
    "Prompts",
    "MaskRle",
    "MaskInstance",
    "StageTiming",
    "TileDecision",
    "SegmentationResult",
]


@dataclass(frozen=True)
class _Types:
    """The message classes the builders below use: rclpy's generated ones, or a rosbags
    typestore's (the same messages built both ways, so each side can read the other's bytes)."""

    Time: type
    Header: type
    Roi: type
    Rle: type
    Instance: type
    Timing: type
    Result: type
    uint32s: Callable = list  # how a uint32[] field is given


RCLPY = _Types(Time, Header, RegionOfInterest, MaskRle, MaskInstance, StageTiming, SegmentationResult)
_BAG_NAMES = (
    "builtin_interfaces/msg/Time",
    "std_msgs/msg/Header",
    "sensor_msgs/msg/RegionOfInterest",
    "ped_sam_msgs/msg/MaskRle",
    "ped_sam_msgs/msg/MaskInstance",
    "ped_sam_msgs/msg/StageTiming",
    "ped_sam_msgs/msg/SegmentationResult",
)


def _bag_types(typestore) -> _Types:
    return _Types(*(typestore.types[n] for n in _BAG_NAMES), uint32s=lambda v: np.array(v, np.uint32))


def _header(T: _Types = RCLPY):
    return T.Header(stamp=T.Time(sec=1_700_000_123, nanosec=456_789), frame_id="camera_optical")


def _prompt(with_box=True):
    return Prompt(
        points=[
            PointPrompt(x=10.5, y=20.25, label=PointPrompt.FOREGROUND),
            PointPrompt(x=3.0, y=4.0, label=PointPrompt.BACKGROUND),
        ],
        has_box=with_box,
        box=BoxPrompt(x_min=1.0, y_min=2.0, x_max=30.5, y_max=40.75) if with_box else BoxPrompt(),
    )


def _instance(i, T: _Types = RCLPY):
    # 4x3 mask, column-major runs: 2 zeros, 5 ones, 5 zeros (sum = 12)
    return T.Instance(
        id=i,
        score=0.875,
        stability_score=0.9375,
        bbox=T.Roi(x_offset=1, y_offset=2, width=3, height=4, do_rectify=False),
        area=5,
        mask=T.Rle(height=4, width=3, counts=T.uint32s([2, 5, 5])),
    )


def _result(T: _Types = RCLPY):
    return T.Result(
        header=_header(T),
        image_height=4,
        image_width=3,
        model_type="vit_b",
        mode="paper",
        grid_rows=2,
        grid_cols=3,
        random_weights=True,
        instances=[_instance(1, T), _instance(2, T)],
        timings=[T.Timing(stage="encode", seconds=1.25), T.Timing(stage="decode", seconds=0.0625)],
        frames_dropped=7,
        status=0,
        reason="",
        tile_decisions=[],
    )


def _roundtrip(msg):
    data = serialize_message(msg)
    assert isinstance(data, bytes) and len(data) > 4
    return deserialize_message(data, type(msg))


def test_constants():
    assert PointPrompt.BACKGROUND == 0
    assert PointPrompt.FOREGROUND == 1


@pytest.mark.parametrize(
    "msg",
    [
        PointPrompt(x=1.5, y=2.5, label=PointPrompt.FOREGROUND),
        BoxPrompt(x_min=0.5, y_min=1.5, x_max=100.0, y_max=200.25),
        _prompt(with_box=True),
        _prompt(with_box=False),
        Prompts(header=_header(), prompts=[_prompt(), _prompt(False)], automatic=False),
        Prompts(header=_header(), prompts=[], automatic=True),
        MaskRle(height=4, width=3, counts=[0, 12]),
        _instance(3),
        StageTiming(stage="network", seconds=0.015625),
        _result(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_rclpy_roundtrip(msg):
    back = _roundtrip(msg)
    assert back == msg
    assert back is not msg


def test_segmentation_result_fields_roundtrip():
    back = _roundtrip(_result())
    assert back.header.stamp.sec == 1_700_000_123 and back.header.stamp.nanosec == 456_789
    assert back.header.frame_id == "camera_optical"
    assert (back.image_height, back.image_width) == (4, 3)
    assert (back.model_type, back.mode) == ("vit_b", "paper")
    assert (back.grid_rows, back.grid_cols, back.random_weights) == (2, 3, True)
    assert [i.id for i in back.instances] == [1, 2]
    inst = back.instances[0]
    assert inst.score == pytest.approx(0.875) and inst.stability_score == pytest.approx(0.9375)
    assert (inst.bbox.x_offset, inst.bbox.y_offset, inst.bbox.width, inst.bbox.height) == (1, 2, 3, 4)
    assert inst.area == 5
    assert (inst.mask.height, inst.mask.width) == (4, 3)
    assert list(inst.mask.counts) == [2, 5, 5]
    assert sum(inst.mask.counts) == inst.mask.height * inst.mask.width
    assert [(t.stage, t.seconds) for t in back.timings] == [("encode", 1.25), ("decode", 0.0625)]
    assert back.frames_dropped == 7


def test_service_roundtrip():
    img = Image(header=_header(), height=2, width=3, encoding="rgb8", is_bigendian=0, step=9, data=bytes(range(18)))
    req = SegmentImage.Request(image=img, use_latest_frame=False, prompts=[_prompt()], automatic=False)
    back = _roundtrip(req)
    assert back == req
    assert bytes(back.image.data) == bytes(range(18))
    assert back.image.encoding == "rgb8" and back.image.step == 9

    req2 = SegmentImage.Request(use_latest_frame=True, automatic=True)
    assert _roundtrip(req2) == req2

    resp = SegmentImage.Response(success=True, message="ok", result=_result())
    back = _roundtrip(resp)
    assert back == resp
    assert back.result.instances[1].id == 2

    fail = SegmentImage.Response(success=False, message="no frame received yet")
    assert _roundtrip(fail) == fail


# --- rosbags interop -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = getattr(Stores, "ROS2_KILTED", None) or Stores.LATEST
    ts = get_typestore(store)
    types = {}
    for name in MSG_NAMES:
        types.update(get_types_from_msg((MSG_DIR / f"{name}.msg").read_text(), f"ped_sam_msgs/msg/{name}"))
    ts.register(types)
    return ts


def test_rosbags_registers_all_messages(typestore):
    for name in MSG_NAMES:
        assert f"ped_sam_msgs/msg/{name}" in typestore.types
    pp = typestore.types["ped_sam_msgs/msg/PointPrompt"]
    assert pp.FOREGROUND == 1 and pp.BACKGROUND == 0


def test_rosbags_type_hashes_match_rosidl(typestore):
    """rosbag2 stores RIHS01 type hashes: rosbags' must equal the ones rosidl generated."""
    share = pathlib.Path(sys.prefix) / "share" / "ped_sam_msgs"  # installed into the venv
    for name in MSG_NAMES:
        desc = json.loads((share / "msg" / f"{name}.json").read_text())
        expected = {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}
        typename = f"ped_sam_msgs/msg/{name}"
        assert typestore.hash_rihs01(typename) == expected[typename], name


def test_rosbags_cdr_deserializes_with_rclpy(typestore):
    msg = _result(_bag_types(typestore))
    raw = bytes(typestore.serialize_cdr(msg, "ped_sam_msgs/msg/SegmentationResult"))

    from_bag = deserialize_message(raw, SegmentationResult)
    assert from_bag == _result()
    # The other direction: rclpy's bytes read back with rosbags. (Compared through rosbags'
    # re-serialization: Fast CDR leaves alignment padding bytes uninitialised.)
    rclpy_raw = serialize_message(_result())
    assert len(rclpy_raw) == len(raw)
    back = typestore.deserialize_cdr(rclpy_raw, "ped_sam_msgs/msg/SegmentationResult")
    assert back.frames_dropped == 7 and back.instances[1].id == 2
    assert back.instances[0].mask.counts.tolist() == [2, 5, 5]
    assert back.header.frame_id == "camera_optical" and back.header.stamp.nanosec == 456_789
    assert bytes(typestore.serialize_cdr(back, "ped_sam_msgs/msg/SegmentationResult")) == raw
