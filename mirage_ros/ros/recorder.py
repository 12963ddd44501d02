"""``mirage_record``: record the simulator's topics to a rosbag2 folder (MCAP) from the running graph.

Subscriptions are raw (messages are written as the CDR bytes that arrived, never deserialized), the
bag streams to disk, and each message is stamped with the node clock at reception, which is sim time
when the node runs with ``use_sim_time`` (the launch file's default). The bag is finished when the
node shuts down (Ctrl-C); until then it sits in a hidden ``.<name>.partial`` folder.
"""

from __future__ import annotations

import importlib
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from mirage_ros.ros.bag import BagWriter
from mirage_ros.ros.parameters import ParameterSpec, declare_and_validate
from mirage_ros.ros.spin import run_node

NODE_NAME = "mirage_record"

#: Topic (relative to the recorder's namespace, or absolute) -> ROS message type.
DEFAULT_TOPICS = {
    "camera/image_raw": "sensor_msgs/msg/Image",
    "camera/camera_info": "sensor_msgs/msg/CameraInfo",
    "camera/depth/image_raw": "sensor_msgs/msg/Image",
    "camera/depth/camera_info": "sensor_msgs/msg/CameraInfo",
    "camera/depth/points": "sensor_msgs/msg/PointCloud2",
    "scan": "sensor_msgs/msg/LaserScan",
    "odom": "nav_msgs/msg/Odometry",
    "cmd_vel": "geometry_msgs/msg/Twist",
    "mirage_sim/status": "mirage_ros/msg/SimStatus",
    "/clock": "rosgraph_msgs/msg/Clock",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/tf_static": "tf2_msgs/msg/TFMessage",
}
MEMORY_CLOUD = ("mirage_sim/memory_cloud", "sensor_msgs/msg/PointCloud2")

PARAMETERS = [
    ParameterSpec("output", "mirage_rollout", "Bag folder to write (must not exist).", read_only=True,
                  check=lambda value: None if value.strip() else "must not be empty"),
    ParameterSpec("record_memory_cloud", False, "Also record the (large, throttled) memory point cloud.",
                  read_only=True),
]


def message_class(type_name: str) -> Any:
    """The Python class of ``pkg/msg/Name``; ``ImportError`` when the package is not installed."""
    package, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


class RecorderNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        params = declare_and_validate(self, PARAMETERS)
        topics = dict(DEFAULT_TOPICS)
        if params["record_memory_cloud"]:
            topics[MEMORY_CLOUD[0]] = MEMORY_CLOUD[1]
        self.bag = BagWriter(params["output"])
        self.subscriptions_by_topic = {}
        for topic, type_name in topics.items():
            try:
                kind = message_class(type_name)
            except (ImportError, AttributeError):
                self.get_logger().warning(f"{type_name} is not installed: {topic} is not recorded")
                continue
            latched = topic == "/tf_static"
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
            subscription = self.create_subscription(kind, topic, lambda data, t=topic: self._on_message(t, data), qos,
                                                    raw=True)
            self.bag.add_topic(subscription.topic_name, type_name)
            self.subscriptions_by_topic[topic] = subscription
        self.get_logger().info(f"recording {len(self.subscriptions_by_topic)} topics to {params['output']}")

    def _on_message(self, topic: str, data: bytes) -> None:
        name = self.subscriptions_by_topic[topic].topic_name
        self.bag.write(name, self.get_clock().now().nanoseconds, data)

    def close(self) -> None:
        path = self.bag.close()
        counts = ", ".join(f"{topic} {count}" for topic, count in self.bag.counts.items() if count)
        self.get_logger().info(f"wrote {path}: {counts or 'no messages'}")


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run mirage_ros mirage_record`` and of the ``mirage-record`` console script."""
    return run_node(RecorderNode, NODE_NAME, args)


if __name__ == "__main__":
    raise SystemExit(main())
