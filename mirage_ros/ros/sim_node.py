"""The ``mirage_sim`` node: integrates velocity commands at a fixed rate and publishes what a robot
with a camera would publish (odometry, camera info, the simulator status).

Each step advances simulated time by exactly one period, so the result of a command sequence does
not depend on how fast this machine is. With ``publish_clock`` the node owns ``/clock`` and stamps
every output of a step with that step's sim time; consumers then run with ``use_sim_time:=true``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import rclpy
from geometry_msgs.msg import PoseWithCovarianceStamped, Twist, TwistStamped
from nav_msgs.msg import Odometry
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo

from mirage_ros.camera import CameraMount, PinholeCamera
from mirage_ros.kinematics import DRIVES, BaseLimits, PlanarBase, PlanarPose
from mirage_ros.msg import SimStatus
from mirage_ros.ros.conversions import (camera_info_msg, check_frame, odometry_msg, planar_pose_from_matrix,
                                        pose_to_matrix, time_msg, twist_from_msg)
from mirage_ros.ros.parameters import ParameterSpec, declare_and_validate

NODE_NAME = "mirage_sim"
WARN_THROTTLE_S = 2.0
#: Smoothing of the real-time-factor estimate (weight of the newest step).
RTF_SMOOTHING = 0.1

LIMIT_PARAMETERS = ("max_linear_velocity", "max_angular_velocity",
                    "max_linear_acceleration", "max_angular_acceleration")

PARAMETERS = [
    ParameterSpec("rate", 10.0, "Simulation steps per second; each step advances sim time by 1/rate.",
                  read_only=True, low=0.1, high=200.0),
    ParameterSpec("publish_clock", False, "Own /clock: publish sim time advancing one period per step "
                  "and stamp outputs with it (consumers set use_sim_time:=true).", read_only=True),
    ParameterSpec("drive", "diff_drive", "Base kinematics.", read_only=True, choices=DRIVES),
    ParameterSpec("max_linear_velocity", 1.0, "Linear speed limit (m/s).", low=0.01, high=20.0),
    ParameterSpec("max_angular_velocity", 1.5, "Yaw rate limit (rad/s).", low=0.01, high=20.0),
    ParameterSpec("max_linear_acceleration", 2.0, "Linear acceleration limit (m/s^2).", low=0.01, high=100.0),
    ParameterSpec("max_angular_acceleration", 4.0, "Yaw acceleration limit (rad/s^2).", low=0.01, high=100.0),
    ParameterSpec("command_timeout", 0.5, "Seconds after the last cmd_vel before the base stops.",
                  low=0.01, high=60.0),
    ParameterSpec("use_stamped_cmd_vel", False, "Subscribe to geometry_msgs/TwistStamped (frame = base_frame) "
                  "on cmd_vel instead of Twist.", read_only=True),
    ParameterSpec("initial_pose", [0.0, 0.0, 0.0], "Start pose of base_link in odom: x (m), y (m), yaw (rad).",
                  read_only=True, length=3, low=-1e4, high=1e4),
    ParameterSpec("odom_frame", "odom", "Odometry frame (REP 105).", read_only=True),
    ParameterSpec("base_frame", "base_link", "Robot base frame (REP 105).", read_only=True),
    ParameterSpec("camera_frame", "camera_link", "Camera body frame (x forward, z up).", read_only=True),
    ParameterSpec("optical_frame", "camera_optical_frame", "Camera optical frame (z forward, x right, y down) "
                  "of images and camera info.", read_only=True),
    ParameterSpec("image_width", 128, "Image width (pixels).", read_only=True, low=16, high=4096),
    ParameterSpec("image_height", 128, "Image height (pixels).", read_only=True, low=16, high=4096),
    ParameterSpec("horizontal_fov", 1.5708, "Horizontal field of view (rad).", read_only=True, low=0.1, high=3.0),
    ParameterSpec("camera_xyz", [0.0, 0.0, 0.5], "camera_link position on base_link (m).", read_only=True,
                  length=3, low=-100.0, high=100.0),
    ParameterSpec("camera_rpy", [0.0, 0.0, 0.0], "camera_link roll, pitch, yaw on base_link (rad).",
                  read_only=True, length=3, low=-math.pi, high=math.pi),
    ParameterSpec("qos_depth", 5, "History depth of the published sensor streams.", read_only=True, low=1, high=1000),
    ParameterSpec("qos_reliability", "reliable", "Reliability of the published sensor streams (reliable "
                  "publishers also serve best-effort subscribers).", read_only=True,
                  choices=("reliable", "best_effort")),
]


class SimNode(Node):
    """Fixed-rate simulator node; see the module docstring for its time model."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        params = declare_and_validate(self, PARAMETERS)
        self.params = params
        self.period = 1.0 / params["rate"]
        self.camera = PinholeCamera.from_hfov(params["image_width"], params["image_height"], params["horizontal_fov"])
        self.mount = CameraMount(tuple(params["camera_xyz"]), tuple(params["camera_rpy"]))
        self.base = PlanarBase(params["drive"], self._limits(params), params["command_timeout"],
                               PlanarPose(*params["initial_pose"]))
        self.steps = 0
        self.sim_time = 0.0
        self._real_time_factor = 0.0
        self._last_step_wall: float | None = None

        reliability = (ReliabilityPolicy.RELIABLE if params["qos_reliability"] == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        sensor_qos = QoSProfile(depth=params["qos_depth"], reliability=reliability)
        self.odom_pub = self.create_publisher(Odometry, "odom", sensor_qos)
        self.camera_info_pub = self.create_publisher(CameraInfo, "camera/camera_info", sensor_qos)
        self.status_pub = self.create_publisher(SimStatus, "~/status", 10)
        self.clock_pub = self.create_publisher(ClockMsg, "/clock", 10) if params["publish_clock"] else None

        cmd_type = TwistStamped if params["use_stamped_cmd_vel"] else Twist
        self.create_subscription(cmd_type, "cmd_vel", self._on_cmd_vel, 10)
        self.create_subscription(PoseWithCovarianceStamped, "initialpose", self._on_initial_pose, 10)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        # Steps are paced by the wall clock even when the node follows sim time, which it may own.
        self.timer = self.create_timer(self.period, self.step, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"{NODE_NAME}: {params['drive']} base at {params['rate']:g} Hz, camera "
            f"{self.camera.width}x{self.camera.height}, clock {'owned' if self.clock_pub else 'followed'}")

    @staticmethod
    def _limits(params: dict[str, Any]) -> BaseLimits:
        return BaseLimits(*(params[name] for name in LIMIT_PARAMETERS))

    def now_seconds(self) -> float:
        """Current time of the simulation: its own sim time when it owns /clock, else the node clock."""
        if self.clock_pub is not None:
            return self.sim_time
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_parameters_set(self, parameters: list) -> None:
        for parameter in parameters:
            self.params[parameter.name] = parameter.value
        self.base.limits = self._limits(self.params)
        self.base.command_timeout = self.params["command_timeout"]

    def _on_cmd_vel(self, msg: Twist | TwistStamped) -> None:
        try:
            if isinstance(msg, TwistStamped):
                check_frame(msg.header.frame_id, self.params["base_frame"], "cmd_vel")
                msg = msg.twist
            self.base.command(*twist_from_msg(msg), stamp=self.now_seconds())
        except ValueError as error:
            self.get_logger().warning(f"rejected cmd_vel: {error}", throttle_duration_sec=WARN_THROTTLE_S)

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """Teleport the base (RViz "2D Pose Estimate"); the pose must be in the odometry frame."""
        try:
            check_frame(msg.header.frame_id, self.params["odom_frame"], "initialpose")
            pose = planar_pose_from_matrix(pose_to_matrix(msg.pose.pose))
        except ValueError as error:
            self.get_logger().warning(f"rejected initialpose: {error}", throttle_duration_sec=WARN_THROTTLE_S)
            return
        self.base.reset(pose)
        self.get_logger().info(f"base moved to x={pose.x:.3f} y={pose.y:.3f} yaw={pose.yaw:.3f}")

    def _advance_time(self) -> float:
        if self.clock_pub is None:
            return self.now_seconds()
        self.sim_time += self.period
        self.clock_pub.publish(ClockMsg(clock=time_msg(self.sim_time)))
        return self.sim_time

    def step(self) -> None:
        """One simulation step: advance time, integrate the base, publish everything with one stamp."""
        started = time.perf_counter()
        now = self._advance_time()
        pose = self.base.step(self.period, now)
        self.steps += 1
        stamp = time_msg(now)
        self.odom_pub.publish(odometry_msg(pose, self.base.velocity, stamp,
                                           self.params["odom_frame"], self.params["base_frame"]))
        self.camera_info_pub.publish(camera_info_msg(self.camera, stamp, self.params["optical_frame"]))
        self._publish_status(stamp, now, time.perf_counter() - started)

    def _publish_status(self, stamp: Any, now: float, latency: float) -> None:
        wall = time.monotonic()
        if self._last_step_wall is not None and wall > self._last_step_wall:
            instant = self.period / (wall - self._last_step_wall)
            self._real_time_factor += RTF_SMOOTHING * (instant - self._real_time_factor)
        self._last_step_wall = wall
        status = SimStatus(steps=self.steps, step_latency=float(latency),
                           real_time_factor=float(self._real_time_factor),
                           command_stale=self.base.command_is_stale(now))
        status.header.stamp, status.header.frame_id = stamp, self.params["odom_frame"]
        self.status_pub.publish(status)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run mirage_ros mirage_sim`` and of the ``mirage-sim`` console script."""
    rclpy.init(args=args)
    node = None
    try:
        node = SimNode()
        rclpy.spin(node)
    except ValueError as error:
        print(f"{NODE_NAME}: {error}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
