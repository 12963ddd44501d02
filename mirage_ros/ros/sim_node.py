"""The ``mirage_sim`` node: the learned camera simulator.

Each step (at ``rate``) integrates the latest velocity command, asks the world model what the camera
sees from the new pose, and publishes RGB, depth, both camera infos, odometry, TF and the status, all
with one stamp. Each step advances simulated time by exactly one period, so a command sequence has the
same result however fast this machine is; with ``publish_clock`` the node owns ``/clock`` (consumers
run with ``use_sim_time:=true``) and generation slower than real time never breaks them.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, Callable

from geometry_msgs.msg import PoseWithCovarianceStamped, Twist, TwistStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

from mirage_ros.geometry import OPTICAL_TO_CAMERA_LINK
from mirage_ros.kinematics import DRIVES, PlanarBase
from mirage_ros.model.world_model import MEMORY_KINDS, PRECISIONS
from mirage_ros.msg import SimStatus
from mirage_ros.ros.conversions import (check_frame, planar_pose_from_matrix, point_cloud_msg, pose_to_matrix,
                                        time_msg, transform_stamped_msg, twist_from_msg)
from mirage_ros.ros.frame_messages import STEP_TOPICS, OutputConfig, frame_messages
from mirage_ros.ros.parameters import ParameterSpec, declare_and_validate
from mirage_ros.ros.recording import start_in_recording
from mirage_ros.ros.spin import run_node
from mirage_ros.simulator import RENDERERS, CollisionConfig, base_limits, build_simulator
from mirage_ros.srv import MemoryFile, Reset, StepFrames

NODE_NAME = "mirage_sim"
WARN_THROTTLE_S = 2.0
#: Smoothing of the real-time-factor estimate (weight of the newest step).
RTF_SMOOTHING = 0.1
MAX_STEP_FRAMES = 1000

def _usable_device(value: str) -> str | None:
    import torch

    try:
        device = torch.device(value)
    except RuntimeError as error:
        return f"not a torch device ({error})"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine (use cpu)"
    if device.type not in ("cpu", "cuda"):
        return f"device type {device.type!r} is not supported (cpu or cuda)"
    return None


def _nine_values(value: Any) -> str | None:
    return None if len(value) == 9 else "needs 9 values (row-major K; all zeros: unset)"


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
    ParameterSpec("odom_frame", "odom", "Odometry frame (REP 105); the frame of the memory and its cloud.",
                  read_only=True),
    ParameterSpec("base_frame", "base_link", "Robot base frame (REP 105).", read_only=True),
    ParameterSpec("camera_frame", "camera_link", "Camera body frame (x forward, z up).", read_only=True),
    ParameterSpec("optical_frame", "camera_optical_frame", "Camera optical frame (z forward, x right, y down) "
                  "of images and camera info.", read_only=True),
    ParameterSpec("horizontal_fov", 1.5708, "Horizontal field of view (rad); the image size is the model's.",
                  read_only=True, low=0.1, high=3.0),
    ParameterSpec("camera_xyz", [0.0, 0.0, 0.5], "camera_link position on base_link (m).", read_only=True,
                  length=3, low=-100.0, high=100.0),
    ParameterSpec("camera_rpy", [0.0, 0.1, 0.0], "camera_link roll, pitch, yaw on base_link (rad); positive "
                  "pitch looks down.", read_only=True, length=3, low=-math.pi, high=math.pi),
    ParameterSpec("qos_depth", 5, "History depth of the published sensor streams.", read_only=True, low=1, high=1000),
    ParameterSpec("qos_reliability", "reliable", "Reliability of the published sensor streams (reliable "
                  "publishers also serve best-effort subscribers).", read_only=True,
                  choices=("reliable", "best_effort")),
    ParameterSpec("model_path", "", "World model checkpoint directory; empty: the shipped default.", read_only=True),
    ParameterSpec("device", "cpu", "Torch device of the world model (cpu, cuda, cuda:1...).", read_only=True,
                  check=_usable_device),
    ParameterSpec("precision", "auto", "Network arithmetic: float32, bfloat16, or auto (bfloat16 where the "
                  "hardware runs it natively, about 2x faster there).", read_only=True, choices=PRECISIONS),
    ParameterSpec("memory", "latent", "Spatial memory: latent (the method), explicit (RGB point cloud "
                  "baseline) or none (ablation).", read_only=True, choices=MEMORY_KINDS),
    ParameterSpec("num_inference_steps", 4, "Denoising steps per frame where the memory does not already "
                  "cover the view.", read_only=True, low=1, high=50),
    ParameterSpec("clamp_to_floor", True, "Generated depth never goes below the floor (points within 6 cm of "
                  "it lie on it): the floor is where the camera's known height and pitch put it.", read_only=True),
    ParameterSpec("floor_height", 0.0, "Height of the floor in odom_frame (m); 0 when base_link is on the floor.",
                  read_only=True, low=-100.0, high=100.0),
    ParameterSpec("seed", 0, "Noise seed: equal seeds and commands give equal rollouts.", read_only=True,
                  low=0, high=2**31 - 1),
    ParameterSpec("world_seed", 0, "Procedural world to start in (when no start observation or memory); "
                  "the reset service can pick another.", read_only=True, low=0, high=2**31 - 1),
    ParameterSpec("start_rgb", "", "Start from this RGB image file instead of a procedural world.", read_only=True),
    ParameterSpec("start_depth", "", "Depth of the start observation: .npy metres or 16-bit PNG millimetres.",
                  read_only=True),
    ParameterSpec("start_k", [0.0] * 9, "Row-major K of the start observation; all zeros: the camera's "
                  "field of view at the file's size.", read_only=True, check=_nine_values),
    ParameterSpec("memory_file", "", "Start from this saved latent memory (safetensors) instead.", read_only=True),
    ParameterSpec("map_bag", "", "Start in a recorded place: build the memory from every usable RGB-D frame of "
                  "this bag (rosbag2 folder or ROS 1 .bag; topics camera/image_raw, camera/depth/image_raw, "
                  "camera/camera_info, poses from odom or /tf); odom_frame is the recording's.", read_only=True),
    ParameterSpec("renderer", "model", "Where frames come from: model (the learned world model) or ground_truth "
                  "(the procedural world world_seed rendered exactly; no memory).", read_only=True, choices=RENDERERS),
    ParameterSpec("memory_cloud_period", 1.0, "Seconds of sim time between memory point clouds (0: never).",
                  low=0.0, high=3600.0),
    ParameterSpec("publish_tf", True, "Broadcast odom->base_link and the static camera frames (needs tf2_ros).",
                  read_only=True),
    ParameterSpec("publish_scan", True, "Publish a LaserScan (scan, in base_frame) synthesised from depth.",
                  read_only=True),
    ParameterSpec("scan_min_height", 0.1, "Lowest point above the floor that the scan sees (m).", read_only=True,
                  low=-10.0, high=10.0),
    ParameterSpec("scan_max_height", 1.0, "Highest point above the floor that the scan sees (m).", read_only=True,
                  low=-10.0, high=10.0),
    ParameterSpec("scan_range_min", 0.1, "Minimum scan range (m).", read_only=True, low=0.0, high=100.0),
    ParameterSpec("scan_range_max", 10.0, "Maximum scan range (m).", read_only=True, low=0.01, high=1000.0),
    ParameterSpec("scan_angle_increment", 0.0174533, "Angle between scan beams (rad).", read_only=True,
                  low=0.0001, high=0.5),
    ParameterSpec("publish_depth_points", True, "Publish the depth image as a PointCloud2 (camera/depth/points, "
                  "optical frame).", read_only=True),
    ParameterSpec("collision_radius", 0.0, "Footprint radius (m): motion into surfaces held in the memory is "
                  "refused and reported (status in_contact); 0 disables.", low=0.0, high=5.0),
]


def answers_failures(what: str) -> Callable:
    """Service handler decorator: any exception becomes a failed response naming ``what`` and the
    reason (and an error log for unexpected ones), so no request can reach the executor with it."""
    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def guarded(self: "SimNode", request: Any, response: Any) -> Any:
            try:
                return handler(self, request, response)
            except (ValueError, OSError) as error:
                response.success, response.message = False, f"{what} failed: {error}"
            except Exception as error:  # noqa: BLE001 - a request must never take the simulator down
                self.get_logger().error(f"{what} failed unexpectedly: {type(error).__name__}: {error}")
                response.success, response.message = False, f"{what} failed: {type(error).__name__}: {error}"
            return response
        return guarded
    return decorate


def start_up_error(error: Exception, params: dict[str, Any]) -> ValueError:
    """A start-up failure as ``<parameter>: <reason>``: the parameter whose value caused it."""
    if params["memory_file"]:
        name = "memory_file"
    elif params["map_bag"]:
        name = "map_bag"
    elif params["start_rgb"] or params["start_depth"]:
        name = "start_rgb/start_depth"
    else:
        name = "world_seed"
    return ValueError(f"{name}: {error}")


WORLD_SEED = next(spec for spec in PARAMETERS if spec.name == "world_seed")


class SimNode(Node):
    """Fixed-rate learned camera simulator; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        params = declare_and_validate(self, PARAMETERS)
        self.params = params
        self.period = 1.0 / params["rate"]
        try:
            self.simulator = build_simulator(params, progress=bool(params["map_bag"]))
        except (ValueError, OSError) as error:
            raise ValueError(f"model_path: {error}") from error
        try:
            if params["map_bag"]:
                self.get_logger().info(str(start_in_recording(self.simulator, params["map_bag"], progress=True)))
            self.simulator.reset()
        except (ValueError, OSError) as error:
            raise start_up_error(error, params) from error
        self.camera, self.mount = self.simulator.camera, self.simulator.mount
        height, width = self.camera.height, self.camera.width
        start = self.simulator.start
        self.output = OutputConfig.from_parameters(params)
        self.steps = 0
        self.sim_time = 0.0
        self.paused = False
        self.pending_frames = 0
        self._last_cloud_time = -math.inf
        self._real_time_factor = 0.0
        self._last_step_wall: float | None = None

        reliability = (ReliabilityPolicy.RELIABLE if params["qos_reliability"] == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        sensor_qos = QoSProfile(depth=params["qos_depth"], reliability=reliability)
        self.step_publishers = {topic: self.create_publisher(kind, topic, sensor_qos)
                                for topic, kind in STEP_TOPICS.items()}
        self.cloud_pub = self.create_publisher(PointCloud2, "~/memory_cloud", 2)
        self.status_pub = self.create_publisher(SimStatus, "~/status", 10)
        self.clock_pub = self.create_publisher(ClockMsg, "/clock", 10) if params["publish_clock"] else None
        self.tf_broadcaster = self._make_tf_broadcasters() if params["publish_tf"] else None

        cmd_type = TwistStamped if params["use_stamped_cmd_vel"] else Twist
        self.create_subscription(cmd_type, "cmd_vel", self._on_cmd_vel, 10)
        self.create_subscription(PoseWithCovarianceStamped, "initialpose", self._on_initial_pose, 10)
        self.create_service(Reset, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/pause", self._on_pause)
        self.create_service(Trigger, "~/resume", self._on_resume)
        self.create_service(StepFrames, "~/step", self._on_step_frames)
        self.create_service(MemoryFile, "~/save_memory", self._on_save_memory)
        self.create_service(MemoryFile, "~/load_memory", self._on_load_memory)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        # Steps are paced by the wall clock even when the node follows sim time, which it may own.
        self.timer = self.create_timer(self.period, self.step, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"{NODE_NAME}: {params['memory']} memory, {width}x{height} camera at {params['rate']:g} Hz, "
            f"start: {start.kind}, clock {'owned' if self.clock_pub else 'followed'}")

    @property
    def base(self) -> PlanarBase:
        return self.simulator.base

    def _make_tf_broadcasters(self):
        try:
            from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster
        except ImportError:
            self.get_logger().warning("tf2_ros is not installed: no TF is broadcast (odometry and frame ids "
                                      "are still published)")
            return None
        static = StaticTransformBroadcaster(self)
        stamp = time_msg(0.0)
        p = self.params
        static.sendTransform([
            transform_stamped_msg(self.mount.base_to_camera_link, stamp, p["base_frame"], p["camera_frame"]),
            transform_stamped_msg(OPTICAL_TO_CAMERA_LINK, stamp, p["camera_frame"], p["optical_frame"])])
        return TransformBroadcaster(self)

    def now_seconds(self) -> float:
        """Current time of the simulation: its own sim time when it owns /clock, else the node clock."""
        if self.clock_pub is not None:
            return self.sim_time
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ inputs
    def _on_parameters_set(self, parameters: list) -> None:
        for parameter in parameters:
            self.params[parameter.name] = parameter.value
        self.base.limits = base_limits(self.params)
        self.base.command_timeout = self.params["command_timeout"]
        self.simulator.collision = CollisionConfig.from_parameters(self.params)

    def _on_cmd_vel(self, msg: Twist | TwistStamped) -> None:
        try:
            if isinstance(msg, TwistStamped):
                check_frame(msg.header.frame_id, self.params["base_frame"], "cmd_vel")
                msg = msg.twist
            self.base.command(*twist_from_msg(msg), stamp=self.now_seconds())
        except (ValueError, OverflowError) as error:
            self.get_logger().warning(f"rejected cmd_vel: {error}", throttle_duration_sec=WARN_THROTTLE_S)

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """Teleport the base (RViz "2D Pose Estimate"); the pose must be in the odometry frame."""
        try:
            check_frame(msg.header.frame_id, self.params["odom_frame"], "initialpose")
            pose = planar_pose_from_matrix(pose_to_matrix(msg.pose.pose))
            self.simulator.teleport(pose)
        except ValueError as error:
            self.get_logger().warning(f"rejected initialpose: {error}", throttle_duration_sec=WARN_THROTTLE_S)
            return
        self.get_logger().info(f"base moved to x={pose.x:.3f} y={pose.y:.3f} yaw={pose.yaw:.3f}")

    # ------------------------------------------------------------------ services
    @answers_failures("reset")
    def _on_reset(self, request: Reset.Request, response: Reset.Response) -> Reset.Response:
        if request.use_seed and (error := WORLD_SEED.error(request.seed)):
            raise ValueError(error)  # the same range as the world_seed parameter
        self.simulator.reset(request.seed if request.use_seed else None)  # all or nothing
        self.steps = 0
        self._last_cloud_time = -math.inf
        response.success, response.message = True, f"reset ({self.simulator.start.kind} start)"
        return response

    @answers_failures("pause")
    def _on_pause(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.paused, self.pending_frames = True, 0
        response.success, response.message = True, "paused"
        return response

    @answers_failures("resume")
    def _on_resume(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.paused, self.pending_frames = False, 0
        response.success, response.message = True, "running"
        return response

    @answers_failures("step")
    def _on_step_frames(self, request: StepFrames.Request, response: StepFrames.Response) -> StepFrames.Response:
        if not self.paused:
            response.success, response.message = False, "pause the simulation before stepping it"
        elif not 1 <= request.frames <= MAX_STEP_FRAMES:
            response.success, response.message = False, f"frames must be within [1, {MAX_STEP_FRAMES}]"
        else:
            self.pending_frames += request.frames
            response.success, response.message = True, f"{self.pending_frames} frames queued"
        return response

    @answers_failures("save")
    def _on_save_memory(self, request: MemoryFile.Request, response: MemoryFile.Response) -> MemoryFile.Response:
        saved = self.simulator.save_memory(Path(request.path))
        response.success, response.message = True, f"saved {saved.entries} tokens"
        return response

    @answers_failures("load")
    def _on_load_memory(self, request: MemoryFile.Request, response: MemoryFile.Response) -> MemoryFile.Response:
        coverage = self.simulator.load_memory(Path(request.path))
        response.success, response.message = True, f"loaded; current view {coverage:.0%} covered"
        return response

    # ------------------------------------------------------------------ the step
    def _advance_time(self) -> float:
        if self.clock_pub is None:
            return self.now_seconds()
        self.sim_time += self.period
        self.clock_pub.publish(ClockMsg(clock=time_msg(self.sim_time)))
        return self.sim_time

    def step(self) -> None:
        """One simulation step; while paused nothing is generated or published unless frames are queued."""
        if self.paused:
            if self.pending_frames == 0:
                return
            self.pending_frames -= 1
        started = time.perf_counter()
        now = self._advance_time()
        try:
            frame = self.simulator.step(self.period, now)
        except Exception as error:  # a failing model step must not take the simulator down
            self.get_logger().error(f"world model step failed: {type(error).__name__}: {error}",
                                    throttle_duration_sec=WARN_THROTTLE_S)
            return
        self.steps += 1
        stamp = time_msg(now)
        p = self.params
        for topic, message in frame_messages(frame, stamp, self.camera, self.mount, self.output).items():
            self.step_publishers[topic].publish(message)
        if self.tf_broadcaster is not None:
            self.tf_broadcaster.sendTransform(
                transform_stamped_msg(frame.pose.matrix(), stamp, p["odom_frame"], p["base_frame"]))
        if p["memory_cloud_period"] > 0 and now - self._last_cloud_time >= p["memory_cloud_period"]:
            self._last_cloud_time = now
            points, colors = self.simulator.memory_cloud()
            self.cloud_pub.publish(point_cloud_msg(points, colors, stamp, p["odom_frame"]))
        self._publish_status(stamp, now, frame.result.coverage, frame.in_contact, time.perf_counter() - started)

    def _publish_status(self, stamp: Any, now: float, coverage: float, in_contact: bool, latency: float) -> None:
        wall = time.monotonic()
        if self._last_step_wall is not None and wall > self._last_step_wall:
            instant = self.period / (wall - self._last_step_wall)
            self._real_time_factor += RTF_SMOOTHING * (instant - self._real_time_factor)
        self._last_step_wall = wall
        memory = self.simulator.memory_stats()
        status = SimStatus(steps=self.steps, memory_tokens=memory.entries, memory_bytes=memory.bytes,
                           view_coverage=float(coverage),
                           step_latency=float(latency), real_time_factor=float(self._real_time_factor),
                           paused=self.paused, command_stale=self.base.command_is_stale(now), in_contact=in_contact)
        status.header.stamp, status.header.frame_id = stamp, self.params["odom_frame"]
        self.status_pub.publish(status)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run mirage_ros mirage_sim`` and of the ``mirage-sim`` console script."""
    return run_node(SimNode, NODE_NAME, args)


if __name__ == "__main__":
    raise SystemExit(main())
