"""The simulator's ground-truth mode: frames rendered from the procedural world itself (MuJoCo).

The same node, rollout and topics as with the learned model (``renderer: ground_truth``), so a planner
can be run in the learned and in the true world alike, and reference recordings can be made. The
odometry frame is placed in the world as the learned simulator places it: the base's initial pose is
the world's free start pose (``trajectories.free_start_pose``), which is where the learned start
observation is rendered. Collisions use the world's true floor plan; there is no memory to save.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from mirage_ros.camera import CameraMount, PinholeCamera
from mirage_ros.geometry import invert_transform
from mirage_ros.kinematics import PlanarPose
from mirage_ros.memory import MemoryStats
from mirage_ros.model.world_model import StepResult
from mirage_ros.worlds.generator import World, generate_world
from mirage_ros.worlds.trajectories import free_start_pose

#: Resolution (m) of the distance to the nearest wall or obstacle that collision checks get.
SURFACE_DISTANCE_RESOLUTION = 1e-3
#: Farthest distance (m) to a surface that is searched; beyond it there is no surface (``inf``).
SURFACE_SEARCH_RANGE = 50.0


class GroundTruthFrames:
    """A ``simulator.FrameRenderer`` that shows the true procedural world (exact metric depth)."""

    def __init__(self, image_size: tuple[int, int]) -> None:
        self.image_size = tuple(image_size)
        self.world: World | None = None
        self.odom_to_world = np.eye(4)
        self._renderer = None

    def begin(self, start, camera: PinholeCamera, mount: CameraMount, cam_to_odom: np.ndarray) -> None:
        """Enter the procedural world of ``start`` (``simulator.StartSpec``); other starts raise ``ValueError``."""
        if start.kind != "world":
            raise ValueError(f"the ground_truth renderer shows procedural worlds; a {start.kind} start has no "
                             "ground truth (use world_seed)")
        from mirage_ros.worlds.renderer import GroundTruthRenderer

        world = generate_world(start.world_seed)
        renderer = GroundTruthRenderer(world, self.image_size[1], self.image_size[0])
        self.close()
        self.world, self._renderer = world, renderer
        start_camera = mount.camera_to_world(free_start_pose(world, start.world_seed).matrix())
        self.odom_to_world = start_camera @ invert_transform(cam_to_odom)

    def render(self, cam_to_odom: np.ndarray, K: np.ndarray) -> StepResult:
        """The true frame seen from ``cam_to_odom`` with intrinsics ``K``."""
        if self._renderer is None:
            raise RuntimeError("begin() a world before rendering")
        rgb, depth = self._renderer.render(self.odom_to_world @ cam_to_odom, K)
        return StepResult(rgb, depth, coverage=1.0)

    def add_camera(self, cam_to_odom: np.ndarray) -> None:
        """Cameras need no state here: every frame is rendered from the world as it is."""

    def warm_up(self) -> None:
        """Nothing to set up ahead: the first frame costs what every other does."""

    def render_cameras(self, cam_to_odoms: Sequence[np.ndarray], K: np.ndarray) -> list[StepResult]:
        return [self.render(cam_to_odom, K) for cam_to_odom in cam_to_odoms]

    def nearest_surface(self, x: float, y: float, min_height: float, max_height: float) -> float:
        """Distance to the nearest wall or obstacle of the floor plan (all of them span the robot's heights)."""
        if self.world is None:
            return math.inf
        wx, wy = (self.odom_to_world @ np.array([x, y, 0.0, 1.0]))[:2]
        if self.world.occupied(wx, wy):
            return 0.0
        if not self.world.occupied(wx, wy, SURFACE_SEARCH_RANGE):
            return math.inf
        free, hit = 0.0, SURFACE_SEARCH_RANGE  # bisect the margin at which the point becomes occupied
        while hit - free > SURFACE_DISTANCE_RESOLUTION:
            middle = 0.5 * (free + hit)
            if self.world.occupied(wx, wy, middle):
                hit = middle
            else:
                free = middle
        return hit

    def save_memory(self, path: str | Path) -> None:
        raise ValueError("the ground_truth renderer keeps no memory to save")

    def load_memory(self, path: str | Path, K: np.ndarray, cam_to_world: np.ndarray) -> float:
        raise ValueError("the ground_truth renderer keeps no memory to load")

    def memory_points(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)

    def memory_stats(self) -> MemoryStats:
        return MemoryStats(entries=0, bytes=0, observations=0, last_read_coverage=1.0)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def poses_in_odom(world: World, base_poses: np.ndarray, initial_pose: PlanarPose | None = None) -> list[PlanarPose]:
    """Base poses ``[T, 3]`` (x, y, yaw) of ``world`` as the simulator's odometry frame sees them when it
    starts in that world with the base at ``initial_pose`` (e.g. a trajectory to drive in either mode)."""
    world_to_odom = (initial_pose or PlanarPose()).matrix() @ invert_transform(free_start_pose(world, world.seed).matrix())
    poses = []
    for x, y, yaw in np.asarray(base_poses, dtype=np.float64):
        odom = world_to_odom @ PlanarPose(x, y, yaw).matrix()
        poses.append(PlanarPose(float(odom[0, 3]), float(odom[1, 3]), math.atan2(odom[1, 0], odom[0, 0])))
    return poses
