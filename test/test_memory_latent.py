"""LatentSpatialMemory against analytic scenes (exact ray-cast depth of boxes)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scenes import box_depth, look_at

from mirage_ros.camera import PinholeCamera
from mirage_ros.memory import LatentMemoryConfig, LatentSpatialMemory

CAMERA = PinholeCamera.from_hfov(128, 128, math.pi / 2)
ROOM = ((-5.0, -5.0, 0.0), (5.0, 5.0, 3.0))
BOX = ((1.5, -0.5, 0.0), (2.5, 0.5, 1.2))
A = look_at((-2.0, 0.0, 1.0), (5.0, 0.0, 1.0))
B = look_at((-1.0, 0.5, 1.0), (5.0, 0.5, 1.0))
EXACT = LatentMemoryConfig(feature_dtype="float32", max_splat_radius=0)


def depth_at(pose: np.ndarray) -> np.ndarray:
    return box_depth([ROOM, BOX], pose, CAMERA.K, 128, 128)


def latent(seed: int = 0, channels: int = 8) -> torch.Tensor:
    return torch.randn(channels, 16, 16, generator=torch.Generator().manual_seed(seed))


def patch_range(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max true depth inside each latent pixel's 8x8 image patch."""
    cells = depth.reshape(16, 8, 16, 8).transpose(0, 2, 1, 3).reshape(16, 16, 64)
    return np.nanmin(cells, -1), np.nanmax(cells, -1)


@pytest.mark.parametrize("feature_dtype, splat", [("float32", 0), ("float16", 0), ("float32", 1), ("float16", 2)])
def test_write_then_read_at_the_same_view_is_exact(feature_dtype, splat):
    # With splats on, a token read from its writer's pose has a footprint of one cell up to rounding: it
    # must not spill over its neighbours (it did: 15 % of cells showed a neighbour's token, -7 dB).
    memory = LatentSpatialMemory(LatentMemoryConfig(feature_dtype=feature_dtype, max_splat_radius=splat))
    features = latent().to(getattr(torch, feature_dtype)).float()  # values the storage holds exactly
    depth = depth_at(A)
    depth[:40, :36] = np.nan  # no depth there: those tokens must not exist
    memory.write(features, depth, CAMERA.K, A)
    read = memory.read(A, CAMERA.K, (16, 16))
    valid_share = (~np.isnan(depth)).reshape(16, 8, 16, 8).transpose(0, 2, 1, 3).reshape(16, 16, 64).mean(-1)
    expected = valid_share >= 0.25  # the configured minimum share of valid pixels per token
    assert not expected.all()
    np.testing.assert_array_equal(read.coverage.numpy(), expected)
    assert torch.equal(read.latent[:, read.coverage], features[:, read.coverage])
    assert torch.all(read.latent[:, ~read.coverage] == 0) and torch.isnan(read.depth[~read.coverage]).all()


def test_read_from_another_view_has_true_depth_and_correct_occlusion():
    memory = LatentSpatialMemory(EXACT)
    memory.write(latent(), depth_at(A), CAMERA.K, A)
    read = memory.read(B, CAMERA.K, (16, 16))
    low, high = patch_range(depth_at(B))
    depth, covered = read.depth.numpy(), read.coverage.numpy()
    assert covered.mean() > 0.3
    # Every covered latent pixel shows a depth that exists in its patch in B's true depth (within 1 %).
    assert np.all((depth[covered] >= low[covered] * 0.99) & (depth[covered] <= high[covered] * 1.01))
    # Where the box fills a whole patch in B, the box is what the memory shows (the wall is hidden).
    box_only = high <= 3.6  # box front face at x = 1.5 is 2.5 m from B; the wall is 6 m away
    assert box_only.any() and np.all(depth[box_only & covered] < 3.6)


def test_tokens_remember_the_depth_they_were_seen_at():
    """A token's features encode depth as seen when written; the read reports that depth next to the
    depth seen now, so the model can rescale what it decodes."""
    memory = LatentSpatialMemory(EXACT)
    memory.write(latent(), depth_at(A), CAMERA.K, A)
    same = memory.read(A, CAMERA.K, (16, 16))
    torch.testing.assert_close(same.source_depth[same.coverage], same.depth[same.coverage], rtol=1e-3, atol=0)
    closer = look_at((-1.0, 0.0, 1.0), (5.0, 0.0, 1.0))  # 1 m nearer along the same axis
    read = memory.read(closer, CAMERA.K, (16, 16))
    covered = read.coverage
    assert covered.float().mean() > 0.3  # no splats in EXACT: approaching leaves gaps
    # Moving straight ahead by 1 m: every surface is exactly 1 m nearer along the optical axis.
    torch.testing.assert_close(read.source_depth[covered] - read.depth[covered],
                               torch.ones(int(covered.sum())), rtol=0, atol=2e-3)
    assert torch.isnan(read.source_depth[~covered]).all()


def test_a_surface_seen_from_behind_is_not_shown_through_the_object():
    memory = LatentSpatialMemory(EXACT)
    memory.write(latent(), depth_at(A), CAMERA.K, A)
    behind = look_at((4.0, 0.0, 1.0), (-5.0, 0.0, 1.0))  # past the box, looking back at it
    read = memory.read(behind, CAMERA.K, (16, 16))
    # The box front face (plane x = 1.5) faces away from this camera: no shown point may lie on it.
    points = shown_points(read, behind)
    on_front_face = (np.abs(points[:, 0] - 1.5) < 0.05) & (np.abs(points[:, 1]) < 0.45) & (points[:, 2] < 1.15)
    assert len(points) > 50 and not on_front_face.any()
    # Without the normal test the same memory would show it (the check above can fail).
    tokens = memory.tensors()
    tokens["normals"] = -tokens["normals"]
    flipped = LatentSpatialMemory.from_tensors(tokens, EXACT)
    assert ((np.abs(shown_points(flipped.read(behind, CAMERA.K, (16, 16)), behind)[:, 0] - 1.5) < 0.05)).any()


def shown_points(read, pose: np.ndarray) -> np.ndarray:
    """World points of the covered latent pixels (pixel-centre ray at the read depth)."""
    K = CAMERA.resized(16, 16).K
    v, u = np.nonzero(read.coverage.numpy())
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    camera = rays * read.depth.numpy()[v, u, None]
    return camera @ pose[:3, :3].T + pose[:3, 3]


