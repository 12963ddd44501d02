"""The ground texture: the floor's colours top-down, written from floor pixels and painted back where they lie."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mirage_ros.memory import LatentMemoryConfig, LatentSpatialMemory
from mirage_ros.memory.ground import (FIELDS, TILE, Clipmap, GroundTexture, GroundTextureConfig, on_plane,
                                      opened, pack_keys)
from mirage_ros.memory.projection import FloorRays, floor_geometry, pixel_rays

SIZE = 64
K = np.array([[64.0, 0.0, 31.5], [0.0, 64.0, 31.5], [0.0, 0.0, 1.0]])
RED, BLUE, GREEN = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)


def looking_down(x: float = 0.0, y: float = 0.0, height: float = 1.0) -> np.ndarray:
    """A camera ``height`` above the floor at ``(x, y)``, its optical axis straight down (image x along world x)."""
    pose = np.eye(4)
    pose[:3, :3] = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]
    pose[:3, 3] = [x, y, height]
    return pose


def geometry(pose: np.ndarray) -> FloorRays:
    return floor_geometry(pixel_rays(torch.as_tensor(K), SIZE, SIZE), pose, 0.0)


def split_floor(xy: torch.Tensor) -> torch.Tensor:
    """``[3,H,W]``: red where the floor point has x < 0, blue elsewhere."""
    left = (xy[..., 0] < 0)[None]
    return torch.where(left, torch.tensor(RED)[:, None, None], torch.tensor(BLUE)[:, None, None])


def solid(color: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(color)[:, None, None].expand(3, SIZE, SIZE)


def write(ground: GroundTexture, pose: np.ndarray, rgb: torch.Tensor | None = None) -> int:
    floor = geometry(pose)
    rgb = split_floor(floor.xy) if rgb is None else rgb
    return ground.write(rgb, torch.isfinite(floor.plane_depth), floor)


def render(ground: GroundTexture, pose: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    floor = geometry(pose)
    colors, known = ground.render(floor.xy, floor.footprint, torch.isfinite(floor.plane_depth))
    return colors, known, floor.xy


def test_floor_geometry_meets_the_plane_below_the_camera() -> None:
    floor = geometry(looking_down(0.5, -0.25, height=2.0))
    down, plane_depth, xy, footprint = floor.down, floor.plane_depth, floor.xy, floor.footprint
    assert torch.allclose(plane_depth, torch.full_like(plane_depth, 2.0))  # straight down: every ray's depth is 2 m
    assert torch.allclose(down, torch.full_like(down, -1.0))
    centre = xy[31:33, 31:33].mean((0, 1))
    assert torch.allclose(centre, torch.tensor([0.5, -0.25]), atol=1e-4)
    # Seen straight down the floor is a uniform grid: every pixel covers (2 m / f)^2.
    assert torch.allclose(footprint, torch.full_like(footprint, 2.0 / 64), rtol=1e-4)
    level = looking_down()
    level[:3, :3] = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]  # looking along +y, level
    plane_depth = geometry(level).plane_depth
    assert bool(torch.isinf(plane_depth[:SIZE // 2]).all()) and bool(torch.isfinite(plane_depth[SIZE // 2:]).all())
    assert bool(on_plane(plane_depth, plane_depth)[SIZE // 2:].all()) and not bool(on_plane(plane_depth * 0.9, plane_depth).any())


def test_observed_floor_comes_back_where_it_lies_from_another_pose() -> None:
    ground = GroundTexture()
    assert write(ground, looking_down()) > 0
    colors, known, xy = render(ground, looking_down(x=0.2))
    # The shifted view sees the written floor on its left (x up to 0.5 m), nothing on its right: cells
    # that straddle the border and were shown only in part do not paint the unseen floor beside it.
    seen_before = xy[..., 0] < 0.45
    assert bool(known[seen_before].all()) and not bool(known[xy[..., 0] > 0.55].any())
    away_from_border = known & ((xy[..., 0].abs() > 0.03))
    expected = split_floor(xy)
    assert torch.allclose(colors[:, away_from_border], expected[:, away_from_border])


def test_floor_seen_from_afar_fills_a_near_view_from_coarser_cells() -> None:
    ground = GroundTexture(GroundTextureConfig(cell_size=0.02, levels=5))
    write(ground, looking_down(height=4.0))  # a pixel covers over 6 cm: too coarse for the 2 and 4 cm cells
    levels = ground.keys >> 56
    assert int(levels.min()) >= 1
    colors, known, xy = render(ground, looking_down(height=1.0))  # 1.6 cm pixels
    assert bool(known.all())  # no holes: the coarser cells hold the place
    away_from_border = xy[..., 0].abs() > 0.2
    assert torch.allclose(colors[:, away_from_border], split_floor(xy)[:, away_from_border])


def test_observations_of_a_cell_fuse_with_recent_ones_keeping_a_say() -> None:
    ground = GroundTexture(GroundTextureConfig(max_weight=2))
    pose = looking_down()
    write(ground, pose, solid(BLUE))
    assert torch.allclose(render(ground, pose)[0][:, 32, 32], torch.tensor(BLUE))
    write(ground, pose, solid(RED))  # a second observation: the mean of the two
    assert torch.allclose(render(ground, pose)[0][:, 32, 32], torch.tensor([0.5, 0.0, 0.5]), atol=1 / 255)
    for _ in range(20):  # past max_weight, a new observation still moves the cell by a third
        write(ground, pose, solid(RED))
    write(ground, pose, solid(BLUE))
    assert float(render(ground, pose)[0][2, 32, 32]) == pytest.approx(1 / 3, abs=2 / 255)


def test_an_observation_writes_its_floor_pixels_only_and_paint_shows_them() -> None:
    ground = GroundTexture()
    pose = looking_down()
    floor = geometry(pose)
    depth = floor.plane_depth.clone()
    depth[:, :SIZE // 2] -= 0.1  # the left half is a box 10 cm high: not floor
    assert ground.observe(solid(BLUE), depth, floor) > 0
    generated = solid(GREEN).clone()
    painted = ground.paint(generated, floor.plane_depth, floor)
    assert torch.allclose(painted[:, :, SIZE // 2 + 2:], solid(BLUE)[:, :, SIZE // 2 + 2:])  # the floor shown
    # Under the box the floor is unknown: the frame's own colours, far from the painted floor as drawn, and
    # near it shaded towards the painted colours (no edge where they meet).
    assert torch.allclose(painted[:, :, :SIZE // 2 - 20], generated[:, :, :SIZE // 2 - 20])
    assert float(painted[2, :, SIZE // 2 - 3].mean()) > 0.5 > float(painted[2, :, SIZE // 2 - 12].mean())
    off_plane = ground.paint(generated, floor.plane_depth * 0.5, floor)
    assert torch.equal(off_plane, generated)  # nothing lies on the floor


def test_capacity_drops_the_least_recently_written_cells() -> None:
    ground = GroundTexture(GroundTextureConfig(capacity=1000))
    write(ground, looking_down(x=-5.0))
    write(ground, looking_down(x=5.0))
    # Down to a tenth below the capacity, so that not every write evicts; whole tiles of 16 cells go.
    assert 900 - TILE * TILE < len(ground) <= 900
    assert not bool(render(ground, looking_down(x=-5.0))[1].any())
    assert bool(render(ground, looking_down(x=5.0))[1].any())
    assert bool((ground.keys[1:] > ground.keys[:-1]).all())  # still sorted for lookups


def test_reads_follow_the_view_and_see_every_write() -> None:
    ground = GroundTexture()
    write(ground, looking_down())
    assert ground.cache_nbytes == 0
    colors, known, xy = render(ground, looking_down())
    assert bool(known.all()) and torch.allclose(colors[:, 10, 10], torch.tensor(RED))
    levels, size = ground.config.levels, ground.config.clipmap_size  # a fixed-size read cache
    assert ground.cache_nbytes == 4 * (levels * 2 * size * size + 4 * levels * (size + 1) * size)
    write(ground, looking_down(x=6.0), solid(GREEN))  # far from the window the first read was cut around
    colors, known, _ = render(ground, looking_down(x=6.0))
    assert bool(known.all()) and torch.allclose(colors, solid(GREEN))
    write(ground, looking_down(x=6.0), solid(BLUE))  # the same place again: the next read shows the fused colour
    assert torch.allclose(render(ground, looking_down(x=6.0))[0][:, 32, 32], torch.tensor([0.0, 0.5, 0.5]), atol=1 / 255)
    colors, known, xy = render(ground, looking_down())  # back where it started
    assert bool(known.all()) and torch.allclose(colors[:, 10, 10], torch.tensor(RED))
    other = GroundTexture()
    other.load_state(*GroundTexture().state())  # a loaded texture replaces what was read before
    ground.load_state(*other.state())
    assert not bool(render(ground, looking_down())[1].any())


def test_writes_paste_into_the_read_window_what_a_new_cut_would_hold() -> None:
    ground = GroundTexture()
    write(ground, looking_down())
    render(ground, looking_down())  # the window is cut here; the writes below paste into it
    write(ground, looking_down(x=0.3, height=2.0), solid(GREEN))  # fuses with cells held, adds new ones
    write(ground, looking_down(x=-0.2, height=0.5), solid(BLUE))
    pasted = ground.clipmap
    fresh = Clipmap.cut(ground, pasted.centre)
    assert torch.equal(pasted.flags, fresh.flags) and torch.equal(pasted.texels, fresh.texels)


def test_cameras_apart_keep_their_own_read_windows() -> None:
    ground = GroundTexture()
    here, there = looking_down(), looking_down(x=6.0)
    write(ground, here)
    write(ground, there, solid(GREEN))
    render(ground, here)
    first = ground.clipmap
    assert torch.allclose(render(ground, there)[0], solid(GREEN))  # another window for the other camera...
    assert ground.clipmap is not first and ground.cache_nbytes == 2 * 4 * (4 * 2 * 128 * 128 + 4 * 4 * 129 * 128)
    render(ground, here)
    assert ground.clipmap is first  # ...and the first one kept, not cut anew


def test_floor_beyond_the_read_window_is_not_painted() -> None:
    ground = GroundTexture(GroundTextureConfig(levels=1, clipmap_size=8))  # a window of 8 cells of 4 cm
    write(ground, looking_down())  # 1 m of floor across
    colors, known, xy = render(ground, looking_down())
    assert 0 < int(known.sum()) < known.numel()
    shown = xy[known]
    assert bool(((shown.amax(0) - shown.amin(0)) <= 8 * 0.04 + 1e-6).all())
    clear = known & (xy[..., 0].abs() > 0.04)  # away from where red meets blue
    assert bool(clear.any()) and torch.allclose(colors[:, clear], split_floor(xy)[:, clear], atol=1e-6)


def test_thin_strands_of_known_floor_are_left_to_the_model() -> None:
    known = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    known[10:30, 10:30] = True          # a patch: kept whole, its border included
    known[40, 5:60] = True              # a ray one pixel wide, and one two wide: dropped
    known[50:52, 5:60] = True
    known[5, 50] = True                 # a speck: dropped
    expected = torch.zeros_like(known)
    expected[10:30, 10:30] = True
    assert torch.equal(opened(known), expected)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        GroundTextureConfig(cell_size=0.0)
    with pytest.raises(ValueError):
        GroundTextureConfig(levels=0)
    with pytest.raises(ValueError):
        GroundTextureConfig(clipmap_size=2)


def test_a_saved_memory_keeps_its_ground_texture_and_older_files_load_without_one(tmp_path) -> None:
    memory = LatentSpatialMemory()
    write(memory.ground, looking_down())
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    loaded = LatentSpatialMemory()
    loaded.load(path)
    for name in FIELDS:
        assert torch.equal(getattr(loaded.ground, name), getattr(memory.ground, name))
    assert loaded.stats().bytes == memory.stats().bytes > 0

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as reader:
        metadata = reader.metadata()
    older = tmp_path / "format3.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.startswith("ground.")}, str(older),
              metadata={**metadata, "format_version": "3"})
    loaded.load(older)
    assert len(loaded.ground) == 0

    broken = tmp_path / "broken.safetensors"
    save_file({**tensors, "ground.colors": tensors["ground.colors"][:, :2].contiguous()}, str(broken), metadata=metadata)
    with pytest.raises(ValueError, match="ground texture"):
        memory.load(broken)
    assert len(memory.ground) > 0  # nothing changed

    without = LatentSpatialMemory(LatentMemoryConfig(ground_texture=False))
    assert without.ground is None
    without.load(path)  # a memory that keeps no ground texture ignores a saved one
    assert without.ground is None


def test_a_format_4_file_with_its_texture_cell_by_cell_loads_into_tiles(tmp_path) -> None:
    memory = LatentSpatialMemory()
    write(memory.ground, looking_down())
    write(memory.ground, looking_down(x=0.3, height=3.0))  # coarse cells too, some of them not mostly shown
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as reader:
        metadata = reader.metadata()
    # What format 4 (release v13) saved: one row per cell with its key, weight and shown area; int64 token reads.
    levels, coordinates, colors, shown = memory.ground.cells()
    keys = pack_keys(coordinates, levels)
    order = torch.argsort(keys)
    weights = memory.ground.states[memory.ground.states > 0] & 0x7F
    cells = {"keys": keys, "colors": colors, "weights": weights, "areas": torch.where(shown, 240, 100).to(torch.uint8),
             "last_written": torch.full_like(keys, 2, dtype=torch.int32)}
    older = {name: value for name, value in tensors.items() if not name.startswith("ground.")}
    older.update({f"ground.{name}": value[order].contiguous() for name, value in cells.items()})
    older["last_seen"] = older["last_seen"].long()
    save_file(older, str(tmp_path / "format4.safetensors"), metadata={**metadata, "format_version": "4"})
    loaded = LatentSpatialMemory()
    loaded.load(tmp_path / "format4.safetensors")
    assert len(loaded.ground) == len(memory.ground) and loaded.ground.nbytes == memory.ground.nbytes
    for pose in (looking_down(), looking_down(x=0.5, height=0.5), looking_down(x=0.3, height=3.0)):
        assert all(torch.equal(a, b) for a, b in zip(render(loaded.ground, pose), render(memory.ground, pose)))
    assert loaded.last_seen.dtype == torch.int32 and torch.equal(loaded.last_seen, memory.last_seen)


def test_a_step_paints_the_floor_it_was_shown_and_remembers_what_it_draws() -> None:
    from conftest import make_tiny_world_model

    magenta = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    magenta[..., 0] = magenta[..., 2] = 255
    pose = looking_down(height=0.8)
    depth = geometry(pose).plane_depth.numpy().astype(np.float32)
    for ground_texture, painted_colour in ((True, [255, 0, 255]), (False, None)):
        model = make_tiny_world_model()
        model.memory = LatentSpatialMemory(LatentMemoryConfig(patch_size=8, ground_texture=ground_texture))
        model.floor_height = 0.0
        model.reset(magenta, depth, K, pose)
        result = model.step(looking_down(x=0.05, height=0.8))
        plane = geometry(looking_down(x=0.05, height=0.8)).plane_depth.numpy()
        on_floor = np.abs(result.depth - plane) <= 1e-3 * plane
        assert on_floor.mean() > 0.5  # remembered floor pixels lie on the plane
        xy = geometry(looking_down(x=0.05, height=0.8)).xy
        shown_before = on_floor & (xy[..., 0].numpy() < 0.3)
        if painted_colour is None:
            assert not (result.rgb[shown_before] == [255, 0, 255]).all(-1).all()
        else:
            assert (result.rgb[shown_before] == painted_colour).all()
            cells = len(model.memory.ground)
            model.step(looking_down(x=0.3, height=0.8))  # new floor: the model's own frames are not written
            assert len(model.memory.ground) == cells
            model.observe(magenta, depth, K, looking_down(x=0.3, height=0.8))  # an observation is
            assert len(model.memory.ground) > cells


def test_the_ground_texture_can_be_turned_off_when_loading_a_checkpoint(tiny_checkpoint) -> None:
    from mirage_ros.model import WorldModel
    from mirage_ros.ros.sim_node import PARAMETERS
    from mirage_ros.simulator import build_world_model

    assert WorldModel.from_pretrained(tiny_checkpoint).memory.ground is not None  # the file's setting: on
    off = WorldModel.from_pretrained(tiny_checkpoint, ground_texture=False)
    assert off.memory.ground is None and off.memory_config.ground_texture is False
    params = {spec.name: spec.default for spec in PARAMETERS}
    params.update(model_path=str(tiny_checkpoint), ground_texture=False)
    assert build_world_model(params).memory.ground is None  # the node's ground_texture parameter
