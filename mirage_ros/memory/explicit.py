"""``ExplicitPointCloudMemory``: the explicit-3D baseline the paper compares against.

Like Gen3C/VMem-style caches it keeps one coloured point per valid pixel of every written frame,
append-only (float32 position + uint8 colour), and renders the target view at image resolution with the
same deterministic z-buffer as the latent memory. A model then has to re-encode that render with its
autoencoder: the cost (and memory) that ``LatentSpatialMemory`` removes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mirage_ros.memory.projection import depth_tensor, intrinsics_tensor, pixel_rays, pose_tensor, to_world, zbuffer
from mirage_ros.memory.protocol import Frame, MemoryStats, MemoryView

#: ``encoder(rgb [1,3,H,W] in [0,1], depth [1,H,W] metres, NaN = far) -> latent [1,C,h,w]``.
Encoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PointCloudRender:
    """The point cloud rendered at image resolution: ``rgb [3,H,W]`` in [0, 1] (zeros where uncovered),
    ``coverage [H,W]`` bool, ``depth [H,W]`` metres, NaN where uncovered."""

    rgb: torch.Tensor
    coverage: torch.Tensor
    depth: torch.Tensor


class ExplicitPointCloudMemory:
    """Append-only RGB point cloud with a z-buffered renderer.

    As a ``SpatialMemory`` its view is the render re-encoded by ``encoder`` (the world model's
    autoencoder) into latent tokens of ``patch_size`` pixels: a token counts as remembered only where
    the render covers its whole patch.
    """

    def __init__(self, device: str | torch.device = "cpu", splat_radius: int = 0, encoder: Encoder | None = None,
                 patch_size: int = 8) -> None:
        self.device = torch.device(device)
        self.splat_radius = splat_radius
        self.encoder = encoder
        self.patch_size = patch_size
        self.clear()

    def clear(self) -> None:
        self.positions = torch.zeros((0, 3), dtype=torch.float32, device=self.device)
        self.colors = torch.zeros((0, 3), dtype=torch.uint8, device=self.device)
        self.observations = 0
        self.last_read_coverage = 0.0

    def stats(self) -> MemoryStats:
        held = self.positions.numel() * 4 + self.colors.numel()
        return MemoryStats(int(self.positions.shape[0]), held, self.observations, self.last_read_coverage)

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
        self.observations += int(points.shape[0])
        return int(points.shape[0])

    @torch.inference_mode()
    def read(self, cam_to_world: np.ndarray, K: np.ndarray, image_hw: tuple[int, int]) -> PointCloudRender:
        """Render the cloud at ``image_hw`` with intrinsics ``K`` of that size."""
        height, width = int(image_hw[0]), int(image_hw[1])
        K_t, pose = intrinsics_tensor(K, self.device), pose_tensor(cam_to_world, self.device)
        radius = torch.full((self.positions.shape[0],), self.splat_radius, dtype=torch.long, device=self.device)
        winner, depth, _ = zbuffer(self.positions, pose, K_t, (height, width), radius)
        covered = winner >= 0
        image = torch.zeros((3, height * width), dtype=torch.float32, device=self.device)
        image[:, covered] = self.colors[winner[covered]].float().T / 255.0
        coverage = covered.reshape(height, width)
        self.last_read_coverage = float(coverage.float().mean())
        return PointCloudRender(image.reshape(3, height, width), coverage, depth.float().reshape(height, width))

    # ------------------------------------------------------------------ the SpatialMemory protocol
    def write_frame(self, frame: Frame, valid: torch.Tensor) -> int:
        if frame.rgb is None:
            raise ValueError("the explicit memory stores colours: the frame has no rgb")
        return self.write(frame.rgb, frame.depth, frame.K, frame.cam_to_world, valid=valid)

    def read_view(self, cam_to_world: np.ndarray, K: np.ndarray, image_hw: tuple[int, int],
                  surface_depth: bool = True) -> MemoryView:
        """Render, then re-encode the render (the cost the latent memory removes); a token is
        remembered where its whole patch is covered, at the nearest depth of the patch."""
        if self.encoder is None:
            raise ValueError("this explicit memory has no encoder: it can render, not give a latent view")
        render = self.read(cam_to_world, K, image_hw)
        latent = self.encoder(render.rgb[None], render.depth[None])[0].float()  # NaN depth = far
        factor = self.patch_size
        token_coverage = F.avg_pool2d(render.coverage[None, None].float(), factor)[0, 0] >= 0.999
        nearest = torch.where(render.coverage, render.depth, torch.full_like(render.depth, 1e9))
        token_depth = -F.max_pool2d(-nearest[None, None], factor)[0, 0]
        return MemoryView(latent, token_coverage, torch.where(token_coverage, token_depth, torch.zeros_like(token_depth)),
                          render.coverage)

    def read_supersampled(self, cam_to_world: np.ndarray, K: np.ndarray, image_hw: tuple[int, int],
                          factor: int) -> None:
        """None: a re-encoded render is aligned with the view already (no tokens placed on a grid)."""
        return None

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return self.positions.cpu().numpy(), self.colors.cpu().numpy()

    def nearest_surface(self, x: float, y: float, min_height: float, max_height: float) -> float:
        """Explicit points are dense: plain distance to the nearest point."""
        band = (self.positions[:, 2] >= min_height) & (self.positions[:, 2] <= max_height)
        if not bool(band.any()):
            return math.inf
        offset = torch.tensor([x, y], dtype=torch.float64, device=self.device) - self.positions[band, :2].double()
        return float(offset.norm(dim=1).min())

    def save(self, path: str | Path) -> None:
        raise ValueError("only latent memories can be saved; this simulator uses the explicit baseline")

    def load(self, path: str | Path, channels: int | None = None) -> None:
        raise ValueError("saved memories are latent memories; this simulator uses the explicit baseline")