def test_edge_tokens_sit_on_the_foreground_not_between_surfaces():
    memory = LatentSpatialMemory(EXACT)
    depth = depth_at(A)
    memory.write(latent(), depth, CAMERA.K, A)
    read = memory.read(A, CAMERA.K, (16, 16))
    # Patches that hold both box (foreground) and room (background) pixels.
    box = box_depth([BOX], A, CAMERA.K, 128, 128)
    on_box = np.isfinite(box) & (box <= depth + 1e-6)
    cells = lambda x: x.reshape(16, 8, 16, 8).transpose(0, 2, 1, 3).reshape(16, 16, 64)
    share = cells(on_box).mean(-1)
    box_cells = np.where(cells(on_box), cells(depth), np.inf)
    box_low, box_high = box_cells.min(-1), np.where(np.isfinite(box_cells), box_cells, -np.inf).max(-1)
    # ... where the box is the nearest surface of the patch (at its base the floor is nearer).
    box_in_front = box_low <= np.nanmin(cells(depth), -1) * 1.001
    edges = (share > 0) & (share < 1) & box_in_front & read.coverage.numpy()
    assert edges.sum() >= 4
    shown = read.depth.numpy()[edges]
    assert np.all((shown >= box_low[edges] * 0.99) & (shown <= box_high[edges] * 1.01))


def test_reads_are_bit_identical_run_to_run():
    reads = []
    for _ in range(2):
        memory = LatentSpatialMemory()
        memory.write(latent(1), depth_at(A), CAMERA.K, A)
        memory.write(latent(2), depth_at(B), CAMERA.K, B)
        reads.append(memory.read(look_at((0.0, -0.5, 1.2), (5.0, 1.0, 1.0)), CAMERA.K, (16, 16)))
    assert torch.equal(reads[0].latent, reads[1].latent)
    assert torch.equal(reads[0].coverage, reads[1].coverage)
    assert torch.equal(torch.nan_to_num(reads[0].depth), torch.nan_to_num(reads[1].depth))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_agree():
    results = []
    for device in ("cpu", "cuda"):
        memory = LatentSpatialMemory(device=device)
        memory.write(latent(1).to(device), depth_at(A), CAMERA.K, A)
        memory.write(latent(2).to(device), depth_at(B), CAMERA.K, B)
        read = memory.read(look_at((0.0, -0.5, 1.2), (5.0, 1.0, 1.0)), CAMERA.K, (16, 16))
        results.append((read.latent.cpu(), read.coverage.cpu()))
    assert torch.equal(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-3)


def test_fusion_keeps_the_token_count_when_a_view_is_written_again():
    memory = LatentSpatialMemory()
    depth = depth_at(A)
    for _ in range(100):
        memory.write(latent(), depth, CAMERA.K, A)
    once = LatentSpatialMemory()
    once.write(latent(), depth_at(A), CAMERA.K, A)
    assert memory.stats().entries == once.stats().entries
    assert memory.stats().observations == 100 * once.stats().observations


def test_bytes_stay_flat_while_driving_around_a_room():
    camera = PinholeCamera.from_hfov(64, 64, math.pi / 2)  # 8x8 latents keep 1000 steps fast
    memory = LatentSpatialMemory()
    sizes = []
    for step in range(1000):
        angle = 2 * math.pi * step / 250  # four laps
        position = (1.5 * math.cos(angle), 1.5 * math.sin(angle), 1.0 + 0.2 * math.sin(3 * angle))
        target = (position[0] + math.cos(angle + 1.2), position[1] + math.sin(angle + 1.2), 1.0)
        pose = look_at(position, target)
        features = torch.randn(8, 8, 8, generator=torch.Generator().manual_seed(step))
        memory.write(features, box_depth([ROOM, BOX], pose, camera.K, 64, 64), camera.K, pose)
        sizes.append(memory.stats().bytes)
    explored = np.array(sizes[250:])  # after the first lap
    assert explored.max() <= explored[0] * 1.1 and explored.min() >= explored[0] * 0.9


def test_capacity_evicts_least_recently_seen():
    memory = LatentSpatialMemory(LatentMemoryConfig(capacity=300))
    memory.write(latent(1), depth_at(A), CAMERA.K, A)
    memory.write(latent(2), depth_at(B), CAMERA.K, B)
    assert memory.stats().entries == 300
    # The most recent view is fully kept.
    assert memory.read(B, CAMERA.K, (16, 16)).coverage_fraction > 0.9


def test_save_load_round_trip_and_bad_files(tmp_path):
    memory = LatentSpatialMemory()
    memory.write(latent(1), depth_at(A), CAMERA.K, A)
    memory.write(latent(2), depth_at(B), CAMERA.K, B)
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    before = memory.read(A, CAMERA.K, (16, 16))
    loaded = LatentSpatialMemory()
    loaded.load(path)
    after = loaded.read(A, CAMERA.K, (16, 16))
    assert torch.equal(before.latent, after.latent) and torch.equal(before.coverage, after.coverage)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    state = loaded.stats()
    with pytest.raises(ValueError, match="not a readable safetensors"):
        loaded.load(truncated)
    assert loaded.stats() == state
    other = LatentSpatialMemory(LatentMemoryConfig(voxel_size=0.1))
    with pytest.raises(ValueError, match="voxel_size"):
        other.load(path)
    with pytest.raises(ValueError, match="not found"):
        loaded.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("change, message", [
    (dict(depth=np.full((128, 128), np.nan, np.float32)), "no valid pixel"),
    (dict(depth=np.full((128, 128), np.inf, np.float32)), "inf"),
    (dict(depth=np.ones((64, 64), np.float32)), "depth must have shape"),
    (dict(latent=torch.full((8, 16, 16), float("nan"))), "latent contains NaN"),
    (dict(latent=torch.zeros((4, 16, 16))), "channels"),
    (dict(K=np.zeros((3, 3))), "K"),
    (dict(K=np.full((3, 3), np.nan)), "K"),
    (dict(pose=np.full((4, 4), np.nan)), "cam_to_world"),
    (dict(valid=np.ones((128, 128), np.float32)), "valid"),
])
def test_bad_input_raises_and_changes_nothing(change, message):
    memory = LatentSpatialMemory()
    memory.write(latent(), depth_at(A), CAMERA.K, A)
    before = memory.stats()
    args = dict(latent=latent(3), depth=depth_at(B), K=CAMERA.K, pose=B, valid=None) | change
    with pytest.raises(ValueError, match=message):
        memory.write(args["latent"], args["depth"], args["K"], args["pose"], valid=args["valid"])
    assert memory.stats() == before


def remembered_surfaces(memory: LatentSpatialMemory, pose: np.ndarray):
    from mirage_ros.memory.projection import RememberedSurfaces, pixel_rays

    read = memory.read(pose, CAMERA.K, (16, 16))
    scale = torch.where(read.coverage, read.depth / read.source_depth, torch.ones_like(read.depth))
    return read, RememberedSurfaces(read.planes, read.depth, scale, pixel_rays(torch.as_tensor(CAMERA.K), 128, 128))


