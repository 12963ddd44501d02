"""Sim-to-sim gap: one simple scan-based planner driven closed loop in the learned world (``renderer:
model``) and in the true world (``renderer: ground_truth``), same procedural world, start and goal.

    .venv/bin/python benchmarks/sim_to_sim_benchmark.py [--world-seed 30] [--steps 200] [--start-views N]

The planner reads only the ``scan`` the node would publish (synthesised from depth, ``config/sim.yaml``
settings): it heads for the drivable beam nearest the goal direction and turns in place when blocked.
The goal is the farthest point ahead that is reachable in a straight line in the true world, so the
true run shows what the planner does with perfect perception.
Printed per mode: path length, progress towards the goal, collisions (steps with the robot's footprint
inside a true wall or obstacle: the simulators do not stop the base here, so both are measured against
the same truth) and whether the goal was reached. In the learned run, the truth is rendered at every
pose the learned planner visits, so the scans are compared at the same poses: AbsRel of the learned
scan against the true one, over the beams of remembered content (pixels the start observations saw:
``start_views`` of them turning in place, ``config/sim.yaml``'s unless ``--start-views`` is given) and
over all beams.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from mirage_ros.geometry import planar_pose_to_transform
from mirage_ros.kinematics import PlanarPose
from mirage_ros.ros.parameters import default_config, parameters_from_yaml
from mirage_ros.ros.sim_node import NODE_NAME, PARAMETERS
from mirage_ros.sensors import ScanConfig, depth_to_scan
from mirage_ros.simulator import StartSpec, build_simulator, start_turns
from mirage_ros.training.metrics import depth_abs_rel, visible_in
from mirage_ros.worlds import generate_world
from mirage_ros.worlds.ground_truth import GroundTruthFrames

ROBOT_RADIUS = 0.25
GOAL_DISTANCE = (2.0, 4.5)   # m from the start
GOAL_REACHED = 0.3           # m
CLEARANCE = 0.9              # m of free range a beam needs to be driven along
SPEED, TURN_RATE = 0.4, 1.0  # m/s, rad/s


def choose_goal(frames: GroundTruthFrames) -> tuple[float, float]:
    """The farthest point (odometry frame, within ``GOAL_DISTANCE`` and 45 degrees of the start heading)
    that the robot can reach in a straight line in the true world."""
    def clear(x: float, y: float) -> bool:
        return all(frames.nearest_surface(x * s, y * s, 0.05, 1.5) > ROBOT_RADIUS + 0.15 for s in np.linspace(0, 1, 25))

    candidates = [(math.hypot(x, y), float(x), float(y)) for x in np.arange(0.5, GOAL_DISTANCE[1] + 0.01, 0.25)
                  for y in np.arange(-GOAL_DISTANCE[1], GOAL_DISTANCE[1] + 0.01, 0.25)
                  if GOAL_DISTANCE[0] <= math.hypot(x, y) <= GOAL_DISTANCE[1] and abs(math.atan2(y, x)) < 0.8]
    for _, x, y in sorted(candidates, reverse=True):
        if clear(x, y):
            return x, y
    raise SystemExit("no goal in straight reach of the start in this world; try another --world-seed")


class ScanPlanner:
    """Heads along the drivable beam nearest the goal's bearing (free for ``CLEARANCE`` over the robot's
    width); where none is drivable it turns in place, keeping one turning direction until one is."""

    def __init__(self, goal: tuple[float, float]) -> None:
        self.goal = goal
        self.turning = 0.0

    def command(self, ranges: np.ndarray, angle_min: float, increment: float, pose: PlanarPose) -> tuple[float, float]:
        """``(vx, wz)`` for the latest scan at ``pose``."""
        bearing = math.atan2(self.goal[1] - pose.y, self.goal[0] - pose.x) - pose.yaw
        bearing = math.atan2(math.sin(bearing), math.cos(bearing))
        angles = angle_min + increment * np.arange(len(ranges))
        half_width = int(math.ceil(math.atan2(ROBOT_RADIUS, CLEARANCE) / increment))
        padded = np.pad(ranges, half_width, constant_values=0.0)
        corridor = np.array([padded[i:i + 2 * half_width + 1].min() for i in range(len(ranges))])
        drivable = corridor >= CLEARANCE
        if not drivable.any():
            if not self.turning:
                self.turning = TURN_RATE if np.mean(np.minimum(ranges[angles > 0], 10)) >= np.mean(
                    np.minimum(ranges[angles <= 0], 10)) else -TURN_RATE
            return 0.0, self.turning
        self.turning = 0.0
        heading = float(angles[drivable][np.argmin(np.abs(angles[drivable] - bearing))])
        if abs(bearing) > np.abs(angles).max() and abs(heading - bearing) > 0.3:
            heading = bearing  # the goal is outside the field of view: turn towards it
        ahead = ranges[np.abs(angles) < math.atan2(ROBOT_RADIUS, 0.5)]
        close = ahead.size and ahead.min() < 0.5
        vx = 0.0 if close or abs(heading) > 0.8 else SPEED * (1.0 - abs(heading) / 0.8)
        return vx, float(np.clip(1.5 * heading, -TURN_RATE, TURN_RATE))


def drive(params: dict, steps: int, goal: tuple[float, float], truth: GroundTruthFrames) -> dict:
    """One closed-loop run; with the learned renderer, also the truth's scan at every pose."""
    simulator = build_simulator(params)
    simulator.reset()
    camera, mount = simulator.camera, simulator.mount
    scan = ScanConfig(min_height=params["scan_min_height"], max_height=params["scan_max_height"],
                      range_min=params["scan_range_min"], range_max=params["scan_range_max"],
                      angle_increment=params["scan_angle_increment"])
    learned = params["renderer"] == "model"
    start_poses = [mount.camera_to_world(simulator.base.pose.matrix() @ planar_pose_to_transform(0.0, 0.0, turn))
                   for turn in start_turns(params["start_views"])]
    start_views = [(truth.render(pose, camera.K).depth, pose) for pose in start_poses] if learned else []
    dt = 1.0 / params["rate"]
    pose, length, collisions, reached = simulator.base.pose, 0.0, 0, False
    remembered_errors, all_errors = [], []
    vx = wz = 0.0
    planner = ScanPlanner(goal)
    for k in range(steps):
        simulator.base.command(vx, 0.0, wz, stamp=k * dt)
        frame = simulator.step(dt, (k + 1) * dt)
        length += math.hypot(frame.pose.x - pose.x, frame.pose.y - pose.y)
        pose = frame.pose
        collisions += truth.nearest_surface(pose.x, pose.y, 0.05, 1.5) < ROBOT_RADIUS
        angle_min, _, ranges = depth_to_scan(frame.result.depth, camera.K, mount.base_to_optical, camera.hfov, scan)
        if learned:
            true_depth = truth.render(frame.cam_to_world, camera.K).depth
            _, _, true_ranges = depth_to_scan(true_depth, camera.K, mount.base_to_optical, camera.hfov, scan)
            seen = np.logical_or.reduce([visible_in(true_depth, frame.cam_to_world, start_depth, start_pose, camera.K)
                                         for start_depth, start_pose in start_views])
            masked = [np.where(seen, depth, np.nan) for depth in (frame.result.depth, true_depth)]
            _, _, seen_learned = depth_to_scan(masked[0], camera.K, mount.base_to_optical, camera.hfov, scan)
            _, _, seen_true = depth_to_scan(masked[1], camera.K, mount.base_to_optical, camera.hfov, scan)
            for errors, (a, b) in ((all_errors, (ranges, true_ranges)), (remembered_errors, (seen_learned, seen_true))):
                if (np.isfinite(a) & np.isfinite(b)).any():
                    errors.append(depth_abs_rel(a, b))
        if math.hypot(goal[0] - pose.x, goal[1] - pose.y) < GOAL_REACHED:
            reached = True
            break
        vx, wz = planner.command(ranges, angle_min, scan.angle_increment, pose)
    start_distance = math.hypot(*goal)
    return {"steps": k + 1, "length": length, "progress": start_distance - math.hypot(goal[0] - pose.x, goal[1] - pose.y),
            "collisions": int(collisions), "reached": reached,
            "scan_absrel_remembered": float(np.mean(remembered_errors)) if remembered_errors else None,
            "remembered_steps": len(remembered_errors),
            "scan_absrel_all": float(np.mean(all_errors)) if all_errors else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-seed", type=int, default=30, help="procedural world (30: a held-out test world)")
    parser.add_argument("--steps", type=int, default=200, help="steps per run (10 Hz)")
    parser.add_argument("--start-views", type=int, default=None,
                        help="views of the world observed at the start (default: config/sim.yaml's)")
    args = parser.parse_args()
    overrides = {"world_seed": args.world_seed}
    if args.start_views is not None:
        overrides["start_views"] = args.start_views
    params = parameters_from_yaml(default_config(), NODE_NAME, PARAMETERS, overrides)
    probe = build_simulator({**params, "renderer": "ground_truth"})
    truth = probe.renderer
    truth.begin(StartSpec(world_seed=args.world_seed), probe.camera, probe.mount,
                probe.mount.camera_to_world(probe.initial_pose.matrix()))
    goal = choose_goal(truth)
    world = generate_world(args.world_seed)
    print(f"world {args.world_seed} ({world.size[0]:.1f} x {world.size[1]:.1f} m), goal ({goal[0]:.2f}, {goal[1]:.2f}) m "
          f"in odom, {args.steps} steps at {params['rate']:g} Hz, robot radius {ROBOT_RADIUS} m")
    results = {mode: drive({**params, "renderer": mode}, args.steps, goal, truth) for mode in ("ground_truth", "model")}
    print("| mode | steps | path length (m) | progress to goal (m) | collisions (steps) | goal reached |")
    print("|---|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['steps']} | {r['length']:.2f} | {r['progress']:.2f} | {r['collisions']} | {r['reached']} |")
    learned = results["model"]
    print(f"scan AbsRel, learned vs true at the learned run's poses: remembered content "
          f"{learned['scan_absrel_remembered'] if learned['scan_absrel_remembered'] is not None else float('nan'):.3f} "
          f"({learned['remembered_steps']} steps with remembered beams), all beams {learned['scan_absrel_all']:.3f}")
    truth.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
