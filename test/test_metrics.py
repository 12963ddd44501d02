import numpy as np
import pytest

from mirage_ros.training.metrics import depth_abs_rel, psnr, ssim


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
