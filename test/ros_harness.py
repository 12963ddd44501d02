"""Helpers for tests that run a node in another process and talk to it over rclpy."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import rclpy
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from mirage_ros.msg import SimStatus

#: Step rate and linear acceleration limit of the simulator the node tests start.
RATE, ACCEL = 20.0, 2.0


class RosTestClient:
    """An rclpy node in the test process, with helpers to wait for traffic."""

    def __init__(self, name: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)  # not its process's command line (benchmark options)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@contextmanager
def ros_client(name: str) -> Iterator[RosTestClient]:
    client = RosTestClient(name)
    try:
        yield client
    finally:
        client.close()


class ConsoleProcess:
    """``python ARGUMENTS...`` in its own process, its console (stdout and stderr) read line by line as it
    comes, so a test can wait for what the process says."""

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def has_said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.has_said(text):
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines}"
            time.sleep(0.01)

    def finish(self, timeout: float = 30.0) -> str:
        """Wait for the process to end (killed after ``timeout``); its whole console."""
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self.reader.join(timeout=10)
        return "".join(self.lines)


@contextmanager
def node_process(module: str, *ros_args: str) -> Iterator[subprocess.Popen]:
    """Run ``python -m module --ros-args ros_args...`` in its own process for the duration of a test."""
    command = [sys.executable, "-m", module]
    if ros_args:
        command += ["--ros-args", *ros_args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def node_args(checkpoint: Path, *extra: str) -> tuple[str, ...]:
    """``--ros-args`` of the test simulator: ``RATE`` Hz, own clock (with no wait for discovery to show
    another owner: tests run one simulator at a time), the given checkpoint."""
    return ("-p", f"rate:={RATE}", "-p", "publish_clock:=true", "-p", "clock_discovery_timeout:=0.0",
            "-p", "command_timeout:=5.0",
            "-p", f"max_linear_acceleration:={ACCEL}", "-p", "horizontal_fov:=1.2",
            "-p", f"model_path:={checkpoint}", "-p", "memory_cloud_period:=0.5", *extra)


class Recorder:
    """Everything the simulator publishes, as received by another process."""

    TOPICS = {"odometry": (Odometry, "/odom"), "images": (Image, "/camera/image_raw"),
              "depths": (Image, "/camera/depth/image_raw"), "infos": (CameraInfo, "/camera/camera_info"),
              "depth_infos": (CameraInfo, "/camera/depth/camera_info"), "clocks": (Clock, "/clock"),
              "statuses": (SimStatus, "/mirage_sim/status"), "clouds": (PointCloud2, "/mirage_sim/memory_cloud")}

    def __init__(self, client: RosTestClient) -> None:
        for name, (kind, topic) in self.TOPICS.items():
            setattr(self, name, [])
            client.node.create_subscription(kind, topic, getattr(self, name).append, QoSProfile(depth=500))


def wait_until_running(client: RosTestClient, recorder: Recorder, *publishers) -> None:
    """Until every publisher is matched by the simulator and it has published images."""
    client.spin_until(lambda: all(p.get_subscription_count() > 0 for p in publishers) and len(recorder.images) > 1,
                      timeout=90, what="mirage_sim to start publishing")


def call(client: RosTestClient, service_type, name: str, request, timeout: float = 60.0):
    """Call service ``name`` and return its response; fails the test if there is no answer."""
    service = client.node.create_client(service_type, name)
    client.spin_until(service.service_is_ready, timeout=30, what=f"service {name}")
    future = service.call_async(request)
    client.spin_until(future.done, timeout=timeout, what=f"response of {name}")
    client.node.destroy_client(service)
    return future.result()


def initial_pose_message(x: float, y: float, q: tuple[float, float, float, float],
                         frame: str = "odom") -> PoseWithCovarianceStamped:
    """An ``initialpose`` message (RViz "2D Pose Estimate") at ``(x, y)`` with quaternion ``q`` (x, y, z, w)."""
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = frame
    msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = q
    return msg
