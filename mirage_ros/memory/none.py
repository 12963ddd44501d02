"""``NoMemory``: the ablation. Nothing is remembered, so every view is generated from scratch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mirage_ros.memory.protocol import Frame, MemoryStats, MemoryView


class NoMemory:
    """A ``SpatialMemory`` that holds nothing; its views are empty latent grids of ``channels``."""

    def __init__(self, channels: int, patch_size: int, device: str | torch.device = "cpu") -> None:
        self.channels, self.patch_size, self.device = channels, patch_size, torch.device(device)

    def clear(self) -> None:
        """Nothing to forget."""

    def write_frame(self, frame: Frame, valid: torch.Tensor) -> int:
        return 0

    def read_view(self, cam_to_world: np.ndarray, K: np.ndarray, image_hw: tuple[int, int],
                  surface_depth: bool = True) -> MemoryView:
        h, w = image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
        return MemoryView(torch.zeros((self.channels, h, w), device=self.device),
                          torch.zeros((h, w), dtype=torch.bool, device=self.device),
                          torch.zeros((h, w), device=self.device),
                          torch.zeros(tuple(image_hw), dtype=torch.bool, device=self.device))

    def read_supersampled(self, cam_to_world: np.ndarray, K: np.ndarray, image_hw: tuple[int, int],
                          factor: int) -> None:
        return None

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)

    def stats(self) -> MemoryStats:
        return MemoryStats(0, 0, 0, 0.0)

    def nearest_surface(self, x: float, y: float, min_height: float, max_height: float) -> float:
        return math.inf

    def save(self, path: str | Path) -> None:
        raise ValueError("this simulator runs without memory (memory: none): there is nothing to save")

    def load(self, path: str | Path, channels: int | None = None) -> None:
        raise ValueError("this simulator runs without memory (memory: none): it cannot load one")
