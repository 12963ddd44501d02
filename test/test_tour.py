"""The demo tour: steered around its loop from the pose, it stays clear of the default world's walls
lap after lap, the loop is anchored wherever the robot starts, and a leg the scan shows blocked is given up."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mirage_ros.kinematics import PlanarPose
from mirage_ros.ros.parameters import default_config, parameters_from_yaml
from mirage_ros.ros.sim_node import NODE_NAME, PARAMETERS
from mirage_ros.sensors import RangeScan
from mirage_ros.simulator import build_simulator
from mirage_ros.tour import BLOCKED_SCANS, CORRIDOR_HALF_WIDTH, MAX_YAW_RATE, SPEED, STOP_DISTANCE, Tour


def test_tour_laps_the_default_world_without_touching_a_wall():
    """In the true default world (the one ``make run`` starts in), two minutes of the tour reading the true
    scan: every pose at least 0.4 m from any wall or object, and the robot back at its start every lap (no leg
    of the loop is blocked there)."""
    params = parameters_from_yaml(default_config(), NODE_NAME, PARAMETERS, {"renderer": "ground_truth"})
    simulator = build_simulator(params)
    simulator.reset()
    tour, clearance, distance_to_start, scan = Tour(), [], [], None
    dt = 1.0 / params["rate"]
    for k in range(int(120 / dt)):
        forward, yaw_rate = tour.command(simulator.base.pose, scan)
        simulator.base.command(forward, 0.0, yaw_rate, stamp=k * dt)
        frame = simulator.step(dt, (k + 1) * dt)
        scan = RangeScan.from_depth(frame.result.depth, simulator.camera.K, simulator.mount.base_to_optical,
                                    simulator.camera.hfov)
        pose = frame.pose
        clearance.append(simulator.renderer.nearest_surface(pose.x, pose.y, 0.05, 1.0))
        distance_to_start.append(math.hypot(pose.x, pose.y))
    assert min(clearance) >= 0.4
    at_start = np.asarray(distance_to_start) < 0.15
    laps = int(np.sum(at_start[1:] & ~at_start[:-1]))
    assert laps >= 6  # a lap takes about 16 s
    assert max(distance_to_start) < 2.1  # it goes round the loop, not off elsewhere


@pytest.mark.parametrize("start", [PlanarPose(0.0, 0.0, 0.0), PlanarPose(3.0, -2.0, 2.5)])
def test_commands_are_relative_to_where_the_tour_starts(start):
    """The same relative poses give the same commands whatever the start: the loop is the robot's."""
    relative = [PlanarPose(0.0, 0.0, 0.0), PlanarPose(0.5, 0.02, 0.05), PlanarPose(1.95, 0.0, 0.0),
                PlanarPose(1.95, 0.0, 2.4), PlanarPose(1.2, 0.7, 2.4)]
    reference, tour = Tour(), Tour()
    for pose in relative:
        absolute = start.matrix() @ pose.matrix()
        moved = PlanarPose(float(absolute[0, 3]), float(absolute[1, 3]), math.atan2(absolute[1, 0], absolute[0, 0]))
        assert tour.command(moved) == pytest.approx(reference.command(pose), abs=1e-9)


def test_commands_turn_in_place_when_facing_away_and_stay_within_limits():
    tour = Tour()
    assert tour.command(PlanarPose()) == (pytest.approx(SPEED), pytest.approx(0.0))  # first corner dead ahead
    forward, yaw_rate = tour.command(PlanarPose(0.0, 0.0, math.pi / 2))  # facing left of it
    assert forward == 0.0 and yaw_rate == -MAX_YAW_RATE
    forward, _ = tour.command(PlanarPose(1.8, 0.0, 0.0))  # slowing down before the corner
    assert 0.0 < forward < SPEED
    forward, yaw_rate = tour.command(PlanarPose(1.95, 0.0, 0.0))  # corner reached: the next one is behind-left
    assert forward == 0.0 and yaw_rate == MAX_YAW_RATE


def test_a_tour_needs_a_loop():
    with pytest.raises(ValueError, match="two waypoints"):
        Tour(((1.0, 0.0),))


def wall_ahead(distance: float) -> RangeScan:
    """A scan of a wall across the robot's path, ``distance`` m ahead, seen over +-45 degrees."""
    bearings = np.radians(np.arange(-45.0, 45.5, 1.0))
    return RangeScan(bearings, distance / np.cos(bearings))


def test_a_leg_the_scan_shows_blocked_is_given_up_for_the_next_corner():
    """The imagined world may put a wall on a leg of the loop: the tour holds short of it and, once
    ``BLOCKED_SCANS`` scans in a row show it, turns to the next corner instead of driving through; a blip in one
    scan, a wall beyond the corner, or a clear scan change nothing."""
    blocked = Tour()
    for _ in range(BLOCKED_SCANS - 1):
        assert blocked.command(PlanarPose(), wall_ahead(STOP_DISTANCE - 0.1)) == (0.0, 0.0)  # holds
        assert blocked.target == 0
    forward, yaw_rate = blocked.command(PlanarPose(), wall_ahead(STOP_DISTANCE - 0.1))
    assert forward == 0.0 and yaw_rate > 0  # the next corner, (0.53, 1.35), is to the left
    assert blocked.target == 1
    forward, _ = blocked.command(PlanarPose(0.0, 0.0, math.atan2(1.35, 0.53)), RangeScan(np.zeros(0), np.zeros(0)))
    assert forward > 0  # facing the next corner with nothing in the way: on it goes

    blip, wall = Tour(), wall_ahead(STOP_DISTANCE - 0.1)
    assert blip.command(PlanarPose(), wall) == (0.0, 0.0)
    assert blip.command(PlanarPose(), wall) == (0.0, 0.0)  # the same scan again is not a second sighting
    assert blip.command(PlanarPose(), wall_ahead(5.0)) == (pytest.approx(SPEED), 0.0) and blip.target == 0

    clear = Tour()
    assert clear.command(PlanarPose(), wall_ahead(5.0)) == clear.command(PlanarPose()) == (pytest.approx(SPEED), 0.0)
    near_corner = Tour()  # 0.15 m short of the first corner, a wall 0.45 m ahead: beyond the corner, not blocking
    near_corner.command(PlanarPose())  # anchors the loop at the origin
    for _ in range(BLOCKED_SCANS):
        forward, _ = near_corner.command(PlanarPose(1.85, 0.0, 0.0), wall_ahead(0.45))
    assert forward > 0 and near_corner.target == 0


def test_free_ahead_is_the_nearest_point_in_the_robots_corridor():
    scan = RangeScan(np.array([0.0, 0.5, -0.3, 1.2, 0.1]), np.array([2.0, 0.5, np.nan, 0.3, np.inf]))
    # 2 m straight ahead; 0.5 m at 0.5 rad is 0.24 m to the side (inside), 0.44 m ahead; the one at 1.2 rad
    # is 0.28 m to the side (outside); NaN and inf are no points.
    assert scan.free_ahead(CORRIDOR_HALF_WIDTH) == pytest.approx(0.5 * math.cos(0.5))
    assert scan.free_ahead(0.1) == pytest.approx(2.0)
    assert RangeScan(np.array([math.pi]), np.array([0.2])).free_ahead(CORRIDOR_HALF_WIDTH) == math.inf  # behind
