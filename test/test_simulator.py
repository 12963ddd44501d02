"""The ROS-free simulator core: starts, stepping, collisions with remembered geometry."""

import math

import numpy as np
import pytest
from scenes import box_depth

from mirage_ros.camera import CameraMount, PinholeCamera
from mirage_ros.kinematics import BaseLimits, PlanarBase, PlanarPose
from mirage_ros.model.world_model import WorldModel
from mirage_ros.simulator import CollisionConfig, ModelRenderer, Simulator, StartSpec, load_observation

CAMERA = PinholeCamera.from_hfov(64, 64, math.pi / 2)
MOUNT = CameraMount((0.0, 0.0, 0.5), (0.0, 0.0, 0.0))
WALL = ((2.0, -10.0, -1.0), (3.0, 10.0, 3.0))  # face at x = 2 m ahead of the start


def wall_start() -> StartSpec:
    depth = box_depth([WALL], MOUNT.camera_to_world(np.eye(4)), CAMERA.K, 64, 64)
    rgb = np.full((64, 64, 3), 128, np.uint8)
    return StartSpec(rgb=rgb, depth=depth, K=tuple(CAMERA.K.reshape(-1)))


class ReadOnlyMemory:
    """A memory that keeps what it holds and ignores every later write (any ``SpatialMemory`` will do
    for the world model): the untrained test model would write random geometry back."""

    def __init__(self, memory) -> None:
        self.inner = memory

    def write_frame(self, frame, valid) -> int:
        return 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def simulator(tiny_checkpoint, radius: float) -> Simulator:
    model = WorldModel.from_pretrained(tiny_checkpoint)
    base = PlanarBase("diff_drive", BaseLimits(max_linear_velocity=1.0, max_linear_acceleration=10.0),
                      command_timeout=10.0)
    sim = Simulator(ModelRenderer(model), CAMERA, MOUNT, base, wall_start(), collision=CollisionConfig(radius=radius))
    sim.reset()
    model.memory = ReadOnlyMemory(model.memory)  # keep only the remembered wall
    return sim


def test_driving_at_a_remembered_wall_stops_short_by_the_footprint_radius(tiny_checkpoint):
    sim = simulator(tiny_checkpoint, radius=0.4)
    contact = False
    for k in range(60):
        sim.base.command(0.5, 0.0, 0.0, stamp=k * 0.1)
        frame = sim.step(0.1, (k + 1) * 0.1)
        contact |= frame.in_contact
    assert contact and frame.in_contact and frame.velocity.vx == 0.0
    gap = 2.0 - frame.pose.x
    assert 0.4 <= gap < 0.4 + 0.06  # stopped within one step (0.05 m) of the radius
    # Backing away is allowed.
    sim.base.command(-0.5, 0.0, 0.0, stamp=6.0)
    frame = sim.step(0.1, 6.1)
    assert not frame.in_contact and frame.pose.x < 2.0 - gap


def test_without_collision_checking_the_robot_drives_through(tiny_checkpoint):
    sim = simulator(tiny_checkpoint, radius=0.0)
    for k in range(60):
        sim.base.command(0.5, 0.0, 0.0, stamp=k * 0.1)
        frame = sim.step(0.1, (k + 1) * 0.1)
    assert frame.pose.x > 2.0 and not frame.in_contact


def test_observation_files_and_bad_starts(tmp_path, tiny_checkpoint):
    from PIL import Image

    depth = box_depth([WALL], MOUNT.camera_to_world(np.eye(4)), CAMERA.K, 64, 64)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray((depth * 1000).astype(np.uint16)).save(tmp_path / "depth.png")
    rgb, loaded = load_observation(tmp_path / "rgb.png", tmp_path / "depth.png")
    np.testing.assert_allclose(loaded, depth, atol=1e-3)
    model = WorldModel.from_pretrained(tiny_checkpoint)
    sim = Simulator(ModelRenderer(model), CAMERA, MOUNT, PlanarBase(), StartSpec(rgb_path=str(tmp_path / "rgb.png"),
                                                                  depth_path=str(tmp_path / "depth.png")))
    sim.reset()
    assert sim.step(0.1, 0.1).result.rgb.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="not found"):
        load_observation(tmp_path / "missing.png", tmp_path / "depth.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "depth8.png")
    with pytest.raises(ValueError, match="16-bit"):
        load_observation(tmp_path / "rgb.png", tmp_path / "depth8.png")
    with pytest.raises(ValueError, match="both"):
        Simulator(ModelRenderer(model), CAMERA, MOUNT, PlanarBase(), StartSpec(rgb_path="x.png"))
    with pytest.raises(ValueError, match="generates"):
        Simulator(ModelRenderer(model), PinholeCamera.from_hfov(128, 128, 1.0), MOUNT, PlanarBase())


def test_reset_warms_the_model_up_so_the_first_step_traces_nothing_new(tiny_checkpoint):
    model = WorldModel.from_pretrained(tiny_checkpoint)
    base = PlanarBase("diff_drive", BaseLimits(), command_timeout=10.0)
    sim = Simulator(ModelRenderer(model), CAMERA, MOUNT, base, wall_start())
    sim.reset()
    assert model.traced.num_traces == 2  # the denoiser, the decoder (the start observation's encoding ran once)
    base.command(0.5, 0.0, 0.3, stamp=0.0)
    sim.step(0.1, now=0.1)
    assert model.traced.num_traces == 2


def test_a_procedural_start_observed_all_round_remembers_what_lies_behind_the_start(tiny_checkpoint):
    model = WorldModel.from_pretrained(tiny_checkpoint)

    def coverage_behind(views: int, world_seed: int | None = None) -> tuple[float, float, int]:
        sim = Simulator(ModelRenderer(model), CAMERA, MOUNT, PlanarBase(), StartSpec(start_views=views))
        sim.reset(world_seed)
        observations = model.memory_stats().observations
        ahead = sim.step(0.1, 0.1).result.coverage  # the first step continues from the start view
        sim.teleport(PlanarPose(0.0, 0.0, math.pi))
        return ahead, sim.step(0.1, 0.2).result.coverage, observations

    ahead, behind, written_once = coverage_behind(1)
    assert ahead > 0.9 and behind < 0.05
    ahead, behind, written = coverage_behind(8)
    assert written > 6 * written_once and ahead > 0.9 and behind > 0.8
    assert coverage_behind(8, world_seed=3)[2] > 6 * written_once  # a reset into another world keeps the views
    with pytest.raises(ValueError, match="start_views"):
        StartSpec(start_views=0)
