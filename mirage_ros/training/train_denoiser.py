"""Train the memory-conditioned denoiser on latents of a trained autoencoder.

    mirage-train-denoiser --data DATASET --autoencoder RUN/checkpoint --output RUN_DN --steps 4000

The dataset's training split is encoded once with the frozen autoencoder (latents plus the depth that
places them in memory, cached in ``--output/latents.safetensors``); examples are then drawn with memories built as
``WorldModel`` builds them (see ``samples.py``). Interrupt at any time: rerunning the command resumes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from functools import partial

import torch
from accelerate import PartialState

from mirage_ros.memory import LatentMemoryConfig
from mirage_ros.model import DenoiserCondition, MemoryConditionedDenoiser, RGBDAutoencoder, load_component
from mirage_ros.training.common import add_common_arguments, train_loop
from mirage_ros.training.latents import load_or_build_latent_sequences
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


def denoiser_loss(model: MemoryConditionedDenoiser, batch: dict,
                  autoencoder: RGBDAutoencoder) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error of the clean-latent prediction (x0 target), conditioned as at inference."""
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
    loss = error.mean()
    return loss, {"mse_covered": float(covered), "mse_uncovered": float(uncovered)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--autoencoder", type=str, required=True, help="trained autoencoder checkpoint directory")
    parser.add_argument("--block-out-channels", type=int, nargs="+", default=[64, 128, 128])
    parser.add_argument("--voxel-size", type=float, default=0.05, help="memory voxel size (m) for the examples")
    parser.add_argument("--decoder-depth", action="store_true",
                        help="place remembered tokens with the decoder's depth (as at inference; slower to cache)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    autoencoder = load_component(RGBDAutoencoder, args.autoencoder)
    state = PartialState()
    with state.main_process_first():  # the main process encodes and caches, the others read the cache
        sequences = load_or_build_latent_sequences(autoencoder, args.data, "train",
                                                   args.output / "latents.safetensors", args.decoder_depth)
    h, w = sequences.latents[0].shape[-2:]
    memory_config = LatentMemoryConfig(patch_size=autoencoder.downsample_factor, voxel_size=args.voxel_size)
    if state.is_main_process:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / MEMORY_SETTINGS).write_text(json.dumps(asdict(memory_config), indent=2) + "\n")
    samples = MemoryConditionedSamples(sequences, memory_config, SampleConfig(), seed=args.seed)

    def collate(items: list[dict]) -> dict:
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    loader = torch.utils.data.DataLoader(samples, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=collate, persistent_workers=args.workers > 0)
    model = MemoryConditionedDenoiser(latent_channels=autoencoder.config.latent_channels, sample_size=max(h, w),
                                      block_out_channels=tuple(args.block_out_channels))
    print(f"denoiser: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{len(sequences)} training sequences, latent grid {h}x{w}")
    train_loop(args, model, loader, partial(denoiser_loss, autoencoder=autoencoder), "denoiser")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
