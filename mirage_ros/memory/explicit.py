"""``ExplicitPointCloudMemory``: the explicit-3D baseline the paper compares against.

Like Gen3C/VMem-style caches it keeps one coloured point per valid pixel of every written frame,
append-only (float32 position + uint8 colour), and renders the target view at image resolution with the
same deterministic z-buffer as the latent memory. A model then has to re-encode that render with its
autoencoder: the cost (and memory) that ``LatentSpatialMemory`` removes.
"""

from __future__ import annotations

import numpy as np
import torch

from mirage_ros.memory.projection import (MemoryRead, depth_tensor, intrinsics_tensor, pixel_rays, pose_tensor,
                                          to_world, zbuffer)


class ExplicitPointCloudMemory:
    """Append-only RGB point cloud with a z-buffered renderer; same ``write``/``read`` shape as the latent one."""

    def __init__(self, device: str | torch.device = "cpu", splat_radius: int = 0) -> None:
        self.device = torch.device(device)
        self.splat_radius = splat_radius
        self.clear()

    def clear(self) -> None:
        self.positions = torch.zeros((0, 3), dtype=torch.float32, device=self.device)
        self.colors = torch.zeros((0, 3), dtype=torch.uint8, device=self.device)
        self.last_read_coverage = 0.0

    @property
    def bytes(self) -> int:
        return self.positions.numel() * 4 + self.colors.numel()

    @torch.inference_mode()
    def write(self, rgb: torch.Tensor | np.ndarray, depth: np.ndarray | torch.Tensor, K: np.ndarray,
              cam_to_world: np.ndarray, valid: np.ndarray | torch.Tensor | None = None) -> int:
        """Add a point per valid pixel. ``rgb``: uint8 ``[3,H,W]``, or float in [0, 1]."""
        rgb = torch.as_tensor(rgb, device=self.device)
        if rgb.dim() != 3 or rgb.shape[0] != 3:
            raise ValueError(f"rgb must be [3, H, W], got {tuple(rgb.shape)}")
        if rgb.is_floating_point():
            if not bool(torch.isfinite(rgb).all()):
                raise ValueError("rgb contains NaN or inf")
            rgb = (rgb.clamp(0, 1) * 255).round().to(torch.uint8)
        elif rgb.dtype != torch.uint8:
            raise ValueError(f"rgb must be uint8 or float, got {rgb.dtype}")
        height, width = rgb.shape[1:]
        depth, usable = depth_tensor(depth, (height, width), self.device, valid)
        K_t, pose = intrinsics_tensor(K, self.device), pose_tensor(cam_to_world, self.device)
        points = (pixel_rays(K_t, height, width) * depth.unsqueeze(-1))[usable]
        self.positions = torch.cat([self.positions, to_world(points, pose).float()])
        self.colors = torch.cat([self.colors, rgb.permute(1, 2, 0)[usable]])
        return int(points.shape[0])

    @torch.inference_mode()
    def read(self, cam_to_world: np.ndarray, K: np.ndarray, image_hw: tuple[int, int]) -> MemoryRead:
        """Render the cloud: ``latent`` holds RGB ``[3,H,W]`` in [0, 1] (zeros where uncovered)."""
        height, width = int(image_hw[0]), int(image_hw[1])
        K_t, pose = intrinsics_tensor(K, self.device), pose_tensor(cam_to_world, self.device)
        radius = torch.full((self.positions.shape[0],), self.splat_radius, dtype=torch.long, device=self.device)
        winner, depth, _ = zbuffer(self.positions, pose, K_t, (height, width), radius)
        covered = winner >= 0
        image = torch.zeros((3, height * width), dtype=torch.float32, device=self.device)
        image[:, covered] = self.colors[winner[covered]].float().T / 255.0
        coverage = covered.reshape(height, width)
        self.last_read_coverage = float(coverage.float().mean())
        return MemoryRead(image.reshape(3, height, width), coverage, depth.float().reshape(height, width))
