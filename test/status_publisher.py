"""Publishes mirage_ros/SimStatus on /test_status until killed (the other process of test_status_ipc)."""
import rclpy
from rclpy.node import Node

from mirage_ros.msg import SimStatus


def main() -> None:
    rclpy.init()
    node = Node("status_publisher")
    publisher = node.create_publisher(SimStatus, "/test_status", 10)
    count = [0]

    def publish() -> None:
        count[0] += 1
        msg = SimStatus(steps=count[0], memory_tokens=1234, memory_bytes=5_000_000_000,
                        view_coverage=0.75, step_latency=0.042, paused=True)
        msg.header.frame_id = "odom"
        publisher.publish(msg)

    node.create_timer(0.05, publish)
    rclpy.spin(node)


if __name__ == "__main__":
    main()
