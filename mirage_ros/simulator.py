"""The simulator core, ROS-free: a robot base, its camera and the world model, stepped together.

Both the ``mirage_sim`` node and the offline rollout CLI drive this class, so a rollout produces the
same frames whichever way it runs. The odometry frame is the frame of the model's memory; the start
observation may come from elsewhere (a procedural world, files, a saved memory) and is placed at the
base's initial pose; a mapped recording keeps its own poses (its odometry frame is the simulator's).
Frames come from a ``FrameRenderer``: the learned model (``ModelRenderer``) or, in ground-truth mode,
the procedural world itself (``worlds.ground_truth.GroundTruthFrames``).

Several robots can share the world (``Simulator.companions``): one renderer (one model, one memory),
one clock; each robot has its own base, camera mount and initial pose in the shared odometry frame, and
every step renders all their cameras at once (``FrameRenderer.render_cameras``: one batched model step,
``WorldModel.step_cameras``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mirage_ros.camera import CameraMount, PinholeCamera, validate_intrinsics
from mirage_ros.geometry import invert_transform, planar_pose_to_transform
from mirage_ros.kinematics import BaseLimits, BodyTwist, PlanarBase, PlanarPose
from mirage_ros.memory import MemoryStats
from mirage_ros.model.world_model import StepResult, WorldModel


@dataclass(frozen=True)
class Observation:
    """A real RGB-D frame placed in the odometry frame: ``rgb`` uint8 ``[H,W,3]``, ``depth`` metres
    ``[H,W]``, ``K`` at that size, ``cam_to_odom`` the optical-frame pose (a mapping run's frame)."""

    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    cam_to_odom: np.ndarray


#: Most views a procedural-world start may observe turning in place (45 degrees apart at 8).
MAX_START_VIEWS = 36


@dataclass(frozen=True)
class StartSpec:
    """Where a rollout starts: a saved ``memory_path``, else a mapped place (``recording``: observations
    at their own poses, e.g. every usable frame of a bag), else an RGB-D observation (``rgb`` + ``depth``
    arrays, or ``rgb_path`` + ``depth_path`` files; ``K`` at their resolution, default: the simulator
    camera's field of view) placed at the initial pose, else the procedural world ``world_seed``, observed
    in ``start_views`` views turning in place at the start (1: the start view alone; the start view is the
    first frame's context either way)."""

    world_seed: int = 0
    start_views: int = 1
    rgb_path: str = ""
    depth_path: str = ""
    K: tuple[float, ...] = ()
    memory_path: str = ""
    rgb: np.ndarray | None = field(default=None, compare=False)
    depth: np.ndarray | None = field(default=None, compare=False)
    recording: tuple[Observation, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.start_views <= MAX_START_VIEWS:
            raise ValueError(f"start_views must be 1..{MAX_START_VIEWS}, got {self.start_views}")

    @property
    def kind(self) -> str:
        if self.memory_path:
            return "memory"
        if self.recording:
            return "recording"
        if self.rgb is not None or self.depth is not None:
            if self.rgb is None or self.depth is None:
                raise ValueError("an observation start needs both rgb and depth")
            return "observation"
        if self.rgb_path or self.depth_path:
            if not (self.rgb_path and self.depth_path):
                raise ValueError("an observation start needs both rgb_path and depth_path")
            return "observation"
        return "world"


def load_observation(rgb_path: str | Path, depth_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB (PNG/JPEG) and depth: ``.npy`` float metres, or 16-bit PNG millimetres (0 = no depth)."""
    rgb_path, depth_path = Path(rgb_path), Path(depth_path)
    for path in (rgb_path, depth_path):
        if not path.is_file():
            raise ValueError(f"start observation file not found: {path}")
    try:
        rgb = np.asarray(Image.open(rgb_path).convert("RGB"))
        if depth_path.suffix == ".npy":
            depth = np.load(depth_path, allow_pickle=False).astype(np.float32)
        else:
            raw = np.asarray(Image.open(depth_path))
            if raw.dtype not in (np.uint16, np.int32):
                raise ValueError(f"{depth_path}: a PNG depth must be 16-bit millimetres, got {raw.dtype}")
            depth = np.where(raw > 0, raw.astype(np.float32) / 1000.0, np.float32(np.nan))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the start observation: {error}") from error
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f"depth {depth.shape} and rgb {rgb.shape[:2]} sizes differ")
    return rgb, depth


#: Metres from the odometry origin (in x and y) that the simulated world spans. Poses beyond it are
#: refused: the memory's voxel keys span +-52 km, and nothing a robot does in one session goes further.
WORLD_LIMIT = 1.0e4


def within_world(pose: PlanarPose) -> bool:
    return abs(pose.x) <= WORLD_LIMIT and abs(pose.y) <= WORLD_LIMIT


def check_within_world(pose: PlanarPose) -> None:
    if not within_world(pose):
        raise ValueError(f"pose x={pose.x:.6g} y={pose.y:.6g} is outside the simulated world "
                         f"(|x|, |y| <= {WORLD_LIMIT:g} m)")


@dataclass(frozen=True)
class CollisionConfig:
    """The robot footprint (a disc of ``radius`` m; 0 disables checking) and the heights above the
    floor (m) where remembered surfaces are obstacles (the floor itself is not)."""

    radius: float = 0.0
    min_height: float = 0.05
    max_height: float = 1.5

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> "CollisionConfig":
        return cls(radius=params["collision_radius"])


@dataclass
class SimFrame:
    """One simulated step: base state, camera pose (odometry frame), contact and what the camera saw."""

    pose: PlanarPose
    velocity: BodyTwist
    cam_to_world: np.ndarray
    result: StepResult
    in_contact: bool = False


#: Where the simulator's frames come from: the learned world model, or the procedural world's
#: ground-truth renderer (reference runs; ``worlds.ground_truth.GroundTruthFrames``).
RENDERERS = ("model", "ground_truth")


class FrameRenderer(Protocol):
    """What the ``Simulator`` draws its frames from; the camera poses are in the odometry frame."""

    image_size: tuple[int, int]

    def begin(self, start: StartSpec, camera: PinholeCamera, mount: CameraMount, cam_to_odom: np.ndarray) -> None:
        """Start over from ``start`` with the camera at ``cam_to_odom``; all or nothing (``ValueError``)."""

    def add_camera(self, cam_to_odom: np.ndarray) -> None:
        """One more camera in the world (a companion robot's), after those ``begin`` or ``load_memory`` placed."""

    def warm_up(self) -> None:
        """Pay the one-off costs of the first frames of the cameras placed so far now (``reset`` ends with it), so
        a real-time loop's first steps are on time."""

    def render_cameras(self, cam_to_odoms: Sequence[np.ndarray], K: np.ndarray) -> list[StepResult]:
        """The frames seen from ``cam_to_odoms`` (one pose per camera, in camera order) with intrinsics ``K``."""

    def nearest_surface(self, x: float, y: float, min_height: float, max_height: float) -> float:
        """Horizontal distance (m) to the nearest known surface between the heights; ``inf``: none."""

    def save_memory(self, path: str | Path) -> None: ...

    def load_memory(self, path: str | Path, K: np.ndarray, cam_to_world: np.ndarray) -> float: ...

    def memory_points(self) -> tuple[np.ndarray, np.ndarray]: ...

    def memory_stats(self) -> MemoryStats: ...


class ModelRenderer:
    """Frames imagined by a ``WorldModel``, which remembers what it showed (the simulator's purpose)."""

    def __init__(self, model: WorldModel, progress: bool = False) -> None:
        self.model = model
        self.image_size = tuple(model.image_size)
        self.progress = progress  # a progress bar while a recording is mapped

    def begin(self, start: StartSpec, camera: PinholeCamera, mount: CameraMount, cam_to_odom: np.ndarray) -> None:
        kind = start.kind
        if kind == "memory":
            self.model.load_memory(start.memory_path, camera.K, cam_to_odom)
        elif kind == "recording":
            first, *rest = start.recording
            self.model.reset(first.rgb, first.depth, first.K, first.cam_to_odom)
            for observation in tqdm(rest, desc="mapping the recording", unit="frame", disable=not self.progress):
                self.model.observe(observation.rgb, observation.depth, observation.K, observation.cam_to_odom)
        elif kind == "observation":
            rgb, depth = ((start.rgb, start.depth) if start.rgb is not None
                          else load_observation(start.rgb_path, start.depth_path))
            K = (np.asarray(start.K, dtype=np.float64).reshape(3, 3) if start.K else
                 PinholeCamera.from_hfov(rgb.shape[1], rgb.shape[0], camera.hfov).K)
            self.model.reset(rgb, depth, validate_intrinsics(K, "start K"), cam_to_odom)  # validates first
        else:
            base_to_odom = cam_to_odom @ invert_transform(mount.base_to_optical)
            views = render_world_start(start.world_seed, camera, mount, start.start_views)
            for index, (rgb, depth, turn) in enumerate(views):  # the first clears the memory
                turned = mount.camera_to_world(base_to_odom @ planar_pose_to_transform(0.0, 0.0, turn))
                (self.model.observe if index else self.model.reset)(rgb, depth, camera.K, turned)

    def add_camera(self, cam_to_odom: np.ndarray) -> None:
        self.model.add_camera(cam_to_odom)

    def warm_up(self) -> None:
        self.model.warm_up()

    def render_cameras(self, cam_to_odoms: Sequence[np.ndarray], K: np.ndarray) -> list[StepResult]:
        return self.model.step_cameras(cam_to_odoms, K)

    def nearest_surface(self, x: float, y: float, min_height: float, max_height: float) -> float:
        return self.model.nearest_surface(x, y, min_height, max_height)

    def save_memory(self, path: str | Path) -> None:
        self.model.save_memory(path)

    def load_memory(self, path: str | Path, K: np.ndarray, cam_to_world: np.ndarray) -> float:
        return self.model.load_memory(path, K, cam_to_world)

    def memory_points(self) -> tuple[np.ndarray, np.ndarray]:
        return self.model.memory_points()

    def memory_stats(self) -> MemoryStats:
        return self.model.memory_stats()


@dataclass
class Robot:
    """One robot in a simulated world: its base, where its camera sits on it, and where it starts (in
    the odometry frame that all robots of the world share)."""

    base: PlanarBase
    mount: CameraMount
    initial_pose: PlanarPose = field(default_factory=PlanarPose)


@dataclass
class Simulator:
    """The frame renderer and the robots in its world: robot 0 is ``base`` with ``mount`` at
    ``initial_pose``, the ``companions`` (none for a single robot) share its world, memory and camera model."""

    renderer: FrameRenderer
    camera: PinholeCamera
    mount: CameraMount
    base: PlanarBase
    start: StartSpec = field(default_factory=StartSpec)
    initial_pose: PlanarPose = field(default_factory=PlanarPose)
    collision: CollisionConfig = field(default_factory=CollisionConfig)
    companions: list[Robot] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.camera.height, self.camera.width) != tuple(self.renderer.image_size):
            raise ValueError(f"camera is {self.camera.width}x{self.camera.height} but the model generates "
                             f"{self.renderer.image_size[1]}x{self.renderer.image_size[0]} images")
        _ = self.start.kind  # validates the start specification

    @property
    def robots(self) -> list[Robot]:
        """Every robot, robot 0 first (the order of ``step_robots``' frames)."""
        return [Robot(self.base, self.mount, self.initial_pose), *self.companions]

    def reset(self, world_seed: int | None = None) -> None:
        """Every robot back to its initial pose with a fresh memory built from the start (``world_seed``
        overrides it); the start observation is robot 0's view, the others' first views continue from
        what the memory holds where they look.

        All or nothing: a start that cannot be built (bad seed, unreadable files, corrupt memory)
        raises ``ValueError`` with the base, the memory and the start specification as they were. Ends by
        warming the renderer up (``FrameRenderer.warm_up``): the node's first steps are on time.
        """
        start = self.start if world_seed is None else StartSpec(world_seed=world_seed,
                                                                start_views=self.start.start_views)
        self.renderer.begin(start, self.camera, self.mount, self.mount.camera_to_world(self.initial_pose.matrix()))
        self.start = start
        self.base.reset(self.initial_pose)
        for robot in self.companions:
            robot.base.reset(robot.initial_pose)
            self.renderer.add_camera(robot.mount.camera_to_world(robot.initial_pose.matrix()))
        self.renderer.warm_up()

    def teleport(self, pose: PlanarPose, robot: int = 0) -> None:
        """Put robot ``robot``'s base at ``pose`` at rest (RViz "2D Pose Estimate"); a pose beyond
        ``WORLD_LIMIT`` raises ``ValueError`` and the base stays where it was."""
        check_within_world(pose)
        self.robots[robot].base.reset(pose)

    def step(self, dt: float, now: float, pose: PlanarPose | None = None) -> SimFrame:
        """Integrate the base for ``dt`` seconds (or move it to an externally given ``pose``), then
        generate the frame its camera sees: ``step_robots`` for a simulator of one robot."""
        return self.step_robots(dt, now, [pose])[0]

    def step_robots(self, dt: float, now: float,
                    poses: Sequence[PlanarPose | None] | None = None) -> list[SimFrame]:
        """Move every robot for ``dt`` seconds (integrating its commands, or to its given pose in
        ``poses``, one entry per robot, ``None``: integrate), then render what all their cameras see
        at once (one batched model step); one frame per robot, robot 0 first.

        With collision checking, motion that brings a footprint closer to a remembered surface than
        its radius is refused (the base stops where it was); moving away from contact is allowed.
        Driving beyond ``WORLD_LIMIT`` is refused the same way (reported as contact); a given pose
        beyond it raises ``ValueError``. Robots do not collide with, or see, each other.
        """
        robots = self.robots
        poses = list(poses) if poses is not None else [None] * len(robots)
        if len(poses) != len(robots):
            raise ValueError(f"{len(robots)} robots, but {len(poses)} poses")
        moves = [self._move(robot.base, dt, now, pose) for robot, pose in zip(robots, poses)]
        cameras = [robot.mount.camera_to_world(pose.matrix()) for robot, (pose, _) in zip(robots, moves)]
        # Generated with the simulator camera's intrinsics (those its camera_info announces), whatever the
        # intrinsics of the start observation were.
        results = self.renderer.render_cameras(cameras, self.camera.K)
        return [SimFrame(pose, robot.base.velocity, cam_to_world, result, contact)
                for robot, (pose, contact), cam_to_world, result in zip(robots, moves, cameras, results)]

    def _move(self, base: PlanarBase, dt: float, now: float, pose: PlanarPose | None) -> tuple[PlanarPose, bool]:
        """Move ``base`` (see ``step_robots``); returns where it is and whether motion was refused."""
        previous = base.pose
        if pose is None:
            pose = base.step(dt, now)
        else:
            check_within_world(pose)
            base.stop_at(pose)
        if not within_world(pose):  # the edge of the simulated world is a wall
            base.stop_at(previous)
            return previous, True
        if self.collision.radius > 0:
            c = self.collision
            after = self.renderer.nearest_surface(pose.x, pose.y, c.min_height, c.max_height)
            if after < c.radius and after < self.renderer.nearest_surface(previous.x, previous.y, c.min_height,
                                                                          c.max_height):
                base.stop_at(previous)
                return previous, True
        return pose, False

    # ------------------------------------------------------------------ memory services
    def camera_pose(self, robot: int = 0) -> np.ndarray:
        """Robot ``robot``'s camera optical-frame pose in the odometry (memory) frame, at its base's pose."""
        chosen = self.robots[robot]
        return chosen.mount.camera_to_world(chosen.base.pose.matrix())

    def save_memory(self, path: str | Path) -> MemoryStats:
        """Write the memory to ``path`` (safetensors); returns what was saved. ``ValueError`` on failure,
        with nothing written."""
        self.renderer.save_memory(path)
        return self.renderer.memory_stats()

    def load_memory(self, path: str | Path) -> float:
        """Replace the memory with a saved one and continue from it at every robot's current pose;
        returns how much of robot 0's current view it covers. ``ValueError`` changes nothing."""
        coverage = self.renderer.load_memory(path, self.camera.K, self.camera_pose())
        for index in range(1, len(self.robots)):
            self.renderer.add_camera(self.camera_pose(index))
        return coverage

    def memory_cloud(self) -> tuple[np.ndarray, np.ndarray]:
        """Remembered positions ``[N,3]`` (odometry frame) and display colours ``[N,3]`` uint8."""
        return self.renderer.memory_points()

    def memory_stats(self) -> MemoryStats:
        return self.renderer.memory_stats()


def build_robot(settings: dict[str, Any], params: dict[str, Any]) -> Robot:
    """A robot from its ``drive``, ``initial_pose``, ``camera_xyz`` and ``camera_rpy`` in ``settings``;
    limits and command timeout, shared by every robot, from ``params``."""
    return Robot(PlanarBase(settings["drive"], base_limits(params), params["command_timeout"]),
                 CameraMount(tuple(settings["camera_xyz"]), tuple(settings["camera_rpy"])),
                 PlanarPose(*settings["initial_pose"]))


def build_world_model(params: dict[str, Any]) -> WorldModel:
    """The world model ``params`` ask for (checkpoint, memory, device, seed, precision, floor and ground texture,
    step count)."""
    model = WorldModel.from_pretrained(params["model_path"] or None, memory=params["memory"],
                                       device=params["device"], seed=params["seed"],
                                       precision=params["precision"],
                                       trace_networks=params["trace_networks"],
                                       floor_height=params["floor_height"] if params["clamp_to_floor"] else None,
                                       ground_texture=params["ground_texture"])
    # The checkpoint's sampling settings stay (world_model.json); the node sets the step count.
    model.sampling = replace(model.sampling, num_inference_steps=params["num_inference_steps"])
    return model


def build_simulator(params: dict[str, Any], robots: Sequence[dict[str, Any]] = (), progress: bool = False,
                    model: WorldModel | None = None) -> Simulator:
    """The simulator the node runs, from its validated parameters (``ros.sim_node.PARAMETERS`` names);
    also what offline rollouts build. ``robots``: the settings of each robot of a shared world (see
    ``build_robot``); none: one robot set up by ``params`` itself. A ``map_bag`` recording is read by the
    ROS layer (``ros.recording``) into ``start.recording``; ``progress`` shows a bar while it is mapped.
    ``model``: a world model ``build_world_model`` made from these parameters (its world seed aside), to use
    again: a batch of rollouts then loads and traces the networks once (``reset`` clears and reseeds it)."""
    first, *companions = [build_robot(settings, params) for settings in (robots or [params])]
    model = model if model is not None else build_world_model(params)
    height, width = model.image_size
    camera = PinholeCamera.from_hfov(width, height, params["horizontal_fov"])
    start = StartSpec(world_seed=params["world_seed"], start_views=params["start_views"], rgb_path=params["start_rgb"],
                      depth_path=params["start_depth"], K=tuple(params["start_k"]) if any(params["start_k"]) else (),
                      memory_path=params["memory_file"])
    return Simulator(build_renderer(params["renderer"], model, progress), camera, first.mount, first.base, start,
                     first.initial_pose, CollisionConfig.from_parameters(params), companions)


def build_renderer(kind: str, model: WorldModel, progress: bool = False) -> FrameRenderer:
    """The frame source of ``kind`` (``RENDERERS``); the ground truth renders at the model's image size."""
    if kind == "model":
        return ModelRenderer(model, progress)
    if kind == "ground_truth":
        from mirage_ros.worlds.ground_truth import GroundTruthFrames

        return GroundTruthFrames(model.image_size)
    raise ValueError(f"renderer must be one of {RENDERERS}, got {kind!r}")


def base_limits(params: dict[str, Any]) -> BaseLimits:
    """The base's limits from the parameters of the same names."""
    return BaseLimits(max_linear_velocity=params["max_linear_velocity"],
                      max_angular_velocity=params["max_angular_velocity"],
                      max_linear_acceleration=params["max_linear_acceleration"],
                      max_angular_acceleration=params["max_angular_acceleration"])


def render_world_start(world_seed: int, camera: PinholeCamera, mount: CameraMount,
                       views: int = 1) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The first observations in procedural world ``world_seed`` from a free start pose: ``views`` RGB-D
    frames turning in place, each with its yaw (rad) from the start heading, the start view (yaw 0) last."""
    from mirage_ros.worlds import generate_world
    from mirage_ros.worlds.renderer import GroundTruthRenderer
    from mirage_ros.worlds.trajectories import free_start_pose

    world = generate_world(world_seed)
    start = free_start_pose(world, world_seed)
    with GroundTruthRenderer(world, camera.width, camera.height) as renderer:
        return [(*renderer.render(mount.camera_to_world(replace(start, yaw=start.yaw + turn).matrix()), camera.K), turn)
                for turn in start_turns(views)]


def start_turns(views: int) -> list[float]:
    """Yaws (rad, from the start heading) of the ``views`` start observations, evenly spaced, the start view
    (0) last so that it is the first step's context."""
    return [2.0 * np.pi * k / views for k in range(1, views)] + [0.0]
