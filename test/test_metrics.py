import numpy as np
import pytest

from mirage_ros.training.metrics import depth_abs_rel, psnr, ssim, visible_in


def test_psnr_known_value_and_mask():
    image = np.full((8, 8, 3), 0.1)
    assert psnr(image, np.zeros((8, 8, 3))) == pytest.approx(20.0)  # mse 0.01
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 0] = True
    assert psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), mask) == float("inf")
    with pytest.raises(ValueError, match="shapes"):
        psnr(np.zeros((8, 8, 3)), np.zeros((4, 8, 3)))


def test_ssim_properties():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image + rng.normal(0, 40, image.shape), 0, 255).astype(np.uint8)
    assert 0.0 < ssim(noisy, image) < 0.9
    assert ssim(noisy, image) > ssim(rng.integers(0, 256, image.shape, dtype=np.uint8), image)


def test_depth_abs_rel_ignores_invalid_pixels():
    reference = np.array([[1.0, 2.0], [np.nan, 4.0]])
    depth = np.array([[1.1, 2.0], [3.0, -1.0]])
    assert depth_abs_rel(depth, reference) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="no pixel"):
        depth_abs_rel(depth, np.full((2, 2), np.nan))


def test_visibility_from_a_reference_view_and_masked_ssim():
    K = np.array([[32.0, 0, 31.5], [0, 32.0, 31.5], [0, 0, 1]])
    wall = np.full((64, 64), 4.0)  # a fronto-parallel wall 4 m ahead
    here = np.eye(4)
    moved = np.eye(4)
    moved[0, 3] = 4.0  # 4 m to the right: only the left half of the view was seen from `here`
    seen = visible_in(wall, moved, wall, here, K)
    assert seen[:, :31].all() and not seen[:, 33:].any()
    nearer = np.full((64, 64), 3.0)  # another surface where the reference saw the wall: not observed
    assert not visible_in(nearer, here, wall, here, K).any()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    damaged = image.copy()
    damaged[:, 36:] = 0
    assert ssim(damaged, image, mask=seen) == pytest.approx(1.0)
    assert ssim(damaged, image) < 0.9


def test_camera_inside_surface_when_a_fifth_of_the_image_is_nearer_than_the_threshold():
    from mirage_ros.training.metrics import INSIDE_DEPTH, camera_inside_surface

    depth = np.full((10, 10), 3.0)
    assert not camera_inside_surface(depth)
    depth[:2] = INSIDE_DEPTH - 0.01  # exactly a fifth: not more than the share
    assert not camera_inside_surface(depth)
    depth[2, 0] = 0.1
    assert camera_inside_surface(depth)
    depth[:3] = np.nan  # nothing hit is far, not near
    assert not camera_inside_surface(depth)


def test_seam_ratio_sees_cell_blocks_and_not_smooth_images():
    from mirage_ros.training.metrics import seam_ratio

    rng = np.random.default_rng(0)
    smooth = np.add.outer(np.linspace(1, 3, 64), np.linspace(0, 1, 64))
    blocks = np.repeat(np.repeat(rng.uniform(1, 3, (8, 8)), 8, 0), 8, 1) + 0.001 * smooth
    assert seam_ratio([smooth]) == pytest.approx(1.0, abs=0.05)
    assert seam_ratio([blocks]) > 10
    rgb = (np.repeat(np.repeat(rng.uniform(0, 255, (8, 8, 3)), 8, 0), 8, 1)).astype(np.uint8)
    assert seam_ratio([rgb]) > 10


def test_reprojection_consistency_is_high_for_a_coherent_world_and_low_for_noise():
    import math

    from scenes import box_depth, look_at

    from mirage_ros.camera import PinholeCamera
    from mirage_ros.training.metrics import reprojection_psnr

    camera = PinholeCamera.from_hfov(64, 64, math.pi / 2)
    room = ((-5.0, -5.0, 0.0), (5.0, 5.0, 3.0))
    poses = [look_at((0.0, 0.1 * t, 1.0), (5.0, 0.5, 1.0)) for t in range(2)]
    depths = [box_depth([room], pose, camera.K, 64, 64) for pose in poses]

    def coloured(depth, pose):  # colour painted on the walls: a function of the 3D point
        v, u = np.mgrid[0:64, 0:64].astype(float)
        rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(camera.K).T
        world = (rays * depth[..., None]) @ pose[:3, :3].T + pose[:3, 3]
        return (127 + 120 * np.sin(3 * world)).astype(np.uint8)

    frames = [coloured(d, p) for d, p in zip(depths, poses)]
    coherent = reprojection_psnr(frames[0], depths[0], poses[0], frames[1], depths[1], poses[1], camera.K)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    incoherent = reprojection_psnr(frames[0], depths[0], poses[0], noise, depths[1], poses[1], camera.K)
    assert coherent > 25 and incoherent < 12


def test_two_sample_test_is_at_chance_for_the_same_frames_and_certain_for_different_ones():
    import torch

    from mirage_ros.training.realism import RealismConfig, two_sample_accuracy

    rng = torch.Generator().manual_seed(0)
    true = torch.rand(120, 4, 64, 64, generator=rng)
    same = true[torch.randperm(120, generator=rng)]  # the same distribution of frames
    different = true * 0.5                             # darker and nearer: easy to tell apart
    groups = np.repeat(np.arange(3), 40)
    config = RealismConfig(steps=80)
    assert two_sample_accuracy(true, same, groups, config=config) <= 0.65
    assert two_sample_accuracy(true, different, groups, config=config) >= 0.9


def test_depth_step_share_counts_obstacle_borders_not_slopes_or_missing_depth():
    from mirage_ros.training.metrics import depth_step_share

    floor = np.tile(np.linspace(0.5, 5.0, 128)[:, None], (1, 16))  # a smooth slope: no step anywhere
    assert depth_step_share(floor) == 0.0
    wall = np.full((16, 16), 4.0)
    wall[:, 8:] = 1.0  # one vertical border: 16 of the 480 neighbour pairs
    assert depth_step_share(wall) == pytest.approx(16 / 480)
    jagged = wall.copy()
    jagged[::2, 7] = 1.0  # a ragged border has more of them
    assert depth_step_share(jagged) > depth_step_share(wall)
    sky = np.full((16, 16), np.nan)  # nothing hit anywhere: read as far, no border
    assert depth_step_share(sky) == 0.0


def test_contrast_ratio_is_one_for_the_truth_and_falls_with_fog():
    from mirage_ros.training.metrics import contrast_ratio, luminance_contrast

    rng = np.random.default_rng(0)
    truth = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    assert luminance_contrast(np.full((8, 8, 3), 128, np.uint8)) == 0.0
    stripes = np.zeros((8, 8, 3), np.uint8)
    stripes[:, ::2] = 255  # half black, half white: luminance 0 or 1
    assert luminance_contrast(stripes) == pytest.approx(0.5)
    assert contrast_ratio(truth, truth) == pytest.approx(1.0)
    fog = [(0.25 * frame + 96).astype(np.uint8) for frame in truth]  # a quarter of the contrast, greyed
    assert contrast_ratio(fog, truth) == pytest.approx(0.25, abs=0.01)
