"""Procedural worlds, the ground-truth renderer and trajectories (issue: procedural worlds)."""

import math

import numpy as np
import pytest

from mirage_ros.camera import CameraMount, PinholeCamera
from mirage_ros.geometry import planar_pose_to_transform
from mirage_ros.worlds import KINDS, World, generate_trajectory, generate_world
from mirage_ros.worlds.renderer import GroundTruthRenderer

CAMERA = PinholeCamera.from_hfov(64, 48, math.pi / 2)


def test_same_seed_same_world_and_render_different_seed_different_world():
    a, b = generate_world(7), generate_world(7)
    assert a.mjcf == b.mjcf and a.footprints == b.footprints
    assert generate_world(8).mjcf != a.mjcf
    pose = CameraMount().camera_to_world(planar_pose_to_transform(1.0, 1.0, 0.3))
    with GroundTruthRenderer(a, 64, 48) as first, GroundTruthRenderer(b, 64, 48) as second:
        rgb_a, depth_a = first.render(pose, CAMERA.K)
        rgb_b, depth_b = second.render(pose, CAMERA.K)
    assert rgb_a.tobytes() == rgb_b.tobytes() and depth_a.tobytes() == depth_b.tobytes()
    assert rgb_a.dtype == np.uint8 and rgb_a.shape == (48, 64, 3) and depth_a.dtype == np.float32


def _optical_looking(position, forward, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """cam_to_world of an optical frame at ``position`` looking along ``forward``."""
    z = np.asarray(forward, float) / np.linalg.norm(forward)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = position
    return pose


def test_depth_is_exact_against_analytic_geometry():
    world = generate_world(3)
    camera = PinholeCamera.from_hfov(65, 49, 1.2)  # odd sizes: a pixel centre on the optical axis
    with GroundTruthRenderer(world, 65, 49) as renderer:
        # Facing the west outer wall (inner face x = 0) from x = 0.8: z-depth 0.8 everywhere on it.
        _, depth = renderer.render(_optical_looking((0.8, 0.3, 1.2), (-1, 0, 0)), camera.K)
        centre = depth[20:29, 28:37]
        assert np.max(np.abs(centre - 0.8) / 0.8) < 1e-4
        # A floor pixel: camera 1 m up, pitched down 45 degrees, centre ray hits the floor at distance
        # sqrt(2) along the ray, i.e. z-depth sqrt(2); the row below sees the floor closer.
        pose = _optical_looking((0.8, 0.6, 1.0), (1.0, 0.0, -1.0))
        _, depth = renderer.render(pose, camera.K)
        assert abs(depth[24, 32] - math.sqrt(2)) / math.sqrt(2) < 1e-4
        v = 40
        ray = np.linalg.solve(camera.K, [32, v, 1.0])
        direction = pose[:3, :3] @ ray
        expected = -pose[2, 3] / direction[2]  # ray parameter with z-component scaled: z-depth = t * 1
        assert abs(depth[v, 32] - expected) / expected < 1e-4


def test_trajectories_stay_in_free_space_for_100_seeds():
    radius = 0.2
    for seed in range(100):
        world = generate_world(seed)
        kind = KINDS[seed % len(KINDS)]
        trajectory = generate_trajectory(world, kind, 40, seed)
        assert trajectory.cam_to_world.shape == (40, 4, 4)
        x, y = trajectory.base_poses[:, 0], trajectory.base_poses[:, 1]
        assert not world.occupied(x, y, radius).any(), f"seed {seed} {kind} enters an obstacle"
        cameras = trajectory.cam_to_world[:, :3, 3]
        assert not world.occupied(cameras[:, 0], cameras[:, 1]).any(), f"seed {seed}: camera inside geometry"


def test_out_and_back_returns_through_identical_poses():
    trajectory = generate_trajectory(generate_world(4), "out_and_back", 30, 4)
    outgoing, returning = trajectory.cam_to_world[:16], trajectory.cam_to_world[16:]
    for pose in returning:
        assert min(np.abs(pose - other).max() for other in outgoing) == 0.0


def test_save_and_load(tmp_path):
    world = generate_world(11)
    path = tmp_path / "world.xml"
    world.save(path)
    loaded = World.load(path)
    assert loaded.seed == 11 and loaded.mjcf == world.mjcf and loaded.size == world.size
    assert len(loaded.footprints) == len(world.footprints)
    points = np.random.default_rng(0).uniform(0, 6, (2, 500))
    np.testing.assert_array_equal(loaded.occupied(*points, 0.1), world.occupied(*points, 0.1))


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        World.load(tmp_path / "missing.xml")
    (tmp_path / "junk.xml").write_text("<mujoco><worldbody/></mujoco>")
    with pytest.raises(ValueError, match="not a mirage_ros world"):
        World.load(tmp_path / "junk.xml")
    (tmp_path / "broken.xml").write_text("<mujoco><worldbody>")
    with pytest.raises(ValueError, match="not a valid MJCF"):
        World.load(tmp_path / "broken.xml")
    with pytest.raises(ValueError, match="seed"):
        generate_world(-1)
    with GroundTruthRenderer(generate_world(1), 64, 48) as renderer:
        pose = np.eye(4)
        pose[0, 3] = np.nan
        with pytest.raises(ValueError, match="cam_to_world"):
            renderer.render(pose, CAMERA.K)
        with pytest.raises(ValueError, match="principal point"):
            renderer.render(np.eye(4), PinholeCamera.from_hfov(128, 128, 1.0).K)
    with pytest.raises(ValueError, match="kind"):
        generate_trajectory(generate_world(1), "teleport", 10, 0)
