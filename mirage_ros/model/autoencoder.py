"""RGB-D autoencoder: one latent for colour and metric depth, built on diffusers' ``AutoencoderKL``.

Depth enters as log-depth scaled to [-1, 1] between ``min_depth`` and ``max_depth`` (relative
precision is what a camera needs: a 1 cm error matters at 0.5 m, not at 10 m), and the decoder returns
metric depth, which is what the latent memory uses to place newly generated tokens in 3D.

GroupNorm uses one group by default: with one group per channel (16 groups on the 16-channel outer
blocks) the normalisation just before each output erases every channel's mean, so a flat wall
decodes to the same grey whatever its colour and distance.

The decoder may be lighter than the encoder (``decoder_layers_per_block``): it runs on every simulated
frame, the encoder only on observations, so a decoder with fewer residual layers per resolution,
trained onto a frozen encoder's latent space (``mirage-train-autoencoder --decoder-only``), speeds up
every step while the denoiser and the memory, which live in that latent space, stay as they are.
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder


class RGBDAutoencoder(ModelMixin, ConfigMixin):
    """Encodes ``rgb [B,3,H,W]`` in [0, 1] and ``depth [B,H,W]`` (m) to ``latent [B,C,H/f,W/f]`` and back."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 8, block_out_channels: tuple[int, ...] = (16, 32, 64, 128),
                 layers_per_block: int = 1, norm_num_groups: int = 1, min_depth: float = 0.05,
                 max_depth: float = 20.0, scaling_factor: float = 1.0, latent_shift: float = 0.0,
                 decoder_layers_per_block: int | None = None) -> None:
        super().__init__()
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        if decoder_layers_per_block is not None and decoder_layers_per_block < 0:
            raise ValueError(f"decoder_layers_per_block must be >= 0 (None: as the encoder), got {decoder_layers_per_block}")
        up_block_types = ("UpDecoderBlock2D",) * len(block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=4, out_channels=4, latent_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels), up_block_types=up_block_types,
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups)
        if decoder_layers_per_block not in (None, layers_per_block):  # diffusers' decoder, of another depth
            self.vae.decoder = Decoder(in_channels=latent_channels, out_channels=4, up_block_types=up_block_types,
                                       block_out_channels=tuple(block_out_channels),
                                       layers_per_block=decoder_layers_per_block, norm_num_groups=norm_num_groups)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def normalize_depth(self, depth: torch.Tensor) -> torch.Tensor:
        """Metric depth -> [-1, 1]; missing (NaN, <= 0) and far depth map to the far end."""
        lo, hi = math.log(self.config.min_depth), math.log(self.config.max_depth)
        depth = torch.nan_to_num(depth, nan=self.config.max_depth, posinf=self.config.max_depth)
        depth = depth.clamp(self.config.min_depth, self.config.max_depth)
        return (torch.log(depth) - lo) / (hi - lo) * 2.0 - 1.0

    def normalize_read_depth(self, depth: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        """A memory read's depth (metres) as the denoiser and the refiner take it: normalised, 0 where
        ``coverage`` (bool) says nothing is remembered."""
        return torch.where(coverage, self.normalize_depth(depth), torch.zeros_like(depth))

    def denormalize_depth(self, normalized: torch.Tensor) -> torch.Tensor:
        lo, hi = math.log(self.config.min_depth), math.log(self.config.max_depth)
        return torch.exp((normalized.clamp(-1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo)

    def to_input(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """``[B,4,H,W]`` network input in [-1, 1] from rgb in [0, 1] and metric depth."""
        return torch.cat([rgb * 2.0 - 1.0, self.normalize_depth(depth).unsqueeze(1)], dim=1)

    def encode(self, rgb: torch.Tensor, depth: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latent (the posterior mode, or a sample of it during training)."""
        posterior = self.vae.encode(self.to_input(rgb, depth)).latent_dist
        latent = posterior.sample(generator) if sample else posterior.mode()
        return (latent - self.config.latent_shift) * self.config.scaling_factor

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """Network output ``[B,4,H,W]`` (rgb and normalised depth in [-1, 1] nominally)."""
        return self.vae.decode(latent / self.config.scaling_factor + self.config.latent_shift).sample

    def split_output(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``rgb [B,3,H,W]`` in [0, 1] and metric ``depth [B,H,W]`` of a raw decoder output."""
        rgb = ((raw[:, :3] + 1.0) / 2.0).clamp(0.0, 1.0)
        return rgb, self.denormalize_depth(raw[:, 3])

    def decode(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split_output(self.decode_raw(latent))

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: ``(network input, reconstruction, KL per sample)`` with a sampled latent."""
        target = self.to_input(rgb, depth)
        posterior = self.vae.encode(target).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator)).sample
        return target, reconstruction, posterior.kl()
