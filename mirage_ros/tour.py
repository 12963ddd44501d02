"""The demo tour: a closed loop of waypoints, driven by following odometry. ``make run`` drives the node
with it over ``cmd_vel`` and ``mirage-rollout`` uses it when given no other input.

The loop is steered from the robot's pose, not timed: a timed (open-loop) sequence of commands drifts
a little each lap and, in a room, ends up driving through a wall, where any camera, real or imagined,
sees nothing but wall. Steered, every lap retraces the first, so later laps revisit what the first
one showed.
"""

from __future__ import annotations

import math

import numpy as np

from mirage_ros.kinematics import PlanarPose, wrap_angle

#: Corners of the loop (x, y metres) in the frame of the pose where the tour starts (x forward, y left),
#: visited in order and then again from the first. With the default world and start (``config/sim.yaml``)
#: this is a triangle through the free space of the start room, at least 0.4 m from any wall or object.
WAYPOINTS = ((2.0, 0.0), (0.53, 1.35), (0.0, 0.0))
#: Forward speed on the legs (m/s) and the largest yaw rate used (rad/s).
SPEED = 0.5
MAX_YAW_RATE = 1.0
#: Heading error (rad) above which the robot turns in place before driving on.
TURN_IN_PLACE = 0.25
#: Distance (m) at which a corner counts as reached.
REACHED = 0.1


class Tour:
    """Commands that take a robot around ``WAYPOINTS``, anchored at the first pose it is given.

    ``command(pose)`` is a small pursuit controller: turn towards the next corner (in place while the
    heading is off by more than ``TURN_IN_PLACE``), drive at ``SPEED``, slowing down on the last half
    metre; a reached corner hands over to the next. Deterministic: equal poses give equal commands.
    """

    def __init__(self, waypoints: tuple[tuple[float, float], ...] = WAYPOINTS) -> None:
        if len(waypoints) < 2:
            raise ValueError("a tour needs at least two waypoints")
        self.waypoints = np.asarray(waypoints, dtype=np.float64)
        self.target = 0
        self._corners: np.ndarray | None = None  # the waypoints in odom, once anchored

    def command(self, pose: PlanarPose) -> tuple[float, float]:
        """Forward speed (m/s) and yaw rate (rad/s) to send from ``pose`` (base_link in odom)."""
        if self._corners is None:
            start = pose.matrix()
            self._corners = self.waypoints @ start[:2, :2].T + start[:2, 3]
        for _ in range(len(self.waypoints)):
            dx, dy = self._corners[self.target, 0] - pose.x, self._corners[self.target, 1] - pose.y
            distance = math.hypot(dx, dy)
            if distance > REACHED:
                break
            self.target = (self.target + 1) % len(self.waypoints)
        error = wrap_angle(math.atan2(dy, dx) - pose.yaw)
        yaw_rate = max(-MAX_YAW_RATE, min(MAX_YAW_RATE, 2.0 * error))
        if abs(error) > TURN_IN_PLACE:
            return 0.0, yaw_rate
        return SPEED * min(1.0, distance / 0.5 + 0.2), yaw_rate
