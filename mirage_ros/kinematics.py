"""Planar robot base: integrates velocity commands the way a real mobile base would respond.

Commands are validated (non-finite or absurd values raise), clamped to velocity limits, reached
through acceleration limits, and dropped after ``command_timeout`` so a silent controller stops the
robot. Integration is exact for constant body twists (motion along circular arcs), and uses the mean
of the velocities at both ends of a step, so a straight acceleration ramp is integrated exactly too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mirage_ros.geometry import planar_pose_to_transform

DRIVES = ("diff_drive", "holonomic")

#: A command beyond this multiple of the velocity limit is treated as corrupt input, not clamped.
ABSURD_COMMAND_FACTOR = 100.0


@dataclass(frozen=True)
class BaseLimits:
    """Velocity (m/s, rad/s) and acceleration (m/s^2, rad/s^2) limits of the base."""

    max_linear_velocity: float = 1.0
    max_angular_velocity: float = 1.5
    max_linear_acceleration: float = 2.0
    max_angular_acceleration: float = 4.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value}")


@dataclass(frozen=True)
class PlanarPose:
    """Pose of ``base_link`` in the odometry frame: position (m) and heading (rad, CCW from +x)."""

    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.x, self.y, self.yaw)):
            raise ValueError(f"pose must be finite, got ({self.x}, {self.y}, {self.yaw})")

    def matrix(self, z: float = 0.0) -> np.ndarray:
        """``base_link -> odom`` as a 4x4 pose."""
        return planar_pose_to_transform(self.x, self.y, self.yaw, z)


@dataclass(frozen=True)
class BodyTwist:
    """Velocity in the base frame: forward ``vx``, left ``vy`` (m/s), yaw rate ``wz`` (rad/s)."""

    vx: float = 0.0
    vy: float = 0.0
    wz: float = 0.0


def wrap_angle(angle: float) -> float:
    """``angle`` (rad) in (-pi, pi]."""
    return math.atan2(math.sin(angle), math.cos(angle))


def integrate_body_twist(pose: PlanarPose, twist: BodyTwist, dt: float) -> PlanarPose:
    """Exact pose after moving with a constant body twist for ``dt`` seconds (arc, not Euler step)."""
    dtheta = twist.wz * dt
    if abs(dtheta) < 1e-9:
        # Series expansion of the arc integrals; avoids 0/0 for straight motion.
        s, c = 1.0 - dtheta**2 / 6.0, dtheta / 2.0
    else:
        s, c = math.sin(dtheta) / dtheta, (1.0 - math.cos(dtheta)) / dtheta
    dx_body = (twist.vx * s - twist.vy * c) * dt
    dy_body = (twist.vx * c + twist.vy * s) * dt
    cos_yaw, sin_yaw = math.cos(pose.yaw), math.sin(pose.yaw)
    return PlanarPose(
        pose.x + cos_yaw * dx_body - sin_yaw * dy_body,
        pose.y + sin_yaw * dx_body + cos_yaw * dy_body,
        wrap_angle(pose.yaw + dtheta),
    )


def _approach(current: float, target: float, max_delta: float) -> float:
    return current + max(-max_delta, min(max_delta, target - current))


class PlanarBase:
    """A differential-drive or holonomic base driven by velocity commands."""

    def __init__(self, drive: str = "diff_drive", limits: BaseLimits | None = None,
                 command_timeout: float = 0.5, pose: PlanarPose | None = None) -> None:
        if drive not in DRIVES:
            raise ValueError(f"drive must be one of {DRIVES}, got {drive!r}")
        if not math.isfinite(command_timeout) or command_timeout <= 0:
            raise ValueError(f"command_timeout must be positive, got {command_timeout}")
        self.drive = drive
        self.limits = limits or BaseLimits()
        self.command_timeout = command_timeout
        self.reset(pose or PlanarPose())

    def reset(self, pose: PlanarPose | None = None) -> None:
        """Stand still at ``pose`` (the origin by default) and forget any command."""
        self.pose = pose or PlanarPose()
        self.velocity = BodyTwist()
        self._target = BodyTwist()
        self._command_stamp: float | None = None

    def stop_at(self, pose: PlanarPose) -> None:
        """Put the base back at ``pose`` at rest (a refused motion), keeping the current command."""
        self.pose = pose
        self.velocity = BodyTwist()

    def command(self, vx: float, vy: float, wz: float, stamp: float) -> BodyTwist:
        """Accept a velocity command received at ``stamp`` (seconds); returns the clamped target.

        Raises ``ValueError`` for non-finite or absurd values (more than ``ABSURD_COMMAND_FACTOR``
        times the limit) so a corrupt message never moves the robot. A differential drive cannot
        move sideways: ``vy`` is dropped.
        """
        values = {"vx": vx, "vy": vy, "wz": wz, "stamp": stamp}
        for name, value in values.items():
            if not math.isfinite(value):
                raise ValueError(f"command {name} is not finite: {value}")
        linear_limit, angular_limit = self.limits.max_linear_velocity, self.limits.max_angular_velocity
        for name, value, limit in (("vx", vx, linear_limit), ("vy", vy, linear_limit), ("wz", wz, angular_limit)):
            if abs(value) > ABSURD_COMMAND_FACTOR * limit:
                raise ValueError(f"command {name}={value} is absurd (limit {limit})")
        if self.drive == "diff_drive":
            vy = 0.0
        speed = math.hypot(vx, vy)
        scale = min(1.0, linear_limit / speed) if speed > 0 else 1.0
        self._target = BodyTwist(vx * scale, vy * scale, max(-angular_limit, min(angular_limit, wz)))
        self._command_stamp = stamp
        return self._target

    def command_is_stale(self, now: float) -> bool:
        return self._command_stamp is None or now - self._command_stamp > self.command_timeout

    def step(self, dt: float, now: float) -> PlanarPose:
        """Advance ``dt`` seconds ending at time ``now``; returns the new pose."""
        if not math.isfinite(dt) or dt <= 0:
            raise ValueError(f"dt must be positive and finite, got {dt}")
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        target = BodyTwist() if self.command_is_stale(now) else self._target
        max_dv = self.limits.max_linear_acceleration * dt
        max_dw = self.limits.max_angular_acceleration * dt
        previous = self.velocity
        self.velocity = BodyTwist(
            _approach(previous.vx, target.vx, max_dv),
            _approach(previous.vy, target.vy, max_dv),
            _approach(previous.wz, target.wz, max_dw),
        )
        mean = BodyTwist((previous.vx + self.velocity.vx) / 2, (previous.vy + self.velocity.vy) / 2,
                         (previous.wz + self.velocity.wz) / 2)
        self.pose = integrate_body_twist(self.pose, mean, dt)
        return self.pose
