"""Robot-like camera trajectories in a world's free space.

A controller steers the same ``PlanarBase`` the simulator uses (velocity and acceleration limits,
exact integration) along A* paths planned on the world's occupancy grid grown by the robot radius, so
trajectories look like a real robot's: smooth arcs, slow-downs in turns, in-place rotations. Kinds:

- ``explore``: visit random free goals, with occasional in-place look-arounds;
- ``out_and_back`` (ABA): drive A -> B, then reverse along the same poses back to A (every return frame
  has an outgoing frame at the identical pose: the loop-closure test);
- ``loop`` (ABCA): A -> B -> C -> A, returning to the start pose;
- ``rotate``: a full in-place turn, then half a turn back.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from mirage_ros.camera import CameraMount
from mirage_ros.kinematics import BaseLimits, PlanarBase, PlanarPose, wrap_angle
from mirage_ros.worlds.generator import World

KINDS = ("explore", "out_and_back", "loop", "rotate")


@dataclass(frozen=True)
class TrajectoryConfig:
    dt: float = 0.1                 # seconds per frame (the simulator's default 10 Hz)
    robot_radius: float = 0.25      # footprint clearance kept from walls and obstacles (m)
    camera_height: float = 0.5      # camera_link above the floor (m)
    camera_pitch: float = 0.1       # rad, positive looks down (REP 103 pitch about +y)
    max_speed: float = 0.5          # m/s
    max_yaw_rate: float = 1.2       # rad/s
    grid_resolution: float = 0.1    # planning grid (m)

    @property
    def mount(self) -> CameraMount:
        return CameraMount((0.0, 0.0, self.camera_height), (0.0, self.camera_pitch, 0.0))


@dataclass
class Trajectory:
    kind: str
    base_poses: np.ndarray          # [T, 3] x, y, yaw of base_link in the world
    cam_to_world: np.ndarray        # [T, 4, 4] optical-frame camera poses

    def __len__(self) -> int:
        return len(self.base_poses)


class _Planner:
    """A* on a grid of the world grown by the robot radius (8-connected), with path shortcutting."""

    def __init__(self, world: World, config: TrajectoryConfig) -> None:
        self.world, self.resolution = world, config.grid_resolution
        self.margin = config.robot_radius + 0.12  # room to deviate from the polyline without contact
        self.blocked = world.occupancy_grid(self.resolution, self.margin)

    def cell(self, x: float, y: float) -> tuple[int, int]:
        return int(y / self.resolution), int(x / self.resolution)

    def point(self, cell: tuple[int, int]) -> tuple[float, float]:
        return (cell[1] + 0.5) * self.resolution, (cell[0] + 0.5) * self.resolution

    def free_cells(self) -> np.ndarray:
        return np.argwhere(~self.blocked)

    def segment_free(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        samples = max(2, int(math.hypot(b[0] - a[0], b[1] - a[1]) / (self.resolution / 2)))
        t = np.linspace(0.0, 1.0, samples)
        return not self.world.occupied(a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), self.margin).any()

    def plan(self, start: tuple[float, float], goal: tuple[float, float]) -> list[tuple[float, float]] | None:
        s, g = self.cell(*start), self.cell(*goal)
        if self.blocked[s] or self.blocked[g]:
            return None
        rows, cols = self.blocked.shape
        frontier = [(0.0, s)]
        cost = {s: 0.0}
        parent: dict[tuple[int, int], tuple[int, int]] = {}
        while frontier:
            _, current = heapq.heappop(frontier)
            if current == g:
                break
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nxt = (current[0] + dr, current[1] + dc)
                    if (dr or dc) and 0 <= nxt[0] < rows and 0 <= nxt[1] < cols and not self.blocked[nxt]:
                        new_cost = cost[current] + math.hypot(dr, dc)
                        if new_cost < cost.get(nxt, math.inf):
                            cost[nxt], parent[nxt] = new_cost, current
                            heapq.heappush(frontier, (new_cost + math.hypot(g[0] - nxt[0], g[1] - nxt[1]), nxt))
        if g not in cost:
            return None
        cells = [g]
        while cells[-1] != s:
            cells.append(parent[cells[-1]])
        points = [start] + [self.point(c) for c in reversed(cells[:-1])]
        # Shortcut: keep only the waypoints needed for straight free segments.
        path, i = [points[0]], 0
        while i < len(points) - 1:
            j = len(points) - 1
            while j > i + 1 and not self.segment_free(points[i], points[j]):
                j -= 1
            path.append(points[j])
            i = j
        return path


class _Driver:
    """Feeds velocity commands to a ``PlanarBase`` and records the poses it reaches."""

    def __init__(self, start: PlanarPose, config: TrajectoryConfig, world: World) -> None:
        limits = BaseLimits(config.max_speed, config.max_yaw_rate, 1.0, 2.0)
        self.base = PlanarBase("diff_drive", limits, command_timeout=10.0, pose=start)
        self.config, self.world = config, world
        self.poses: list[tuple[float, float, float]] = [(start.x, start.y, start.yaw)]
        self.time = 0.0

    def _advance(self, vx: float, wz: float) -> None:
        self.base.command(vx, 0.0, wz, stamp=self.time)
        self.time += self.config.dt
        previous = self.base.pose
        pose = self.base.step(self.config.dt, self.time)
        if self.world.occupied(pose.x, pose.y, self.config.robot_radius):
            # Never enter an obstacle: hold position and stop (the controller then turns in place).
            self.base.reset(previous)
            pose = previous
        self.poses.append((pose.x, pose.y, pose.yaw))

    def turn_to(self, heading: float, max_frames: int = 200) -> None:
        for _ in range(max_frames):
            error = wrap_angle(heading - self.base.pose.yaw)
            if abs(error) < 0.03 and abs(self.base.velocity.wz) < 0.05:
                return
            self._advance(0.0, float(np.clip(2.5 * error, -self.config.max_yaw_rate, self.config.max_yaw_rate)))

    def rotate_by(self, angle: float) -> None:
        frames = max(1, int(abs(angle) / (self.config.max_yaw_rate * 0.9 * self.config.dt)))
        rate = angle / (frames * self.config.dt)
        for _ in range(frames):
            self._advance(0.0, rate)

    def follow(self, path: list[tuple[float, float]], max_frames: int) -> None:
        """Track the free polyline ``path`` vertex by vertex, turning in place where it bends, so the
        robot never cuts a corner into a door jamb; stops at the end, after ``max_frames``, or when
        blocked for several frames."""
        target, blocked = 1, 0
        for _ in range(max_frames):
            if target >= len(path) or blocked > 5:
                return
            pose = self.base.pose
            gx, gy = path[target]
            distance = math.hypot(gx - pose.x, gy - pose.y)
            if distance < 0.08:
                target += 1
                continue
            error = wrap_angle(math.atan2(gy - pose.y, gx - pose.x) - pose.yaw)
            wz = float(np.clip(2.5 * error, -self.config.max_yaw_rate, self.config.max_yaw_rate))
            vx = 0.0 if abs(error) > 0.3 else self.config.max_speed * math.cos(error) * min(1.0, distance / 0.4 + 0.1)
            before = (pose.x, pose.y)
            self._advance(vx, wz)
            moved = (self.base.pose.x, self.base.pose.y) != before
            blocked = 0 if moved or vx == 0.0 else blocked + 1


def _random_free_point(planner: _Planner, rng: np.random.Generator) -> tuple[float, float]:
    free = planner.free_cells()
    if len(free) == 0:
        raise ValueError(f"world {planner.world.seed} has no free space for a robot of this radius")
    return planner.point(tuple(free[int(rng.integers(len(free)))]))


def _goal_between(planner: _Planner, rng: np.random.Generator, start: tuple[float, float], low: float, high: float,
                  ) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    for _ in range(100):
        goal = _random_free_point(planner, rng)
        if low <= math.hypot(goal[0] - start[0], goal[1] - start[1]) <= high:
            path = planner.plan(start, goal)
            if path is not None:
                return goal, path
    goal = _random_free_point(planner, rng)
    path = planner.plan(start, goal)
    return goal, (path or [start])


def free_start_pose(world: World, seed: int, config: TrajectoryConfig | None = None) -> PlanarPose:
    """A deterministic start pose in ``world``'s free space, facing into the room."""
    config = config or TrajectoryConfig()
    planner = _Planner(world, config)
    rng = np.random.default_rng(seed)
    x, y = _random_free_point(planner, rng)
    centre_x, centre_y = world.size[0] / 2, world.size[1] / 2
    return PlanarPose(x, y, math.atan2(centre_y - y, centre_x - x))


