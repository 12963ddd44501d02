"""A picture of a world and a trajectory through it: RGB and colour-mapped depth frames side by side,
plus a top-down map with the path.

    mirage-contact-sheet --seed 3 --kind loop --frames 60 --output sheet.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mirage_ros.camera import PinholeCamera
from mirage_ros.worlds.generator import World, generate_world
from mirage_ros.worlds.trajectories import KINDS, Trajectory, generate_trajectory

#: Depth colour map stops (near -> far): a perceptually ordered yellow-red-purple-blue ramp.
_DEPTH_STOPS = np.array([[253, 231, 37], [245, 130, 50], [200, 50, 90], [110, 30, 130], [20, 20, 70]], float)


def colorize_depth(depth: np.ndarray, near: float = 0.2, far: float = 8.0) -> np.ndarray:
    """uint8 ``[H,W,3]`` of metric depth on a log scale; missing depth (NaN) is black."""
    valid = np.isfinite(depth) & (depth > 0)
    t = np.zeros(depth.shape)
    t[valid] = (np.log(np.clip(depth[valid], near, far)) - math.log(near)) / (math.log(far) - math.log(near))
    position = t * (len(_DEPTH_STOPS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(_DEPTH_STOPS) - 2)
    fraction = (position - low)[..., None]
    colours = _DEPTH_STOPS[low] * (1 - fraction) + _DEPTH_STOPS[low + 1] * fraction
    colours[~valid] = 0
    return colours.astype(np.uint8)


def top_down_map(world: World, trajectory: Trajectory | None, size: int) -> Image.Image:
    """Free space white, walls and obstacles grey, the path blue from a green start to a red end."""
    resolution = max(world.size) / size
    grid = world.occupancy_grid(resolution)
    image = np.where(grid[::-1, :, None], 90, 245).astype(np.uint8).repeat(3, axis=2)
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    if trajectory is not None:
        def pixel(x: float, y: float) -> tuple[float, float]:
            return x / resolution, grid.shape[0] - y / resolution

        points = [pixel(x, y) for x, y, _ in trajectory.base_poses]
        draw.line(points, fill=(40, 90, 220), width=2)
        for index in range(0, len(trajectory.base_poses), max(1, len(trajectory.base_poses) // 12)):
            x, y, yaw = trajectory.base_poses[index]
            u, v = pixel(x, y)
            draw.line([(u, v), (u + 8 * math.cos(yaw), v - 8 * math.sin(yaw))], fill=(40, 90, 220), width=1)
        for (u, v), colour in ((points[0], (0, 170, 0)), (points[-1], (210, 0, 0))):
            draw.ellipse((u - 4, v - 4, u + 4, v + 4), fill=colour)
    return canvas


def contact_sheet(frames: list[tuple[np.ndarray, np.ndarray]], map_image: Image.Image | None = None,
                  columns: int = 4, title: str = "") -> Image.Image:
    """Grid of ``(rgb, depth)`` pairs (RGB left, depth right in each cell), the map on the left."""
    height, width = frames[0][0].shape[:2]
    cell_w, cell_h = 2 * width + 6, height + 6
    rows = math.ceil(len(frames) / columns)
    map_w = map_image.width + 10 if map_image is not None else 0
    sheet = Image.new("RGB", (map_w + columns * cell_w + 4, max(rows * cell_h, map_image.height if map_image else 0) + 22),
                      (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), title, fill=(230, 230, 230))
    if map_image is not None:
        sheet.paste(map_image, (4, 20))
    for index, (rgb, depth) in enumerate(frames):
        row, column = divmod(index, columns)
        x, y = map_w + column * cell_w + 4, 20 + row * cell_h
        sheet.paste(Image.fromarray(rgb), (x, y))
        sheet.paste(Image.fromarray(colorize_depth(depth)), (x + width + 2, y))
    return sheet


def main(argv: list[str] | None = None) -> int:
    from mirage_ros.worlds.renderer import GroundTruthRenderer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--kind", choices=KINDS, default="explore")
    parser.add_argument("--frames", type=int, default=60, help="trajectory length")
    parser.add_argument("--shown", type=int, default=16, help="frames shown on the sheet (evenly spaced)")
    parser.add_argument("--size", type=int, default=128, help="image width and height")
    parser.add_argument("--output", type=Path, default=Path("contact_sheet.png"))
    args = parser.parse_args(argv)
    world = generate_world(args.seed)
    trajectory = generate_trajectory(world, args.kind, args.frames, args.seed)
    camera = PinholeCamera.from_hfov(args.size, args.size, math.pi / 2)
    indices = np.linspace(0, args.frames - 1, min(args.shown, args.frames)).round().astype(int)
    with GroundTruthRenderer(world, args.size, args.size) as renderer:
        frames = [renderer.render(trajectory.cam_to_world[i], camera.K) for i in indices]
    title = f"world {args.seed}, {args.kind} trajectory, frames {', '.join(map(str, indices[:8]))}..."
    contact_sheet(frames, top_down_map(world, trajectory, 360), title=title).save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
