"""The demo tour in the learned world, beside the truth: does the camera end up inside imagined walls?

    .venv/bin/python benchmarks/demo_tour_benchmark.py [--seeds 0 2 4 5] [--steps 200] [--output DIR]
        [--model-path CKPT] [--start-views N] [--tours pose scan]

Runs the ``make run`` tour offline (shipped model, ``config/sim.yaml``, world 0) for each noise seed,
twice: steered from the pose alone (the fixed triangle through the true room), and also reading the
scan synthesised from the published depth, as ``make run`` now drives it. Commands are one step late, as
in the real-time node (each ``odom`` is answered after the step that produced it). The ground-truth
renderer is moved to the same poses. Printed per run: frames where more than 20 % of the image is nearer
than 0.45 m (the camera inside a surface; the floor is never that near), the same count for the truth at
those poses, the share of pixels under 0.6x the true depth, the fog (luminance contrast of the frames
over the truth's, ``metrics.contrast_ratio``: what a person watching the demo sees fade), the mean PSNR
and depth AbsRel against the truth at the same poses (is it the place it claims to be) and the distance
driven. ``--output`` also writes a contact sheet per run (every 10th frame) and one of the truth at the
same poses; ``--model-path`` runs another checkpoint (``mirage-export`` output) instead of the shipped one;
``--start-views`` how many views of the start place the memory holds before the first step (``start_views``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from mirage_ros.ros.parameters import default_config, parameters_from_yaml
from mirage_ros.ros.sim_node import NODE_NAME, PARAMETERS
from mirage_ros.sensors import RangeScan
from mirage_ros.simulator import build_simulator
from mirage_ros.tour import Tour
from mirage_ros.training.metrics import camera_inside_surface, contrast_ratio, depth_abs_rel, psnr
from mirage_ros.worlds.contact_sheet import contact_sheet


def drive(seed: int, steps: int, reads_scan: bool, sheet: Path | None, overrides: dict) -> dict[str, float]:
    params = parameters_from_yaml(default_config(), NODE_NAME, PARAMETERS, dict(overrides, seed=seed))
    learned, truth = build_simulator(params), build_simulator(dict(params, renderer="ground_truth"))
    learned.reset()
    truth.reset()
    tour, scan, dt = Tour(), None, 1.0 / params["rate"]
    previous = learned.base.pose
    inside = inside_truth = 0
    nearer, psnrs, abs_rels, driven, frames, true_frames, images, true_images = [], [], [], 0.0, [], [], [], []
    for k in range(steps):
        forward, yaw_rate = tour.command(previous, scan if reads_scan else None)
        previous = learned.base.pose
        learned.base.command(forward, 0.0, yaw_rate, stamp=k * dt)
        frame = learned.step(dt, (k + 1) * dt)
        true_result = truth.step(dt, (k + 1) * dt, frame.pose).result
        true_depth, depth = true_result.depth, frame.result.depth
        images.append(frame.result.rgb)
        true_images.append(true_result.rgb)
        scan = RangeScan.from_depth(depth, learned.camera.K, learned.mount.base_to_optical, learned.camera.hfov)
        inside += camera_inside_surface(depth)
        inside_truth += camera_inside_surface(true_depth)
        valid = np.isfinite(depth) & np.isfinite(true_depth) & (true_depth > 0)
        nearer.append(np.mean(depth[valid] < 0.6 * true_depth[valid]))
        psnrs.append(psnr(frame.result.rgb, true_result.rgb))
        abs_rels.append(depth_abs_rel(depth, true_depth))
        driven += math.hypot(frame.pose.x - previous.x, frame.pose.y - previous.y)
        if k % 10 == 0:
            frames.append((frame.result.rgb, depth))
            true_frames.append((true_result.rgb, true_depth))
    if sheet is not None:
        contact_sheet(frames, columns=5, title=sheet.stem).save(sheet)
        truth_sheet = sheet.with_name(f"{sheet.stem}_truth.png")
        contact_sheet(true_frames, columns=5, title=f"{sheet.stem}: the truth at the same poses").save(truth_sheet)
    return {"inside": inside, "inside_truth": inside_truth, "nearer": float(np.mean(nearer)), "driven": driven,
            "psnr": float(np.mean(psnrs)), "abs_rel": float(np.mean(abs_rels)),
            "contrast": contrast_ratio(images, true_images)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 2, 4, 5], help="noise seeds")
    parser.add_argument("--steps", type=int, default=200, help="steps per run (make run: 20 s at 10 Hz)")
    parser.add_argument("--output", type=Path, default=None, help="folder for one contact sheet per run")
    parser.add_argument("--model-path", default="", help="world model checkpoint (default: the shipped one)")
    parser.add_argument("--start-views", type=int, default=None,
                        help="views of the world observed at the start (default: config/sim.yaml's)")
    parser.add_argument("--tours", nargs="+", choices=("pose", "scan"), default=["pose", "scan"],
                        help="which drivers: steered from the pose alone, or also reading the scan")
    args = parser.parse_args()
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
    print(f"{'tour':<22} {'seed':>4} {'frames inside (truth)':>22} {'pixels < 0.6x true depth':>25} "
          f"{'contrast / truth':>17} {'PSNR dB':>8} {'AbsRel':>7} {'driven m':>9}")
    overrides = {"model_path": args.model_path}
    if args.start_views is not None:
        overrides["start_views"] = args.start_views
    for reads_scan, name in ((False, "pose only"), (True, "pose + scan (make run)")):
        if ("scan" if reads_scan else "pose") not in args.tours:
            continue
        totals, contrasts, psnrs = [], [], []
        for seed in args.seeds:
            sheet = args.output / f"tour_{'scan' if reads_scan else 'pose'}_seed{seed}.png" if args.output else None
            result = drive(seed, args.steps, reads_scan, sheet, overrides)
            totals.append(result["inside"])
            contrasts.append(result["contrast"])
            psnrs.append(result["psnr"])
            print(f"{name:<22} {seed:>4} {result['inside']:>14} ({result['inside_truth']:>3})"
                  f" {result['nearer']:>25.3f} {result['contrast']:>17.2f} {result['psnr']:>8.2f} {result['abs_rel']:>7.3f}"
                  f" {result['driven']:>9.2f}", flush=True)
        print(f"{name:<22}  all {sum(totals):>14} of {args.steps * len(args.seeds)} frames; "
              f"contrast {np.mean(contrasts):.2f} of the truth's, PSNR {np.mean(psnrs):.2f} dB on average")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
