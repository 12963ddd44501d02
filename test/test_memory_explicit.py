"""ExplicitPointCloudMemory: the RGB point-cloud baseline, rendered with the shared z-buffer."""

import math

import numpy as np
import pytest
import torch

from mirage_ros.camera import PinholeCamera
from mirage_ros.memory import ExplicitPointCloudMemory
from scenes import box_depth, look_at

CAMERA = PinholeCamera.from_hfov(64, 64, math.pi / 2)
ROOM = ((-5.0, -5.0, 0.0), (5.0, 5.0, 3.0))
BOX = ((1.5, -0.5, 0.0), (2.5, 0.5, 1.2))
A = look_at((-2.0, 0.0, 1.0), (5.0, 0.0, 1.0))


def test_render_at_the_written_view_returns_the_image():
    rgb = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    depth = box_depth([ROOM, BOX], A, CAMERA.K, 64, 64)
    memory = ExplicitPointCloudMemory()
    assert memory.write(rgb, depth, CAMERA.K, A) == 64 * 64
    read = memory.read(A, CAMERA.K, (64, 64))
    assert read.coverage.all()
    assert torch.equal((read.latent * 255).round().to(torch.uint8), rgb)
    np.testing.assert_allclose(read.depth.numpy(), depth, rtol=1e-5)
    assert memory.bytes == 64 * 64 * 15


def test_it_appends_and_occludes():
    depth = box_depth([ROOM, BOX], A, CAMERA.K, 64, 64)
    memory = ExplicitPointCloudMemory()
    white = torch.ones(3, 64, 64)
    memory.write(white, depth, CAMERA.K, A)
    memory.write(white, depth, CAMERA.K, A)
    assert memory.bytes == 2 * 64 * 64 * 15  # no fusion: the baseline grows with every frame
    closer = look_at((0.0, 0.0, 1.0), (5.0, 0.0, 1.0))
    read = memory.read(closer, CAMERA.K, (64, 64))
    truth = box_depth([ROOM, BOX], closer, CAMERA.K, 64, 64)
    covered = read.coverage.numpy()
    # Nearest point wins: wherever a pixel is covered its depth is no farther than some true surface.
    assert np.all(read.depth.numpy()[covered] <= truth[covered] * 1.15)


def test_bad_input():
    memory = ExplicitPointCloudMemory()
    depth = box_depth([ROOM], A, CAMERA.K, 64, 64)
    with pytest.raises(ValueError, match="rgb"):
        memory.write(torch.zeros(64, 64), depth, CAMERA.K, A)
    with pytest.raises(ValueError, match="depth must have shape"):
        memory.write(torch.zeros(3, 32, 32), depth, CAMERA.K, A)
    with pytest.raises(ValueError, match="cam_to_world"):
        memory.write(torch.zeros(3, 64, 64), depth, CAMERA.K, np.full((4, 4), np.nan))
    assert memory.bytes == 0
