"""What every spatial memory offers the world model: one protocol, one view type, one write-back rule.

``WorldModel`` holds a ``SpatialMemory`` and never asks which kind it is. Each step it asks the memory
for a ``MemoryView`` at the target camera (what is already known there, on the latent grid), generates
the rest, and gives the finished ``Frame`` back through ``write_back``, the single rule of what a frame
adds to memory (also used to build training examples, so training meets memories made the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from mirage_ros.memory.projection import RememberedSurfaces


@dataclass
class Frame:
    """One camera frame at the model's resolution, as a memory is given it to remember.

    ``rgb [3,H,W]`` float in [0, 1] (``None`` where only latents are known, as in training examples;
    the explicit baseline needs it); ``depth [H,W]`` metres along the optical axis (NaN or <= 0: no
    depth); ``latent [C,h,w]`` the autoencoder's tokens of this frame (``H = h * patch``); ``K [3,3]``
    intrinsics at ``H x W``; ``cam_to_world [4,4]`` optical-frame camera pose in the memory frame;
    ``observed``: a real observation (else a frame the model imagined).
    """

    rgb: torch.Tensor | None
    depth: torch.Tensor
    latent: torch.Tensor
    K: np.ndarray
    cam_to_world: np.ndarray
    observed: bool = False


#: A remembered token counts as observed (real) when at least this share of its fused observations were
#: real, else as imagined (the model's own): what the read refiner redraws, what may be settled as an
#: outlier, and what is left out when seen much larger than it was written all follow this one rule.
OBSERVED_SHARE = 0.5


@dataclass
class MemoryView:
    """What the denoiser is given of a memory at the target camera, on the latent grid.

    ``latent [C,h,w]`` remembered tokens (zeros where uncovered); ``coverage [h,w]`` bool; ``depth
    [h,w]`` metres of the remembered surface, 0 where uncovered; ``pixel_coverage [H,W]`` bool, what is
    already known at image resolution. ``surfaces`` (latent memory, when asked for; else ``None``):
    the remembered tokens as surfaces, which give remembered pixels their depth once the frame is
    decoded (``RememberedSurfaces.compose``). ``alignment [3,h,w]`` (latent memory; else ``None``: the
    view is already aligned, as a re-encoded render is): how each remembered token sits in this view,
    its sub-cell offset (x, y, latent pixels) and ``log2`` of the depth it was seen at over its depth
    here (0 where uncovered); what a ``MemoryReadRefiner`` needs to redraw the mosaic for this view.
    ``observed [h,w]`` (latent memory; else ``None``): the share of each remembered token's
    observations that were real rather than imagined (0 where uncovered). ``supersampled``: the same read
    on a finer grid (``SpatialMemory.read_supersampled``) where one is attached, as training examples do.
    """

    latent: torch.Tensor
    coverage: torch.Tensor
    depth: torch.Tensor
    pixel_coverage: torch.Tensor
    surfaces: RememberedSurfaces | None = None
    alignment: torch.Tensor | None = None
    observed: torch.Tensor | None = None
    supersampled: SupersampledRead | None = None

    @property
    def coverage_fraction(self) -> float:
        """Share of the latent grid the memory covers."""
        return float(self.coverage.float().mean())


@dataclass
class SupersampledRead:
    """A latent memory read on a grid ``factor`` times finer than the view's latent grid.

    Each finer cell shows the token that projects nearest its centre, so one cell of the view sees up to
    ``factor ** 2`` tokens, where each lands and how far away it is. The view itself keeps one token per cell:
    at a depth edge, or where tokens land off the cell centres, that one token cannot say what the cell holds;
    a ``MemoryReadRefiner`` made for this factor reads these too. ``latent [C,fh,fw]`` (zeros where
    uncovered), ``coverage [fh,fw]`` bool, ``depth [fh,fw]`` metres (0 where uncovered) and ``alignment
    [3,fh,fw]`` as ``MemoryView.alignment``, its offsets in cells of this finer grid.
    """

    factor: int
    latent: torch.Tensor
    coverage: torch.Tensor
    depth: torch.Tensor
    alignment: torch.Tensor


@dataclass(frozen=True)
class MemoryStats:
    """Size and use of a memory: ``entries`` (latent tokens, or points of the explicit baseline), the
    ``bytes`` its tensors hold, ``observations`` written since the last clear (before fusion) and the
    share of the latent grid the last read covered."""

    entries: int
    bytes: int
    observations: int
    last_read_coverage: float


@runtime_checkable
class SpatialMemory(Protocol):
    """A 3D cache of what the model has shown. Implementations: ``LatentSpatialMemory`` (the method),
    ``ExplicitPointCloudMemory`` (the explicit-3D baseline) and ``NoMemory`` (the ablation)."""

    def clear(self) -> None:
        """Forget everything."""

    def write_frame(self, frame: Frame, valid: torch.Tensor) -> int:
        """Remember the pixels ``valid [H,W]`` of ``frame``; returns the entries written. A failed write
        raises ``ValueError`` and changes nothing."""

    def read_view(self, cam_to_world: np.ndarray, K: np.ndarray, image_hw: tuple[int, int],
                  surface_depth: bool = True) -> MemoryView:
        """The memory seen from ``cam_to_world`` (intrinsics ``K`` at ``image_hw``). ``surface_depth``:
        also describe the remembered surfaces (``MemoryView.surfaces``; only needed where remembered
        tokens are kept)."""

    def read_supersampled(self, cam_to_world: np.ndarray, K: np.ndarray, image_hw: tuple[int, int],
                          factor: int) -> SupersampledRead | None:
        """The same view read on a grid ``factor`` times finer than its latent grid (``SupersampledRead``);
        ``None`` from a memory without tokens to place. Asked for separately, only when a refiner needs it."""

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Stored positions ``[N,3]`` float32 (memory frame) and display colours ``[N,3]`` uint8."""

    def stats(self) -> MemoryStats:
        """Size and use; see ``MemoryStats``."""

    def nearest_surface(self, x: float, y: float, min_height: float, max_height: float) -> float:
        """Horizontal distance (m) from ``(x, y)`` to the nearest remembered surface between the two
        heights (memory frame, z up); ``inf`` when there is none. The simulator's collision geometry."""

    def save(self, path: str | Path) -> None:
        """Write the memory to a file (``ValueError`` where this kind cannot be saved)."""

    def load(self, path: str | Path, channels: int | None = None) -> None:
        """Replace the memory with a saved one; a bad file, or one whose tokens do not have ``channels``
        channels (the caller's model), raises ``ValueError`` and changes nothing."""


def write_back(memory: SpatialMemory, frame: Frame, view: MemoryView | None) -> int:
    """The one rule of what a frame adds to memory, shared by inference and training-example building.

    A generated frame adds only the pixels that the memory did not already show at its camera
    (``view``, read before the frame was generated): remembered places are never overwritten by
    their own re-rendering. An observation (``view=None``) adds every pixel with depth. Returns the
    number of entries written (0 when nothing is new).
    """
    valid = torch.isfinite(frame.depth) & (frame.depth > 0)
    if view is not None:
        valid &= ~view.pixel_coverage.to(valid.device)
    if not bool(valid.any()):
        return 0
    return memory.write_frame(frame, valid)
