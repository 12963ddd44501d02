import math

import numpy as np
import pytest

from mirage_ros.camera import CameraMount, PinholeCamera, scale_intrinsics, validate_intrinsics


def test_intrinsics_from_horizontal_fov():
    camera = PinholeCamera.from_hfov(128, 96, math.pi / 2)
    assert camera.fx == pytest.approx(64.0) and camera.fy == pytest.approx(64.0)
    assert (camera.cx, camera.cy) == (63.5, 47.5)
    assert camera.hfov == pytest.approx(math.pi / 2)
    assert camera.vfov == pytest.approx(2 * math.atan(48 / 64))


def test_scaling_keeps_rays():
    # The ray through an image pixel centre must hit the same point on the scaled grid.
    camera = PinholeCamera.from_hfov(128, 128, 1.2)
    latent = camera.resized(16, 16)
    # Latent token (0, 0) covers image pixels 0..7, whose centre is at image coordinate 3.5.
    ray_image = np.linalg.solve(camera.K, [3.5, 3.5, 1.0])
    ray_latent = np.linalg.solve(latent.K, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(ray_image, ray_latent, atol=1e-12)
    np.testing.assert_allclose(scale_intrinsics(latent.K, (16, 16), (128, 128)), camera.K, atol=1e-12)


def test_camera_info_fields_follow_message_spec():
    fields = PinholeCamera.from_hfov(64, 48, 1.0).camera_info_fields()
    assert fields["distortion_model"] == "plumb_bob" and fields["d"] == [0.0] * 5
    K = np.array(fields["k"]).reshape(3, 3)
    P = np.array(fields["p"]).reshape(3, 4)
    np.testing.assert_array_equal(np.array(fields["r"]).reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(P[:, :3], K)
    np.testing.assert_array_equal(P[:, 3], 0.0)


def test_mount_composes_base_mount_and_optical():
    mount = CameraMount(xyz=(0.2, 0.0, 0.5), rpy=(0.0, 0.3, 0.0))  # pitched down 0.3 rad
    base_to_world = np.eye(4)
    base_to_world[:3, 3] = (1.0, 2.0, 0.0)
    cam_to_world = mount.camera_to_world(base_to_world)
    np.testing.assert_allclose(cam_to_world[:3, 3], (1.2, 2.0, 0.5))
    forward = cam_to_world[:3, :3] @ [0, 0, 1]  # optical z
    np.testing.assert_allclose(forward, (math.cos(0.3), 0.0, -math.sin(0.3)), atol=1e-12)
    right = cam_to_world[:3, :3] @ [1, 0, 0]  # optical x is the robot's right (-y)
    np.testing.assert_allclose(right, (0, -1, 0), atol=1e-12)


@pytest.mark.parametrize("K, message", [
    (np.eye(2), "3x3"), (np.diag([0.0, 1.0, 1.0]), "focal"), (np.full((3, 3), np.nan), "NaN"),
    (np.array([[1.0, 0, 0], [0, 1, 0], [0, 1, 1]]), "last row")])
def test_bad_intrinsics(K, message):
    with pytest.raises(ValueError, match=message):
        validate_intrinsics(K)


def test_bad_camera_arguments():
    with pytest.raises(ValueError, match="hfov"):
        PinholeCamera.from_hfov(64, 64, math.pi)
    with pytest.raises(ValueError, match="size"):
        PinholeCamera.from_hfov(0, 64, 1.0)
