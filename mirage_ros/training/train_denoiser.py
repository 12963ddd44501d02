"""Train the memory-conditioned denoiser on latents of a trained autoencoder.

    mirage-train-denoiser --data DATASET --autoencoder RUN/checkpoint --output RUN_DN --steps 4000

The dataset's training split is encoded once with the frozen autoencoder (latents plus the depth that
places them in memory, cached in ``--output/latents.safetensors``); examples are then drawn with memories built as
``WorldModel`` builds them (see ``samples.py``). With ``--rollouts-from WORLD_MODEL`` that world model
first drives every training sequence from its first frame (``rollouts.py``, cached in
``--output/rollouts.safetensors``) and half the examples condition on its own generated frames;
``--rollout-anchor-every N`` re-observes every Nth true frame in those rollouts, keeping them near the truth.
Interrupt at any time: rerunning the command resumes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from accelerate import PartialState

from mirage_ros.memory import LatentMemoryConfig
from mirage_ros.model import DenoiserCondition, MemoryConditionedDenoiser, RGBDAutoencoder, WorldModel, load_component
from mirage_ros.training.common import add_common_arguments, example_loader, train_loop
from mirage_ros.training.latents import load_or_build_latent_sequences, weights_fingerprint
from mirage_ros.training.rollouts import load_or_build_rollouts
from mirage_ros.worlds.generator import FLOOR_HEIGHT
from mirage_ros.training.samples import MemoryConditionedSamples, SampleConfig

#: Noise levels the sampler visits (4-step schedule and the memory-reuse start); trained on more often.
INFERENCE_SIGMAS = (1.0, 0.75, 0.5, 0.25, 0.3)


def sample_sigmas(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Half uniform in (0, 1], half from the inference schedule."""
    uniform = torch.rand(batch, generator=generator).clamp_min(1e-3)
    chosen = torch.tensor(INFERENCE_SIGMAS)[torch.randint(len(INFERENCE_SIGMAS), (batch,), generator=generator)]
    return torch.where(torch.rand(batch, generator=generator) < 0.5, uniform, chosen)


#: Where the memory settings of a denoiser run are written; ``mirage-export`` puts them into the
#: checkpoint's ``world_model.json``, so inference builds memories exactly as training did.
MEMORY_SETTINGS = "memory.json"


def write_memory_settings(state: PartialState, output: Path, memory_config: LatentMemoryConfig) -> None:
    """``output/memory.json`` (by the main process): how this run's example memories were built."""
    if state.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / MEMORY_SETTINGS).write_text(json.dumps(asdict(memory_config), indent=2) + "\n")


def denoiser_loss(model: MemoryConditionedDenoiser, batch: dict,
                  autoencoder: RGBDAutoencoder) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error of the clean-latent prediction (x0 target), conditioned as at inference,
    over the tokens each example's ``weight`` counts (rollout examples: the uncovered ones)."""
    target = batch["target"]
    condition = DenoiserCondition.build(batch["memory_latent"], batch["coverage"], batch["memory_depth"],
                                        batch["context"], batch["motion"], autoencoder)
    coverage = condition.coverage
    sigma = sample_sigmas(target.shape[0]).to(target.device)
    # Where memory covers the view, start from the read itself sometimes, as the reuse path does.
    reuse = (torch.rand(target.shape[0], device=target.device) < 0.25)[:, None, None, None]
    mask = coverage.unsqueeze(1)
    base = torch.where(reuse, mask * condition.memory_latent + (1 - mask) * target, target)
    noise = torch.randn_like(target)
    s = sigma[:, None, None, None]
    noisy = (1 - s) * base + s * noise
    prediction = condition.predict_clean(model, noisy, sigma)
    error = (prediction.float() - target.float()) ** 2
    covered = (error * mask).sum() / mask.sum().clamp_min(1) / target.shape[1]
    uncovered = (error * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1) / target.shape[1]
    weight = batch["weight"].unsqueeze(1)
    loss = (error * weight).sum() / weight.sum().clamp_min(1) / target.shape[1]
    return loss, {"mse_covered": float(covered.detach()), "mse_uncovered": float(uncovered.detach())}


