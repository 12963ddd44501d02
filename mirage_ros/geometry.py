"""Rigid transforms and the REP 103 frame conventions every other module relies on.

All poses are 4x4 homogeneous ``float64`` numpy matrices. A pose named ``a_to_b`` maps points
expressed in frame ``a`` into frame ``b`` (so ``cam_to_world @ [x, y, z, 1]`` takes a point from the
camera frame to the world). Quaternions follow ROS message order ``(x, y, z, w)``; transforms3d uses
``(w, x, y, z)`` internally and that difference stays inside this module.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import transforms3d

#: Tolerance on ``|q| - 1`` under which a quaternion is accepted (and renormalised).
QUATERNION_NORM_TOLERANCE = 1e-3

#: REP 103: camera_link (x forward, y left, z up) -> optical frame (z forward, x right, y down)
#: is roll -pi/2 then yaw -pi/2.
OPTICAL_RPY = (-math.pi / 2.0, 0.0, -math.pi / 2.0)


def _as_finite_array(value: Sequence[float] | np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf: {array.tolist()}")
    return array


def make_transform(rotation: np.ndarray, translation: Sequence[float]) -> np.ndarray:
    """Build a 4x4 pose from a 3x3 rotation and a translation."""
    transform = np.eye(4)
    transform[:3, :3] = _as_finite_array(rotation, (3, 3), "rotation")
    transform[:3, 3] = _as_finite_array(translation, (3,), "translation")
    return transform


def rpy_to_matrix(rpy: Sequence[float]) -> np.ndarray:
    """Roll, pitch, yaw (fixed axes x, y, z, as in URDF and tf2) to a rotation matrix."""
    roll, pitch, yaw = _as_finite_array(rpy, (3,), "rpy")
    return transforms3d.euler.euler2mat(roll, pitch, yaw, "sxyz")


def transform_from_xyz_rpy(xyz: Sequence[float], rpy: Sequence[float]) -> np.ndarray:
    """Pose of a child frame given URDF-style ``xyz`` and ``rpy`` relative to its parent."""
    return make_transform(rpy_to_matrix(rpy), xyz)


def planar_pose_to_transform(x: float, y: float, yaw: float, z: float = 0.0) -> np.ndarray:
    """Pose of a ground robot (REP 103: z up) at ``(x, y)`` heading ``yaw``."""
    return make_transform(rpy_to_matrix((0.0, 0.0, yaw)), (x, y, z))


def quaternion_to_matrix(q_xyzw: Sequence[float], tolerance: float = QUATERNION_NORM_TOLERANCE) -> np.ndarray:
    """Rotation matrix of a ROS-ordered quaternion; rejects non-finite and non-unit input."""
    q = _as_finite_array(q_xyzw, (4,), "quaternion")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > tolerance:
        raise ValueError(f"quaternion {q.tolist()} is not unit length (norm {norm:.6f})")
    x, y, z, w = q / norm
    return transforms3d.quaternions.quat2mat((w, x, y, z))


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """ROS-ordered ``(x, y, z, w)`` quaternion of a rotation matrix, with ``w >= 0``."""
    w, x, y, z = transforms3d.quaternions.mat2quat(_as_finite_array(rotation, (3, 3), "rotation"))
    q = np.array([x, y, z, w])
    return -q if w < 0 else q


def yaw_of(rotation: np.ndarray) -> float:
    """Heading about +z of a rotation (the planar part of a pose)."""
    return math.atan2(rotation[1, 0], rotation[0, 0])


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform without a general matrix inverse."""
    rotation = transform[:3, :3]
    inverse = np.eye(4)
    inverse[:3, :3] = rotation.T
    inverse[:3, 3] = -rotation.T @ transform[:3, 3]
    return inverse


_HOMOGENEOUS_ROW = np.array([0.0, 0.0, 0.0, 1.0])
_IDENTITY3 = np.eye(3)


def validate_transform(transform: np.ndarray | Sequence[Sequence[float]], name: str = "transform",
                       tolerance: float = 1e-4) -> np.ndarray:
    """Return ``transform`` as float64 4x4 or raise ``ValueError`` naming ``name``.

    A pose must be finite, have ``[0, 0, 0, 1]`` as last row and an orthonormal, right-handed
    rotation: anything else would silently shear or mirror the scene.
    """
    array = _as_finite_array(np.asarray(transform, dtype=np.float64), (4, 4), name)
    # Plain max-abs tests: every step validates its poses, and np.allclose costs ten times as much.
    if np.abs(array[3] - _HOMOGENEOUS_ROW).max() > tolerance:
        raise ValueError(f"{name} last row must be [0, 0, 0, 1], got {array[3].tolist()}")
    rotation = array[:3, :3]
    if np.abs(rotation @ rotation.T - _IDENTITY3).max() > tolerance or np.linalg.det(rotation) < 0:
        raise ValueError(f"{name} rotation is not orthonormal and right-handed")
    return array


OPTICAL_TO_CAMERA_LINK = transform_from_xyz_rpy((0.0, 0.0, 0.0), OPTICAL_RPY)
