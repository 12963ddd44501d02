"""ExplicitPointCloudMemory: the RGB point-cloud baseline, rendered with the shared z-buffer."""

import math

import numpy as np
import pytest
import torch
from scenes import box_depth, look_at

from mirage_ros.camera import PinholeCamera
from mirage_ros.memory import ExplicitPointCloudMemory

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
    assert torch.equal((read.rgb * 255).round().to(torch.uint8), rgb)
    np.testing.assert_allclose(read.depth.numpy(), depth, rtol=1e-5)
    assert memory.stats().bytes == 64 * 64 * 15


def test_it_appends_and_the_nearest_point_wins():
    memory = ExplicitPointCloudMemory()
    room = box_depth([ROOM], A, CAMERA.K, 64, 64)
    box = box_depth([BOX], A, CAMERA.K, 64, 64)
    memory.write(torch.ones(3, 64, 64), room, CAMERA.K, A)        # white room, as if the box were absent
    memory.write(torch.zeros(3, 64, 64), box, CAMERA.K, A)        # black box, written afterwards
    assert memory.stats().bytes == (64 * 64 + int(np.isfinite(box).sum())) * 15  # no fusion: it only grows
    side = look_at((-2.0, 0.4, 1.1), (5.0, 0.0, 1.0))
    read = memory.read(side, CAMERA.K, (64, 64))
    truth_box = box_depth([BOX], side, CAMERA.K, 64, 64)
    truth_all = box_depth([ROOM, BOX], side, CAMERA.K, 64, 64)
    box_in_front = np.isfinite(truth_box) & (truth_box <= truth_all + 1e-6)
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    interior = np.logical_and.reduce([np.roll(box_in_front, s, (0, 1)) for s in shifts])  # 2 px inside
    near_box = np.logical_or.reduce([np.roll(box_in_front, s, (0, 1)) for s in shifts])   # within 2 px
    shown = read.rgb.numpy()[0]
    covered = read.coverage.numpy()
    assert (interior & covered).sum() > 20
    assert np.all(shown[interior & covered] == 0.0)              # the box hides the wall behind it
    assert np.all(shown[~near_box & covered] == 1.0)                # elsewhere the room shows


def test_bad_input():
    memory = ExplicitPointCloudMemory()
    depth = box_depth([ROOM], A, CAMERA.K, 64, 64)
    with pytest.raises(ValueError, match="rgb"):
        memory.write(torch.zeros(64, 64), depth, CAMERA.K, A)
    with pytest.raises(ValueError, match="depth must have shape"):
        memory.write(torch.zeros(3, 32, 32), depth, CAMERA.K, A)
    with pytest.raises(ValueError, match="cam_to_world"):
        memory.write(torch.zeros(3, 64, 64), depth, CAMERA.K, np.full((4, 4), np.nan))
    assert memory.stats().bytes == 0