def test_remembered_pixels_get_the_true_depth_of_their_surface_even_in_cells_that_straddle_an_edge():
    """Seen from another view, remembered wall, floor and box tokens give every pixel its true depth
    (walls and floors are planar) once a decoded depth, even a rough one, says which surface it shows:
    not one depth per 8x8 cell, and edges inside a cell where the decoder puts them."""
    memory = LatentSpatialMemory(EXACT)
    memory.write(latent(), depth_at(A), CAMERA.K, A, observed=True)
    read, surfaces = remembered_surfaces(memory, B)
    truth = depth_at(B)
    rough = torch.from_numpy(truth * np.random.default_rng(0).uniform(0.9, 1.1, truth.shape)).float()
    depth = surfaces.compose(rough / surfaces.cell_scale.repeat_interleave(8, 0).repeat_interleave(8, 1)).numpy()
    covered = read.coverage.numpy().repeat(8, 0).repeat(8, 1)
    relative = np.abs(depth - truth) / truth
    assert np.all(np.isfinite(depth) & (depth > 0))
    assert covered.mean() > 0.3
    assert np.median(relative[covered]) < 1e-3 and np.mean(relative[covered] < 0.01) > 0.9
    cell_constant = np.repeat(np.repeat(read.depth.numpy(), 8, 0), 8, 1)
    assert np.mean(relative[covered]) < 0.5 * np.mean(np.abs(cell_constant - truth)[covered] / truth[covered])
    # Generated pixels keep the decoded depth, up to the remembered pixels' correction carried over to them.
    carried = np.abs(np.log(depth[~covered] / rough.numpy()[~covered]))
    assert carried.max() <= np.abs(np.log(depth[covered] / rough.numpy()[covered])).max() + 1e-5


def test_normals_of_some_cells_are_those_of_the_whole_map():
    """``surface_normals`` computes only the cells asked for, each from its patch and a frame around it; the
    normals are bit for bit those of the whole map's differences (rolled maps, neighbours off the image never
    counting), on rough depth with holes, for cells at the image's edges and corners and inside."""
    from mirage_ros.memory.latent import surface_normals

    generator = torch.Generator().manual_seed(3)
    points = torch.randn(128, 128, 3, generator=generator, dtype=torch.float64)
    points[..., 2] = points[..., 2].abs() + 1.0
    usable = torch.rand(128, 128, generator=generator) > 0.2

    def tangent(dim: int) -> torch.Tensor:
        forward, backward = torch.roll(points, -1, dim) - points, points - torch.roll(points, 1, dim)
        index = torch.arange(128).view((1, 128) if dim == 1 else (128, 1))
        forward_ok = torch.roll(usable, -1, dim) & (index < 127)
        backward_ok = torch.roll(usable, 1, dim) & (index > 0)
        use_forward = forward_ok & (~backward_ok | (forward[..., 2].abs() <= backward[..., 2].abs()))
        return torch.where(use_forward.unsqueeze(-1), forward, backward)

    whole = torch.cross(tangent(1), tangent(0), dim=-1)
    whole = torch.where((whole * points).sum(-1, keepdim=True) > 0, -whole, whole)
    whole = whole / whole.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    whole = whole.reshape(16, 8, 16, 8, 3).transpose(1, 2).reshape(256, 64, 3)
    cells = torch.tensor([0, 15, 240, 255, 7, 112, 127, 136, 200, 31])
    assert torch.equal(surface_normals(points, usable, cells, 8), whole[cells])
    assert torch.equal(surface_normals(points, usable, torch.arange(256), 8), whole)


@pytest.mark.parametrize("observed, clean_exact, noisy_median_degrees", [(True, 1.0, 5.0), (False, 0.85, 7.0)])
def test_token_normals_are_exact_on_clean_depth_and_steady_on_noisy_depth(observed, clean_exact,
                                                                          noisy_median_degrees):
    """A token's plane comes from its pixels' normals, not from one pixel's: on noisy depth (3 % noise
    smoothed over 3x3 pixels) the normal of a token's centre pixel alone is off by 9 degrees for half the
    tokens. An observation's tokens take the median (exact on clean depth, crease pixels and all); a
    generated frame's the mean, which a crease pixel can tilt (a few tokens of clean depth)."""
    truth = depth_at(A)
    noisy = truth * np.random.default_rng(0).uniform(0.97, 1.03, truth.shape)
    noisy = torch.nn.functional.avg_pool2d(torch.from_numpy(noisy)[None, None], 3, 1, 1, count_include_pad=False)[0, 0]

    def normal_errors(depth: np.ndarray) -> torch.Tensor:
        memory = LatentSpatialMemory(EXACT)
        memory.write(latent(), depth, CAMERA.K, A, observed=observed)
        normals = memory.normals.double()
        along_axis = normals.abs().max(1).values.clamp(max=1.0)  # every surface of the scene faces along an axis
        return torch.rad2deg(torch.acos(along_axis))

    assert float((normal_errors(truth) < 0.01).double().mean()) >= clean_exact
    assert float(normal_errors(noisy.numpy()).median()) < noisy_median_degrees


@pytest.mark.parametrize("imagined", [False, True])
def test_imagined_planes_of_one_surface_join_where_observed_edges_stay_steps(imagined):
    """Two fronto-parallel planes 40 % apart, in the left and right halves of the view, decoded as such.
    Observed, they are two surfaces (a box before a wall): the depth steps at their border. Imagined,
    planes fitted to generated depth disagree that much on one surface, so they are blended: the depth
    ramps across the border instead of stepping (what broke imagined depth into jagged patches)."""
    from mirage_ros.memory.projection import RememberedSurfaces, pixel_rays

    rays = pixel_rays(torch.as_tensor(CAMERA.K), 128, 128)
    cell_depth = torch.full((16, 16), 2.0, dtype=torch.float64)
    cell_depth[:, 8:] = 2.8
    planes = torch.zeros((16, 16, 4), dtype=torch.float64)
    planes[..., 2], planes[..., 3] = -1.0, -cell_depth
    surfaces = RememberedSurfaces(planes, cell_depth, torch.ones(16, 16, dtype=torch.float64), rays,
                                  imagined=torch.full((16, 16), imagined)).settle_imagined_outliers()
    decoded = cell_depth.repeat_interleave(8, 0).repeat_interleave(8, 1).float()
    depth = surfaces.compose(decoded).double()
    steps = (depth[:, 1:] / depth[:, :-1]).log().abs()
    assert float(steps.max()) == pytest.approx(0.0 if imagined else math.log(1.4), abs=0.06 if imagined else 1e-5)
    np.testing.assert_allclose(depth[:, :56].numpy(), 2.0, rtol=1e-5)  # away from the border: on the planes
    np.testing.assert_allclose(depth[:, 72:].numpy(), 2.8, rtol=1e-5)


