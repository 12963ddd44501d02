"""``mirage_record``: record the simulator's topics to a rosbag2 folder (MCAP) from the running graph.

Subscriptions are raw (messages are written as the CDR bytes that arrived, never deserialized), the
bag streams to disk, and each message is stamped with the node clock at reception, which is sim time
when the node runs with ``use_sim_time`` (the launch file's default). With ``use_sim_time`` and no
``/clock`` yet, that clock stands at zero: such messages are not recorded (a bag stamped 0.0 s cannot be
played back) and a warning says why every few seconds until ``/clock`` arrives. The bag is finished
when the node shuts down (Ctrl-C); until then it sits in a hidden ``.<name>.partial`` folder, and a bag
that recorded nothing is not kept.
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
WAITING_WARNING_PERIOD_S = 5.0

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
        self.waiting_for_clock = 0  # messages not recorded because sim time had not started
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
        stamp = self.get_clock().now().nanoseconds
        if stamp == 0:  # use_sim_time, and no /clock has arrived yet
            self.waiting_for_clock += 1
            self.get_logger().warning(
                f"use_sim_time is true but no /clock has arrived: {self.waiting_for_clock} messages not recorded "
                "so far (start the simulator with publish_clock:=true, or record with use_sim_time:=false)",
                throttle_duration_sec=WAITING_WARNING_PERIOD_S)
            return
        name = self.subscriptions_by_topic[topic].topic_name
        if not self.bag.counts[name]:  # as `ros2 bag record` names each topic it subscribed to
            self.get_logger().info(f"recording {name}: first message at {stamp * 1e-9:.3f} s")
        self.bag.write(name, stamp, data)

    def close(self) -> str:
        """Finish the bag (or drop it when it holds nothing); returns what happened, for the console
        (the ROS context may already be shut down, so this is not logged to /rosout)."""
        skipped = (f"; {self.waiting_for_clock} messages not recorded for want of /clock"
                   if self.waiting_for_clock else "")
        if not any(self.bag.counts.values()):
            self.bag.abort()
            return f"no bag written: no message was recorded{skipped}"
        path = self.bag.close()
        counts = ", ".join(f"{topic} {count}" for topic, count in self.bag.counts.items() if count)
        return f"wrote {path}: {counts}{skipped}"


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run mirage_ros mirage_record`` and of the ``mirage-record`` console script."""
    return run_node(RecorderNode, NODE_NAME, args)


if __name__ == "__main__":
    raise SystemExit(main())
