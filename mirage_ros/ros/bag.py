"""Writing rosbag2 folders (MCAP storage) with ``rosbags``: no rosbag2_py, no ROS install needed.

Messages arrive already CDR-serialized (rclpy ``raw=True`` subscriptions, or
``rclpy.serialization.serialize_message``), so nothing is converted twice. Message definitions come
from the ``rosbags`` Jazzy type store for standard types and from this package's ``msg/*.msg`` for
its own, and are embedded in the bag (``ros2 bag play`` and Foxglove need them).

A bag is written inside a hidden ``.<name>.partial`` folder and moved to ``<name>`` when closed, so a
crash never leaves a folder that looks like a finished bag.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from mirage_ros.geometry import matrix_to_quaternion

PACKAGE = "mirage_ros"


def _package_msg_dir() -> Path:
    source_tree = Path(__file__).resolve().parents[2] / "msg"
    if source_tree.is_dir():
        return source_tree
    from ament_index_python.packages import get_package_share_directory
    return Path(get_package_share_directory(PACKAGE)) / "msg"


def typestore_with_package_types():
    """Jazzy type store plus the custom messages of this package (from their .msg text)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for path in sorted(_package_msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


class BagWriter:
    """Streams serialized messages into a rosbag2 MCAP folder; use as a context manager."""

    def __init__(self, path: str | Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"{self.path} exists; choose another name or pass overwrite")
            shutil.rmtree(self.path)
        self.staging = self.path.with_name(f".{self.path.name}.partial")
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        self.typestore = typestore_with_package_types()
        self.writer = Writer(self.staging / self.path.name, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self._closed = False

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Register ``topic`` with a ROS type name such as ``sensor_msgs/msg/Image``."""
        if topic in self.connections:
            return
        if msgtype not in self.typestore.fielddefs:
            raise ValueError(f"unknown message type {msgtype!r} for topic {topic}")
        self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.typestore)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Write CDR bytes as they are (e.g. as they arrived from DDS)."""
        if topic not in self.connections:
            raise ValueError(f"topic {topic} was not added to the bag")
        self.writer.write(self.connections[topic], int(timestamp_ns), bytes(data))
        self.counts[topic] += 1

    def write_canonical(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Write CDR bytes re-encoded by rosbags: same content, alignment padding zeroed. rclpy's
        serializer leaves padding bytes uninitialised, so only this makes equal messages equal bytes."""
        msgtype = self.connections[topic].msgtype if topic in self.connections else None
        if msgtype is None:
            raise ValueError(f"topic {topic} was not added to the bag")
        message = self.typestore.deserialize_cdr(bytes(data), msgtype)
        self.write(topic, timestamp_ns, bytes(self.typestore.serialize_cdr(message, msgtype)))

    def close(self) -> Path:
        """Finish the bag (metadata.yaml) and move it to its final name."""
        if not self._closed:
            self.writer.close()
            self._closed = True
            (self.staging / self.path.name).rename(self.path)
            self.staging.rmdir()
        return self.path

    def abort(self) -> None:
        """Drop an unfinished bag."""
        if not self._closed:
            self._closed = True
            try:
                self.writer.close()
            finally:
                shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def tf_message_cdr(typestore, stamp_ns: int, transforms: list[tuple[str, str, "object"]]) -> bytes:
    """CDR bytes of a ``tf2_msgs/TFMessage`` (built with rosbags: tf2_msgs may not be installed)."""
    types = typestore.types
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    items = []
    for parent, child, transform in transforms:
        x, y, z, w = matrix_to_quaternion(transform[:3, :3])
        header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                               frame_id=parent)
        translation = types["geometry_msgs/msg/Vector3"](*(float(v) for v in transform[:3, 3]))
        rotation = types["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w))
        items.append(types["geometry_msgs/msg/TransformStamped"](
            header=header, child_frame_id=child,
            transform=types["geometry_msgs/msg/Transform"](translation=translation, rotation=rotation)))
    message = types["tf2_msgs/msg/TFMessage"](transforms=items)
    return bytes(typestore.serialize_cdr(message, "tf2_msgs/msg/TFMessage"))
