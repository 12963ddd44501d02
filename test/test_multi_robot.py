"""Several cameras (robots) in one imagined world: one memory, batched steps, the simulator's companions."""

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_world_model
from scenes import box_depth, look_at

from mirage_ros.camera import CameraMount, PinholeCamera
from mirage_ros.kinematics import PlanarBase, PlanarPose
from mirage_ros.model import SamplingConfig, sample_latent
from mirage_ros.model.sampling import DenoiserCondition
from mirage_ros.simulator import ModelRenderer, Robot, Simulator, StartSpec

CAMERA = PinholeCamera.from_hfov(64, 64, math.pi / 2)
ROOM = ((-5.0, -5.0, 0.0), (5.0, 5.0, 3.0))
BOX = ((1.5, -0.5, 0.0), (2.5, 0.5, 1.2))
FRONT = look_at((-2.0, 0.0, 1.0), (5.0, 0.0, 1.0))
BACK = look_at((-2.0, 0.0, 1.0), (-9.0, 0.0, 1.0))  # the other way: nothing of it observed


def started_model():
    model = make_tiny_world_model()
    depth = box_depth([ROOM, BOX], FRONT, CAMERA.K, 64, 64)
    model.reset(np.full((64, 64, 3), 120, np.uint8), depth, CAMERA.K, FRONT)
    return model


def test_what_one_camera_imagined_another_sees_when_it_looks_there():
    model = started_model()
    assert model.add_camera(BACK) < 0.1 and model.num_cameras == 2
    front, back = model.step_cameras([FRONT, BACK])
    assert front.coverage == 1.0 and back.coverage < 0.1 and back.denoiser_calls == 2  # imagined
    turned, still = model.step_cameras([BACK, BACK])  # camera 0 now looks where camera 1 imagined
    assert turned.coverage == still.coverage == 1.0 and turned.denoiser_calls == still.denoiser_calls == 0
    np.testing.assert_array_equal(turned.rgb, still.rgb)  # both see the same remembered place
    alone = started_model()  # control: nobody imagined that place before
    alone.step(FRONT)
    looked = alone.step(BACK)
    assert looked.coverage < 0.1 and looked.denoiser_calls == 2


def test_step_cameras_needs_one_pose_per_camera():
    model = make_tiny_world_model()
    with pytest.raises(RuntimeError, match="reset"):
        model.add_camera(BACK)
    model = started_model()
    model.add_camera(BACK)
    with pytest.raises(ValueError, match="2 cameras, but 1 poses"):
        model.step(FRONT)
    with pytest.raises(ValueError, match="cam_to_world"):
        model.step_cameras([FRONT, np.full((4, 4), np.nan)])


def test_views_with_different_schedules_are_generated_in_batched_groups():
    """A batch of a covered, a half-covered and an uncovered view: each gets its own schedule's number of
    denoiser evaluations, and the covered one comes back exactly as the memory read it."""
    model = make_tiny_world_model()
    torch.manual_seed(1)
    coverage = torch.zeros(3, 8, 8, dtype=torch.bool)
    coverage[0], coverage[1, :4] = True, True
    memory = torch.randn(3, 4, 8, 8)
    condition = DenoiserCondition.build(memory, coverage, torch.full((3, 8, 8), 2.0), torch.randn(3, 4, 8, 8),
                                        torch.zeros(3, 12), model.autoencoder)
    config = SamplingConfig(num_inference_steps=3, reuse_coverage=0.4, reuse_steps=1)
    with torch.inference_mode():
        output = sample_latent(model.denoiser, model.scheduler, condition, config, torch.Generator().manual_seed(0))
    assert output.denoiser_calls == [0, 1, 3]
    torch.testing.assert_close(output.latent[0], memory[0])
    torch.testing.assert_close(output.latent[1][:, :4], memory[1][:, :4])  # remembered tokens kept
    assert not torch.allclose(output.latent[2], memory[2])


def test_companions_drive_on_their_own_and_share_the_world():
    model = make_tiny_world_model()
    mount = CameraMount((0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    depth = box_depth([ROOM, BOX], mount.camera_to_world(np.eye(4)), CAMERA.K, 64, 64)
    start = StartSpec(rgb=np.full((64, 64, 3), 120, np.uint8), depth=depth)
    second = Robot(PlanarBase("holonomic", command_timeout=10.0), mount, PlanarPose(0.0, 1.0, math.pi))
    sim = Simulator(ModelRenderer(model), CAMERA, mount, PlanarBase("diff_drive", command_timeout=10.0), start,
                    companions=[second])
    sim.reset()
    sim.base.command(0.5, 0.5, 0.0, stamp=0.0)  # a differential drive cannot move sideways
    second.base.command(0.0, 0.5, 0.0, stamp=0.0)
    for k in range(10):
        first_frame, second_frame = sim.step_robots(0.1, 0.1 * (k + 1))
    assert first_frame.pose.x > 0.1 and first_frame.pose.y == 0.0
    assert second_frame.pose.x == pytest.approx(0.0, abs=1e-9) and second_frame.pose.y < 1.0  # left of pi: -y
    np.testing.assert_allclose(second_frame.cam_to_world, sim.camera_pose(1))
    assert model.memory_stats().entries > 0
    sim.teleport(PlanarPose(2.0, 2.0, 0.0), robot=1)
    assert sim.robots[1].base.pose == PlanarPose(2.0, 2.0, 0.0) and sim.base.pose == first_frame.pose
    sim.reset()
    assert [robot.base.pose for robot in sim.robots] == [PlanarPose(), PlanarPose(0.0, 1.0, math.pi)]
    assert model.num_cameras == 2
