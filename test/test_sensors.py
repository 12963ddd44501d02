import math

import numpy as np
import pytest
from scenes import box_depth

from mirage_ros.camera import CameraMount, PinholeCamera
from mirage_ros.sensors import ScanConfig, depth_to_points, depth_to_scan


def test_points_back_project_depth():
    camera = PinholeCamera.from_hfov(32, 24, 1.2)
    depth = np.full((24, 32), 2.0, np.float32)
    depth[0, 0] = np.nan
    points = depth_to_points(depth, camera.K)
    assert points.shape == (32 * 24 - 1, 3)
    np.testing.assert_allclose(points[:, 2], 2.0)
    pixels = points @ camera.K.T
    u, v = pixels[:, 0] / pixels[:, 2], pixels[:, 1] / pixels[:, 2]
    np.testing.assert_allclose(u, np.round(u), atol=1e-9)  # pixel centres at integer coordinates
    assert (u.min(), u.max(), v.min(), v.max()) == pytest.approx((0, 31, 0, 23))


def test_scan_of_a_wall_at_known_distance_is_within_one_percent():
    camera = PinholeCamera.from_hfov(128, 96, math.pi / 2)
    mount = CameraMount((0.1, 0.0, 0.5), (0.0, 0.05, 0.0))
    wall = ((3.0, -20.0, -1.0), (4.0, 20.0, 5.0))  # face at x = 3 m in front of the base
    depth = box_depth([wall], mount.camera_to_world(np.eye(4)), camera.K, 96, 128)
    config = ScanConfig(min_height=0.2, max_height=0.8)
    angle_min, angle_max, ranges = depth_to_scan(depth, camera.K, mount.base_to_optical, camera.hfov, config)
    angles = angle_min + np.arange(len(ranges)) * config.angle_increment
    assert angle_min == pytest.approx(-angle_max) and angles[-1] == pytest.approx(angle_max)
    hit = np.isfinite(ranges)
    assert hit.mean() > 0.9
    expected = 3.0 / np.cos(angles[hit])  # distance along each beam to the wall
    assert np.max(np.abs(ranges[hit] - expected) / expected) < 0.01


def test_height_band_and_range_limits():
    camera = PinholeCamera.from_hfov(64, 48, math.pi / 2)
    mount = CameraMount((0.0, 0.0, 0.5), (0.0, 0.0, 0.0))
    wall = ((3.0, -20.0, -1.0), (4.0, 20.0, 5.0))
    depth = box_depth([wall], mount.camera_to_world(np.eye(4)), camera.K, 48, 64)
    _, _, ranges = depth_to_scan(depth, camera.K, mount.base_to_optical, camera.hfov, ScanConfig(range_max=2.5))
    assert np.isinf(ranges).all()  # the wall is beyond range_max
    _, _, ranges = depth_to_scan(depth, camera.K, mount.base_to_optical, camera.hfov,
                                 ScanConfig(min_height=3.0, max_height=4.0))
    assert np.isinf(ranges).all()  # nothing of the wall is seen that high


def test_bad_scan_config():
    with pytest.raises(ValueError):
        ScanConfig(min_height=1.0, max_height=0.5)
