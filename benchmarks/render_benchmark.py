"""Ground-truth renderer throughput: RGB + exact depth at 128x128 on this machine's CPU.

    .venv/bin/python benchmarks/render_benchmark.py [--frames 2000] [--size 128]
"""

from __future__ import annotations

import argparse
import math
import time

from mirage_ros.camera import PinholeCamera
from mirage_ros.worlds import generate_trajectory, generate_world
from mirage_ros.worlds.renderer import GroundTruthRenderer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    camera = PinholeCamera.from_hfov(args.size, args.size, math.pi / 2)
    rates = []
    for seed in (1, 2, 3):
        world = generate_world(seed)
        trajectory = generate_trajectory(world, "explore", 200, seed)
        with GroundTruthRenderer(world, args.size, args.size) as renderer:
            renderer.render(trajectory.cam_to_world[0], camera.K)  # warm-up
            started = time.perf_counter()
            for index in range(args.frames // 3):
                renderer.render(trajectory.cam_to_world[index % len(trajectory)], camera.K)
            rates.append((args.frames // 3) / (time.perf_counter() - started))
    print(f"{args.size}x{args.size} RGB + depth, one process: " + ", ".join(f"world {s}: {r:.0f} fps"
                                                                       for s, r in zip((1, 2, 3), rates)))
    print(f"mean {sum(rates) / len(rates):.0f} frames/s (target >= 200)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
