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

The read refiner learns on the same memories: of true frames (target: the true latent), and of the
model's own generated frames (``ImaginedReadSamples``), where the truth is no target (a rollout drifts
away from it) but the imagined world itself is: the decoded generated frames, rendered as a point
cloud at the target camera and re-encoded, are what that world looks like from there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mirage_ros.memory import (ExplicitPointCloudMemory, Frame, LatentMemoryConfig, LatentSpatialMemory, MemoryView,
                               SupersampledRead, write_back)
from mirage_ros.model.autoencoder import RGBDAutoencoder
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
    supersample: int = 1           # > 1: also read the memory this many times finer (a refiner that takes it)
    context_degradation: float = 0.0  # share of examples whose context is washed out and blurred (degrade_latent)
    context_kept_contrast: tuple[float, float] = (0.15, 1.0)  # range of the contrast share a degraded context keeps
    context_blur_zoom: tuple[float, float] = (1.0, 4.0)       # range of the zoom a degraded context is blurred by


class LatentSequences:
    """Per-sequence latents ``[T,C,h,w]``, decoder depth ``[T,H,W]``, intrinsics ``[3,3]`` and poses
    ``[T,4,4]``; rollouts also keep the decoded colour ``rgb`` (uint8 ``[T,3,H,W]``) of what they showed."""

    def __init__(self, latents: list[torch.Tensor], depths: list[torch.Tensor], intrinsics: list[np.ndarray],
                 poses: list[np.ndarray], rgb: list[torch.Tensor] | None = None) -> None:
        if not (len(latents) == len(depths) == len(intrinsics) == len(poses)) or not latents:
            raise ValueError("need the same, non-zero number of latents, depths, intrinsics and poses")
        if rgb is not None and len(rgb) != len(latents):
            raise ValueError("need one colour sequence per latent sequence")
        self.latents, self.depths, self.intrinsics, self.poses, self.rgb = latents, depths, intrinsics, poses, rgb

    def __len__(self) -> int:
        return len(self.latents)


def example_rng(seed: int, index: int, *salt: int) -> np.random.Generator:
    """The random draws of example ``index``: distinct per data-loader worker and per process (torch's seed, which
    ``train_loop`` offsets by the process rank); ``salt`` keeps the draws of datasets sharing a seed apart."""
    info = torch.utils.data.get_worker_info()
    return np.random.default_rng((seed, index, info.id if info else 0, int(torch.initial_seed() % 2**31), *salt))


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
        rng = example_rng(self.seed, index)
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
        view = empty_view(channels, (h, w), tuple(depths.shape[1:]), self.config.supersample)
        if rng.random() >= self.config.no_memory_probability:
            frames = memory_frames(rng, j, len(latents), self.config)
            view = remembered_view(self.memory_config, [Frame(None, depths[f], noisy(latents[f]), K, poses[f])
                                                        for f in frames], poses[j], self.config.supersample)
        weight = (~view.coverage).float() if generated else torch.ones(h, w)
        context = latents[j - 1]
        if rng.random() < self.config.context_degradation:
            context = degrade_latent(context, rng, self.config.context_kept_contrast, self.config.context_blur_zoom)
        return example(targets[j], weight, view, noisy(context), poses[j - 1], poses[j])


