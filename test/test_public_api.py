"""The public surface: the memory protocol with its three implementations, the one write-back rule,
``WorldModel.observe`` / ``load_memory``, settings in ``world_model.json``, and no private access from
tests, benchmarks or tools."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_world_model
from mirage_ros.camera import PinholeCamera
from mirage_ros.memory import (ExplicitPointCloudMemory, Frame, LatentMemoryConfig, LatentSpatialMemory, NoMemory,
                               SpatialMemory, write_back)
from mirage_ros.model import WorldModel
from scenes import box_depth, look_at

ROOT = Path(__file__).resolve().parents[1]
CAMERA = PinholeCamera.from_hfov(64, 64, math.pi / 2)
ROOM = ((-5.0, -5.0, 0.0), (5.0, 5.0, 3.0))
BOX = ((1.5, -0.5, 0.0), (2.5, 0.5, 1.2))
A = look_at((-2.0, 0.0, 1.0), (5.0, 0.0, 1.0))
B = look_at((-2.0, 0.0, 1.0), (0.0, 5.0, 1.0))  # 90 degrees to the left of A: mostly new content


def frame_at(pose: np.ndarray, channels: int = 4) -> Frame:
    depth = torch.from_numpy(box_depth([ROOM, BOX], pose, CAMERA.K, 64, 64)).float()
    rgb = (depth / 8.0).clamp(0, 1).expand(3, 64, 64).contiguous()
    latent = torch.randn(channels, 8, 8, generator=torch.Generator().manual_seed(0))
    return Frame(rgb, depth, latent, CAMERA.K, pose)


def memories() -> list[SpatialMemory]:
    encoder = lambda rgb, depth: torch.zeros(1, 4, 8, 8)
    return [LatentSpatialMemory(LatentMemoryConfig(patch_size=8)),
            ExplicitPointCloudMemory(encoder=encoder, patch_size=8), NoMemory(4, 8)]


@pytest.mark.parametrize("memory", memories(), ids=["latent", "explicit", "none"])
def test_every_memory_speaks_the_protocol(memory):
    assert isinstance(memory, SpatialMemory)
    written = write_back(memory, frame_at(A), view=None)
    view = memory.read_view(A, CAMERA.K, (64, 64))
    stats = memory.stats()
    points, colors = memory.points()
    assert view.latent.shape == (4, 8, 8) and view.coverage.shape == (8, 8) and view.pixel_coverage.shape == (64, 64)
    assert points.shape == colors.shape == (stats.entries, 3) and colors.dtype == np.uint8
    distance = memory.nearest_surface(-2.0, 0.0, 0.05, 1.5)
    if isinstance(memory, NoMemory):
        assert written == 0 and stats.entries == 0 and not view.coverage.any() and distance == math.inf
        return
    assert written > 0 and stats.entries > 0 and stats.bytes > 0 and view.coverage_fraction > 0.9
    assert 3.0 <= distance <= 3.6  # the room's wall behind/beside the camera is 3 m away, the box 3.5 m
    with pytest.raises(ValueError):
        memory.save(Path("/nonexistent-folder/memory.safetensors"))


def test_write_back_adds_only_what_the_view_did_not_show():
    memory = LatentSpatialMemory(LatentMemoryConfig(patch_size=8))
    assert write_back(memory, frame_at(A), view=None) > 0
    again = memory.read_view(A, CAMERA.K, (64, 64))
    before = memory.stats()
    assert write_back(memory, frame_at(A), again) == 0 and memory.stats() == before  # all of it was known
    turned = memory.read_view(B, CAMERA.K, (64, 64))
    added = write_back(memory, frame_at(B), turned)
    assert 0 < added <= int((~turned.coverage).sum())  # only tokens of cells the memory did not cover


def test_observe_adds_to_memory_without_clearing_and_step_continues_from_it():
    model = make_tiny_world_model()
    start = frame_at(A)
    rgb = (start.rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    model.reset(rgb, start.depth.numpy(), CAMERA.K, A)
    after_reset = model.memory_stats().entries
    other = frame_at(B)
    added = model.observe((other.rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8), other.depth.numpy(), CAMERA.K, B)
    assert added > 0 and model.memory_stats().entries > after_reset  # nothing cleared, more known
    # Both observed views are now remembered: stepping to either is a revisit.
    assert model.step(B).coverage == 1.0 and model.step(A).coverage == 1.0
    before = model.memory_stats()
    with pytest.raises(ValueError, match="depth"):
        model.observe(rgb, np.full((64, 64), np.nan, np.float32), CAMERA.K, B)
    with pytest.raises(ValueError, match="cam_to_world"):
        model.observe(rgb, start.depth.numpy(), CAMERA.K, np.full((4, 4), np.nan))
    assert model.memory_stats() == before  # a refused observation changes nothing


def test_load_memory_refuses_other_models_memories_and_changes_nothing(tmp_path):
    model = make_tiny_world_model()
    start = frame_at(A)
    model.reset((start.rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8), start.depth.numpy(), CAMERA.K, A)
    other = LatentSpatialMemory(LatentMemoryConfig(patch_size=8))
    write_back(other, frame_at(A, channels=13), view=None)
    other.save(tmp_path / "thirteen.safetensors")
    before = model.memory_stats()
    with pytest.raises(ValueError, match="13-channel"):
        model.load_memory(tmp_path / "thirteen.safetensors", model.K, A)
    assert model.memory_stats() == before
    model.save_memory(tmp_path / "own.safetensors")
    assert model.load_memory(tmp_path / "own.safetensors", model.K, A) == 1.0


def test_memory_settings_travel_with_the_checkpoint(tmp_path):
    config = LatentMemoryConfig(patch_size=8, voxel_size=0.08, capacity=5000)
    model = make_tiny_world_model()
    WorldModel(model.autoencoder, model.denoiser, (64, 64), memory_config=config).save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "world_model.json").read_text())["memory"]["voxel_size"] == 0.08
    loaded = WorldModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.memory_config == config and loaded.memory.config == config
    with pytest.raises(ValueError, match="patch_size"):
        WorldModel(model.autoencoder, model.denoiser, (64, 64), memory_config=LatentMemoryConfig(patch_size=4))


def test_tokens_round_trip_through_tensors_and_bad_tensors_are_refused():
    memory = LatentSpatialMemory(LatentMemoryConfig(patch_size=8))
    write_back(memory, frame_at(A), view=None)
    copy = LatentSpatialMemory.from_tensors(memory.tensors(), memory.config)
    assert copy.stats().entries == memory.stats().entries
    assert torch.equal(copy.read(A, CAMERA.K, (8, 8)).latent, memory.read(A, CAMERA.K, (8, 8)).latent)
    for name, corrupt in (("normals", lambda t: t.fill_(float("nan"))), ("keys", lambda t: t.flip(0)),
                          ("weights", lambda t: t.neg()), ("features", lambda t: t.float())):
        tensors = memory.tensors()
        tensors[name] = corrupt(tensors[name])
        with pytest.raises(ValueError):
            LatentSpatialMemory.from_tensors(tensors, memory.config)
    tensors = memory.tensors()
    del tensors["extents"]
    with pytest.raises(ValueError, match="missing"):
        LatentSpatialMemory.from_tensors(tensors, memory.config)


ALLOWED_PRIVATE = {"_is_mkldnn_bf16_supported"}  # torch.ops.mkldnn's bf16 probe has no public name


def private_accesses(path: Path) -> list[str]:
    """``obj._name`` uses in a file, other than on ``self``/``cls`` of its own classes."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and node.attr not in ALLOWED_PRIVATE
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    return found


def test_tests_benchmarks_and_tools_use_no_private_member():
    files = [p for folder in ("test", "benchmarks", "tools", "scripts") for p in (ROOT / folder).rglob("*.py")]
    assert files
    assert [hit for path in files for hit in private_accesses(path)] == []
