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

A refiner made with ``supersample`` > 1 also reads the memory on a grid that many times finer
(``SupersampledRead``), folded onto the latent grid: a cell then sees each token that lands in it, where
it lands and how far away it is, not only the one drawn there (at a depth edge, both sides of it).

A refiner is used only on the memories it learned from: one trained on memories of real frames
(``redraws_imagined=False``, what ``mirage-train-refiner`` trains) redraws observed tokens and leaves
the model's imagined ones as read (``WorldModel`` gates it by ``MemoryView.observed``): on memories of
its own imagined frames such a refiner drifts (the model card shows the collapse).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

#: Alignment channels of a read: sub-cell offset x, y (latent pixels), log2 of seen-at over current depth.
ALIGNMENT_CHANNELS = 3
#: Misalignment (largest of the offset in cells and the log2 scale) up to which a token is kept as read,
#: and from which it is wholly redrawn (linear between), for a refiner that sees the plain read only: a token
#: read from about where it was written is the autoencoder's own latent of that view, and such a regression
#: can only lose detail there. A refiner that also sees the finer read has its own (its config).
KEEP_BELOW, REDRAW_ABOVE = 0.125, 0.5


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(1, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.GroupNorm(1, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def read_channels(latent: torch.Tensor, coverage: torch.Tensor, depth: torch.Tensor,
                  alignment: torch.Tensor) -> torch.Tensor:
    """A read as the refiner takes it, ``[B, C + 2 + 3, h, w]``: latent, coverage, depth and alignment, each
    zero where uncovered (shapes as in ``MemoryReadRefiner.forward``)."""
    known = coverage.unsqueeze(1).to(latent.dtype)
    return torch.cat([latent * known, known, depth.unsqueeze(1).to(latent.dtype), alignment.to(latent.dtype) * known],
                     dim=1)


class MemoryReadRefiner(ModelMixin, ConfigMixin):
    """``redraws_imagined``: trained on memories of imagined frames too, so it may redraw their tokens.
    ``supersample``: the factor of the finer read it also takes (1: none). ``keep_below``, ``redraw_above``:
    how much of its redraw each cell takes (``redraw_weight``)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 8, hidden_channels: int = 96, num_blocks: int = 6,
                 redraws_imagined: bool = False, supersample: int = 1, keep_below: float = KEEP_BELOW,
                 redraw_above: float = REDRAW_ABOVE) -> None:
        super().__init__()
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        if not 0 <= keep_below < redraw_above:
            raise ValueError(f"need 0 <= keep_below < redraw_above, got {keep_below}, {redraw_above}")
        read = latent_channels + 2 + ALIGNMENT_CHANNELS  # read latent, coverage, depth, alignment
        in_channels = read * (1 + supersample ** 2) if supersample > 1 else read
        self.stem = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.trunk = nn.Sequential(*[_ResidualBlock(hidden_channels) for _ in range(num_blocks)])
        self.head = nn.Sequential(nn.GroupNorm(1, hidden_channels), nn.SiLU(),
                                  nn.Conv2d(hidden_channels, latent_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @classmethod
    def supersampling(cls, refiner: "MemoryReadRefiner", factor: int) -> "MemoryReadRefiner":
        """A refiner that also takes a ``factor`` times finer read, starting as ``refiner`` (what it adds to the
        stem starts at zero), so training it begins from what ``refiner`` already knows."""
        if refiner.config.supersample != 1:
            raise ValueError("the refiner to start from must take the plain read only")
        config = {key: value for key, value in refiner.config.items() if not key.startswith("_")}
        wider = cls(**{**config, "supersample": factor})
        state = refiner.state_dict()
        stem = torch.zeros_like(wider.stem.weight)
        stem[:, :refiner.stem.in_channels] = state["stem.weight"]
        wider.load_state_dict({**state, "stem.weight": stem})
        return wider

    def redraw_weight(self, alignment: torch.Tensor) -> torch.Tensor:
        """How much of the redraw each cell takes, ``[h,w]`` in [0, 1], from ``alignment [3,h,w]``: none up to a
        misalignment (largest of the offset in cells and the log2 scale) of ``keep_below``, all from
        ``redraw_above``, linear between."""
        misalignment = alignment.abs().amax(0)
        keep, redraw = self.config.keep_below, self.config.redraw_above
        return ((misalignment - keep) / (redraw - keep)).clamp(0, 1)

    def forward(self, memory_latent: torch.Tensor, coverage: torch.Tensor, memory_depth: torch.Tensor,
                alignment: torch.Tensor, supersampled: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """The refined read ``[B,C,h,w]``: remembered cells redrawn for this view, the others as given.

        ``memory_latent [B,C,h,w]`` (zeros where uncovered), ``coverage [B,h,w]`` (0/1),
        ``memory_depth [B,h,w]`` (normalised as the autoencoder does, 0 where uncovered) and
        ``alignment [B,3,h,w]`` (``MemoryView.alignment``). ``supersampled`` (needed when the refiner
        ``supersample``s): the finer read's ``(latent, coverage, depth, alignment)``, shaped and normalised
        alike on the ``supersample`` times finer grid.
        """
        x = read_channels(memory_latent, coverage, memory_depth, alignment)
        factor = self.config.supersample
        if factor > 1:
            if supersampled is None:
                raise ValueError(f"this refiner also takes a {factor}x finer read (supersampled=...)")
            fine = read_channels(*supersampled)
            if fine.shape[-2:] != (x.shape[-2] * factor, x.shape[-1] * factor):
                raise ValueError(f"the finer read is {tuple(fine.shape[-2:])}, need {factor}x {tuple(x.shape[-2:])}")
            x = torch.cat([x, F.pixel_unshuffle(fine, factor)], dim=1)
        residual = self.head(self.trunk(self.stem(x)))
        return memory_latent + coverage.unsqueeze(1).to(memory_latent.dtype) * residual
