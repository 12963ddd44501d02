"""The ``mirage_sim`` node: the learned camera simulator.

Each step (at ``rate``) integrates the latest velocity command, asks the world model what the camera
sees from the new pose, and publishes RGB, depth, both camera infos, odometry, TF and the status, all
with one stamp. Each step advances simulated time by exactly one period, so a command sequence has the
same result however fast this machine is; with ``publish_clock`` the node owns ``/clock`` (consumers
run with ``use_sim_time:=true``) and generation slower than real time never breaks them.

With the ``robots`` parameter one node simulates several robots in one world: each has the topics and
frames a single-robot node in namespace ``<name>`` would have (``<name>/cmd_vel``, ``<name>/odom``,
``<name>/odom`` -> ``<name>/base_link``, ...), all share the memory, the clock and the services, and one
batched model step generates every robot's frame.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from geometry_msgs.msg import PoseWithCovarianceStamped, Twist, TwistStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

from mirage_ros.geometry import OPTICAL_TO_CAMERA_LINK
from mirage_ros.kinematics import DRIVES
from mirage_ros.model.world_model import MEMORY_KINDS, PRECISIONS
from mirage_ros.msg import SimStatus
from mirage_ros.ros.conversions import (check_frame, planar_pose_from_matrix, point_cloud_msg, pose_to_matrix,
                                        time_msg, transform_stamped_msg, twist_from_msg)
from mirage_ros.ros.frame_messages import (AUTO_FRAME_PREFIX, STEP_TOPICS, OutputConfig, frame_messages,
                                           resolve_frame_prefix)
from mirage_ros.ros.parameters import ParameterSpec, declare_and_validate
from mirage_ros.ros.recording import start_in_recording
from mirage_ros.ros.spin import run_node
from mirage_ros.simulator import (MAX_START_VIEWS, RENDERERS, CollisionConfig, SimFrame, base_limits,
                                  build_simulator)
from mirage_ros.srv import MemoryFile, Reset, StepFrames

NODE_NAME = "mirage_sim"
WARN_THROTTLE_S = 2.0
#: Smoothing of the real-time-factor estimate (weight of the newest step).
RTF_SMOOTHING = 0.1
MAX_STEP_FRAMES = 1000
UNNAMED_NODE = "a node not yet discovered by name"
#: Seconds between checks, while running, for other nodes publishing /clock.
CLOCK_CHECK_PERIOD_S = 2.0

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


def _robot_names(value: Any) -> str | None:
    names = list(value)
    bad = [name for name in names if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name)]
    if bad:
        return f"robot names become namespaces and frame prefixes: a letter, then letters, digits or _; got {bad}"
    return None if len(set(names)) == len(names) else f"robot names must be unique, got {names}"


#: Parameters that each robot of ``robots`` sets for itself as ``<name>.<parameter>`` (default: the node's).
PER_ROBOT = ("drive", "initial_pose", "camera_xyz", "camera_rpy")


PARAMETERS = [
    ParameterSpec("rate", 10.0, "Simulation steps per second; each step advances sim time by 1/rate.",
                  read_only=True, low=0.1, high=200.0),
    ParameterSpec("publish_clock", False, "Own /clock: publish sim time advancing one period per step "
                  "and stamp outputs with it (consumers set use_sim_time:=true).", read_only=True),
    ParameterSpec("clock_discovery_timeout", 3.0, "Seconds from start-up within which discovery must show any "
                  "node that already publishes /clock (then this one refuses to start with publish_clock).",
                  read_only=True, low=0.0, high=60.0),
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
    ParameterSpec("frame_prefix", AUTO_FRAME_PREFIX, "Prefix of every published frame id: auto = the node's "
                  "namespace (robot1/odom, robot1/base_link... under /robot1; none in the root namespace), so robots "
                  "in separate namespaces never share a TF frame; any other value is used as given (empty: none).",
                  read_only=True),
    ParameterSpec("robots", [], "Several robots in this one simulated world (one memory, one /clock, one "
                  "batched model step): their names, each robot's namespace and frame prefix (robot1/cmd_vel, "
                  "robot1/odom...), each with its own <name>.drive, <name>.initial_pose, <name>.camera_xyz and "
                  "<name>.camera_rpy (default: the node's). Empty: one robot in the node's namespace.",
                  read_only=True, check=_robot_names),
    ParameterSpec("world_frame", "world", "With robots: the frame they share, the memory's; every robot's "
                  "odometry frame coincides with it (static TF world_frame -> <name>/odom_frame, prefixed like "
                  "every frame), and the memory cloud is published in it.", read_only=True),
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
    ParameterSpec("trace_networks", True, "Run the networks as recorded TorchScript graphs where they compute in "
                  "float32: the same results, about 40 % less time for the denoiser on a CPU; false: eager "
                  "PyTorch.", read_only=True),
    ParameterSpec("memory", "latent", "Spatial memory: latent (the method), explicit (RGB point cloud "
                  "baseline) or none (ablation).", read_only=True, choices=MEMORY_KINDS),
    ParameterSpec("num_inference_steps", 4, "Denoising steps per frame where the memory does not already "
                  "cover the view.", read_only=True, low=1, high=50),
    ParameterSpec("clamp_to_floor", True, "Generated depth never goes below the floor (points within 6 cm of "
                  "it lie on it): the floor is where the camera's known height and pitch put it; there it shows the "
                  "colours it was shown with (the memory's ground texture).", read_only=True),
    ParameterSpec("ground_texture", True, "With clamp_to_floor and the latent memory: keep the floor's colours "
                  "top-down and paint them where the floor is seen again (about 2 ms a step on 2 CPU cores; the "
                  "tokens alone draw the floor softer).", read_only=True),
    ParameterSpec("floor_height", 0.0, "Height of the floor in odom_frame (m); 0 when base_link is on the floor.",
                  read_only=True, low=-100.0, high=100.0),
    ParameterSpec("seed", 0, "Noise seed: equal seeds and commands give equal rollouts.", read_only=True,
                  low=0, high=2**31 - 1),
    ParameterSpec("world_seed", 0, "Procedural world to start in (when no start observation or memory); "
                  "the reset service can pick another.", read_only=True, low=0, high=2**31 - 1),
    ParameterSpec("start_views", 8, "Views of the procedural world observed before the first step, turning in "
                  "place at the start, evenly spaced (1: the start view alone).", read_only=True, low=1,
                  high=MAX_START_VIEWS),
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
        started = time.monotonic()  # discovery runs from here on, while the model loads
        params = declare_and_validate(self, PARAMETERS)
        self.params = params
        self.period = 1.0 / params["rate"]
        robots = [self._declare_robot(name) for name in params["robots"]]
        try:
            self.simulator = build_simulator(params, robots, progress=bool(params["map_bag"]))
        except (ValueError, OSError) as error:
            raise ValueError(f"model_path: {error}") from error
        try:
            if params["map_bag"]:
                self.get_logger().info(str(start_in_recording(self.simulator, params["map_bag"], progress=True)))
            self.simulator.reset()
        except (ValueError, OSError) as error:
            raise start_up_error(error, params) from error
        self.camera = self.simulator.camera
        height, width = self.camera.height, self.camera.width
        start = self.simulator.start
        prefix = resolve_frame_prefix(params["frame_prefix"], self.get_namespace())
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
        cmd_type = TwistStamped if params["use_stamped_cmd_vel"] else Twist
        self.ports = [self._connect_robot(index, name, prefix, sensor_qos, cmd_type)
                      for index, name in enumerate(params["robots"] or [""])]
        self.memory_frame = prefix + params["world_frame"] if params["robots"] else self.ports[0].output.odom_frame
        self.cloud_pub = self.create_publisher(PointCloud2, "~/memory_cloud", 2)
        self.clock_pub = None
        self._clock_rivals: set[str] = set()
        if params["publish_clock"]:
            self._claim_clock(started + params["clock_discovery_timeout"])
        self.tf_broadcaster = self._make_tf_broadcasters() if params["publish_tf"] else None

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
            f"{NODE_NAME}: {len(self.ports)} robot(s), {params['memory']} memory, {width}x{height} camera at "
            f"{params['rate']:g} Hz, "
            f"start: {start.kind}, clock {'owned' if self.clock_pub else 'followed'}")

    def other_clock_publishers(self) -> set[str]:
        """Fully qualified names of the other nodes that publish /clock (``UNNAMED_NODE`` for one whose
        name discovery has not brought in yet)."""
        names = {UNNAMED_NODE if info.node_name == "_NODE_NAME_UNKNOWN_" else
                 f"{info.node_namespace.rstrip('/')}/{info.node_name}"
                 for info in self.get_publishers_info_by_topic("/clock")}
        return names - {self.get_fully_qualified_name()}

    def _claim_clock(self, deadline: float) -> None:
        """Become the one /clock publisher: refuse to start (``ValueError``) where another node already
        publishes it, since two clocks make every consumer's time jump back and forth; one that appears
        later is reported as an error while this node keeps its clock. Discovery is given until
        ``deadline`` (monotonic seconds) to show a rival."""
        while True:
            rivals = self.other_clock_publishers()
            if rivals and UNNAMED_NODE not in rivals or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if rivals:
            raise ValueError(f"publish_clock: /clock is already published by {', '.join(sorted(rivals))}; one node "
                             "owns the clock: run several robots in one simulator (robots parameter) or start this "
                             "one with publish_clock:=false")
        self.clock_pub = self.create_publisher(ClockMsg, "/clock", 10)
        self.create_timer(CLOCK_CHECK_PERIOD_S, self._check_clock_rivals, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _check_clock_rivals(self) -> None:
        new = self.other_clock_publishers() - self._clock_rivals - {UNNAMED_NODE}  # named at a later check
        if new:
            self.get_logger().error(f"{', '.join(sorted(new))} also publishes /clock: time now jumps back and forth "
                                    "for every node with use_sim_time; stop it or give it publish_clock:=false")
        self._clock_rivals |= new

    def _declare_robot(self, name: str) -> dict[str, Any]:
        """Declare robot ``name``'s own ``PER_ROBOT`` parameters (defaults: the node's); their values."""
        specs = [replace(spec, name=f"{name}.{spec.name}", default=self.params[spec.name] if spec.name == "drive"
                         else list(self.params[spec.name])) for spec in PARAMETERS if spec.name in PER_ROBOT]
        values = declare_and_validate(self, specs)
        return {spec_name.split(".", 1)[1]: value for spec_name, value in values.items()}

    def _connect_robot(self, index: int, name: str, prefix: str, qos: QoSProfile, cmd_type: type) -> "RobotPorts":
        """Robot ``index``'s topics (under ``name``/, none for the single robot) and frames (``prefix`` then
        ``name``/): publishers, and the subscriptions that drive it."""
        topic = (lambda relative: f"{name}/{relative}") if name else (lambda relative: relative)
        output = OutputConfig.from_parameters(self.params, prefix + (f"{name}/" if name else ""))
        publishers = {relative: self.create_publisher(kind, topic(relative), qos) for relative, kind in STEP_TOPICS.items()}
        status = self.create_publisher(SimStatus, topic(f"{self.get_name()}/status") if name else "~/status", 10)
        self.create_subscription(cmd_type, topic("cmd_vel"), lambda msg: self._on_cmd_vel(index, msg), 10)
        self.create_subscription(PoseWithCovarianceStamped, topic("initialpose"),
                                 lambda msg: self._on_initial_pose(index, msg), 10)
        return RobotPorts(output, publishers, status)

    def _make_tf_broadcasters(self):
        try:
            from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster
        except ImportError:
            self.get_logger().warning("tf2_ros is not installed: no TF is broadcast (odometry and frame ids "
                                      "are still published)")
            return None
        static = StaticTransformBroadcaster(self)
        stamp = time_msg(0.0)
        transforms = []
        for ports, robot in zip(self.ports, self.simulator.robots):
            out = ports.output
            transforms += [transform_stamped_msg(robot.mount.base_to_camera_link, stamp, out.base_frame, out.camera_frame),
                           transform_stamped_msg(OPTICAL_TO_CAMERA_LINK, stamp, out.camera_frame, out.optical_frame)]
            if self.params["robots"]:  # every robot's odometry frame is the shared world frame
                transforms.append(transform_stamped_msg(np.eye(4), stamp, self.memory_frame, out.odom_frame))
        static.sendTransform(transforms)
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
        for robot in self.simulator.robots:
            robot.base.limits = base_limits(self.params)
            robot.base.command_timeout = self.params["command_timeout"]
        self.simulator.collision = CollisionConfig.from_parameters(self.params)

    def _on_cmd_vel(self, robot: int, msg: Twist | TwistStamped) -> None:
        try:
            if isinstance(msg, TwistStamped):
                check_frame(msg.header.frame_id, self.ports[robot].output.base_frame, "cmd_vel")
                msg = msg.twist
            self.simulator.robots[robot].base.command(*twist_from_msg(msg), stamp=self.now_seconds())
        except (ValueError, OverflowError) as error:
            self.get_logger().warning(f"rejected cmd_vel: {error}", throttle_duration_sec=WARN_THROTTLE_S)

    def _on_initial_pose(self, robot: int, msg: PoseWithCovarianceStamped) -> None:
        """Teleport the base (RViz "2D Pose Estimate"); the pose must be in its odometry frame."""
        try:
            check_frame(msg.header.frame_id, self.ports[robot].output.odom_frame, "initialpose")
            pose = planar_pose_from_matrix(pose_to_matrix(msg.pose.pose))
            self.simulator.teleport(pose, robot)
        except ValueError as error:
            self.get_logger().warning(f"rejected initialpose: {error}", throttle_duration_sec=WARN_THROTTLE_S)
            return
        self.get_logger().info(f"{self.ports[robot].output.base_frame} moved to x={pose.x:.3f} y={pose.y:.3f} "
                               f"yaw={pose.yaw:.3f}")

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
            frames = self.simulator.step_robots(self.period, now)
        except Exception as error:  # a failing model step must not take the simulator down
            self.get_logger().error(f"world model step failed: {type(error).__name__}: {error}",
                                    throttle_duration_sec=WARN_THROTTLE_S)
            return
        self.steps += 1
        stamp = time_msg(now)
        for ports, robot, frame in zip(self.ports, self.simulator.robots, frames):
            for topic, message in frame_messages(frame, stamp, self.camera, robot.mount, ports.output).items():
                ports.publishers[topic].publish(message)
        if self.tf_broadcaster is not None:
            self.tf_broadcaster.sendTransform([
                transform_stamped_msg(frame.pose.matrix(), stamp, ports.output.odom_frame, ports.output.base_frame)
                for ports, frame in zip(self.ports, frames)])
        period = self.params["memory_cloud_period"]
        if period > 0 and now - self._last_cloud_time >= period:
            self._last_cloud_time = now
            points, colors = self.simulator.memory_cloud()
            self.cloud_pub.publish(point_cloud_msg(points, colors, stamp, self.memory_frame))
        self._publish_status(stamp, now, frames, time.perf_counter() - started)

    def _publish_status(self, stamp: Any, now: float, frames: list[SimFrame], latency: float) -> None:
        wall = time.monotonic()
        if self._last_step_wall is not None and wall > self._last_step_wall:
            instant = self.period / (wall - self._last_step_wall)
            self._real_time_factor += RTF_SMOOTHING * (instant - self._real_time_factor)
        self._last_step_wall = wall
        memory = self.simulator.memory_stats()
        for ports, robot, frame in zip(self.ports, self.simulator.robots, frames):
            status = SimStatus(steps=self.steps, memory_tokens=memory.entries, memory_bytes=memory.bytes,
                               view_coverage=float(frame.result.coverage), step_latency=float(latency),
                               real_time_factor=float(self._real_time_factor), paused=self.paused,
                               command_stale=robot.base.command_is_stale(now), in_contact=frame.in_contact)
            status.header.stamp, status.header.frame_id = stamp, ports.output.odom_frame
            ports.status.publish(status)


@dataclass
class RobotPorts:
    """One robot's side of the node: its frame ids (``OutputConfig``), the publishers of its per-step
    topics (by ``STEP_TOPICS`` name) and of its status."""

    output: OutputConfig
    publishers: dict[str, Any]
    status: Any


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run mirage_ros mirage_sim`` and of the ``mirage-sim`` console script."""
    return run_node(SimNode, NODE_NAME, args)


if __name__ == "__main__":
    raise SystemExit(main())