def test_generated_surfaces_continue_remembered_ones_without_a_step():
    """The decoder gives a new cell beside remembered ones depth at the wrong scale (here 25 % too far,
    as when it blends in tokens written from further away); the remembered pixels go on their planes.
    The correction they needed is carried into the generated cells next to them, so the new surface
    joins the remembered one, and fades away from them (the decoded depth stays the imagination)."""
    from mirage_ros.memory.projection import RememberedSurfaces, extend_correction, pixel_rays

    rays = pixel_rays(torch.as_tensor(CAMERA.K), 128, 128)
    normal = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    planes = torch.full((16, 16, 4), float("nan"), dtype=torch.float64)
    planes[:, :6, :3] = normal
    planes[:, :6, 3] = -2.0                                # a wall 2 m ahead, remembered in the left 6 columns
    cell_depth = torch.where(torch.isfinite(planes[..., 3]), torch.full((16, 16), 2.0, dtype=torch.float64),
                             torch.full((16, 16), float("nan"), dtype=torch.float64))
    surfaces = RememberedSurfaces(planes, cell_depth, torch.ones(16, 16, dtype=torch.float64), rays)
    decoded = torch.full((128, 128), 2.5)                  # the same wall, decoded 25 % too far
    depth = surfaces.compose(decoded).numpy()
    np.testing.assert_allclose(depth[:, :48], 2.0, rtol=1e-5)                  # remembered: on the plane
    step = np.abs(np.log(depth[:, 48] / depth[:, 47]))
    assert step.max() < 0.2 * math.log(1.25), step.max()  # a fifth of the step without the correction
    assert np.all(np.diff(depth[:, 47:], axis=1) >= -1e-6)  # then it eases back to the decoded depth ...
    np.testing.assert_allclose(depth[:, 88:], 2.5, rtol=1e-3)  # ... which it keeps five cells away
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[0, 0] = True
    spread = extend_correction(torch.full((4, 4), 0.3), known, sigma=1.0)
    assert spread[0, 0] == 0.3 and bool((spread[known.logical_not()] < 0.3).all())
    assert extend_correction(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool), 1.0).abs().max() == 0


def test_remembered_surface_depth_has_no_steps_at_cell_borders_and_keeps_edges():
    """Token planes of one surface that disagree slightly (as planes fitted to imagined depth do) join
    smoothly across latent cells, where one plane per cell leaves a step at every cell border; and a
    real depth edge between two surfaces stays an edge."""
    from mirage_ros.memory.projection import RememberedSurfaces, pixel_rays
    from mirage_ros.training.metrics import seam_ratio

    rays = pixel_rays(torch.as_tensor(CAMERA.K), 128, 128)
    generator = torch.Generator().manual_seed(0)
    # A wall 3 m ahead, tilted 30 degrees; each cell's plane has its offset perturbed by up to +-3 %.
    normal = torch.tensor([math.sin(math.radians(30)), 0.0, -math.cos(math.radians(30))], dtype=torch.float64)
    planes = torch.zeros(16, 16, 4, dtype=torch.float64)
    planes[..., :3] = normal
    noise = 0.03 * (2 * torch.rand(16, 16, generator=generator, dtype=torch.float64) - 1)
    planes[..., 3] = -3.0 * math.cos(math.radians(30)) * (1 + noise)
    planes[:, 12:, 3] *= 0.5  # the right quarter: a nearer surface (a depth edge at x = 96 px)
    centres = pixel_rays(torch.as_tensor(CAMERA.resized(16, 16).K), 16, 16)
    cell_depth = planes[..., 3] / (centres * planes[..., :3]).sum(-1)
    scale = 1 + 0.05 * torch.rand(16, 16, generator=generator, dtype=torch.float64)
    surfaces = RememberedSurfaces(planes, cell_depth, scale, rays)
    # The decoded depth: each cell's own plane (what one plane per cell gives), seen from where it was written.
    per_cell = (rays * planes.repeat_interleave(8, 0).repeat_interleave(8, 1)[..., :3]).sum(-1)
    per_cell = planes.repeat_interleave(8, 0).repeat_interleave(8, 1)[..., 3] / per_cell
    decoded = (per_cell / scale.repeat_interleave(8, 0).repeat_interleave(8, 1)).float()
    depth = surfaces.compose(decoded).numpy()
    left = (slice(None), slice(0, 92))  # the wall, away from the edge
    assert seam_ratio([depth[left]]) < 1.3
    assert seam_ratio([per_cell.numpy()[left]]) > 3.0  # the check above can fail: one plane per cell steps
    np.testing.assert_allclose(depth, per_cell.numpy(), rtol=0.04)  # joining moves depth by < 4 %
    assert np.all(depth[:, 97] / depth[:, 94] < 0.6)  # the nearer surface starts at the edge, not blended


def test_depth_is_clamped_to_the_floor_and_near_floor_points_lie_on_it():
    from mirage_ros.memory.projection import clamp_to_floor, floor_geometry, pixel_rays
    from mirage_ros.training.metrics import heights_above_floor

    pose = look_at((0.0, 0.0, 0.5), (3.0, 0.0, 0.0))  # camera 0.5 m up, looking down at the floor
    truth = box_depth([ROOM], pose, CAMERA.K, 128, 128)
    rays = pixel_rays(torch.as_tensor(CAMERA.K), 128, 128)
    too_far = torch.from_numpy(truth * 1.5).float()  # every floor point pushed below the floor
    clamped = clamp_to_floor(too_far, floor_geometry(rays, pose, floor_height=0.0)).numpy()
    heights = heights_above_floor(clamped, pose, CAMERA.K)
    assert heights.min() > -1e-4
    floor = heights_above_floor(truth, pose, CAMERA.K) < 0.01
    np.testing.assert_allclose(clamped[floor], truth[floor], rtol=1e-4)   # back on the floor exactly
    slightly_short = torch.from_numpy(truth * 0.99).float()                 # floor points 0.5 cm above it
    snapped = clamp_to_floor(slightly_short, floor_geometry(rays, pose, floor_height=0.0)).numpy()
    np.testing.assert_allclose(snapped[floor], truth[floor], rtol=1e-4)
    walls = heights_above_floor(truth, pose, CAMERA.K) > 0.2
    np.testing.assert_array_equal(snapped[walls], slightly_short.numpy()[walls])  # the rest untouched