def rollout_model(checkpoint: Path, autoencoder: RGBDAutoencoder, seed: int) -> WorldModel:
    """The world model at ``checkpoint`` as the simulator runs it (floor known, ``auto`` precision); it
    must share the autoencoder the denoiser trains with (compared as stored: ``auto`` may cast the model's)."""
    if weights_fingerprint(load_component(RGBDAutoencoder, Path(checkpoint) / "autoencoder")) != \
            weights_fingerprint(autoencoder):
        raise ValueError(f"{checkpoint}: its autoencoder is not --autoencoder; its rollouts would live in "
                         "another latent space")
    return WorldModel.from_pretrained(checkpoint, seed=seed, floor_height=FLOOR_HEIGHT, precision="auto")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--autoencoder", type=str, required=True, help="trained autoencoder checkpoint directory")
    parser.add_argument("--block-out-channels", type=int, nargs="+", default=[64, 128, 128])
    parser.add_argument("--voxel-size", type=float, default=0.05, help="memory voxel size (m) for the examples")
    parser.add_argument("--decoder-depth", action="store_true",
                        help="place remembered tokens with the decoder's depth (as at inference; slower to cache)")
    parser.add_argument("--rollouts-from", type=Path, default=None,
                        help="world model checkpoint (mirage-export output, with this --autoencoder) whose own "
                             "rollouts of the training sequences condition part of the examples")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="denoiser checkpoint whose weights (and architecture) a new run starts from, e.g. the "
                             "shipped one; a run directory with a checkpoint always resumes instead")
    parser.add_argument("--rollout-anchor-every", type=int, default=0,
                        help="those rollouts observe every Nth true frame instead of generating it, so that they "
                             "stray at most N-1 steps from the truth (0: generated from the first frame on)")
    parser.add_argument("--rollout-probability", type=float, default=SampleConfig.rollout_probability,
                        help="share of examples drawn from those rollouts")
    parser.add_argument("--context-degradation", type=float, default=SampleConfig.context_degradation,
                        help="share of examples whose context latent is washed out and blurred (as a rollout "
                             "turned foggy shows it), so the denoiser learns to restore rather than copy it")
    parser.add_argument("--context-kept-contrast", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=SampleConfig.context_kept_contrast,
                        help="range of the share of its contrast a degraded context keeps")
    parser.add_argument("--context-blur-zoom", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=SampleConfig.context_blur_zoom,
                        help="range of the zoom a degraded context is blurred by (1: not blurred)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.context_degradation <= 1.0:
        parser.error(f"--context-degradation must be in [0, 1], got {args.context_degradation}")
    low, high = args.context_kept_contrast
    if not 0.0 <= low <= high <= 1.0:
        parser.error(f"--context-kept-contrast needs 0 <= LOW <= HIGH <= 1, got {low} {high}")
    low, high = args.context_blur_zoom
    if not 1.0 <= low <= high:
        parser.error(f"--context-blur-zoom needs 1 <= LOW <= HIGH, got {low} {high}")
    torch.manual_seed(args.seed)

    autoencoder = load_component(RGBDAutoencoder, args.autoencoder)
    state = PartialState()
    with state.main_process_first():  # the main process encodes and caches, the others read the cache
        sequences = load_or_build_latent_sequences(autoencoder, args.data, "train",
                                                   args.output / "latents.safetensors", args.decoder_depth)
        rollouts = None if args.rollouts_from is None else load_or_build_rollouts(
            rollout_model(args.rollouts_from, autoencoder, args.seed), args.data, "train",
            args.output / "rollouts.safetensors", args.rollout_anchor_every)
    h, w = sequences.latents[0].shape[-2:]
    memory_config = LatentMemoryConfig(patch_size=autoencoder.downsample_factor, voxel_size=args.voxel_size)
    write_memory_settings(state, args.output, memory_config)
    samples = MemoryConditionedSamples(sequences, memory_config,
                                       SampleConfig(rollout_probability=args.rollout_probability,
                                                    context_degradation=args.context_degradation,
                                                    context_kept_contrast=tuple(args.context_kept_contrast),
                                                    context_blur_zoom=tuple(args.context_blur_zoom)),
                                       seed=args.seed, rollouts=rollouts)
    loader = example_loader(samples, args)
    if args.init_from is not None:
        model = load_component(MemoryConditionedDenoiser, args.init_from)
    else:
        model = MemoryConditionedDenoiser(latent_channels=autoencoder.config.latent_channels, sample_size=max(h, w),
                                          block_out_channels=tuple(args.block_out_channels))
    print(f"denoiser: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{len(sequences)} training sequences, latent grid {h}x{w}")
    train_loop(args, model, loader, partial(denoiser_loss, autoencoder=autoencoder), "denoiser")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
