"""``make run`` / ``mirage-run``: the simulator node stack without the ros2 CLI.

Starts ``mirage_sim`` with the same ``config/sim.yaml`` the launch file uses, plus the demo tour
driver (``mirage_ros/tour.py``: steered from ``odom`` and ``scan``, sent as ``cmd_vel``), in one process on the
pip-installed ROS 2. Everything goes over real topics, so ``ros2 topic echo`` from another shell
(where available) sees the same traffic. At the end
it writes what was published to ``--output``: ``frames.png`` (published RGB and depth over time),
``path.png`` (the driven path) and ``odometry.csv``; Ctrl-C (any number of times) ends the run after the step in
hand and the report is still written.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections import deque
from pathlib import Path

import rclpy
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from PIL import Image as PILImage
from PIL import ImageDraw
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, LaserScan

from mirage_ros.geometry import yaw_of
from mirage_ros.ros.conversions import image_to_array, planar_pose_from_matrix, pose_to_matrix, seconds_of
from mirage_ros.ros.parameters import default_config
from mirage_ros.ros.sim_node import SimNode
from mirage_ros.ros.spin import STOP_POLL_S, StopRequests
from mirage_ros.sensors import RangeScan
from mirage_ros.tour import Tour
from mirage_ros.worlds.contact_sheet import contact_sheet


class TourDriver(Node):
    """Drives the demo ``Tour`` from ``odom`` and ``scan``: each odometry message is answered with the
    ``cmd_vel`` the tour asks for at that pose, given the latest scan (the node publishes odometry every
    step, well within any command timeout)."""

    def __init__(self) -> None:
        super().__init__("mirage_tour_driver")
        self.tour = Tour()
        self.scan: RangeScan | None = None
        self.publisher = self.create_publisher(Twist, "cmd_vel", 10)
        self.create_subscription(Odometry, "odom", self._on_odom, 10)
        self.create_subscription(LaserScan, "scan", self._on_scan, 10)

    def _on_scan(self, msg: LaserScan) -> None:
        self.scan = RangeScan.from_laser(msg.angle_min, msg.angle_increment, msg.ranges)

    def _on_odom(self, msg: Odometry) -> None:
        pose = planar_pose_from_matrix(pose_to_matrix(msg.pose.pose))
        forward, yaw_rate = self.tour.command(pose, self.scan)
        command = Twist()
        command.linear.x, command.angular.z = forward, yaw_rate
        self.publisher.publish(command)


class Monitor(Node):
    """Keeps every odometry message and one published RGB-D frame per second (at most ``max_frames``)."""

    def __init__(self, max_frames: int = 24) -> None:
        super().__init__("mirage_run_monitor")
        self.rows: list[tuple[float, float, float, float]] = []
        self.frames: deque = deque(maxlen=max_frames)
        self._depth: dict[float, Image] = {}
        self.create_subscription(Odometry, "odom", self._on_odom, 50)
        self.create_subscription(Image, "camera/depth/image_raw", self._on_depth, 10)
        self.create_subscription(Image, "camera/image_raw", self._on_image, 10)

    def _on_depth(self, msg: Image) -> None:
        self._depth = {seconds_of(msg.header.stamp): msg}

    def _on_image(self, msg: Image) -> None:
        stamp = seconds_of(msg.header.stamp)
        if stamp in self._depth and (not self.frames or stamp - self.frames[-1][0] >= 1.0 - 1e-6):
            self.frames.append((stamp, image_to_array(msg), image_to_array(self._depth[stamp])))

    def _on_odom(self, msg: Odometry) -> None:
        pose = pose_to_matrix(msg.pose.pose)
        self.rows.append((seconds_of(msg.header.stamp), pose[0, 3], pose[1, 3], yaw_of(pose[:3, :3])))


def draw_path(rows: list[tuple[float, float, float, float]], path: Path, size: int = 400) -> None:
    """Top-down view of the driven path (start green, end red), metres scaled to fit."""
    image = PILImage.new("RGB", (size, size), "white")
    if rows:
        xs, ys = [r[1] for r in rows], [r[2] for r in rows]
        span = max(max(xs) - min(xs), max(ys) - min(ys), 1.0)
        scale, margin = (size - 40) / span, 20

        def pixel(x: float, y: float) -> tuple[float, float]:
            return margin + (x - min(xs)) * scale, size - margin - (y - min(ys)) * scale

        draw = ImageDraw.Draw(image)
        draw.line([pixel(x, y) for x, y in zip(xs, ys)], fill=(40, 90, 200), width=2)
        for (x, y), colour in (((xs[0], ys[0]), (0, 160, 0)), ((xs[-1], ys[-1]), (200, 0, 0))):
            u, v = pixel(x, y)
            draw.ellipse((u - 5, v - 5, u + 5, v + 5), fill=colour)
        draw.text((8, 4), f"{len(rows)} odometry messages, span {span:.2f} m", fill="black")
    image.save(path)


def simulate(config: Path, duration: float, stop: StopRequests) -> tuple[list, list]:
    """Run the simulator, the tour driver and the monitor in one executor for ``duration`` seconds (0: until
    ``stop`` receives a signal); the odometry rows and kept frames the monitor saw."""
    rclpy.init(args=["--ros-args", "--params-file", str(config)], signal_handler_options=SignalHandlerOptions.NO)
    executor = SingleThreadedExecutor()
    nodes: list[Node] = []
    try:
        nodes = [SimNode(), TourDriver(), Monitor()]
        for node in nodes:
            executor.add_node(node)
        stop.deferring = True
        print(f"mirage-run: simulating with {config} for "
              f"{'ever (Ctrl-C to stop)' if duration <= 0 else f'{duration:g} s'}", flush=True)
        deadline = math.inf if duration <= 0 else time.monotonic() + duration
        next_report = time.monotonic() + 2.0
        while time.monotonic() < deadline and stop.received is None:
            executor.spin_once(timeout_sec=STOP_POLL_S)
            if time.monotonic() >= next_report and nodes[2].rows:
                _, x, y, yaw = nodes[2].rows[-1]
                print(f"  step {nodes[0].steps:5d}  x={x:+7.3f} m  y={y:+7.3f} m  yaw={yaw:+6.3f} rad", flush=True)
                next_report += 2.0
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.deferring = True
        rows = nodes[2].rows if len(nodes) == 3 else []
        frames = list(nodes[2].frames) if len(nodes) == 3 else []
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return rows, frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="parameter file (default: config/sim.yaml)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to run; 0 runs until Ctrl-C")
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for the report")
    args = parser.parse_args(argv)
    config = args.config or default_config()
    if not config.is_file():
        parser.error(f"config file not found: {config}")

    with StopRequests() as stop:  # Ctrl-C: finish the step in hand, then write the report undisturbed
        rows, frames = simulate(config, args.duration, stop)
        args.output.mkdir(parents=True, exist_ok=True)
        with open(args.output / "odometry.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("stamp_s", "x_m", "y_m", "yaw_rad"))
            writer.writerows(rows)
        draw_path(rows, args.output / "path.png")
        if frames:
            title = ("mirage_sim: published RGB and depth, one frame per second "
                     f"(t = {frames[0][0]:.1f} ... {frames[-1][0]:.1f} s)")
            contact_sheet([(rgb, depth) for _, rgb, depth in frames], columns=6, title=title).save(args.output / "frames.png")
        print(f"mirage-run: {len(rows)} odometry messages, {len(frames)} frames kept -> {args.output}/frames.png, "
              f"{args.output}/path.png, {args.output}/odometry.csv")
    return 0 if rows and frames else 1


if __name__ == "__main__":
    raise SystemExit(main())
