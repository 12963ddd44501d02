"""Memory-conditioned denoiser: predicts the clean latent of the next frame.

Inputs, stacked as channels on the latent grid: the noisy latent, the memory read at the target camera
(warped latent, coverage mask, normalised depth) and the previous frame's latent (temporal context).
The camera motion from the previous frame enters through the UNet's class embedding. The network
predicts the clean latent ``x0`` (robust with few sampling steps); the sampling loop converts it to
the flow-matching velocity the scheduler expects. One normalisation group: a clean latent's
per-channel mean is content (a flat wall's colour), which per-group normalisation before the output
would erase.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from torch import nn

#: Flattened rotation (9) and translation (3) of the relative camera motion.
MOTION_FEATURES = 12


class MemoryConditionedDenoiser(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 8, sample_size: int = 16,
                 block_out_channels: tuple[int, ...] = (64, 128, 128), layers_per_block: int = 1,
                 norm_num_groups: int = 1, num_train_timesteps: int = 1000) -> None:
        super().__init__()
        in_channels = 3 * latent_channels + 2  # noisy, memory latent, context latent; coverage, depth
        time_embed_dim = block_out_channels[0] * 4
        self.unet = UNet2DModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("DownBlock2D",) * len(block_out_channels),
            up_block_types=("UpBlock2D",) * len(block_out_channels),
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
            class_embed_type="identity")
        self.motion_embedding = nn.Sequential(nn.Linear(MOTION_FEATURES, time_embed_dim), nn.SiLU(),
                                              nn.Linear(time_embed_dim, time_embed_dim))

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, memory_latent: torch.Tensor,
                coverage: torch.Tensor, memory_depth: torch.Tensor, context: torch.Tensor,
                motion: torch.Tensor) -> torch.Tensor:
        """Predict the clean latent.

        ``noisy, memory_latent, context``: ``[B,C,h,w]``; ``coverage, memory_depth``: ``[B,h,w]``
        (depth normalised as the autoencoder does, 0 where uncovered); ``sigma``: ``[B]`` noise level
        in [0, 1]; ``motion``: ``[B,12]`` previous-to-current camera motion.
        """
        x = torch.cat([noisy, memory_latent * coverage.unsqueeze(1), context,
                       coverage.unsqueeze(1), memory_depth.unsqueeze(1)], dim=1)
        timesteps = sigma * self.config.num_train_timesteps
        return self.unet(x, timesteps, class_labels=self.motion_embedding(motion)).sample
