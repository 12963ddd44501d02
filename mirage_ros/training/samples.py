"""Training examples for the denoiser, built the way inference meets them.

For a target frame ``j`` of a sequence, a latent spatial memory is filled from earlier frames of the
same sequence with the same rule ``WorldModel`` writes by (``memory.write_back``: the first frame
whole, later frames only where the memory did not already cover them), with noise-augmented latents
(the model's outputs are never exact). Recent frames give partial coverage, far earlier frames give
revisits (the trajectories loop), and some examples get no memory at all (zero coverage). The memory
is then read at frame ``j``'s camera, which is the conditioning; the target is frame ``j``'s latent.

With the model's own rollouts of the same sequences (``rollouts.py``), a share of the examples takes
memory and context from the generated frames instead, as inference does after the first step; their
target is still the true frame, scored only where the memory did not cover it (``weight``): covered
tokens are kept verbatim at inference, and there the generated memory and the truth may disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mirage_ros.memory import Frame, LatentMemoryConfig, LatentSpatialMemory, write_back
from mirage_ros.model.read_refiner import ALIGNMENT_CHANNELS
from mirage_ros.model.world_model import motion_features


@dataclass(frozen=True)
class SampleConfig:
    max_recent: int = 4            # up to this many frames right before the target
    max_far: int = 3               # plus up to this many random earlier frames (revisits)
    no_memory_probability: float = 0.1
    latent_noise: float = 0.1      # max std of the noise added to remembered / context latents
    rollout_probability: float = 0.5  # share of examples from the model's own rollouts (when given)
    far_from_anywhere: bool = False  # far frames from the whole sequence but the target (other routes)


class LatentSequences:
    """Per-sequence latents ``[T,C,h,w]``, decoder depth ``[T,H,W]``, intrinsics ``[3,3]`` and poses ``[T,4,4]``."""

    def __init__(self, latents: list[torch.Tensor], depths: list[torch.Tensor], intrinsics: list[np.ndarray],
                 poses: list[np.ndarray]) -> None:
        if not (len(latents) == len(depths) == len(intrinsics) == len(poses)) or not latents:
            raise ValueError("need the same, non-zero number of latents, depths, intrinsics and poses")
        self.latents, self.depths, self.intrinsics, self.poses = latents, depths, intrinsics, poses

    def __len__(self) -> int:
        return len(self.latents)


class MemoryConditionedSamples(Dataset):
    """An endless supply of (condition, target) pairs; ``__getitem__`` draws a fresh random example."""

    def __init__(self, sequences: LatentSequences, memory_config: LatentMemoryConfig,
                 config: SampleConfig = SampleConfig(), length: int = 1_000_000, seed: int = 0,
                 rollouts: LatentSequences | None = None) -> None:
        if rollouts is not None and not (len(rollouts) == len(sequences) and all(
                generated.shape == true.shape for generated, true in zip(rollouts.latents, sequences.latents))):
            raise ValueError("rollouts must hold one generated latent per true latent of every sequence")
        self.sequences, self.memory_config, self.config = sequences, memory_config, config
        self.length, self.seed, self.rollouts = length, seed, rollouts

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng((self.seed, index, info.id if info else 0, int(torch.initial_seed() % 2**31)))
        seq = int(rng.integers(len(self.sequences)))
        targets = self.sequences.latents[seq].float()
        generated = self.rollouts is not None and rng.random() < self.config.rollout_probability
        source = self.rollouts if generated else self.sequences
        latents, depths = source.latents[seq].float(), source.depths[seq].float()
        K, poses = self.sequences.intrinsics[seq], self.sequences.poses[seq]
        j = int(rng.integers(1, len(latents)))
        noise_std = float(rng.uniform(0.0, self.config.latent_noise))

        def noisy(latent: torch.Tensor) -> torch.Tensor:
            generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
            return latent + noise_std * torch.randn(latent.shape, generator=generator)

        channels, h, w = latents.shape[1:]
        memory_latent, coverage = torch.zeros(channels, h, w), torch.zeros(h, w, dtype=torch.bool)
        memory_depth, alignment = torch.zeros(h, w), torch.zeros(ALIGNMENT_CHANNELS, h, w)
        if rng.random() >= self.config.no_memory_probability:
            recent = list(range(max(0, j - int(rng.integers(1, self.config.max_recent + 1))), j))
            earlier = list(range(0, recent[0]))
            if self.config.far_from_anywhere:
                earlier += list(range(j + 1, len(latents)))
            far = list(rng.choice(earlier, size=min(len(earlier), int(rng.integers(0, self.config.max_far + 1))),
                                  replace=False)) if earlier else []
            memory = LatentSpatialMemory(self.memory_config)
            image_hw = tuple(depths.shape[1:])
            for frame in sorted(int(f) for f in far + recent):
                view = (memory.read_view(poses[frame], K, image_hw, surface_depth=False)
                        if memory.stats().entries else None)
                write_back(memory, Frame(None, depths[frame], noisy(latents[frame]), K, poses[frame]), view)
            view = memory.read_view(poses[j], K, image_hw, surface_depth=False)
            memory_latent, coverage, memory_depth, alignment = view.latent, view.coverage, view.depth, view.alignment
        weight = (~coverage).float() if generated else torch.ones(h, w)
        return {
            "target": targets[j],
            "weight": weight,
            "memory_latent": memory_latent,
            "coverage": coverage,
            "memory_depth": memory_depth,
            "alignment": alignment,
            "context": noisy(latents[j - 1]),
            "motion": motion_features(poses[j - 1], poses[j]),
        }
