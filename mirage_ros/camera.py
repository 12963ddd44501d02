"""Pinhole camera model, intrinsics scaling and the camera mount on the robot base.

Pixel convention (used by every module of the package, and the one ROS ``CameraInfo`` and OpenCV use):
pixel ``(u, v)`` has its centre at integer coordinates ``(u, v)``; the image spans
``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. A centred principal point is therefore ``((W-1)/2, (H-1)/2)``,
and resampling a ``H x W`` grid to ``h x w`` maps ``c -> (c + 0.5) * s - 0.5`` with ``s = w / W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from mirage_ros.geometry import OPTICAL_TO_CAMERA_LINK, transform_from_xyz_rpy, validate_transform


def validate_intrinsics(K: np.ndarray | Sequence[Sequence[float]], name: str = "K") -> np.ndarray:
    """Return ``K`` as float64 3x3 or raise ``ValueError``: finite, positive focal lengths, no skew row."""
    array = np.asarray(K, dtype=np.float64)
    if array.shape != (3, 3):
        raise ValueError(f"{name} must be 3x3, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    if array[0, 0] <= 0 or array[1, 1] <= 0:
        raise ValueError(f"{name} focal lengths must be positive, got fx={array[0, 0]}, fy={array[1, 1]}")
    if np.abs(array[2] - (0.0, 0.0, 1.0)).max() > 1e-6 or array[1, 0] != 0:  # (np.allclose: 10x the time)
        raise ValueError(f"{name} must be upper triangular with last row [0, 0, 1], got {array.tolist()}")
    return array


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of the same camera sampled on a ``to_hw`` grid instead of ``from_hw``.

    Used to move ``K`` from image resolution to the latent grid: focal lengths scale by the size
    ratio, principal points keep pointing at the same ray under the pixel-centre convention above.
    """
    K = validate_intrinsics(K)
    (H, W), (h, w) = from_hw, to_hw
    if min(H, W, h, w) <= 0:
        raise ValueError(f"grid sizes must be positive, got {from_hw} -> {to_hw}")
    sx, sy = w / W, h / H
    scaled = K.copy()
    scaled[0, 0] *= sx
    scaled[0, 1] *= sx
    scaled[1, 1] *= sy
    scaled[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    scaled[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return scaled


@dataclass(frozen=True)
class PinholeCamera:
    """An undistorted pinhole camera of ``width x height`` pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        validate_intrinsics(self.K)

    @classmethod
    def from_hfov(cls, width: int, height: int, hfov: float) -> "PinholeCamera":
        """Square pixels, centred principal point, horizontal field of view ``hfov`` in radians."""
        if not math.isfinite(hfov) or not 0.0 < hfov < math.pi:
            raise ValueError(f"hfov must be in (0, pi) radians, got {hfov}")
        focal = (width / 2.0) / math.tan(hfov / 2.0)
        return cls(int(width), int(height), focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)

    @classmethod
    def from_matrix(cls, K: np.ndarray, width: int, height: int) -> "PinholeCamera":
        K = validate_intrinsics(K)
        return cls(int(width), int(height), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def hfov(self) -> float:
        return 2.0 * math.atan(self.width / 2.0 / self.fx)

    @property
    def vfov(self) -> float:
        return 2.0 * math.atan(self.height / 2.0 / self.fy)

    def resized(self, width: int, height: int) -> "PinholeCamera":
        """The same camera sampled at another resolution (e.g. the latent grid)."""
        return PinholeCamera.from_matrix(
            scale_intrinsics(self.K, (self.height, self.width), (height, width)), width, height)

    def camera_info_fields(self) -> dict:
        """``sensor_msgs/CameraInfo`` content (ROS-free): plumb_bob, zero distortion, R = I, P = [K|0]."""
        projection = np.zeros((3, 4))
        projection[:, :3] = self.K
        return {
            "width": self.width,
            "height": self.height,
            "distortion_model": "plumb_bob",
            "d": [0.0] * 5,
            "k": self.K.reshape(-1).tolist(),
            "r": np.eye(3).reshape(-1).tolist(),
            "p": projection.reshape(-1).tolist(),
        }


@dataclass(frozen=True)
class CameraMount:
    """Where ``camera_link`` sits on ``base_link`` (URDF-style ``xyz`` metres and ``rpy`` radians)."""

    xyz: tuple[float, float, float] = (0.0, 0.0, 0.5)
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    base_to_camera_link: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_to_camera_link", transform_from_xyz_rpy(self.xyz, self.rpy))

    @property
    def base_to_optical(self) -> np.ndarray:
        """``base_link -> camera_optical_frame``: mount followed by the REP 103 optical rotation."""
        return self.base_to_camera_link @ OPTICAL_TO_CAMERA_LINK

    def camera_to_world(self, base_to_world: np.ndarray) -> np.ndarray:
        """Camera-to-world pose (optical convention) that the memory and the renderer use."""
        return validate_transform(base_to_world, "base_to_world") @ self.base_to_optical
