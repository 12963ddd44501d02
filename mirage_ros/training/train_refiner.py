"""Train the memory-read refiner on latents of a trained autoencoder.

    mirage-train-refiner --data DATASET --autoencoder RUN/checkpoint --output RUN_RF --steps 3000

Each example fills a latent memory with tokens of other frames of a sequence (up to ``--max-far``
frames from anywhere in it: other routes past the same place, from other distances and angles, plus
the frames right before the target), reads it at the target camera, and asks the refiner for the
target frame's own latent on the cells the read covers (mean squared error there). The target latent
is what the autoencoder makes of the true view, so the refiner learns to redraw the mosaic for the
new viewpoint; the regression redraws softly. The latents are cached as for the denoiser
(``--output/latents.safetensors``).

Such a refiner knows memories of real frames only, and redraws only observed tokens (on memories of
the model's own frames it drifts; the model card shows how). With ``--rollouts-from WORLD_MODEL`` that
world model first drives every training sequence (``rollouts.py``, cached in
``--output/rollouts.safetensors``) and a share of the examples reads memories of its generated frames,
with the imagined world rendered at the target camera as the target (``ImaginedReadSamples``); the
refiner is then marked ``redraws_imagined``. Interrupt at any time: rerunning resumes.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch
from accelerate import PartialState

from mirage_ros.memory import LatentMemoryConfig
from mirage_ros.model import MemoryReadRefiner, RGBDAutoencoder, load_component
from mirage_ros.training.common import add_common_arguments, example_loader, train_loop
from mirage_ros.training.latents import load_or_build_latent_sequences
from mirage_ros.training.rollouts import load_or_build_rollouts
from mirage_ros.training.samples import ImaginedReadSamples, MemoryConditionedSamples, MixedSamples, SampleConfig
from mirage_ros.training.train_denoiser import rollout_model, write_memory_settings


def refiner_loss(model: MemoryReadRefiner, batch: dict,
                 autoencoder: RGBDAutoencoder) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error of the refined read against the target latent over the covered cells that the
    example scores (``weight``), beside the same error of the raw read (what the refiner improves on)."""
    coverage = batch["coverage"].float()
    depth = autoencoder.normalize_read_depth(batch["memory_depth"], batch["coverage"])
    fine = None
    if "fine_latent" in batch:
        fine = (batch["fine_latent"], batch["fine_coverage"].float(),
                autoencoder.normalize_read_depth(batch["fine_depth"], batch["fine_coverage"]), batch["fine_alignment"])
    refined = model(batch["memory_latent"], coverage, depth, batch["alignment"], fine)
    mask = (coverage * batch["weight"]).unsqueeze(1)
    cells = mask.sum().clamp_min(1) * batch["target"].shape[1]
    loss = (((refined.float() - batch["target"]) ** 2) * mask).sum() / cells
    raw = (((batch["memory_latent"] - batch["target"]) ** 2) * mask).sum() / cells
    return loss, {"mse_read": float(raw.detach())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--autoencoder", type=str, required=True, help="trained autoencoder checkpoint directory")
    parser.add_argument("--memory-settings", type=Path, default=None,
                        help="the memory settings to read with: a denoiser run's memory.json or a checkpoint's "
                             "world_model.json (default: the default settings, those of the shipped model)")
    parser.add_argument("--max-far", type=int, default=12, help="most frames from elsewhere in the sequence")
    parser.add_argument("--hidden-channels", type=int, default=96)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--supersample", type=int, default=1,
                        help="also read the memory this many times finer (MemoryReadRefiner supersample); with "
                             "--init-from a plain refiner, it starts as that one")
    parser.add_argument("--redraw", type=float, nargs=2, metavar=("KEEP_BELOW", "REDRAW_ABOVE"), default=None,
                        help="misalignment (cells) up to which the world model keeps a token as read, and from which "
                             "it takes the refiner's redraw whole (recorded in the refiner's config; default: the "
                             "starting refiner's, or read_refiner.KEEP_BELOW, REDRAW_ABOVE)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="refiner checkpoint whose weights (and architecture) a new run starts from, e.g. the "
                             "shipped one; a run directory with a checkpoint always resumes instead")
    parser.add_argument("--rollouts-from", type=Path, default=None,
                        help="world model checkpoint (mirage-export output, with this --autoencoder) on memories of "
                             "whose own rollouts part of the examples are read; the refiner then redraws imagined "
                             "tokens too")
    parser.add_argument("--rollout-probability", type=float, default=0.5,
                        help="share of examples read from memories of those rollouts")
    args = parser.parse_args(argv)
    if not 0.0 <= args.rollout_probability <= 1.0:
        parser.error(f"--rollout-probability must lie in [0, 1], got {args.rollout_probability}")
    if args.supersample < 1:
        parser.error(f"--supersample must be >= 1, got {args.supersample}")
    if args.redraw is not None and not 0 <= args.redraw[0] < args.redraw[1]:
        parser.error(f"--redraw needs 0 <= KEEP_BELOW < REDRAW_ABOVE, got {args.redraw}")
    memory_config = None
    if args.memory_settings is not None:
        try:
            settings = json.loads(args.memory_settings.read_text())
            memory_config = LatentMemoryConfig(**settings.get("memory", settings))
        except (OSError, AttributeError, json.JSONDecodeError, TypeError, ValueError) as error:
            parser.error(f"--memory-settings {args.memory_settings}: not memory settings ({error})")
    torch.manual_seed(args.seed)

    autoencoder = load_component(RGBDAutoencoder, args.autoencoder)
    state = PartialState()
    with state.main_process_first():
        sequences = load_or_build_latent_sequences(autoencoder, args.data, "train", args.output / "latents.safetensors")
        rollouts = None if args.rollouts_from is None else load_or_build_rollouts(
            rollout_model(args.rollouts_from, autoencoder, args.seed), args.data, "train",
            args.output / "rollouts.safetensors")
    if memory_config is None:
        memory_config = LatentMemoryConfig(patch_size=autoencoder.downsample_factor)
    write_memory_settings(state, args.output, memory_config)
    sample_config = SampleConfig(max_far=args.max_far, no_memory_probability=0.0, far_from_anywhere=True,
                                 supersample=args.supersample)
    samples = MemoryConditionedSamples(sequences, memory_config, sample_config, seed=args.seed)
    if rollouts is not None:
        samples = MixedSamples(samples, ImaginedReadSamples(rollouts, memory_config, autoencoder, sample_config,
                                                            seed=args.seed), args.rollout_probability, seed=args.seed)
    if args.init_from is not None:
        model = load_component(MemoryReadRefiner, args.init_from)
        if args.supersample != model.config.supersample:
            model = MemoryReadRefiner.supersampling(model, args.supersample)
    else:
        model = MemoryReadRefiner(latent_channels=autoencoder.config.latent_channels,
                                  hidden_channels=args.hidden_channels, num_blocks=args.blocks,
                                  supersample=args.supersample)
    if rollouts is not None:
        model.register_to_config(redraws_imagined=True)
    if args.redraw is not None:
        model.register_to_config(keep_below=args.redraw[0], redraw_above=args.redraw[1])
    print(f"refiner: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{len(sequences)} training sequences")
    train_loop(args, model, example_loader(samples, args), partial(refiner_loss, autoencoder=autoencoder), "refiner")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