def degrade_latent(latent: torch.Tensor, rng: np.random.Generator,
                   kept_contrast: tuple[float, float] = SampleConfig.context_kept_contrast,
                   zoom: tuple[float, float] = SampleConfig.context_blur_zoom) -> torch.Tensor:
    """``latent [C,h,w]`` as a foggy frame of the model's own shows it: contrast pulled towards its per-channel
    mean (keeping a share drawn from ``kept_contrast``), then blurred as a view magnified by a factor drawn from
    ``zoom`` (area-downsampled, bilinear back). A denoiser whose context is always sharp copies its context's
    contrast and blur into the next frame, so a rollout that has turned soft never recovers; trained on such
    contexts with the true frame as target, it restores them step by step, but in the closed loop it also
    "restores" its own output and overshoots unless trained on its own rollouts too (model card)."""
    mean = latent.mean(dim=(-2, -1), keepdim=True)
    washed = mean + float(rng.uniform(*kept_contrast)) * (latent - mean)
    h, w = latent.shape[-2:]
    factor = float(rng.uniform(*zoom))
    small = F.interpolate(washed[None], size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def memory_frames(rng: np.random.Generator, target: int, length: int, config: SampleConfig) -> list[int]:
    """The frames of a sequence whose memory an example at ``target`` reads, in the order they are written:
    up to ``max_recent`` right before it, and up to ``max_far`` earlier ones (or from anywhere but the target,
    ``far_from_anywhere``)."""
    recent = list(range(max(0, target - int(rng.integers(1, config.max_recent + 1))), target))
    earlier = list(range(0, recent[0]))
    if config.far_from_anywhere:
        earlier += list(range(target + 1, length))
    far = list(rng.choice(earlier, size=min(len(earlier), int(rng.integers(0, config.max_far + 1))),
                          replace=False)) if earlier else []
    return sorted(int(f) for f in far + recent)


def empty_view(channels: int, latent_hw: tuple[int, int], image_hw: tuple[int, int], supersample: int = 1) -> MemoryView:
    """The view of a memory that holds nothing here (zero coverage), with a finer read if ``supersample`` > 1."""
    def read(hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(channels, *hw), torch.zeros(hw, dtype=torch.bool), torch.zeros(hw),
                torch.zeros(ALIGNMENT_CHANNELS, *hw))

    latent, coverage, depth, alignment = read(latent_hw)
    fine = None
    if supersample > 1:
        fine = SupersampledRead(supersample, *read((latent_hw[0] * supersample, latent_hw[1] * supersample)))
    return MemoryView(latent, coverage, depth, torch.zeros(image_hw, dtype=torch.bool), alignment=alignment,
                      supersampled=fine)


def remembered_view(config: LatentMemoryConfig, frames: list[Frame], cam_to_world: np.ndarray,
                    supersample: int = 1) -> MemoryView:
    """A latent memory filled with ``frames`` by the inference rule (``write_back``), read at ``cam_to_world``
    (also ``supersample`` times finer, if > 1)."""
    memory = LatentSpatialMemory(config)
    image_hw = tuple(frames[0].depth.shape)
    for frame in frames:
        seen = memory.read_view(frame.cam_to_world, frame.K, image_hw, surface_depth=False) if memory.stats().entries else None
        write_back(memory, frame, seen)
    view = memory.read_view(cam_to_world, frames[0].K, image_hw, surface_depth=False)
    if supersample > 1:
        view = replace(view, supersampled=memory.read_supersampled(cam_to_world, frames[0].K, image_hw, supersample))
    return view


def example(target: torch.Tensor, weight: torch.Tensor, view: MemoryView, context: torch.Tensor,
            previous_pose: np.ndarray, pose: np.ndarray) -> dict[str, torch.Tensor]:
    """One training example as the denoiser and the refiner take it (with the finer read, where the view has one)."""
    fields = {
        "target": target,
        "weight": weight,
        "memory_latent": view.latent,
        "coverage": view.coverage,
        "memory_depth": view.depth,
        "alignment": view.alignment,
        "context": context,
        "motion": motion_features(previous_pose, pose),
    }
    if view.supersampled is not None:
        fine = view.supersampled
        fields.update(fine_latent=fine.latent, fine_coverage=fine.coverage, fine_depth=fine.depth,
                      fine_alignment=fine.alignment)
    return fields


class ImaginedReadSamples(Dataset):
    """Reads of memories of the model's own generated frames (``rollouts`` with their decoded ``rgb``),
    for the read refiner. The target is the imagined world at the target camera: the memory frames'
    decoded colour and depth rendered as a point cloud there and re-encoded by ``autoencoder``; it is
    scored (``weight``) on the cells that render covers wholly."""

    def __init__(self, rollouts: LatentSequences, memory_config: LatentMemoryConfig, autoencoder: RGBDAutoencoder,
                 config: SampleConfig = SampleConfig(), length: int = 1_000_000, seed: int = 0) -> None:
        if rollouts.rgb is None:
            raise ValueError("imagined reads need the rollouts' decoded colour (rollouts cached by this version)")
        self.rollouts, self.memory_config, self.autoencoder = rollouts, memory_config, autoencoder
        self.config, self.length, self.seed = config, length, seed

    def __len__(self) -> int:
        return self.length

    @torch.no_grad()
    def _encode(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(rgb, depth).float()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = example_rng(self.seed, index, 1)
        seq = int(rng.integers(len(self.rollouts)))
        latents, depths = self.rollouts.latents[seq].float(), self.rollouts.depths[seq].float()
        rgb, K, poses = self.rollouts.rgb[seq], self.rollouts.intrinsics[seq], self.rollouts.poses[seq]
        j = int(rng.integers(1, len(latents)))
        frames = memory_frames(rng, j, len(latents), self.config)
        view = remembered_view(self.memory_config, [Frame(None, depths[f], latents[f], K, poses[f]) for f in frames],
                               poses[j], self.config.supersample)
        cloud = ExplicitPointCloudMemory(splat_radius=1, encoder=self._encode, patch_size=self.memory_config.patch_size)
        for f in frames:
            cloud.write(rgb[f], depths[f], K, poses[f])
        imagined = cloud.read_view(poses[j], K, tuple(depths.shape[1:]))
        return example(imagined.latent, imagined.coverage.float(), view, latents[j - 1], poses[j - 1], poses[j])


class MixedSamples(Dataset):
    """Each example from ``second`` with ``probability``, else from ``first`` (same fields)."""

    def __init__(self, first: Dataset, second: Dataset, probability: float, seed: int = 0) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {probability}")
        self.first, self.second, self.probability, self.seed = first, second, probability, seed

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = example_rng(self.seed, index, 2)
        return (self.second if rng.random() < self.probability else self.first)[index]
