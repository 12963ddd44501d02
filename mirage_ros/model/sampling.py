"""The sampling loop: one latent frame from noise, conditioned on the memory view, the previous frame and
the camera motion. Written out like a diffusers pipeline loop: a config, a condition, one function over
the denoiser and a separate scheduler (``FlowMatchEulerDiscreteScheduler``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from mirage_ros.model.autoencoder import RGBDAutoencoder
from mirage_ros.model.denoiser import MemoryConditionedDenoiser

#: The denoiser, or a callable that runs it with the same arguments (the world model's traced call).
Denoiser = MemoryConditionedDenoiser | Callable[..., torch.Tensor]


@dataclass
class SamplingConfig:
    """How each frame is generated.

    ``num_inference_steps`` flow-matching steps from pure noise. Memory reuse: when the memory
    already covers at least ``reuse_coverage`` of the view (``None``: never), generation instead starts
    from the memory read noised to ``reuse_sigma`` and takes ``reuse_steps`` steps (it need not
    regenerate what memory holds).

    ``keep_remembered``: remembered tokens are pasted into the sample at every step and into the
    result, so a revisited place is exactly what was seen (and a fully covered view skips the
    denoiser). Off, the memory read is the starting point and the condition, and the denoiser
    redraws every token: it can re-align remembered content to the new view (tokens are read on
    the coarse latent grid), at the price of revisits being only as stable as the denoiser.

    ``stochastic_sampling``: each step re-noises the denoiser's clean estimate to the next noise level
    with fresh noise (the scheduler's stochastic variant) instead of following the flow's ODE: long
    drives look more like real frames, content the memory knows but does not cover comes out less
    faithful (the shipped model keeps it off; model card).
    """

    num_inference_steps: int = 4
    reuse_coverage: float | None = 0.95
    reuse_sigma: float = 0.3
    reuse_steps: int = 1
    keep_remembered: bool = True
    stochastic_sampling: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.num_inference_steps <= 50:
            raise ValueError(f"num_inference_steps must be in [1, 50], got {self.num_inference_steps}")
        if self.reuse_coverage is not None and not 0.0 < self.reuse_coverage <= 1.0:
            raise ValueError(f"reuse_coverage must be in (0, 1] or None (never reuse), got {self.reuse_coverage}")
        if not 0.0 < self.reuse_sigma <= 1.0 or self.reuse_steps < 1:
            raise ValueError("reuse_sigma must be in (0, 1] and reuse_steps >= 1")

    def sigmas(self, coverage_fraction: float) -> list[float]:
        """Noise levels to visit, highest first (the scheduler appends the final 0)."""
        if self.reuse_coverage is not None and coverage_fraction >= self.reuse_coverage:
            return np.linspace(self.reuse_sigma, 0.0, self.reuse_steps + 1)[:-1].tolist()
        return np.linspace(1.0, 0.0, self.num_inference_steps + 1)[:-1].tolist()


@dataclass
class DenoiserCondition:
    """Everything a frame is conditioned on, batched ``[B, ...]`` on the latent grid: the memory view's
    ``memory_latent [B,C,h,w]``, ``coverage [B,h,w]`` (float 0/1), ``depth [B,h,w]`` (the view's depth
    normalised as the autoencoder normalises it, 0 where uncovered), the previous frame's latent
    ``context [B,C,h,w]`` and the camera ``motion [B,12]`` (see ``world_model.motion_features``)."""

    memory_latent: torch.Tensor
    coverage: torch.Tensor
    depth: torch.Tensor
    context: torch.Tensor
    motion: torch.Tensor

    @classmethod
    def build(cls, memory_latent: torch.Tensor, coverage: torch.Tensor, memory_depth: torch.Tensor,
              context: torch.Tensor, motion: torch.Tensor, autoencoder: RGBDAutoencoder) -> "DenoiserCondition":
        """The condition from batched memory views (``coverage`` bool, ``memory_depth`` metres): one
        construction for inference and training, so both normalise the view's depth the same way."""
        return cls(memory_latent, coverage.float(), autoencoder.normalize_read_depth(memory_depth, coverage), context,
                   motion)

    def select(self, index: list[int]) -> "DenoiserCondition":
        """The condition of the batch items ``index`` only."""
        return DenoiserCondition(self.memory_latent[index], self.coverage[index], self.depth[index],
                                 self.context[index], self.motion[index])

    def predict_clean(self, denoiser: Denoiser, sample: torch.Tensor,
                      sigma: torch.Tensor) -> torch.Tensor:
        """The denoiser's estimate of the clean latent of ``sample`` at noise level(s) ``sigma [B]``."""
        return denoiser(sample, sigma, self.memory_latent, self.coverage, self.depth, self.context, self.motion)


@dataclass
class SampleOutput:
    """Generated latents ``[B,C,h,w]`` and how many times the denoiser was evaluated for each."""

    latent: torch.Tensor
    denoiser_calls: list[int]


def noise_schedule(config: SamplingConfig, coverage: torch.Tensor) -> tuple[float, ...]:
    """The noise levels one view is generated through, given its coverage ``[h,w]``; empty where
    ``keep_remembered`` and the memory holds every token of the view (nothing to generate)."""
    if config.keep_remembered and bool((coverage > 0.5).all()):
        return ()
    return tuple(config.sigmas(float(coverage.mean())))


def sample_latent(denoiser: Denoiser, scheduler: FlowMatchEulerDiscreteScheduler,
                  condition: DenoiserCondition, config: SamplingConfig, generator: torch.Generator) -> SampleOutput:
    """Generate one latent frame per batch item (x0-prediction turned into flow-matching velocity).

    With ``keep_remembered``, what memory holds is not regenerated: at every step the covered tokens
    of the sample are replaced by the memory read noised to the current level (inpainting), and the
    result keeps the remembered tokens, so revisited places stay as they were and errors cannot
    compound there; a view the memory covers entirely is returned as read, without the denoiser.

    Each item is generated through its own ``noise_schedule``: the items that share one (e.g. all
    views of several cameras that the memory does not yet cover) go through the denoiser together,
    one batched evaluation per noise level, in the order of their first item.
    """
    schedules = [noise_schedule(config, coverage) for coverage in condition.coverage]
    latent = condition.memory_latent.clone()
    calls = [0] * len(schedules)
    for sigmas in dict.fromkeys(schedules):
        if not sigmas:
            continue  # memory holds every token of these views: returned as read
        index = [i for i, schedule in enumerate(schedules) if schedule == sigmas]
        latent[index] = _denoise(denoiser, scheduler, condition.select(index), list(sigmas), config, generator)
        for i in index:
            calls[i] = len(sigmas)
    return SampleOutput(latent, calls)


def _denoise(denoiser: Denoiser, scheduler: FlowMatchEulerDiscreteScheduler,
             condition: DenoiserCondition, sigmas: list[float], config: SamplingConfig,
             generator: torch.Generator) -> torch.Tensor:
    """The sampling loop of ``sample_latent`` over the noise levels ``sigmas``, for a batch that shares them."""
    keep = config.keep_remembered
    memory_latent = condition.memory_latent
    device = memory_latent.device
    scheduler.set_timesteps(sigmas=sigmas, device=device)
    noise = torch.randn(memory_latent.shape, generator=generator, device=device)
    start = sigmas[0]
    sample = noise if start >= 1.0 else (1.0 - start) * memory_latent + start * noise
    known = condition.coverage.unsqueeze(1) if keep else torch.zeros_like(condition.coverage.unsqueeze(1))
    for timestep, sigma in zip(scheduler.timesteps, scheduler.sigmas):
        sample = known * ((1.0 - sigma) * memory_latent + sigma * noise) + (1.0 - known) * sample
        sigma_batch = sigma.reshape(1).to(device).expand(sample.shape[0])
        clean = condition.predict_clean(denoiser, sample, sigma_batch).float()
        velocity = (sample - clean) / sigma
        sample = scheduler.step(velocity, timestep, sample, generator=generator).prev_sample
    return known * memory_latent + (1.0 - known) * sample