def generate_trajectory(world: World, kind: str, frames: int, seed: int,
                        config: TrajectoryConfig | None = None) -> Trajectory:
    """A ``kind`` trajectory of exactly ``frames`` camera poses (the robot idles if it finishes early)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    config = config or TrajectoryConfig()
    rng = np.random.default_rng(seed)
    planner = _Planner(world, config)
    start_xy = _random_free_point(planner, rng)
    driver = _Driver(PlanarPose(start_xy[0], start_xy[1], float(rng.uniform(-math.pi, math.pi))), config, world)

    if kind == "rotate":
        direction = float(rng.choice([-1.0, 1.0]))
        driver.rotate_by(direction * 2 * math.pi)
        driver.rotate_by(-direction * math.pi)
    elif kind == "out_and_back":
        _, path = _goal_between(planner, rng, start_xy, 1.5, 4.0)
        driver.follow(path, max_frames=frames // 2)
        outgoing = driver.poses[: frames // 2 + 1]
        returning = outgoing[-2::-1]
        pause_at_b = [outgoing[-1]] * max(0, frames - len(outgoing) - len(returning))
        driver.poses = outgoing + pause_at_b + returning
    elif kind == "loop":
        waypoints = [start_xy]
        for _ in range(2):
            goal, path = _goal_between(planner, rng, waypoints[-1], 1.5, 3.5)
            driver.follow(path, max_frames=frames // 3)
            waypoints.append((driver.base.pose.x, driver.base.pose.y))
        home = planner.plan((driver.base.pose.x, driver.base.pose.y), start_xy)
        if home is not None:
            driver.follow(home, max_frames=frames // 3)
        driver.turn_to(driver.poses[0][2])
    else:  # explore
        while len(driver.poses) < frames:
            if rng.random() < 0.15:
                driver.rotate_by(float(rng.uniform(-math.pi / 2, math.pi / 2)))
            here = (driver.base.pose.x, driver.base.pose.y)
            _, path = _goal_between(planner, rng, here, 1.0, 5.0)
            driver.follow(path, max_frames=frames - len(driver.poses) + 1)
    poses = np.array(driver.poses, dtype=np.float64)
    if len(poses) < frames:
        poses = np.concatenate([poses, np.repeat(poses[-1:], frames - len(poses), axis=0)])
    poses = poses[:frames]
    mount = config.mount
    cameras = np.stack([mount.camera_to_world(PlanarPose(*p).matrix()) for p in poses])
    return Trajectory(kind, poses, cameras)
