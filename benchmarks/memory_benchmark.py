"""Latent spatial memory vs the explicit RGB point-cloud baseline, side by side on one trajectory.

    .venv/bin/python benchmarks/memory_benchmark.py [--steps 240] [--checkpoint DIR]

A 128x128 camera drives a loop through a procedural world twice (the first lap explores, the second
only revisits; ground-truth RGB-D from the renderer). Each step writes the frame to both memories (the latent
one with the autoencoder's latents, and the floor's colours to its ground texture) and reads the next view from
both; the explicit read is followed by the autoencoder encode a model needs to use it, the latent read by the
ground texture's paint of the next true frame's floor (what a step adds to its read). Prints bytes held (the
latent memory's with its ground texture), write/read times and, at the end, the ratios. Uses the shipped
autoencoder when present, else an untrained one of the same architecture.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from mirage_ros.camera import PinholeCamera
from mirage_ros.memory import ExplicitPointCloudMemory, LatentMemoryConfig, LatentSpatialMemory
from mirage_ros.memory.projection import RayCache, clamp_to_floor, floor_geometry
from mirage_ros.model import DEFAULT_CHECKPOINT, RGBDAutoencoder, load_component
from mirage_ros.worlds import generate_trajectory, generate_world
from mirage_ros.worlds.generator import FLOOR_HEIGHT
from mirage_ros.worlds.renderer import GroundTruthRenderer


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--world", type=int, default=10, help="world seed (a held-out test world)")
    parser.add_argument("--every", type=int, default=40, help="print a row every N steps")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    checkpoint = DEFAULT_CHECKPOINT / "autoencoder"
    if (checkpoint / "config.json").is_file():
        autoencoder, origin = load_component(RGBDAutoencoder, checkpoint), "shipped, trained"
    else:
        autoencoder, origin = RGBDAutoencoder().eval(), "UNTRAINED, same architecture (no shipped checkpoint)"
    camera = PinholeCamera.from_hfov(128, 128, math.pi / 2)
    world = generate_world(args.world)
    lap = generate_trajectory(world, "loop", args.steps // 2, args.world)
    poses = np.concatenate([lap.cam_to_world, lap.cam_to_world, lap.cam_to_world[:1]])
    trajectory = type(lap)("two laps", np.concatenate([lap.base_poses] * 2 + [lap.base_poses[:1]]), poses)
    with GroundTruthRenderer(world, 128, 128) as renderer:
        frames = [renderer.render(pose, camera.K) for pose in trajectory.cam_to_world]
    latent_memory, explicit_memory = LatentSpatialMemory(LatentMemoryConfig()), ExplicitPointCloudMemory()
    rays = RayCache(torch.device("cpu"))
    print(f"autoencoder: {origin}; world {args.world}; {args.steps} steps at 128x128, 16x16x8 latents, 2 threads")
    print(f"{'step':>5} {'latent MiB':>11} {'explicit MiB':>13} {'ratio':>7} {'lat write ms':>13} {'lat read ms':>12} "
          f"{'exp write ms':>13} {'exp read ms':>12} {'exp encode ms':>14}")
    rows = {key: [] for key in ("latent_write", "latent_read", "explicit_write", "explicit_read", "encode")}
    sizes = []
    with torch.inference_mode():
        for step in range(args.steps):
            rgb, depth = frames[step]
            rgb_t = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
            depth_t = torch.from_numpy(depth)
            latent = autoencoder.encode(rgb_t[None], depth_t[None])[0]
            pose, next_pose = trajectory.cam_to_world[step], trajectory.cam_to_world[step + 1]
            _, t = timed(latent_memory.write, latent, depth, camera.K, pose)
            _, t_ground = timed(latent_memory.ground.observe, rgb_t, depth_t,
                                floor_geometry(rays(camera.K, 128, 128), pose, FLOOR_HEIGHT))
            rows["latent_write"].append(t + t_ground)
            _, t = timed(explicit_memory.write, rgb_t, depth, camera.K, pose)
            rows["explicit_write"].append(t)
            _, t = timed(latent_memory.read, next_pose, camera.K, (16, 16))
            floor = floor_geometry(rays(camera.K, 128, 128), next_pose, FLOOR_HEIGHT)
            next_depth = clamp_to_floor(torch.from_numpy(frames[step + 1][1]), floor)  # as a step puts it
            _, t_ground = timed(latent_memory.ground.paint, torch.full((3, 128, 128), 0.5), next_depth, floor)
            rows["latent_read"].append(t + t_ground)
            render, t = timed(explicit_memory.read, next_pose, camera.K, (128, 128))
            rows["explicit_read"].append(t)
            _, t = timed(autoencoder.encode, render.rgb[None], render.depth[None])
            rows["encode"].append(t)
            sizes.append((latent_memory.stats().bytes, explicit_memory.stats().bytes))
            if (step + 1) % args.every == 0 or step == args.steps - 1:
                recent = {k: 1000 * float(np.median(v[-args.every:])) for k, v in rows.items()}
                lat, exp = sizes[-1]
                print(f"{step + 1:>5} {lat / 2**20:>11.3f} {exp / 2**20:>13.2f} {exp / lat:>6.1f}x "
                      f"{recent['latent_write']:>13.2f} {recent['latent_read']:>12.2f} {recent['explicit_write']:>13.2f} "
                      f"{recent['explicit_read']:>12.2f} {recent['encode']:>14.2f}")

    # Read time with 100k stored tokens: fill a fresh memory with random surface tokens.
    generator = torch.Generator().manual_seed(0)
    count = 100_000
    points = torch.rand(count, 3, generator=generator) * torch.tensor([20.0, 20.0, 2.5])
    keys = torch.arange(count, dtype=torch.long)  # distinct voxels
    big = LatentSpatialMemory.from_tensors(
        {"keys": keys, "positions": points,
         "normals": torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=1).half(),
         "features": torch.randn(count, 8, generator=generator).half(),
         "view_depths": torch.full((count,), 2.0, dtype=torch.float16),
         "weights": torch.ones(count), "extents": torch.full((count,), 0.1),
         "last_seen": torch.zeros(count, dtype=torch.int32), "observed": torch.ones(count, dtype=torch.float16)},
        LatentMemoryConfig(capacity=200_000))
    view = trajectory.cam_to_world[0].copy()
    view[:3, 3] = (10.0, 10.0, 1.0)
    read_times = [timed(big.read, view, camera.K, (16, 16))[1] for _ in range(60)][10:]

    lat_final, exp_final = sizes[-1]
    explored = np.array([s[0] for s in sizes[len(sizes) // 2:]], dtype=np.float64)
    latent_path = float(np.median(rows["latent_read"]))
    explicit_path = float(np.median(rows["explicit_read"])) + float(np.median(rows["encode"]))
    print()
    ground = latent_memory.ground.nbytes
    print(f"cache size after {args.steps} steps: latent {lat_final / 2**20:.3f} MiB (tokens {(lat_final - ground) / 2**20:.3f}, "
          f"ground texture {ground / 2**20:.3f} in {len(latent_memory.ground)} cells), explicit {exp_final / 2**20:.2f} MiB "
          f"-> explicit / latent = {exp_final / lat_final:.1f}x (target >= 55x)")
    print(f"the ground texture's read cache (its clipmap: a fixed size, rebuilt from the cells on demand, not counted "
          f"above): {latent_memory.ground.cache_nbytes / 2**20:.2f} MiB")
    print(f"read path: latent read {1000 * latent_path:.2f} ms vs explicit render + encode {1000 * explicit_path:.2f} ms "
          f"-> {explicit_path / latent_path:.1f}x faster (target >= 10x)")
    print(f"read with {count} stored tokens: median {1000 * float(np.median(read_times)):.2f} ms (target <= 5 ms)")
    print(f"latent bytes over the second lap: min {explored.min() / 2**20:.3f} / max {explored.max() / 2**20:.3f}"
          f" MiB, spread {100 * (explored.max() / explored.min() - 1):.1f} % (target: flat within +-10 % once explored)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
