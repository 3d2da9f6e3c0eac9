"""rosbag2 files without ROS's rosbag2: ``rosbags`` with our message types.

``typestore()`` is the ROS 2 Kilted type store plus ``ped_sam_msgs`` registered
from its .msg files (the installed ones when present, else the repository's),
so the bags we write carry the same definitions and RIHS01 hashes as rosidl's.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

REPO_MSG_DIR = Path(__file__).resolve().parents[3] / "ped_sam_msgs" / "msg"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
STORAGES = ("sqlite3", "mcap")


def msg_dir() -> Path:
    """Where ped_sam_msgs' .msg files are (installed share first)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        d = Path(prefix) / "share" / "ped_sam_msgs" / "msg"
        if any(d.glob("*.msg")):
            return d
    return REPO_MSG_DIR


@lru_cache(maxsize=1)
def typestore():
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(getattr(Stores, "ROS2_KILTED", Stores.LATEST))
    types = {}
    for f in sorted(msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"ped_sam_msgs/msg/{f.stem}"))
    ts.register(types)
    return ts


def storage_plugin(name: str):
    from rosbags.rosbag2 import StoragePlugin

    if name not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {name!r}")
    return StoragePlugin.MCAP if name == "mcap" else StoragePlugin.SQLITE3


def writer(path, storage: str = "sqlite3"):
    from rosbags.rosbag2 import Writer

    return Writer(Path(path), version=9, storage_plugin=storage_plugin(storage))


def message_class(type_name: str):
    """``"sensor_msgs/msg/Image"`` -> the rclpy message class."""
    parts = type_name.split("/")
    if len(parts) != 3:
        raise ValueError(f"type name {type_name!r} must look like pkg/msg/Name")
    module = importlib.import_module(f"{parts[0]}.{parts[1]}")
    return getattr(module, parts[2])


def read_messages(path, topics: Optional[List[str]] = None) -> Iterator[Tuple[str, str, int, object]]:
    """(topic, msgtype, log time ns, deserialized message) in log-time order."""
    from rosbags.rosbag2 import Reader

    ts = typestore()
    with Reader(Path(path)) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, t, ts.deserialize_cdr(raw, conn.msgtype)


def bag_topics(path) -> dict:
    """topic -> (msgtype, message count)."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        counts = {}
        for c in reader.connections:
            t, n = counts.get(c.topic, (c.msgtype, 0))
            counts[c.topic] = (t, n + c.msgcount)
        return counts
