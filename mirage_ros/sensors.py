"""Derived sensors for navigation stacks: a depth image as a point cloud and as a planar laser scan."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mirage_ros.camera import validate_intrinsics


def depth_to_points(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points ``[N,3]`` (optical convention) of every pixel with a valid depth."""
    K = validate_intrinsics(K)
    v, u = np.nonzero(np.isfinite(depth) & (depth > 0))
    z = depth[v, u].astype(np.float64)
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=1)


@dataclass(frozen=True)
class ScanConfig:
    """A horizontal scan in the base frame from the points between ``min_height`` and ``max_height``
    above the base (m), at ``angle_increment`` (rad), with ranges clipped to [range_min, range_max]."""

    min_height: float = 0.1
    max_height: float = 1.0
    range_min: float = 0.1
    range_max: float = 10.0
    angle_increment: float = math.radians(1.0)

    def __post_init__(self) -> None:
        if not (self.min_height < self.max_height and 0 <= self.range_min < self.range_max
                and 0 < self.angle_increment < math.pi):
            raise ValueError(f"invalid scan configuration {self}")


def depth_to_scan(depth: np.ndarray, K: np.ndarray, camera_to_base: np.ndarray, hfov: float,
                  config: ScanConfig = ScanConfig()) -> tuple[float, float, np.ndarray]:
    """``(angle_min, angle_max, ranges)`` of a LaserScan in the base frame synthesised from depth.

    Each beam takes the nearest point of the height band within half an angular increment of its
    direction; beams with no point are ``inf`` (REP 117: nothing detected within range). The scan spans the camera's
    horizontal field of view around its heading.
    """
    return points_to_scan(depth_to_points(depth, K), camera_to_base, hfov, config)


def points_to_scan(points: np.ndarray, camera_to_base: np.ndarray, hfov: float,
                   config: ScanConfig = ScanConfig()) -> tuple[float, float, np.ndarray]:
    """``depth_to_scan`` of the camera-frame points ``depth_to_points`` gave (for a caller that also
    publishes them, so they are computed once)."""
    base = points @ camera_to_base[:3, :3].T + camera_to_base[:3, 3]
    heading = math.atan2(camera_to_base[1, 2], camera_to_base[0, 2])  # optical z projected on the ground
    count = int(math.floor(hfov / config.angle_increment)) + 1
    angle_min = heading - (count - 1) * config.angle_increment / 2
    ranges = np.full(count, np.inf)
    band = (base[:, 2] >= config.min_height) & (base[:, 2] <= config.max_height)
    base = base[band]
    distance = np.hypot(base[:, 0], base[:, 1])
    bearing = np.arctan2(base[:, 1], base[:, 0])
    # Beam i looks along angle_min + i * increment and takes the points within half an increment.
    offset = np.mod(bearing - angle_min + math.pi, 2 * math.pi) - math.pi  # wrapped to [-pi, pi)
    index = np.round(offset / config.angle_increment).astype(int)
    keep = (index >= 0) & (index < count) & (distance >= config.range_min) & (distance <= config.range_max)
    np.minimum.at(ranges, index[keep], distance[keep])
    return angle_min, angle_min + (count - 1) * config.angle_increment, ranges.astype(np.float32)


@dataclass(frozen=True)
class RangeScan:
    """A planar range scan in the base frame (x forward, y left): beam bearings (rad) and ranges (m,
    ``inf`` where nothing was seen), as a ``sensor_msgs/LaserScan`` carries them."""

    bearings: np.ndarray
    ranges: np.ndarray

    @classmethod
    def from_laser(cls, angle_min: float, angle_increment: float, ranges: np.ndarray) -> "RangeScan":
        ranges = np.asarray(ranges, dtype=np.float64)
        return cls(angle_min + angle_increment * np.arange(len(ranges)), ranges)

    @classmethod
    def from_depth(cls, depth: np.ndarray, K: np.ndarray, camera_to_base: np.ndarray, hfov: float,
                   config: ScanConfig = ScanConfig()) -> "RangeScan":
        """The scan ``depth_to_scan`` synthesises (the node's ``scan`` topic) of one depth image."""
        angle_min, _, ranges = depth_to_scan(depth, K, camera_to_base, hfov, config)
        return cls.from_laser(angle_min, config.angle_increment, ranges)

    def free_ahead(self, half_width: float) -> float:
        """How far (m) the robot can drive straight on before a seen point enters its corridor
        (``inf``: nothing seen in it). NaN ranges are ignored."""
        with np.errstate(invalid="ignore"):
            x, y = self.ranges * np.cos(self.bearings), self.ranges * np.sin(self.bearings)
            in_corridor = np.isfinite(x) & np.isfinite(y) & (x > 0) & (np.abs(y) <= half_width)
        return float(x[in_corridor].min()) if in_corridor.any() else math.inf
