"""The demo tour: steered around its loop from the pose, it stays clear of the default world's walls
lap after lap, and the loop is anchored wherever the robot starts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mirage_ros.kinematics import PlanarPose
from mirage_ros.ros.parameters import default_config, parameters_from_yaml
from mirage_ros.ros.sim_node import NODE_NAME, PARAMETERS
from mirage_ros.simulator import build_simulator
from mirage_ros.tour import MAX_YAW_RATE, SPEED, Tour


def test_tour_laps_the_default_world_without_touching_a_wall():
    """In the true default world (the one ``make run`` starts in), two minutes of the tour: every pose
    at least 0.4 m from any wall or object, and the robot back at its start every lap."""
    params = parameters_from_yaml(default_config(), NODE_NAME, PARAMETERS, {"renderer": "ground_truth"})
    simulator = build_simulator(params)
    simulator.reset()
    tour, clearance, distance_to_start = Tour(), [], []
    dt = 1.0 / params["rate"]
    for k in range(int(120 / dt)):
        forward, yaw_rate = tour.command(simulator.base.pose)
        simulator.base.command(forward, 0.0, yaw_rate, stamp=k * dt)
        pose = simulator.base.step(dt, (k + 1) * dt)
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
