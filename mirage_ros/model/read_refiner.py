"""Memory-read refiner: turns the token mosaic a latent memory read gives into the latent the new view
would have.

A read places each remembered token on the nearest cell of the new view's coarse latent grid, as it was
seen: off by up to half a cell, at the scale of the view that wrote it, beside tokens of other views.
Decoded verbatim, that mosaic shows as blocks and colour noise from any viewpoint but the writer's
(the explicit baseline avoids it by rendering RGB and re-encoding, the cost the latent memory removes).
The refiner redraws the remembered cells in one deterministic pass over the latent grid, given where
each token really projects (sub-cell offset) and at what scale it was seen (``MemoryView.alignment``).
It predicts a residual, zero at initialisation, so an untrained refiner is the plain read. Being
deterministic, it shows a revisited place identically every time; the memory keeps the raw tokens.

A refiner is used only on the memories it learned from: one trained on memories of real frames
(``redraws_imagined=False``, what ``mirage-train-refiner`` trains) redraws observed tokens and leaves
the model's imagined ones as read (``WorldModel`` gates it by ``MemoryView.observed``): on memories of
its own imagined frames such a refiner drifts (the model card shows the collapse).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

#: Alignment channels of a read: sub-cell offset x, y (latent pixels), log2 of seen-at over current depth.
ALIGNMENT_CHANNELS = 3
#: Misalignment (largest of the offset in cells and the log2 scale) up to which a token is kept as read,
#: and from which it is wholly redrawn (linear between): a token read from about where it was written is
#: the autoencoder's own latent of that view, and a regression can only lose detail there.
KEEP_BELOW, REDRAW_ABOVE = 0.125, 0.5


def redraw_weight(alignment: torch.Tensor) -> torch.Tensor:
    """How much of the refiner's redraw each cell takes, ``[h,w]`` in [0, 1], from ``alignment [3,h,w]``."""
    misalignment = alignment.abs().amax(0)
    return ((misalignment - KEEP_BELOW) / (REDRAW_ABOVE - KEEP_BELOW)).clamp(0, 1)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(1, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.GroupNorm(1, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MemoryReadRefiner(ModelMixin, ConfigMixin):
    """``redraws_imagined``: trained on memories of imagined frames too, so it may redraw their tokens."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 8, hidden_channels: int = 96, num_blocks: int = 6,
                 redraws_imagined: bool = False) -> None:
        super().__init__()
        in_channels = latent_channels + 2 + ALIGNMENT_CHANNELS  # read latent, coverage, depth, alignment
        self.stem = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.trunk = nn.Sequential(*[_ResidualBlock(hidden_channels) for _ in range(num_blocks)])
        self.head = nn.Sequential(nn.GroupNorm(1, hidden_channels), nn.SiLU(),
                                  nn.Conv2d(hidden_channels, latent_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, memory_latent: torch.Tensor, coverage: torch.Tensor, memory_depth: torch.Tensor,
                alignment: torch.Tensor) -> torch.Tensor:
        """The refined read ``[B,C,h,w]``: remembered cells redrawn for this view, the others as given.

        ``memory_latent [B,C,h,w]`` (zeros where uncovered), ``coverage [B,h,w]`` (0/1),
        ``memory_depth [B,h,w]`` (normalised as the autoencoder does, 0 where uncovered) and
        ``alignment [B,3,h,w]`` (``MemoryView.alignment``).
        """
        known = coverage.unsqueeze(1).to(memory_latent.dtype)
        x = torch.cat([memory_latent * known, known, memory_depth.unsqueeze(1), alignment * known], dim=1)
        residual = self.head(self.trunk(self.stem(x)))
        return memory_latent + known * residual
