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


def test_seam_ratio_sees_cell_blocks_and_not_smooth_images():
    from mirage_ros.training.metrics import seam_ratio

    rng = np.random.default_rng(0)
    smooth = np.add.outer(np.linspace(1, 3, 64), np.linspace(0, 1, 64))
    blocks = np.repeat(np.repeat(rng.uniform(1, 3, (8, 8)), 8, 0), 8, 1) + 0.001 * smooth
    assert seam_ratio([smooth]) == pytest.approx(1.0, abs=0.05)
    assert seam_ratio([blocks]) > 10
    rgb = (np.repeat(np.repeat(rng.uniform(0, 255, (8, 8, 3)), 8, 0), 8, 1)).astype(np.uint8)
    assert seam_ratio([rgb]) > 10
