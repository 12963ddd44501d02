"""Image and depth metrics for evaluation, on numpy arrays as the renderer and ``WorldModel`` return them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_float_image(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H,W,3]`` (or float in [0,1]) -> float64 ``[1,3,H,W]`` in [0, 1]."""
    array = np.asarray(image)
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return torch.from_numpy(array.astype(np.float64) / scale).permute(2, 0, 1)[None]


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 255] (uint8) or [0, 1]; ``mask [H,W]``
    restricts it to some pixels. Identical images give ``inf``."""
    a, b = _as_float_image(image), _as_float_image(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    error = (a - b) ** 2
    if mask is not None:
        weights = torch.from_numpy(np.asarray(mask, dtype=bool))[None, None].expand_as(error)
        if not weights.any():
            raise ValueError("psnr mask selects no pixel")
        mse = float(error[weights].mean())
    else:
        mse = float(error.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(image: np.ndarray, reference: np.ndarray, window: int = 7, sigma: float = 1.5,
         mask: np.ndarray | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004) with a Gaussian window, over RGB channels;
    ``mask [H,W]`` restricts the mean to windows centred on those pixels."""
    a, b = _as_float_image(image), _as_float_image(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    kernel_1d = torch.exp(-coords**2 / (2 * sigma**2))
    kernel_1d /= kernel_1d.sum()
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(3, 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    if mask is None:
        return float(value.mean())
    half = window // 2
    centres = torch.from_numpy(np.asarray(mask, dtype=bool)[half:-half, half:-half])
    if not centres.any():
        raise ValueError("ssim mask selects no window centre")
    return float(value[0][:, centres].mean())


def depth_abs_rel(depth: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean ``|d - d_ref| / d_ref`` over pixels where both depths are valid (finite, positive)."""
    depth, reference = np.asarray(depth, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    valid = np.isfinite(depth) & np.isfinite(reference) & (depth > 0) & (reference > 0)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    if not valid.any():
        raise ValueError("no pixel has a valid depth in both maps")
    return float(np.mean(np.abs(depth[valid] - reference[valid]) / reference[valid]))


def project_into(depth: np.ndarray, cam_to_world: np.ndarray, reference_cam_to_world: np.ndarray,
                 K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where every pixel's 3D point (``depth``, pose) lands in a reference camera with the same ``K``:
    integer pixel ``(pu, pv)``, depth ``z`` there, and whether it lands inside the image, in front."""
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    points = rays * depth[..., None]
    world = points @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]
    world_to_reference = np.linalg.inv(reference_cam_to_world)
    there = world @ world_to_reference[:3, :3].T + world_to_reference[:3, 3]
    z = there[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        pu = np.round(K[0, 0] * there[..., 0] / z + K[0, 1] * there[..., 1] / z + K[0, 2])
        pv = np.round(K[1, 1] * there[..., 1] / z + K[1, 2])
    inside = np.isfinite(depth) & (z > 0) & (pu >= 0) & (pu < width) & (pv >= 0) & (pv < height)
    pu, pv = np.where(inside, pu, 0).astype(int), np.where(inside, pv, 0).astype(int)
    return pu, pv, z, inside


def visible_in(depth: np.ndarray, cam_to_world: np.ndarray, reference_depth: np.ndarray,
               reference_cam_to_world: np.ndarray, K: np.ndarray, tolerance: float = 0.02) -> np.ndarray:
    """``[H,W]`` bool: pixels of a view (true depth, pose) whose surface point was also seen by a
    reference view (its true depth agrees within ``tolerance``), i.e. content that was observed there."""
    pu, pv, z, inside = project_into(depth, cam_to_world, reference_cam_to_world, K)
    seen = np.zeros_like(inside)
    seen[inside] = np.abs(reference_depth[pv[inside], pu[inside]] - z[inside]) <= tolerance * z[inside]
    return seen


def reprojection_psnr(rgb: np.ndarray, depth: np.ndarray, cam_to_world: np.ndarray, next_rgb: np.ndarray,
                      next_depth: np.ndarray, next_cam_to_world: np.ndarray, K: np.ndarray,
                      tolerance: float = 0.05) -> float | None:
    """Photometric consistency of two consecutive frames with their own depth: the next frame's pixels
    are carried into this frame by its depth and the known poses; PSNR (dB) of the colours over pixels
    where the two depths agree (within ``tolerance``: the same surface, seen both ways). A world whose
    colours, depth and motion fit together scores high (capped at 60 dB: identical colours). ``None``
    when fewer than 50 pixels are consistent."""
    pu, pv, z, inside = project_into(next_depth, next_cam_to_world, cam_to_world, K)
    consistent = inside.copy()
    consistent[inside] = np.abs(depth[pv[inside], pu[inside]] - z[inside]) <= tolerance * z[inside]
    if consistent.sum() < 50:
        return None
    landed = np.asarray(rgb)[pv, pu]
    return min(psnr(np.asarray(next_rgb), landed, consistent), 60.0)


def luminance_contrast(rgb: np.ndarray) -> float:
    """Standard deviation of the luminance (mean of the channels, 0..1) of an ``[H,W,3]`` uint8 frame: how
    much a view shows. Imagined drives that collapse into fog lose it; a true room keeps it."""
    return float((np.asarray(rgb, dtype=np.float64) / 255.0).mean(-1).std())


def contrast_ratio(generated: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean ``luminance_contrast`` of the generated frames over that of the true frames at the same poses:
    1 keeps the truth's contrast, well under 1 is fog."""
    reference = float(np.mean([luminance_contrast(frame) for frame in truth]))
    return float(np.mean([luminance_contrast(frame) for frame in generated])) / max(reference, 1e-12)


#: The camera is "inside a surface" when more than ``INSIDE_SHARE`` of the image is nearer than ``INSIDE_DEPTH``:
#: the floor is never that near (the camera is 0.35 m or more above it), and a robot that close to a wall has
#: already hit it. A planner reading such depth sees itself boxed in.
INSIDE_DEPTH = 0.45  # m
INSIDE_SHARE = 0.2


def camera_inside_surface(depth: np.ndarray) -> bool:
    """Whether ``depth`` (m; NaN where nothing is hit) puts the camera inside a surface (see ``INSIDE_DEPTH``)."""
    return bool(np.mean(np.nan_to_num(depth, nan=np.inf) < INSIDE_DEPTH) > INSIDE_SHARE)


#: A depth step between neighbouring pixels larger than this (relative, in log depth: ~16 %) is an edge a
#: costmap would read as the border of an obstacle.
DEPTH_STEP = 0.15


def depth_step_share(depth: np.ndarray) -> float:
    """Share of neighbouring pixel pairs of ``depth [H,W]`` (m; NaN: nothing hit, read as far) whose log
    depth differs by more than ``DEPTH_STEP``: how much of the image is obstacle border. True frames have
    them only where objects end; jagged imagined depth has many more."""
    log_depth = np.log(np.clip(np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=np.inf), 1e-3, 1e3))
    steps = [np.abs(np.diff(log_depth, axis=axis)) > DEPTH_STEP for axis in (0, 1)]
    return float(sum(step.sum() for step in steps) / sum(step.size for step in steps))


def seam_gradients(image: np.ndarray, cell: int = 8) -> tuple[float, float]:
    """Mean absolute neighbour difference of ``image [H,W]`` across the borders of ``cell``-pixel
    latent cells, and everywhere else. Their ratio is the token-seam ratio: about 1 for images without
    a grid imprint, larger where every 8x8 cell is a block of its own."""
    x = np.asarray(image, dtype=np.float64)
    across, within = [], []
    for axis in (0, 1):
        difference = np.abs(np.diff(x, axis=axis))
        border = (np.arange(difference.shape[axis]) + 1) % cell == 0
        border = border[:, None] if axis == 0 else border[None, :]
        border = np.broadcast_to(border, difference.shape)
        finite = np.isfinite(difference)
        across.append(difference[border & finite])
        within.append(difference[~border & finite])
    return float(np.concatenate(across).mean()), float(np.concatenate(within).mean())


def seam_ratio(images: list[np.ndarray], cell: int = 8) -> float:
    """Token-seam ratio over a set of images (``seam_gradients`` pooled): RGB images are compared by
    luma, depth maps by log-depth."""
    borders, insides = [], []
    for image in images:
        array = np.asarray(image, dtype=np.float64)
        if array.ndim == 3:
            array = array @ np.array([0.299, 0.587, 0.114])
        else:
            array = np.log(np.where(array > 0, array, np.nan))
        border, inside = seam_gradients(array, cell)
        borders.append(border)
        insides.append(inside)
    return float(np.mean(borders) / max(np.mean(insides), 1e-12))


def heights_above_floor(depth: np.ndarray, cam_to_world: np.ndarray, K: np.ndarray,
                        floor_height: float = 0.0) -> np.ndarray:
    """``[H,W]`` height (m, world z up) above the floor plane of every pixel's 3D point (NaN: no depth)."""
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    down = rays @ cam_to_world[2, :3]
    return cam_to_world[2, 3] + np.where(depth > 0, depth, np.nan) * down - floor_height