def test_read_alignment_says_where_each_token_sits_and_at_what_scale():
    """``MemoryView.alignment``: a token's sub-cell offset follows the camera to the fraction of a
    latent pixel, and its scale channel is log2(depth seen at / depth now)."""
    memory = LatentSpatialMemory(EXACT)
    memory.write(latent(), depth_at(A), CAMERA.K, A)
    offsets = []
    for sideways in (0.0, 7.0 * 0.25 / 8.0):  # a quarter latent pixel at the back wall, 7 m away
        pose = look_at((-2.0, sideways, 1.0), (5.0, sideways, 1.0))
        view = memory.read_view(pose, CAMERA.K, (128, 128))
        wall = view.coverage & ((view.depth - 7.0).abs() < 0.01)
        assert wall.sum() >= 20
        assert torch.all(view.alignment[:, ~view.coverage] == 0)
        assert float(view.alignment[2, view.coverage].abs().max()) < 1e-3  # same distance: same scale
        offsets.append(view.alignment[:2, wall])
    # Tokens sit on the patch pixel next to its centre (-1/16 of a cell), then all move a quarter cell in x.
    torch.testing.assert_close(offsets[0], torch.full_like(offsets[0], -0.0625), atol=1e-4, rtol=0)
    torch.testing.assert_close(offsets[1][0], torch.full_like(offsets[1][0], 0.1875), atol=1e-4, rtol=0)
    closer = memory.read_view(look_at((-1.0, 0.0, 1.0), (5.0, 0.0, 1.0)), CAMERA.K, (128, 128))
    covered = closer.coverage
    expected = torch.log2((closer.depth[covered] + 1.0) / closer.depth[covered])  # 1 m nearer along the axis
    torch.testing.assert_close(closer.alignment[2, covered], expected, atol=2e-3, rtol=0)


def test_tokens_keep_whether_they_were_observed_or_imagined(tmp_path):
    """Provenance: a real observation writes observed tokens, the model's own frames imagined ones;
    fusing both keeps the observed share; it survives save / load, and format-2 files load as imagined."""
    memory = LatentSpatialMemory(EXACT)
    memory.write(latent(1), depth_at(A), CAMERA.K, A, observed=True)
    read = memory.read(A, CAMERA.K, (16, 16))
    assert torch.all(read.observed[read.coverage] == 1) and torch.all(read.observed[~read.coverage] == 0)
    memory.write(latent(2), depth_at(A), CAMERA.K, A)  # imagined, the same voxels: fused half and half
    fused = memory.read(A, CAMERA.K, (16, 16))
    torch.testing.assert_close(fused.observed[fused.coverage], torch.full((int(fused.coverage.sum()),), 0.5))
    memory.write(latent(3), depth_at(B), CAMERA.K, B)  # imagined, partly new voxels
    read = memory.read(B, CAMERA.K, (16, 16))
    assert (read.observed[read.coverage] == 0).any()
    path = tmp_path / "memory.safetensors"
    memory.save(path)
    loaded = LatentSpatialMemory(EXACT)
    loaded.load(path)
    assert torch.equal(loaded.read(B, CAMERA.K, (16, 16)).observed, read.observed)

    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as handle:
        metadata = {**handle.metadata(), "format_version": "2"}
        tensors = {name: handle.get_tensor(name) for name in handle.keys() if name != "observed"}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    old = LatentSpatialMemory(EXACT)
    old.load(tmp_path / "old.safetensors")
    old_read = old.read(B, CAMERA.K, (16, 16))
    # The same tokens, all imagined now (which of them shows on a surface may change: observed ones win)
    assert torch.equal(old_read.coverage, read.coverage) and not old_read.observed.any()


def test_window_median_ignores_invalid_cells_and_the_border():
    from mirage_ros.memory.projection import window_median

    values = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[1, 1] = False
    median = window_median(values, valid, 3)
    assert median[0, 0] == 1.0  # corner: cells 0, 1, 4 (5 is invalid)
    assert median[2, 2] == 10.0  # 6, 7, 9, 10, 11, 13, 14, 15 (5 invalid): lower median of an even count
    assert torch.isnan(window_median(values, torch.zeros_like(valid), 3)).all()


