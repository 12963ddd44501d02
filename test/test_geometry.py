import math

import numpy as np
import pytest

from mirage_ros.geometry import (OPTICAL_TO_CAMERA_LINK, invert_transform, matrix_to_quaternion,
                                 planar_pose_to_transform, quaternion_to_matrix, transform_from_xyz_rpy,
                                 validate_transform, yaw_of)


def test_optical_frame_axes_follow_rep103():
    # Optical z (forward) is camera_link x, optical x (right) is -y, optical y (down) is -z.
    rotation = OPTICAL_TO_CAMERA_LINK[:3, :3]
    np.testing.assert_allclose(rotation @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rotation @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(rotation @ [0, 1, 0], [0, 0, -1], atol=1e-12)


def test_quaternion_round_trip_and_ros_order():
    rotation = transform_from_xyz_rpy((0, 0, 0), (0.1, -0.2, 0.3))[:3, :3]
    q = matrix_to_quaternion(rotation)
    np.testing.assert_allclose(quaternion_to_matrix(q), rotation, atol=1e-12)
    # 90 degrees about z is (x, y, z, w) = (0, 0, sin 45, cos 45) in ROS order.
    np.testing.assert_allclose(matrix_to_quaternion(planar_pose_to_transform(0, 0, math.pi / 2)[:3, :3]),
                               [0, 0, math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)


@pytest.mark.parametrize("q", [(0, 0, 0, 2.0), (0, 0, 0, 0), (math.nan, 0, 0, 1), (0, 0, math.inf, 1)])
def test_bad_quaternions_are_rejected(q):
    with pytest.raises(ValueError, match="quaternion"):
        quaternion_to_matrix(q)


def test_invert_and_yaw():
    pose = transform_from_xyz_rpy((1, 2, 3), (0, 0, 0.7))
    np.testing.assert_allclose(pose @ invert_transform(pose), np.eye(4), atol=1e-12)
    assert yaw_of(pose[:3, :3]) == pytest.approx(0.7)


def test_validate_transform_rejects_non_rigid_and_non_finite():
    pose = np.eye(4)
    assert validate_transform(pose).shape == (4, 4)
    for bad, message in ((np.diag([2.0, 1, 1, 1]), "orthonormal"), (np.diag([-1.0, 1, 1, 1]), "right-handed"),
                         (np.full((4, 4), np.nan), "NaN"), (np.eye(3), "shape")):
        with pytest.raises(ValueError, match=message):
            validate_transform(bad, "cam_to_world")
