"""Assemble a world model checkpoint from trained components, as fp16 safetensors.

    mirage-export --autoencoder RUN_AE/checkpoint --denoiser RUN_DN/checkpoint --output mirage_ros/checkpoints/default
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mirage_ros.model import MemoryConditionedDenoiser, RGBDAutoencoder, load_component
from mirage_ros.model.world_model import SamplingConfig, WorldModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", type=Path, required=True)
    parser.add_argument("--denoiser", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 128], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--steps", type=int, default=SamplingConfig.num_inference_steps, help="sampling steps")
    parser.add_argument("--keep-remembered", action=argparse.BooleanOptionalAction, default=True,
                        help="keep remembered tokens verbatim (default) or let the denoiser redraw them")
    args = parser.parse_args(argv)
    model = WorldModel(load_component(RGBDAutoencoder, args.autoencoder),
                       load_component(MemoryConditionedDenoiser, args.denoiser), tuple(args.image_size),
                       sampling=SamplingConfig(num_inference_steps=args.steps, keep_remembered=args.keep_remembered))
    model.save_pretrained(args.output)
    size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"wrote {args.output} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
