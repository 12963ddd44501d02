"""The demo tour: a closed loop of waypoints, driven by following odometry and kept off the obstacles
the simulated camera shows. ``make run`` drives the node with it over ``cmd_vel`` (reading ``odom`` and
``scan``) and ``mirage-rollout`` uses it when given no other input.

The loop is steered from the robot's pose, not timed: a timed (open-loop) sequence of commands drifts
a little each lap and, in a room, ends up driving through a wall, where any camera, real or imagined,
sees nothing but wall. Steered, every lap retraces the first, so later laps revisit what the first
one showed. The imagined world need not be the true one, though: where the model has put a wall or an
object on a leg of the loop, the tour does what a planner reading the scan would do, and heads for
the next corner instead of driving through it.
"""

from __future__ import annotations

import math

import numpy as np

from mirage_ros.kinematics import PlanarPose, wrap_angle
from mirage_ros.sensors import RangeScan

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
#: Half the width (m) of the corridor kept free ahead of the robot (its footprint with a margin).
CORRIDOR_HALF_WIDTH = 0.25
#: Free distance ahead (m) below which a leg counts as blocked, unless the obstacle lies beyond its corner.
STOP_DISTANCE = 0.6
#: Consecutive scans that must show a leg blocked before it is given up (the robot holds meanwhile): an
#: imagined obstacle stays, a floater of one generated frame does not.
BLOCKED_SCANS = 3


class Tour:
    """Commands that take a robot around ``WAYPOINTS``, anchored at the first pose it is given.

    ``command(pose, scan)`` is a small pursuit controller: turn towards the next corner (in place while
    the heading is off by more than ``TURN_IN_PLACE``), drive at ``SPEED``, slowing down on the last half
    metre; a reached corner hands over to the next, and so does a leg that ``BLOCKED_SCANS`` consecutive
    scans show blocked (less than ``STOP_DISTANCE`` free ahead, short of the corner). Deterministic: equal
    inputs give equal commands.
    """

    def __init__(self, waypoints: tuple[tuple[float, float], ...] = WAYPOINTS) -> None:
        if len(waypoints) < 2:
            raise ValueError("a tour needs at least two waypoints")
        self.waypoints = np.asarray(waypoints, dtype=np.float64)
        self.target = 0
        self._corners: np.ndarray | None = None  # the waypoints in odom, once anchored
        self._last_scan: RangeScan | None = None
        self._blocked_scans = 0  # consecutive scans that showed the current leg blocked

    def command(self, pose: PlanarPose, scan: RangeScan | None = None) -> tuple[float, float]:
        """Forward speed (m/s) and yaw rate (rad/s) to send from ``pose`` (base_link in odom), given the
        latest ``scan`` (none: the way is taken to be free)."""
        if self._corners is None:
            start = pose.matrix()
            self._corners = self.waypoints @ start[:2, :2].T + start[:2, 3]
        distance, error = self._next_corner(pose)
        if scan is not None and scan is not self._last_scan:
            self._last_scan = scan
            free = scan.free_ahead(CORRIDOR_HALF_WIDTH)
            blocked = abs(error) <= TURN_IN_PLACE and free < STOP_DISTANCE and free < distance
            self._blocked_scans = self._blocked_scans + 1 if blocked else 0
            if self._blocked_scans >= BLOCKED_SCANS:  # give the leg up: on to the corner after
                self._blocked_scans = 0
                self.target = (self.target + 1) % len(self.waypoints)
                distance, error = self._next_corner(pose)
        yaw_rate = max(-MAX_YAW_RATE, min(MAX_YAW_RATE, 2.0 * error))
        if abs(error) > TURN_IN_PLACE or self._blocked_scans:  # turning, or held until the next scans tell
            return 0.0, yaw_rate
        return SPEED * min(1.0, distance / 0.5 + 0.2), yaw_rate

    def _next_corner(self, pose: PlanarPose) -> tuple[float, float]:
        """Distance (m) and heading error (rad) to the corner the robot heads for; a reached corner hands over."""
        for _ in range(len(self.waypoints)):
            dx, dy = self._corners[self.target, 0] - pose.x, self._corners[self.target, 1] - pose.y
            if math.hypot(dx, dy) > REACHED:
                break
            self.target = (self.target + 1) % len(self.waypoints)
        return math.hypot(dx, dy), wrap_angle(math.atan2(dy, dx) - pose.yaw)
