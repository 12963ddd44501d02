"""Geometry shared by both memories: input validation, back-projection, projection and a
deterministic z-buffer with optional footprint splats.

The z-buffer never relies on the order in which a scatter with repeated indices lands (undefined in
PyTorch, nondeterministic on CUDA). Candidates are sorted stably by ``(pixel, quantised depth)``; the
first candidate of each pixel wins, and its depth and feature are taken from that same candidate. The
input order (token order) breaks exact ties, so results are identical run to run and on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mirage_ros.camera import validate_intrinsics
from mirage_ros.geometry import validate_transform

#: Points closer than this to the camera plane are not projected (metres).
NEAR_PLANE = 0.02
#: Depth quantum of the z-buffer ordering key (metres); reported depths stay exact.
DEPTH_QUANTUM = 1e-5
#: Relative depth handicap per pixel of splat offset, so a token's own pixel beats its neighbours'
#: footprints on the same surface while a genuinely nearer surface still wins.
SPLAT_DEPTH_PENALTY = 0.01


@dataclass
class MemoryRead:
    """A memory seen from a camera: ``latent [C,h,w]`` (RGB in [0,1] for the explicit memory),
    ``coverage [h,w]`` bool and ``depth [h,w]`` metres along the optical axis, NaN where uncovered."""

    latent: torch.Tensor
    coverage: torch.Tensor
    depth: torch.Tensor

    @property
    def coverage_fraction(self) -> float:
        return float(self.coverage.float().mean())


def pose_tensor(cam_to_world: np.ndarray | torch.Tensor, device: torch.device, name: str = "cam_to_world") -> torch.Tensor:
    array = cam_to_world.detach().cpu().numpy() if torch.is_tensor(cam_to_world) else cam_to_world
    return torch.as_tensor(validate_transform(array, name), dtype=torch.float64, device=device)


def intrinsics_tensor(K: np.ndarray | torch.Tensor, device: torch.device, name: str = "K") -> torch.Tensor:
    array = K.detach().cpu().numpy() if torch.is_tensor(K) else K
    try:
        validated = validate_intrinsics(array, name)
    except np.linalg.LinAlgError as error:
        raise ValueError(f"{name} is singular") from error
    return torch.as_tensor(validated, dtype=torch.float64, device=device)


def depth_tensor(depth: np.ndarray | torch.Tensor, shape: tuple[int, int], device: torch.device,
                 valid: np.ndarray | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth as float64 ``[H,W]`` and the mask of pixels that may become memory (finite, positive, ``valid``)."""
    depth = torch.as_tensor(depth, device=device)
    if tuple(depth.shape) != shape:
        raise ValueError(f"depth must have shape {shape}, got {tuple(depth.shape)}")
    if not depth.is_floating_point():
        raise ValueError(f"depth must be a floating point array in metres, got {depth.dtype}")
    if torch.isinf(depth).any():
        raise ValueError("depth contains inf (use NaN for pixels without depth)")
    depth = depth.to(torch.float64)
    usable = torch.isfinite(depth) & (depth > 0)
    if valid is not None:
        valid = torch.as_tensor(valid, device=device)
        if tuple(valid.shape) != shape or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool mask of shape {shape}, got {valid.dtype} {tuple(valid.shape)}")
        usable &= valid
    if not bool(usable.any()):
        raise ValueError("depth has no valid pixel (empty frame): nothing to write")
    return torch.where(usable, depth, torch.zeros_like(depth)), usable


def pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[H,W,3]`` camera-frame rays with z = 1 through pixel centres (integer coordinates)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=K.dtype, device=K.device),
                          torch.arange(width, dtype=K.dtype, device=K.device), indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    return pixels @ torch.linalg.inv(K).T


def to_world(points_camera: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    return points_camera @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]


def project(points_world: torch.Tensor, cam_to_world: torch.Tensor, K: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``u, v`` and z-depth of world points seen from ``cam_to_world``."""
    rotation, translation = cam_to_world[:3, :3], cam_to_world[:3, 3]
    camera = (points_world.to(torch.float64) - translation) @ rotation
    z = camera[:, 2]
    safe = torch.where(z > NEAR_PLANE, z, torch.ones_like(z))
    u = K[0, 0] * camera[:, 0] / safe + K[0, 1] * camera[:, 1] / safe + K[0, 2]
    v = K[1, 1] * camera[:, 1] / safe + K[1, 2]
    return u, v, z


def zbuffer(points_world: torch.Tensor, cam_to_world: torch.Tensor, K: torch.Tensor, hw: tuple[int, int],
            splat_radius: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest point per pixel of an ``hw`` image.

    Returns ``winner [h*w]`` (index of the point shown at each pixel, -1 if none), ``depth [h*w]``
    (its z-depth, NaN if none) and ``hit [N]`` (whether each point won at least one pixel).
    ``splat_radius [N]`` (ints, optional) widens each point to a square footprint of that radius.
    """
    h, w = hw
    count = points_world.shape[0]
    winner = torch.full((h * w,), -1, dtype=torch.long, device=points_world.device)
    depth_out = torch.full((h * w,), float("nan"), dtype=torch.float64, device=points_world.device)
    hit = torch.zeros(count, dtype=torch.bool, device=points_world.device)
    if count == 0:
        return winner, depth_out, hit
    u, v, z = project(points_world, cam_to_world, K)
    finite = torch.isfinite(z)  # NaN points (culled by the caller) never show
    z = torch.where(finite, z, torch.full_like(z, -1.0))
    u, v = torch.nan_to_num(u), torch.nan_to_num(v)
    ui, vi = torch.round(u).long(), torch.round(v).long()
    radius = splat_radius if splat_radius is not None else torch.zeros(count, dtype=torch.long, device=u.device)
    max_radius = int(radius.max()) if count else 0
    # Cheap frustum cull before generating splat candidates.
    visible = (z > NEAR_PLANE) & (ui >= -max_radius) & (ui < w + max_radius) & (vi >= -max_radius) & (vi < h + max_radius)
    index = torch.nonzero(visible).squeeze(1)
    if index.numel() == 0:
        return winner, depth_out, hit
    ui, vi, z, radius = ui[index], vi[index], z[index], radius[index]
    offsets = torch.arange(-max_radius, max_radius + 1, device=u.device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    ring = torch.maximum(dx.abs(), dy.abs())
    cu = ui[:, None] + dx[None]
    cv = vi[:, None] + dy[None]
    keep = (ring[None] <= radius[:, None]) & (cu >= 0) & (cu < w) & (cv >= 0) & (cv < h)
    candidate_point = index[:, None].expand_as(cu)[keep]
    pixel = (cv * w + cu)[keep]
    order_depth = (z[:, None] * (1.0 + SPLAT_DEPTH_PENALTY * ring[None]))[keep]
    true_depth = z[:, None].expand_as(cu)[keep]
    quantised = torch.round(order_depth / DEPTH_QUANTUM).long().clamp(max=2**34)
    key = pixel * (2**35) + quantised
    order = torch.sort(key, stable=True).indices
    pixel_sorted = pixel[order]
    first = torch.ones_like(pixel_sorted, dtype=torch.bool)
    first[1:] = pixel_sorted[1:] != pixel_sorted[:-1]
    chosen = order[first]
    winner[pixel[chosen]] = candidate_point[chosen]
    depth_out[pixel[chosen]] = true_depth[chosen]
    hit[candidate_point[chosen]] = True
    return winner, depth_out, hit
