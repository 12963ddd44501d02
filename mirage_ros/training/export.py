"""Assemble a world model checkpoint from trained components, as fp16 safetensors.

    mirage-export --autoencoder RUN_AE/checkpoint --denoiser RUN_DN/checkpoint [--refiner RUN_RF/checkpoint] \
        --output mirage_ros/checkpoints/default

A training checkpoint that holds a moving average of its weights (``checkpoint/ema``) is exported
with those weights unless ``--raw-weights`` is given. ``--denoiser-blend OTHER WEIGHT`` ships a weighted
average of the denoiser and another of the same architecture (weight-space ensembling, as in WiSE-FT):
a denoiser fine-tuned on its own rollouts, blended with the one it started from, can keep the gains of
both where either alone trades one target for another.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mirage_ros.memory import LatentMemoryConfig
from mirage_ros.model import (MemoryConditionedDenoiser, MemoryReadRefiner, RGBDAutoencoder, SamplingConfig, WorldModel,
                              load_component)
from mirage_ros.training.state import EMA_FOLDER
from mirage_ros.training.train_denoiser import MEMORY_SETTINGS


def component_weights(checkpoint: Path, raw: bool = False) -> Path:
    """The folder whose weights to ship: the moving average beside ``checkpoint`` unless ``raw``."""
    return checkpoint if raw or not (checkpoint / EMA_FOLDER).is_dir() else checkpoint / EMA_FOLDER


def blend_weights(model: torch.nn.Module, other: torch.nn.Module, weight: float) -> None:
    """Move ``model``'s floating-point parameters and buffers to ``(1 - weight) * model + weight * other``,
    in place; ``other`` must have the same architecture (the same tensor names and shapes)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight must lie in [0, 1], got {weight}")
    mine, theirs = model.state_dict(), other.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        raise ValueError(f"cannot blend a {type(model).__name__} with a {type(other).__name__} of another architecture")
    with torch.no_grad():
        for name, tensor in mine.items():
            if tensor.is_floating_point():
                tensor.lerp_(theirs[name].to(tensor.dtype), weight)


def training_memory_config(denoiser: Path) -> LatentMemoryConfig | None:
    """The memory settings the denoiser run at ``denoiser`` (its checkpoint or run folder) trained with."""
    for folder in (denoiser, denoiser.parent):
        if (folder / MEMORY_SETTINGS).is_file():
            try:
                return LatentMemoryConfig(**json.loads((folder / MEMORY_SETTINGS).read_text()))
            except (json.JSONDecodeError, TypeError, ValueError) as error:
                raise ValueError(f"{folder / MEMORY_SETTINGS}: unreadable memory settings ({error})") from error
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", type=Path, required=True)
    parser.add_argument("--denoiser", type=Path, required=True)
    parser.add_argument("--refiner", type=Path, default=None,
                        help="memory-read refiner checkpoint (mirage-train-refiner); none: reads decoded as read")
    parser.add_argument("--denoiser-blend", nargs=2, metavar=("CHECKPOINT", "WEIGHT"), default=None,
                        help="ship the average of --denoiser and this denoiser checkpoint (same architecture), the "
                             "latter weighted WEIGHT in [0, 1]")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 128], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--steps", type=int, default=SamplingConfig.num_inference_steps, help="sampling steps")
    parser.add_argument("--keep-remembered", action=argparse.BooleanOptionalAction, default=True,
                        help="keep remembered tokens verbatim (default) or let the denoiser redraw them")
    parser.add_argument("--raw-weights", action="store_true",
                        help="export the trained weights themselves, not their moving average (checkpoint/ema)")
    args = parser.parse_args(argv)
    blend = None
    if args.denoiser_blend is not None:  # checked before anything is loaded
        other, weight = args.denoiser_blend
        try:
            blend = Path(other), float(weight)
        except ValueError:
            parser.error(f"--denoiser-blend WEIGHT must be a number, got {weight!r}")
        if not 0.0 <= blend[1] <= 1.0:
            parser.error(f"--denoiser-blend WEIGHT must lie in [0, 1], got {weight}")
    autoencoder, denoiser = (component_weights(path, args.raw_weights) for path in (args.autoencoder, args.denoiser))
    refiner = component_weights(args.refiner, args.raw_weights) if args.refiner is not None else None
    print(f"exporting {autoencoder}, {denoiser}" + (f" and {refiner}" if refiner else ""))
    memory_config = training_memory_config(args.denoiser)
    if memory_config is None:
        print(f"note: no {MEMORY_SETTINGS} beside {args.denoiser}; the default memory settings are exported")
    denoiser_model = load_component(MemoryConditionedDenoiser, denoiser)
    if blend is not None:
        other = component_weights(blend[0], args.raw_weights)
        print(f"blending the denoiser with {other} (weight {blend[1]})")
        blend_weights(denoiser_model, load_component(MemoryConditionedDenoiser, other), blend[1])
    model = WorldModel(load_component(RGBDAutoencoder, autoencoder), denoiser_model, tuple(args.image_size),
                       memory_config=memory_config,
                       sampling=SamplingConfig(num_inference_steps=args.steps, keep_remembered=args.keep_remembered),
                       refiner=load_component(MemoryReadRefiner, refiner) if refiner else None)
    model.save_pretrained(args.output)
    size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"wrote {args.output} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
