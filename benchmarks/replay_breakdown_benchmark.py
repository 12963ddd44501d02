"""Where replay loses: the evaluation's replay, its seen pixels grouped by how the latent memory's token
sits in each cell, on the floor and off it, latent against explicit memory.

    .venv/bin/python benchmarks/replay_breakdown_benchmark.py [--worlds 5] [--seed 0] [--precision auto]

The scenario is ``mirage-evaluate``'s (``evaluate.replay_scenario``: a ground-truth mapping run observed
into the memory, then another route, on the test worlds). Before each latent step the memory is read at
the step's pose (``MemoryView.alignment``) to class each cell: minified (the token was seen from nearer
than now, log2 scale under -``SCALE_CLASS``), magnified (seen from farther, over ``SCALE_CLASS``), at
scale and within a quarter cell, a quarter to a half cell off, or farther off (a splat fill), or
uncovered. Printed per class and part: the share of the scored seen pixels, the PSNR of each memory
pooled over them, and the difference: which cells a better read or refiner has to win back.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from mirage_ros.camera import PinholeCamera
from mirage_ros.model.world_model import PRECISIONS, WorldModel
from mirage_ros.training.evaluate import REPLAY_SEEN_SHARE, replay_scenario
from mirage_ros.worlds import generate_world
from mirage_ros.worlds.dataset import seeds_for
from mirage_ros.worlds.renderer import GroundTruthRenderer

#: |log2 of seen-at over present depth| above which a token counts as seen at another scale.
SCALE_CLASS = 0.3
CLASSES = ("minified", "at scale, within 1/4 cell", "at scale, 1/4-1/2 cell off", "at scale, over 1/2 cell off",
           "magnified", "uncovered")


def cell_classes(alignment: torch.Tensor, coverage: torch.Tensor, patch_size: int) -> np.ndarray:
    """Index into ``CLASSES`` per image pixel, from a read's ``alignment [3,h,w]`` and ``coverage [h,w]``."""
    offset, scale = alignment[:2].abs().amax(0), alignment[2]
    at_scale = coverage & (scale.abs() <= SCALE_CLASS)
    classes = torch.full(coverage.shape, CLASSES.index("uncovered"))
    classes[coverage & (scale < -SCALE_CLASS)] = CLASSES.index("minified")
    classes[coverage & (scale > SCALE_CLASS)] = CLASSES.index("magnified")
    classes[at_scale & (offset <= 0.25)] = CLASSES.index("at scale, within 1/4 cell")
    classes[at_scale & (offset > 0.25) & (offset <= 0.5)] = CLASSES.index("at scale, 1/4-1/2 cell off")
    classes[at_scale & (offset > 0.5)] = CLASSES.index("at scale, over 1/2 cell off")
    return classes.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, default=5, help="test worlds (mirage-evaluate's first N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    args = parser.parse_args()
    base = WorldModel.from_pretrained(None, memory="latent", seed=args.seed, precision=args.precision)
    height, width = base.image_size
    camera = PinholeCamera.from_hfov(width, height, math.pi / 2)
    squared, counts, scored = {}, {}, 0  # (class, part, memory) -> summed squared error, pixel count
    for world_seed in seeds_for("test", args.worlds):
        world = generate_world(world_seed)
        with GroundTruthRenderer(world, width, height) as renderer:
            scenario = replay_scenario(world, world_seed, renderer, camera)
        frames = [t for t, mask in enumerate(scenario.seen) if mask.mean() >= REPLAY_SEEN_SHARE]
        classes = {}
        for memory in ("latent", "explicit"):
            model = scenario.mapped_model(base, memory, "cpu", args.seed, args.precision)
            for t, pose in enumerate(scenario.route_poses):
                if memory == "latent" and t in frames:
                    with torch.inference_mode():
                        view = model.memory.read_view(pose, model.K, model.image_size, surface_depth=False)
                    classes[t] = cell_classes(view.alignment, view.coverage, model.memory.config.patch_size)
                rgb = model.step(pose).rgb
                if t not in frames:
                    continue
                error = ((rgb.astype(np.float64) - scenario.truth[t][0]) ** 2).mean(-1)
                for part, pixels in (("floor", scenario.floor[t]), ("rest", ~scenario.floor[t])):
                    for index, name in enumerate(CLASSES):
                        mask = scenario.seen[t] & pixels & (classes[t] == index)
                        key = (name, part, memory)
                        squared[key] = squared.get(key, 0.0) + float(error[mask].sum())
                        counts[key] = counts.get(key, 0) + int(mask.sum())
        scored += sum(int(scenario.seen[t].sum()) for t in frames)
        print(f"world {world_seed}: {len(frames)} frames scored", flush=True)

    def db(key: tuple[str, str, str]) -> float:
        return 10 * math.log10(255.0 ** 2 / max(squared[key] / counts[key], 1e-12))

    print("\n| cell's token | part | share of the seen pixels | latent (dB) | explicit (dB) | latent - explicit |")
    print("|---|---|---|---|---|---|")
    for name in CLASSES:
        for part in ("floor", "rest"):
            if counts.get((name, part, "latent")):
                latent, explicit = db((name, part, "latent")), db((name, part, "explicit"))
                print(f"| {name} | {part} | {counts[(name, part, 'latent')] / scored:.1%} | {latent:.2f} | "
                      f"{explicit:.2f} | {latent - explicit:+.2f} |")


if __name__ == "__main__":
    main()