def test_cell_layout_gathers_each_pixels_surrounding_and_own_cells():
    from mirage_ros.memory.projection import cell_layout

    layout = cell_layout(32, 24, 4, 3, torch.device("cpu"))
    grid = torch.randn(4, 3, 2)
    around, own = layout.around(grid), layout.own(grid)
    assert around.shape == (4, 32, 24, 2) and own.shape == (32, 24, 2)
    for v, u in ((0, 0), (5, 13), (12, 4), (31, 23), (19, 11)):
        assert torch.equal(own[v, u], grid[v // 8, u // 8])
        # Cell centres sit at pixel 3.5 + 8k: the cells above/below and left/right of the pixel centre.
        y, x = (v - 3.5) / 8, (u - 3.5) / 8
        top, left = min(max(math.floor(y), 0), 3), min(max(math.floor(x), 0), 2)
        bottom, right = min(top + 1, 3), min(left + 1, 2)  # at the border the nearest cell repeats (weight 0)
        expected = [grid[top, left], grid[top, right], grid[bottom, left], grid[bottom, right]]
        assert all(torch.equal(around[k, v, u], expected[k]) for k in range(4))
        assert math.isclose(float(layout.weight[:, v, u].sum()), 1.0, rel_tol=1e-6)
        assert layout.is_own[:, v, u].any()  # the own cell is always among the four


@pytest.mark.parametrize("observed", [False, True])
def test_an_imagined_token_floating_in_front_of_its_surroundings_takes_their_depth(observed):
    """A lone token far in front of the surface around it (an imagined frame whose depth was off) would
    be drawn as a near square; if it was imagined its pixels take the surrounding surface, if it was
    observed (a thin real object) it is kept exactly. Nothing beyond its neighbourhood changes."""
    memory = LatentSpatialMemory(EXACT)
    memory.write(latent(), depth_at(A), CAMERA.K, A, observed=True)
    wall_only = memory.read_view(A, CAMERA.K, (128, 128)).surfaces
    cell = (slice(24, 32), slice(16, 24))  # a cell of the far wall
    near = depth_at(A).copy()
    near[cell] *= 0.4  # imagined 60 % too near
    patch = np.zeros((128, 128), dtype=bool)
    patch[cell] = True
    memory.write(latent(1), near, CAMERA.K, A, valid=patch, observed=observed)
    surfaces = memory.read_view(A, CAMERA.K, (128, 128)).surfaces
    decoded = torch.from_numpy(near).float()  # what the tokens encode, each at the depth it was seen at
    composed = surfaces.compose(decoded)  # (read from where everything was written: every scale is 1)
    truth = torch.from_numpy(depth_at(A)).float()
    floating = composed[cell] / truth[cell]
    if observed:
        torch.testing.assert_close(floating, torch.full_like(floating, 0.4), rtol=1e-4, atol=0)
    else:
        assert torch.all((floating - 1).abs() < 0.01)
    untouched = torch.ones(128, 128, dtype=torch.bool)
    untouched[20:36, 12:28] = False  # the cell and the half cells around it
    assert torch.equal(composed[untouched], wall_only.compose(torch.from_numpy(depth_at(A)).float())[untouched])


@pytest.mark.parametrize("observed", [True, False])
def test_an_imagined_token_seen_much_larger_than_it_was_written_is_not_drawn(observed):
    """Driving up to an imagined box: past ``max_imagined_magnification`` (1.8) its tokens are too coarse
    for the view and are left out (the model draws the place anew); observed tokens are always drawn."""
    memory = LatentSpatialMemory(LatentMemoryConfig(feature_dtype="float32"))
    memory.write(latent(), depth_at(A), CAMERA.K, A, observed=observed)  # box face 3.5 m away

    def box_cells(x: float) -> tuple[np.ndarray, np.ndarray]:
        """Seen from ``x`` on the box's axis: for each cell the box fills, whether a token is shown and its depth."""
        pose = look_at((x, 0.0, 1.0), (5.0, 0.0, 1.0))
        on_box = depth_at(pose) < box_depth([ROOM], pose, CAMERA.K, 128, 128) - 0.01
        box = on_box.reshape(16, 8, 16, 8).all(axis=(1, 3))
        assert box.sum() >= 16
        read = memory.read(pose, CAMERA.K, (16, 16))
        return read.coverage.numpy()[box], read.depth.numpy()[box]

    shown, depth = box_cells(-0.5)  # box face 2.0 m away: 1.75x, drawn
    assert shown.all() and np.allclose(depth, 2.0, atol=0.05)
    if observed:
        assert box_cells(-0.3)[0].all()  # 1.94x
        # 3.9x: with the splat capped at one cell, the box's tokens leave gaps between them
        assert box_cells(0.6)[0].mean() > 0.5
    else:  # 1.94x and 3.9x: the box is not drawn (nothing was written behind it: the model draws these cells)
        for x, face in ((-0.3, 1.8), (0.6, 0.9)):
            shown, depth = box_cells(x)
            assert not np.any(depth[shown] < face + 0.05)


def test_of_one_surface_the_token_nearest_the_pixel_centre_is_drawn_even_if_a_little_nearer_ones_exist():
    """Two tokens on one wall project into one latent pixel, the off-centre one 0.2 % nearer. The
    centred one is drawn, wherever the wall's depth lies (a fixed depth bucketing split one surface at
    bucket borders, and the nearer token won there)."""
    from mirage_ros.memory.projection import zbuffer

    K = torch.tensor([[8.0, 0, 7.5], [0, 8.0, 7.5], [0, 0, 1]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    normals = torch.tensor([[0.0, 0.0, -1.0]] * 2, dtype=torch.float64)  # facing the camera
    for wall in np.linspace(2.0, 2.2, 41):  # steps well below the old 3 % buckets
        centred = [0.0, 0.0, wall * 1.001]
        nearer = [0.4 * wall * 0.999 / 8.0, 0.0, wall * 0.999]  # 0.4 pixel to the right of the centre ray
        points = torch.tensor([nearer, centred], dtype=torch.float64)
        points[:, :2] += torch.tensor([(8 - 7.5) / 8.0, (8 - 7.5) / 8.0]) * points[:, 2:]  # pixel (8, 8)'s ray
        winner, _, _ = zbuffer(points, pose, K, (16, 16), normals_world=normals)
        assert winner[8 * 16 + 8] == 1, f"wall at {wall:.3f} m"
        handicap = torch.tensor([0.0, 0.5])  # the centred token seen at the wrong scale: it loses
        assert zbuffer(points, pose, K, (16, 16), normals_world=normals, handicap=handicap)[0][8 * 16 + 8] == 0


def test_a_splat_past_a_token_footprint_only_fills_gaps():
    """A pillar's edge token 1 m away projects 0.3 pixel right of pixel 8's centre, seen 1.2 pixels wide;
    the wall 3 m behind has a token centred on pixel 9. The pillar's square reaches 0.6 pixel from where
    it projects, not pixel 9's centre (0.7 away), so the wall is shown there, at its depth: competing
    there as before, the nearer pillar hid the wall. Pixel 7, which nothing else covers, is still filled
    by the pillar's splat (a gap left open there is drawn anew every step). At 2 pixels wide the pillar
    covers pixel 9 and wins it."""
    from mirage_ros.memory.projection import zbuffer

    K = torch.tensor([[8.0, 0, 7.5], [0, 8.0, 7.5], [0, 0, 1]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)

    def on_ray(u: float, depth: float) -> list[float]:
        return [(u - 7.5) / 8.0 * depth, (8 - 7.5) / 8.0 * depth, depth]

    points = torch.tensor([on_ray(8.3, 1.0), on_ray(9.0, 3.0)], dtype=torch.float64)
    normals = torch.tensor([[0.0, 0.0, -1.0]] * 2, dtype=torch.float64)
    radius = torch.tensor([1, 0])
    row = 8 * 16
    for footprint, pixel_9, depth_9 in ((1.2, 1, 3.0), (2.0, 0, 1.0)):
        winner, depth, _ = zbuffer(points, pose, K, (16, 16), radius, normals, footprint=torch.tensor([footprint, 1.0]))
        assert winner[row + 8] == 0 and winner[row + 7] == 0  # its own pixel; the gap beside it
        assert winner[row + 9] == pixel_9 and depth[row + 9] == pytest.approx(depth_9)
    winner, _, _ = zbuffer(points, pose, K, (16, 16), radius, normals)  # no footprint: the splat competes everywhere
    assert winner[row + 9] == 0


@pytest.mark.parametrize("seed", range(6))
def test_points_hidden_far_behind_change_nothing_the_zbuffer_shows(seed):
    """Random planar points of many depths (half of them seen nearly edge-on), splats of radius 0-2 with
    footprints, handicaps, a 16x16 or a 2x finer grid: the z-buffer of the points ``hidden_far_behind``
    keeps shows exactly what it shows of all of them (the same points, depths and hits), while many are
    left out; points that do not compete (given to the z-buffer or not) hide nothing."""
    from mirage_ros.memory.projection import hidden_far_behind, zbuffer

    generator = torch.Generator().manual_seed(seed)
    count, size = 20_000, 16 * (1 + seed % 2)
    K = torch.tensor([[size / 2, 0, size / 2 - 0.5], [0, size / 2, size / 2 - 0.5], [0, 0, 1]], dtype=torch.float64)
    pose = torch.as_tensor(look_at((0.0, 0.0, 1.0), (4.0, 1.0 - seed * 0.3, 1.0 + seed * 0.1)))
    points = torch.rand(count, 3, generator=generator) * torch.tensor([8.0, 8.0, 2.0]) - torch.tensor([1.0, 4.0, 0.0])
    normals = torch.randn(count, 3, generator=generator)
    # Half of the planes seen nearly edge-on, whose depths on neighbouring rays reach the clamps.
    normals[::2] -= (normals[::2] @ pose[:3, 2].float())[:, None] * pose[:3, 2].float() * 0.98
    normals = torch.nn.functional.normalize(normals, dim=1)
    normals = torch.where(((pose[:3, 3].float() - points) * normals).sum(1, keepdim=True) > 0, normals, -normals)
    footprint = torch.rand(count, generator=generator) * 3.5
    radius = torch.ceil((footprint - 1) / 2).long().clamp(0, 2)
    handicap = torch.rand(count, generator=generator)
    competing = torch.rand(count, generator=generator) > 0.1
    camera = (points - pose[:3, 3].float()) @ pose[:3, :3].float()
    hidden = hidden_far_behind(camera, K.float(), (size, size), radius, competing)
    z = camera[:, 2].clamp_min(1e-3)
    u, v = size / 2 * camera[:, 0] / z + size / 2 - 0.5, size / 2 * camera[:, 1] / z + size / 2 - 0.5
    in_view = (camera[:, 2] > 0) & (u > -0.5) & (u < size - 0.5) & (v > -0.5) & (v < size - 0.5)
    assert 0.25 < float(hidden[in_view].float().mean()) < 1.0
    given = torch.nonzero(competing).squeeze(1)
    kept = torch.nonzero(competing & ~hidden).squeeze(1)
    shown = [zbuffer(points[i], pose, K, (size, size), radius[i], normals[i], handicap[i], footprint[i]) for i in (given, kept)]
    (winner_all, depth_all, hit_all), (winner_kept, depth_kept, hit_kept) = shown
    assert (winner_all >= 0).float().mean() > 0.9
    assert torch.equal(torch.where(winner_all >= 0, given[winner_all.clamp_min(0)], -1),
                       torch.where(winner_kept >= 0, kept[winner_kept.clamp_min(0)], -1))
    assert torch.equal(depth_all.nan_to_num(-1), depth_kept.nan_to_num(-1))
    assert torch.equal(given[hit_all], kept[hit_kept])


def test_the_view_frustum_keeps_exactly_the_points_projecting_into_the_widened_grid():
    """``in_view_frustum`` (five half-spaces in one product) agrees with transforming and projecting each point:
    in front of the near plane and within the grid widened by the margin, up to rounding at the faces."""
    from mirage_ros.memory.projection import NEAR_PLANE, in_view_frustum

    generator = torch.Generator().manual_seed(4)
    points = torch.rand(50_000, 3, generator=generator) * torch.tensor([12.0, 12.0, 3.0]) - torch.tensor([6.0, 6.0, 0.0])
    pose = torch.as_tensor(look_at((0.5, -0.3, 1.2), (3.0, 2.0, 0.4))).float()
    K = torch.tensor([[8.0, 0.3, 7.5], [0.0, 9.0, 7.0], [0.0, 0.0, 1.0]])
    eye, rotation = pose[:3, 3], pose[:3, :3]
    for margin in (1, 3):
        inside = in_view_frustum(points, eye, rotation, K, (16, 12), margin)
        camera = ((points - eye) @ rotation).double()
        z = camera[:, 2]
        u = (8.0 * camera[:, 0] + 0.3 * camera[:, 1]) / z + 7.5
        v = 9.0 * camera[:, 1] / z + 7.0
        distance = torch.stack([u + margin + 0.5, 12 + margin - 0.5 - u, v + margin + 0.5, 16 + margin - 0.5 - v]).amin(0)
        clearly_in = (z > NEAR_PLANE + 1e-4) & (distance > 1e-3)
        clearly_out = (z < NEAR_PLANE - 2e-3) | ((z > 0.01) & (distance < -1e-3))
        assert bool(inside[clearly_in].all()) and not bool(inside[clearly_out].any())
        assert 1000 < int(clearly_in.sum()) and int((clearly_in | clearly_out).sum()) > 0.99 * len(points)


def test_a_point_up_to_the_bound_behind_can_still_win_and_is_not_hidden():
    """The bound of ``hidden_far_behind`` is tight: point A, 1 m away and 0.4 pixel off pixel 8's centre,
    is seen so edge-on that its plane's depth on the centre ray clamps to 1.5 m; point B, 2.2 m away (2.2x
    A's depth) and 0.3 pixel off the centre, has its plane there clamp to 2.2 / 1.5 = 1.47 m. They are one
    surface and B, the nearer the centre, wins: it must not be hidden. At 2.4 m B is hidden, and A wins."""
    from mirage_ros.memory.projection import hidden_far_behind, zbuffer

    K = torch.tensor([[8.0, 0, 7.5], [0, 8.0, 7.5], [0, 0, 1]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    normals = torch.nn.functional.normalize(torch.tensor([[-1.0, 0.0, 0.0125], [-1.0, 0.0, -0.02]]), dim=1).double()
    for depth_b, b_wins in ((2.2, True), (2.4, False)):
        points = torch.tensor([[(8.4 - 7.5) / 8, 0.0625, 1.0],
                               [(7.7 - 7.5) / 8 * depth_b, 0.0625 * depth_b, depth_b]], dtype=torch.float64)
        winner, _, _ = zbuffer(points, pose, K, (16, 16), normals_world=normals)
        hidden = hidden_far_behind(points.float(), K.float(), (16, 16), None, torch.ones(2, dtype=torch.bool))
        assert winner[8 * 16 + 8] == (1 if b_wins else 0)
        assert hidden.tolist() == [False, not b_wins]


def test_a_read_of_a_big_memory_is_the_same_without_its_first_culls():
    """``read`` leaves out tokens outside the view's frustum (``in_view_frustum``) and hidden far behind
    (``hidden_far_behind``) before its z-buffer runs; with every token facing the camera given to the z-buffer
    instead (both culls off), each field of the read and the tokens' last use are the same, also for imagined
    tokens seen too large to be drawn."""
    import mirage_ros.memory.latent as latent_module

    generator = torch.Generator().manual_seed(0)
    count = 60_000
    tensors = {"keys": torch.arange(count, dtype=torch.long),
               "positions": torch.rand(count, 3, generator=generator) * torch.tensor([10.0, 10.0, 2.5]),
               "normals": torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=1).half(),
               "features": torch.randn(count, 8, generator=generator).half(),
               "view_depths": torch.full((count,), 2.0, dtype=torch.float16), "weights": torch.ones(count),
               "extents": torch.rand(count, generator=generator) * 0.4 + 0.01,
               "last_seen": torch.zeros(count, dtype=torch.int32),
               "observed": (torch.rand(count, generator=generator) > 0.5).half()}
    pose = look_at((5.0, 5.0, 1.0), (9.0, 7.0, 1.2))
    reads, left_out = [], []

    def counted(*args, original=latent_module.hidden_far_behind):
        hidden = original(*args)
        left_out.append(int(hidden.sum()))
        return hidden

    for culled in (True, False):
        memory = LatentSpatialMemory.from_tensors(tensors)
        memory.write_count = 1
        with pytest.MonkeyPatch.context() as patch:
            if culled:  # count what the pre-cull leaves out: both reads must use it
                patch.setattr(latent_module, "hidden_far_behind", counted)
            else:  # every token facing the camera goes to the z-buffer
                patch.setattr(latent_module, "in_view_frustum", lambda points, *_: torch.ones(len(points), dtype=torch.bool))
                patch.setattr(latent_module, "hidden_far_behind", lambda camera, *_: torch.zeros(len(camera), dtype=torch.bool))
            reads.append([memory.read(pose, CAMERA.K, (16, 16), supersample=s) for s in (1, 2)] + [memory.last_seen])
    assert len(left_out) == 2 and min(left_out) > 1000
    for field in ("latent", "coverage", "depth", "source_depth", "planes", "offsets", "observed"):
        for s in range(2):
            a, b = getattr(reads[0][s], field), getattr(reads[1][s], field)
            if a.is_floating_point():
                a, b = a.nan_to_num(-1), b.nan_to_num(-1)
            assert torch.equal(a, b), field
    assert torch.equal(reads[0][2], reads[1][2]) and int(reads[0][2].sum()) > 100


def test_on_one_surface_an_observed_token_is_drawn_over_an_imagined_one():
    """The far wall holds imagined tokens written from A and observed ones from a pose a third of a cell
    to the side. Read from A the imagined tokens sit nearer the cells' centres, yet the observed ones are
    drawn (all but the cells at the view's edge that no observed token reaches): where the truth is
    known, imagination does not cover it."""
    beside = look_at((-2.0, 7.0 / 8.0 / 3.0, 1.0), (5.0, 7.0 / 8.0 / 3.0, 1.0))  # a third of a cell at 7 m

    def observed_share(config: LatentMemoryConfig) -> float:
        memory = LatentSpatialMemory(config)
        memory.write(latent(1), depth_at(A), CAMERA.K, A)
        memory.write(latent(2), depth_at(beside), CAMERA.K, beside, observed=True)
        read = memory.read(A, CAMERA.K, (16, 16))
        wall = read.coverage & ((read.depth - 7.0).abs() < 0.01)
        assert wall.sum() >= 20
        return float(read.observed[wall].mean())

    assert observed_share(EXACT) > 0.85
    assert observed_share(replace(EXACT, imagined_handicap=0.0)) < 0.1  # by distance to the centre alone


def test_of_tokens_on_one_surface_the_one_seen_at_about_its_own_scale_is_drawn():
    """The back wall is observed from 8 m and from 3 m. Read from 3.5 m, wherever a token written from 3 m
    (seen at 0.86x its size) projects, it is drawn rather than one from 8 m (seen 2.3x larger, which the
    refiner would have to redraw)."""
    far, near = look_at((-3.0, 0.0, 1.0), (5.0, 0.0, 1.0)), look_at((2.0, 0.0, 1.0), (5.0, 0.0, 1.0))
    view = look_at((1.5, 0.0, 1.0), (5.0, 0.0, 1.0))
    config = LatentMemoryConfig(feature_dtype="float32")
    near_only = LatentSpatialMemory(config)
    near_only.write(latent(2), box_depth([ROOM], near, CAMERA.K, 128, 128), CAMERA.K, near, observed=True)
    reachable = near_only.read(view, CAMERA.K, (16, 16)).coverage

    def near_share(config: LatentMemoryConfig) -> float:
        memory = LatentSpatialMemory(config)
        for pose, seed in ((far, 1), (near, 2)):
            memory.write(latent(seed), box_depth([ROOM], pose, CAMERA.K, 128, 128), CAMERA.K, pose, observed=True)
        read = memory.read(view, CAMERA.K, (16, 16))
        wall = read.coverage & ((read.depth - 3.5).abs() < 0.01) & reachable
        assert wall.sum() >= 40
        return float((read.source_depth[wall] - 3.0).abs().lt(0.01).float().mean())

    assert near_share(config) > 0.95
    assert near_share(replace(config, scale_handicap=0.0)) < 0.92


@pytest.mark.parametrize("field", ["scale_handicap", "imagined_handicap"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_the_read_handicaps_must_be_finite_and_not_negative(field, value):
    with pytest.raises(ValueError, match="invalid memory config"):
        LatentMemoryConfig(**{field: value})


def test_a_supersampled_read_shows_the_tokens_that_land_between_cell_centres():
    """Two frames of the same room, the second from 0.3 m aside, read at the first's pose: the plain read
    shows the first frame's tokens, which land on its cell centres; the 2x finer read also shows the
    second frame's, which land between them, and leaves no hole where the plain read has none."""
    memory = LatentSpatialMemory(LatentMemoryConfig(feature_dtype="float32"))
    aside = A.copy()
    aside[:3, 3] += aside[:3, 0] * 0.3  # along the camera's x axis
    for pose, sign in ((A, 1.0), (aside, -1.0)):
        memory.write(torch.full((8, 16, 16), sign), depth_at(pose), CAMERA.K, pose)
    plain = memory.read(A, CAMERA.K, (16, 16))
    fine = memory.read(A, CAMERA.K, (16, 16), supersample=2)
    assert fine.latent.shape == (8, 32, 32) and fine.offsets.abs().max() <= 1.5
    assert plain.coverage.all() and fine.coverage.all()
    second_plain = (plain.latent[0] < 0).float().mean()
    second_fine = (fine.latent[0] < 0).float().mean()
    assert second_plain < 0.1 and second_fine > 0.2, (float(second_plain), float(second_fine))
    assert torch.equal(memory.read(A, CAMERA.K, (16, 16)).latent, plain.latent)  # the finer read changes nothing
    supersampled = memory.read_supersampled(A, CAMERA.K, (128, 128), 2)  # the SpatialMemory protocol's way
    assert supersampled.factor == 2 and torch.equal(supersampled.latent, fine.latent)
    assert torch.equal(supersampled.depth, torch.nan_to_num(fine.depth) * fine.coverage)
