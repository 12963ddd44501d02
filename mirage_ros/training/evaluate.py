"""Evaluate a world model checkpoint on held-out worlds and write a markdown report with PNG plots.

    mirage-evaluate --checkpoint CKPT --output report/ --worlds 6 --frames 40

Only test-split world seeds are used (``worlds.dataset.split_of``): never seen in training. For each
world, an out-and-back (ABA) trajectory is rendered with the ground-truth renderer; the model starts
from the first frame and generates the rest. Reported:

- fidelity on observed content: the pixels of each generated frame whose surface the start
  observation saw (ground-truth visibility), against the ground truth: PSNR, SSIM, depth AbsRel;
  also PSNR of whole frames the memory covered (>= 90 %), which includes content the model imagined
  on the way out and met again;
- loop-closure consistency: PSNR between the frame generated on the way back and the one generated on
  the way out at the identical pose, for latent memory, explicit memory and no memory;
- the effect of starting from the memory read where coverage is high (memory reuse on/off), of
  keeping remembered tokens verbatim versus letting the denoiser redraw them, and of the read refiner
  (``latent_unrefined``: remembered tokens decoded as read);
- replay: the memory built from a ground-truth mapping run through the public observation API
  (``WorldModel.observe``), then another route through the same world, scored on the pixels the
  mapping run saw; latent and explicit memory side by side (the paper's claim: latent is as good), also
  split into the floor and everything else (the floor is most of what a mapping run sees, and is where
  the memories differ most), with a picture of the first world's replay;
- long rollouts (``LONG_FRAMES`` steps of free-space driving with look-arounds, and of turning in
  place) with the default latent memory: realism as a two-sample test (``realism.py``: can a small
  CNN tell generated RGB-D frames from true ones at the same poses? 0.5 = no), over the whole rollouts
  and over their last third (drift), beside the same test against the autoencoder's reconstructions of
  the true frames (what "indistinguishable" measures here); seam ratios over the last third; the
  photometric consistency of consecutive frames reprojected with their own depth, beside the truth's;
  the frames with the camera inside a surface and the depth steps a costmap reads as obstacle borders,
  beside the truth's; and the fog: luminance contrast from a third of each drive on, over the truth's
  (mean over the drives, and the lowest drive);
- geometry of the depth a planner reads, beside the ground truth's: token-seam ratios of depth and
  RGB (do 8x8 latent cells show as blocks?), the share of depth points below the floor, and the
  depth AbsRel on floor pixels the start observation did not see (imagined floor);
- speed per step (read, denoise, decode, write) on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mirage_ros.camera import PinholeCamera
from mirage_ros.model.world_model import PRECISIONS, WorldModel, resolve_precision
from mirage_ros.training.metrics import (DEPTH_STEP, INSIDE_DEPTH, INSIDE_SHARE, camera_inside_surface, contrast_ratio,
                                         depth_abs_rel, depth_step_share, heights_above_floor, psnr, reprojection_psnr,
                                         seam_ratio, ssim, visible_in)
from mirage_ros.training.realism import frame_tensor, two_sample_accuracy
from mirage_ros.worlds import generate_trajectory, generate_world
from mirage_ros.worlds.contact_sheet import colorize_depth
from mirage_ros.worlds.dataset import seeds_for
from mirage_ros.worlds.generator import FLOOR_HEIGHT

COVERED_FRAME = 0.9
#: A frame enters the observed-content metrics when at least this share of it was seen at the start.
OBSERVED_SHARE = 0.3
VARIANTS = ("latent", "latent_unrefined", "latent_no_reuse", "latent_redraw", "latent_no_ground", "latent_no_floor",
            "explicit", "none")
#: Sampling changes that define the latent-memory variants (see ``SamplingConfig``).
VARIANT_SAMPLING = {"latent_no_reuse": {"reuse_coverage": None}, "latent_redraw": {"keep_remembered": False}}
#: Variants that do not know where the floor is (``WorldModel.floor_height``; the worlds' is ``FLOOR_HEIGHT``).
NO_FLOOR = ("latent_no_floor",)
#: Variants whose latent memory keeps no ground texture (floor colours only as tokens, as before release v13).
NO_GROUND = ("latent_no_ground",)
#: Variants that decode remembered tokens as read, without the checkpoint's read refiner.
UNREFINED = ("latent_unrefined",)
#: A point counts as below the floor when it is more than this (m) under it; truth floor pixels are
#: those less than this above it.
FLOOR_MARGIN = 0.02
#: Replay scenario: frames of the ground-truth mapping run, and of the other route driven afterwards.
MAPPING_FRAMES, REPLAY_FRAMES = 80, 30
#: A replay frame is scored when at least this share of it was seen by the mapping run.
REPLAY_SEEN_SHARE = 0.3
#: ...and scored on its seen floor (or seen rest) alone when that part is at least this share of the view.
REPLAY_PART_SHARE = 0.05
REPLAY_VARIANTS = ("latent", "latent_no_ground", "latent_unrefined", "latent_redraw", "explicit")
#: Long rollouts: steps, and the trajectory kinds driven (free space with look-arounds; turning in place).
LONG_FRAMES = 150
LONG_KINDS = ("explore", "rotate")


def variant_model(base: WorldModel, variant: str, device: str, seed: int, precision: str) -> WorldModel:
    """A fresh world model with ``base``'s weights, set up as the evaluation ``variant`` (``VARIANTS``)."""
    return WorldModel(base.autoencoder, base.denoiser, base.image_size,
                      memory="latent" if variant.startswith("latent") else variant,
                      sampling=replace(base.sampling, **VARIANT_SAMPLING.get(variant, {})),
                      memory_config=replace(base.memory_config, ground_texture=variant not in NO_GROUND),
                      device=device, seed=seed, precision=precision,
                      floor_height=None if variant in NO_FLOOR else FLOOR_HEIGHT,
                      refiner=None if variant in UNREFINED else base.refiner)


def generate_along(model: WorldModel, rgb: list[np.ndarray], depth: list[np.ndarray], poses: np.ndarray, K: np.ndarray) -> dict:
    model.reset(rgb[0], depth[0], K, poses[0])
    frames, depths, coverage, timings = [rgb[0]], [depth[0]], [1.0], []
    for pose in poses[1:]:
        result = model.step(pose)
        frames.append(result.rgb)
        depths.append(result.depth)
        coverage.append(result.coverage)
        timings.append(result.timings)
    return {"rgb": frames, "depth": depths, "coverage": coverage, "timings": timings}


def evaluate(checkpoint: str | None, worlds: int, frames: int, seed: int, device: str,
             precision: str = "float32", long_frames: int = LONG_FRAMES) -> tuple[dict, dict]:
    from mirage_ros.worlds.renderer import GroundTruthRenderer

    base = WorldModel.from_pretrained(checkpoint, memory="latent", device=device, seed=seed, precision=precision)
    height, width = base.image_size
    camera = PinholeCamera.from_hfov(width, height, math.pi / 2)
    results = {variant: {"loop_psnr": [], "observed_psnr": [], "observed_ssim": [], "observed_absrel": [],
                         "covered_psnr": [], "timings": [], "rgb": [], "depth": [], "below_floor": [],
                         "floor_absrel": []} for variant in ("truth", *VARIANTS)}
    reconstruction = {"psnr": [], "ssim": [], "absrel": []}
    replayed = {variant: {"psnr": [], "absrel": [], "floor_psnr": [], "other_psnr": [], "floor_share": []}
                for variant in REPLAY_VARIANTS}
    replay_example = {}
    long = {"true": [], "generated": [], "reconstructed": [], "group": [], "last_third": [], "late_rgb": [],
            "late_depth": [], "reprojection": [], "truth_reprojection": [], "inside": [], "truth_inside": [],
            "depth_steps": [], "truth_depth_steps": [], "contrast": []}
    examples = {}
    for world_seed in seeds_for("test", worlds):
        world = generate_world(world_seed)
        trajectory = generate_trajectory(world, "out_and_back", frames, world_seed)
        with GroundTruthRenderer(world, width, height) as renderer:
            truth = [renderer.render(pose, camera.K) for pose in trajectory.cam_to_world]
        truth_rgb, truth_depth = [t[0] for t in truth], [t[1] for t in truth]
        observed = [visible_in(truth_depth[t], trajectory.cam_to_world[t], truth_depth[0], trajectory.cam_to_world[0],
                               camera.K) for t in range(frames)]
        for rgb, depth in zip(truth_rgb, truth_depth):  # the autoencoder alone: the bound on fidelity
            rgb_out, depth_out = autoencode(base, rgb, depth)
            reconstruction["psnr"].append(psnr(rgb_out, rgb))
            reconstruction["ssim"].append(ssim(rgb_out, rgb))
            reconstruction["absrel"].append(depth_abs_rel(depth_out, depth))
        half = frames // 2
        floor = [floor_pixels(d, pose, camera.K) for d, pose in zip(truth_depth, trajectory.cam_to_world)]
        geometry(results["truth"], truth_rgb, truth_depth, truth_depth, trajectory.cam_to_world, camera.K, observed,
                 floor)
        for variant in VARIANTS:
            model = variant_model(base, variant, device, seed, precision)
            out = generate_along(model, truth_rgb, truth_depth, trajectory.cam_to_world, camera.K)
            record = results[variant]
            geometry(record, out["rgb"], out["depth"], truth_depth, trajectory.cam_to_world, camera.K, observed, floor)
            for back in range(half + 1, frames):
                there = 2 * half - back  # the outgoing frame at the identical pose
                if there >= 1 and np.allclose(trajectory.cam_to_world[back], trajectory.cam_to_world[there]):
                    record["loop_psnr"].append(min(psnr(out["rgb"][back], out["rgb"][there]), 60.0))
            for t in range(1, frames):
                if observed[t].mean() >= OBSERVED_SHARE:
                    record["observed_psnr"].append(psnr(out["rgb"][t], truth_rgb[t], observed[t]))
                    record["observed_ssim"].append(ssim(out["rgb"][t], truth_rgb[t], mask=observed[t]))
                    record["observed_absrel"].append(depth_abs_rel(out["depth"][t], truth_depth[t], observed[t]))
                if out["coverage"][t] >= COVERED_FRAME:
                    record["covered_psnr"].append(psnr(out["rgb"][t], truth_rgb[t]))
            record["timings"].extend(out["timings"])
            if world_seed == seeds_for("test", 1)[0]:
                examples[variant] = out
                examples["truth"] = {"rgb": truth_rgb, "depth": truth_depth}
        with GroundTruthRenderer(world, width, height) as renderer:
            long_rollouts(base, world, world_seed, renderer, camera, device, seed, precision, long, long_frames)
            scores, example = replay(base, world, world_seed, renderer, camera, device, seed, precision)
            for variant, variant_scores in scores.items():
                for name, values in variant_scores.items():
                    replayed[variant][name].extend(values)
            replay_example = replay_example or example
    summary = {"truth": geometry_summary(results.pop("truth"))}
    for variant, record in results.items():
        timings = record.pop("timings")
        phases = {phase: float(np.median([getattr(t, phase) for t in timings])) * 1000 for phase in
                  ("read", "denoise", "decode", "write")}
        phases["total"] = float(np.median([t.total for t in timings])) * 1000
        summary[variant] = {
            "loop_closure_psnr_db": mean_or_none(record["loop_psnr"]),
            "observed_frames": len(record["observed_psnr"]),
            "observed_psnr_db": mean_or_none(record["observed_psnr"]),
            "observed_ssim": mean_or_none(record["observed_ssim"]),
            "observed_depth_absrel": mean_or_none(record["observed_absrel"]),
            "covered_frames": len(record["covered_psnr"]),
            "covered_frame_psnr_db": mean_or_none(record["covered_psnr"]),
            "step_ms_median": phases,
            **geometry_summary(record),
        }
    summary["replay"] = {variant: {"seen_psnr_db": mean_or_none(r["psnr"]),
                                   "seen_depth_absrel": mean_or_none(r["absrel"]), "frames": len(r["psnr"]),
                                   "seen_floor_psnr_db": mean_or_none(r["floor_psnr"]),
                                   "floor_frames": len(r["floor_psnr"]),
                                   "seen_other_psnr_db": mean_or_none(r["other_psnr"]),
                                   "other_frames": len(r["other_psnr"]),
                                   "floor_share_of_seen": mean_or_none(r["floor_share"])}
                         for variant, r in replayed.items()}
    true, generated, groups = torch.stack(long["true"]), torch.stack(long["generated"]), np.array(long["group"])
    last_third = np.array(long["last_third"])
    summary["long_rollouts"] = {
        "frames": len(groups), "steps_per_rollout": long_frames - 1, "kinds": list(LONG_KINDS),
        "realism_accuracy": two_sample_accuracy(true, generated, groups),
        "realism_accuracy_last_third": two_sample_accuracy(true, generated, groups, last_third),
        "reference_accuracy_autoencoder": two_sample_accuracy(true, torch.stack(long["reconstructed"]), groups),
        "seam_ratio_depth_last_third": seam_ratio(long["late_depth"]),
        "seam_ratio_rgb_last_third": seam_ratio(long["late_rgb"]),
        "reprojection_psnr_db": float(np.mean([v for v in long["reprojection"] if v is not None])),
        "truth_reprojection_psnr_db": float(np.mean([v for v in long["truth_reprojection"] if v is not None])),
        "inside_surface_share": float(np.mean(long["inside"])),
        "truth_inside_surface_share": float(np.mean(long["truth_inside"])),
        "depth_step_share": float(np.mean(long["depth_steps"])),
        "truth_depth_step_share": float(np.mean(long["truth_depth_steps"])),
        "contrast_ratio_after_first_third": float(np.mean([ratio for *_, ratio in long["contrast"]])),
        "contrast_ratio_lowest_drive": dict(zip(("world", "kind", "ratio"), min(long["contrast"], key=lambda d: d[2])))}
    summary["autoencoder"] = {"reconstruction_psnr_db": float(np.mean(reconstruction["psnr"])),
                              "reconstruction_ssim": float(np.mean(reconstruction["ssim"])),
                              "reconstruction_depth_absrel": float(np.mean(reconstruction["absrel"]))}
    return summary, {"drives": examples, "replay": replay_example}


def floor_pixels(depth: np.ndarray, cam_to_world: np.ndarray, K: np.ndarray) -> np.ndarray:
    """The pixels of a true depth image that lie on the floor (within ``FLOOR_MARGIN`` of its plane)."""
    return heights_above_floor(depth, cam_to_world, K) < FLOOR_MARGIN


def mean_or_none(values: list[float]) -> float | None:
    """The mean, or ``None`` (JSON ``null``, "n/a" in the report) when nothing was measured."""
    return float(np.mean(values)) if values else None


def long_rollouts(base: WorldModel, world, world_seed: int, renderer, camera: PinholeCamera, device: str,
                  seed: int, precision: str, long: dict, frames: int = LONG_FRAMES) -> None:
    """Drive ``frames`` steps of each of ``LONG_KINDS`` from a true start with the default latent memory
    and collect what the long-rollout figures need into ``long``."""
    for offset, kind in enumerate(LONG_KINDS):
        trajectory = generate_trajectory(world, kind, frames, world_seed + 7919 * (offset + 1))
        truth = [renderer.render(pose, camera.K) for pose in trajectory.cam_to_world]
        model = variant_model(base, "latent", device, seed, precision)
        out = generate_along(model, [t[0] for t in truth], [t[1] for t in truth], trajectory.cam_to_world, camera.K)
        poses = trajectory.cam_to_world
        for t in range(1, frames):
            long["true"].append(frame_tensor(*truth[t]))
            long["generated"].append(frame_tensor(out["rgb"][t], out["depth"][t]))
            long["reconstructed"].append(frame_tensor(*autoencode(base, *truth[t])))
            long["group"].append(world_seed)
            long["inside"].append(camera_inside_surface(out["depth"][t]))
            long["truth_inside"].append(camera_inside_surface(truth[t][1]))
            long["depth_steps"].append(depth_step_share(out["depth"][t]))
            long["truth_depth_steps"].append(depth_step_share(truth[t][1]))
            late = t >= 2 * frames // 3
            long["last_third"].append(late)
            if late:
                long["late_rgb"].append(out["rgb"][t])
                long["late_depth"].append(out["depth"][t])
            if t + 1 < frames and not np.allclose(poses[t], poses[t + 1]):  # a frame pair with motion
                long["reprojection"].append(reprojection_psnr(out["rgb"][t], out["depth"][t], poses[t], out["rgb"][t + 1],
                                                              out["depth"][t + 1], poses[t + 1], camera.K))
                long["truth_reprojection"].append(reprojection_psnr(*truth[t], poses[t], *truth[t + 1], poses[t + 1],
                                                                    camera.K))
        # Fog: how much contrast the frames keep once the start view is behind (from a third of the drive on).
        later = range(frames // 3, frames)
        long["contrast"].append((world_seed, kind, contrast_ratio([out["rgb"][t] for t in later],
                                                                  [truth[t][0] for t in later])))


@dataclass
class ReplayScenario:
    """The replay of one world: a ground-truth mapping run (``mapped``: true RGB-D frames at
    ``mapping_poses``) and another route (``truth`` at ``route_poses``); for each route frame the pixels
    the mapping run saw (``seen``) and the truth's floor pixels (``floor``)."""

    K: np.ndarray
    mapping_poses: np.ndarray
    mapped: list[tuple[np.ndarray, np.ndarray]]
    route_poses: np.ndarray
    truth: list[tuple[np.ndarray, np.ndarray]]
    seen: list[np.ndarray]
    floor: list[np.ndarray]

    def mapped_model(self, base: WorldModel, variant: str, device: str, seed: int, precision: str) -> WorldModel:
        """A fresh ``variant`` model (``variant_model``) whose memory holds the mapping run (``reset`` with
        its first frame, ``observe`` of every other): ready to drive the route."""
        model = variant_model(base, variant, device, seed, precision)
        model.reset(*self.mapped[0], self.K, self.mapping_poses[0])
        for (rgb, depth), pose in zip(self.mapped[1:], self.mapping_poses[1:]):
            model.observe(rgb, depth, self.K, pose)
        return model


def replay_scenario(world, world_seed: int, renderer, camera: PinholeCamera) -> ReplayScenario:
    """The evaluation's replay in ``world``: ``MAPPING_FRAMES`` of free-space driving, then another route of
    ``REPLAY_FRAMES``, both rendered with ``renderer``."""
    mapping = generate_trajectory(world, "explore", MAPPING_FRAMES, world_seed)
    route = generate_trajectory(world, "explore", REPLAY_FRAMES, world_seed + 1_000_003)
    mapped = [renderer.render(pose, camera.K) for pose in mapping.cam_to_world]
    truth = [renderer.render(pose, camera.K) for pose in route.cam_to_world]
    seen = seen_pixels([d for _, d in truth], route.cam_to_world, [d for _, d in mapped], mapping.cam_to_world,
                       camera.K)
    floor = [floor_pixels(d, pose, camera.K) for (_, d), pose in zip(truth, route.cam_to_world)]
    return ReplayScenario(camera.K, mapping.cam_to_world, mapped, route.cam_to_world, truth, seen, floor)


def replay(base: WorldModel, world, world_seed: int, renderer, camera: PinholeCamera, device: str, seed: int,
           precision: str) -> tuple[dict[str, dict[str, list[float]]], dict]:
    """Map the world from a ground-truth run (``reset`` + ``observe`` of every frame), then drive another
    route and score the pixels the mapping run saw, for each memory of ``REPLAY_VARIANTS``. Returns the
    scores and the frames (for ``example_strip``: the truth with unseen pixels faded to grey, and each memory's)."""
    scenario = replay_scenario(world, world_seed, renderer, camera)
    truth, seen = scenario.truth, scenario.seen
    faded = [np.where(m[..., None], rgb, rgb // 2 + 64).astype(np.uint8) for (rgb, _), m in zip(truth, seen)]
    scores, example = {}, {"seen": {"rgb": faded, "depth": [d for _, d in truth]}}
    for variant in REPLAY_VARIANTS:
        model = scenario.mapped_model(base, variant, device, seed, precision)
        generated = [model.step(pose) for pose in scenario.route_poses]
        scores[variant] = seen_scores([g.rgb for g in generated], [g.depth for g in generated], truth, seen,
                                      scenario.floor)
        example[variant] = {"rgb": [g.rgb for g in generated], "depth": [g.depth for g in generated]}
    return scores, example


def seen_pixels(depths: list[np.ndarray], poses: np.ndarray, mapped_depths: list[np.ndarray],
                mapped_poses: np.ndarray, K: np.ndarray) -> list[np.ndarray]:
    """For each true frame of a route, the pixels whose surface some frame of the mapping run saw."""
    seen = []
    for depth, pose in zip(depths, poses):
        mask = np.zeros(depth.shape, dtype=bool)
        for map_depth, map_pose in zip(mapped_depths, mapped_poses):
            mask |= visible_in(depth, pose, map_depth, map_pose, K)
        seen.append(mask)
    return seen


def seen_scores(rgb: list[np.ndarray], depth: list[np.ndarray], truth: list[tuple[np.ndarray, np.ndarray]],
                seen: list[np.ndarray], floor: list[np.ndarray] | None = None) -> dict[str, list[float]]:
    """PSNR and depth AbsRel of generated frames against the truth on the seen pixels, in frames where
    they are at least ``REPLAY_SEEN_SHARE`` of the view. Given the truth's ``floor`` pixels, also the PSNR
    on the seen floor and on the seen rest, each where it is at least ``REPLAY_PART_SHARE`` of the view,
    and the floor's share of the seen pixels."""
    result = {"psnr": [], "absrel": []}
    if floor is not None:
        result.update(floor_psnr=[], other_psnr=[], floor_share=[])
    for t, (out_rgb, out_depth, (true_rgb, true_depth), mask) in enumerate(zip(rgb, depth, truth, seen)):
        if mask.mean() < REPLAY_SEEN_SHARE:
            continue
        result["psnr"].append(psnr(out_rgb, true_rgb, mask))
        result["absrel"].append(depth_abs_rel(out_depth, true_depth, mask))
        if floor is None:
            continue
        result["floor_share"].append(float((mask & floor[t]).sum() / mask.sum()))
        for name, part in (("floor_psnr", mask & floor[t]), ("other_psnr", mask & ~floor[t])):
            if part.mean() >= REPLAY_PART_SHARE:
                result[name].append(psnr(out_rgb, true_rgb, part))
    return result


def geometry(record: dict, rgb: list[np.ndarray], depth: list[np.ndarray], truth_depth: list[np.ndarray],
             poses: np.ndarray, K: np.ndarray, observed: list[np.ndarray], floor: list[np.ndarray]) -> None:
    """Collect the depth-geometry figures of one rollout (frames after the start) into ``record``."""
    record["rgb"].extend(rgb[1:])
    record["depth"].extend(depth[1:])
    for t in range(1, len(depth)):
        heights = heights_above_floor(depth[t], poses[t], K)
        record["below_floor"].append(float(np.mean(heights[np.isfinite(heights)] < -FLOOR_MARGIN)))
        imagined_floor = floor[t] & ~observed[t]
        if imagined_floor.sum() >= 50:
            record["floor_absrel"].append(depth_abs_rel(depth[t], truth_depth[t], imagined_floor))


def geometry_summary(record: dict) -> dict:
    return {"seam_ratio_depth": seam_ratio(record.pop("depth")), "seam_ratio_rgb": seam_ratio(record.pop("rgb")),
            "below_floor_share": float(np.mean(record.pop("below_floor"))),
            "imagined_floor_absrel": mean_or_none(record["floor_absrel"]),
            "imagined_floor_frames": len(record.pop("floor_absrel"))}


@torch.inference_mode()
def autoencode(model: WorldModel, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An RGB-D frame through the model's autoencoder alone (encode, decode)."""
    device = model.device
    rgb_t = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() / 255.0
    rgb_out, depth_out = model.decode(model.encode(rgb_t, torch.from_numpy(depth).to(device)[None]))
    return ((rgb_out[0].permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy(),
            depth_out[0].float().cpu().numpy())


def bar_chart(values: dict[str, float], title: str, unit: str, path: Path, target: float | None = None) -> None:
    """A small horizontal bar chart (PIL only)."""
    width, row = 520, 34
    image = Image.new("RGB", (width, 40 + row * len(values)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black")
    top = max([v for v in values.values() if v is not None] + [target or 0, 1e-6])
    for index, (name, value) in enumerate(values.items()):
        y = 32 + index * row
        draw.text((10, y + 8), name, fill="black")
        if value is not None:
            length = int((width - 230) * value / top)
            draw.rectangle((150, y + 4, 150 + length, y + row - 6), fill=(60, 110, 200))
            draw.text((155 + length, y + 8), f"{value:.2f} {unit}", fill="black")
    if target:
        x = 150 + int((width - 230) * target / top)
        draw.line((x, 28, x, image.height), fill=(200, 40, 40), width=1)
        draw.text((x + 3, 28), f"target {target:g}", fill=(200, 40, 40))
    image.save(path)


def example_strip(examples: dict, path: Path, count: int = 6, truth: str = "truth",
                  variants: tuple[str, ...] = VARIANTS) -> None:
    """Rows: ground truth (``examples[truth]``), then each variant; columns: frames along the trajectory."""
    truth = examples[truth]
    frames = len(truth["rgb"])
    indices = np.linspace(0, frames - 1, count).round().astype(int)
    rows = [("ground truth", truth)] + [(v, examples[v]) for v in variants if v in examples]
    h, w = truth["rgb"][0].shape[:2]
    sheet = Image.new("RGB", (110 + count * (2 * w + 8), len(rows) * (h + 6) + 20), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for column, index in enumerate(indices):
        draw.text((110 + column * (2 * w + 8), 4), f"frame {index}", fill=(220, 220, 220))
    for row, (name, data) in enumerate(rows):
        y = 20 + row * (h + 6)
        draw.text((6, y + h // 2), name, fill=(220, 220, 220))
        for column, index in enumerate(indices):
            x = 110 + column * (2 * w + 8)
            sheet.paste(Image.fromarray(data["rgb"][index]), (x, y))
            sheet.paste(Image.fromarray(colorize_depth(data["depth"][index])), (x + w + 2, y))
    sheet.save(path)


def write_report(summary: dict, output: Path, args: argparse.Namespace, elapsed: float) -> str:
    def fmt(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "# World model evaluation", "",
        f"Checkpoint: `{args.checkpoint or 'shipped default'}`; held-out test worlds: "
        f"{', '.join(map(str, seeds_for('test', args.worlds)))}; out-and-back trajectories of {args.frames} frames; "
        f"seed {args.seed}; device {args.device}, {args.precision} precision "
        f"({str(resolve_precision(args.precision, torch.device(args.device))).removeprefix('torch.')} here); "
        f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; evaluation took {elapsed:.0f} s.", "",
        "| variant | loop-closure PSNR (dB) | observed PSNR (dB) | observed SSIM | observed depth AbsRel | frames "
        "| covered-frame PSNR (dB) | frames | step ms (read / denoise / decode / write = total) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        s, t = summary[variant], summary[variant]["step_ms_median"]
        lines.append(f"| {variant} | {fmt(s['loop_closure_psnr_db'])} | {fmt(s['observed_psnr_db'])} | "
                     f"{fmt(s['observed_ssim'], 3)} | {fmt(s['observed_depth_absrel'], 3)} | {s['observed_frames']} | "
                     f"{fmt(s['covered_frame_psnr_db'])} | {s['covered_frames']} | "
                     f"{t['read']:.1f} / {t['denoise']:.1f} / {t['decode']:.1f} / {t['write']:.1f} = {t['total']:.1f} |")
    g = summary["long_rollouts"]
    lowest = g["contrast_ratio_lowest_drive"]
    lines += ["", f"Long rollouts ({g['steps_per_rollout']} steps of each of {', '.join(g['kinds'])} per world, latent "
              f"memory, {g['frames']} frames): realism two-sample accuracy (a small CNN telling generated from true "
              "RGB-D frames at the same poses, tested on held-out worlds; 0.5 = indistinguishable) and drift:", "",
              "| figure | generated | reference |", "|---|---|---|",
              f"| realism accuracy, whole rollouts | {g['realism_accuracy']:.3f} | {g['reference_accuracy_autoencoder']:.3f} "
              "(true vs the autoencoder's reconstructions of them) |",
              f"| realism accuracy, last third (drift) | {g['realism_accuracy_last_third']:.3f} | 0.5 |",
              f"| depth / RGB seam ratio, last third | {g['seam_ratio_depth_last_third']:.2f} / "
              f"{g['seam_ratio_rgb_last_third']:.2f} | {summary['truth']['seam_ratio_depth']:.2f} / "
              f"{summary['truth']['seam_ratio_rgb']:.2f} (truth) |",
              f"| consecutive frames reprojected with their own depth: RGB PSNR over consistent pixels (dB) | "
              f"{g['reprojection_psnr_db']:.2f} | {g['truth_reprojection_psnr_db']:.2f} (truth) |",
              f"| frames with the camera inside a surface (over {INSIDE_SHARE:.0%} of the image nearer than "
              f"{INSIDE_DEPTH} m) | {g['inside_surface_share']:.1%} | {g['truth_inside_surface_share']:.1%} (truth) |",
              f"| neighbouring pixels with a depth step over {DEPTH_STEP} in log depth (what a costmap reads as obstacle "
              f"borders) | {g['depth_step_share']:.2%} | {g['truth_depth_step_share']:.2%} (truth) |",
              f"| luminance contrast from a third of each drive on, over the truth's (fog: well under 1): mean over "
              f"drives; lowest drive (world, kind) | {g['contrast_ratio_after_first_third']:.2f}; "
              f"{lowest['ratio']:.2f} ({lowest['world']}, {lowest['kind']}) | 1 (truth) |"]
    lines += ["", f"Replay: memory built from a {MAPPING_FRAMES}-frame ground-truth mapping run "
              "(`WorldModel.reset` + `observe`), then another route of "
              f"{REPLAY_FRAMES} frames; scored on the pixels the mapping run saw, in frames where they are at least "
              f"{REPLAY_SEEN_SHARE:.0%} of the view:", "", "| memory | seen PSNR (dB) | seen depth AbsRel | frames |",
              "|---|---|---|---|"]
    for variant, r in summary["replay"].items():
        lines.append(f"| {variant} | {fmt(r['seen_psnr_db'])} | {fmt(r['seen_depth_absrel'], 3)} | {r['frames']} |")
    floor_share = summary["replay"][REPLAY_VARIANTS[0]]["floor_share_of_seen"]
    lines += ["", f"The same seen pixels split: the floor ({fmt(floor_share and 100 * floor_share, 0)} % of them) and "
              f"the rest, each scored in frames where it is at least {REPLAY_PART_SHARE:.0%} of the view "
              "(`replay.png`: the first world's route; ground truth with the unseen pixels faded to grey):", "",
              "| memory | seen floor PSNR (dB) | frames | seen rest PSNR (dB) | frames |", "|---|---|---|---|---|"]
    for variant, r in summary["replay"].items():
        lines.append(f"| {variant} | {fmt(r['seen_floor_psnr_db'])} | {r['floor_frames']} | "
                     f"{fmt(r['seen_other_psnr_db'])} | {r['other_frames']} |")
    lines += ["", "Depth as a planner reads it (frames after the start; ground truth first):", "",
              "| variant | depth seam ratio | RGB seam ratio | depth points below the floor | imagined-floor depth "
              "AbsRel | frames |", "|---|---|---|---|---|---|"]
    for variant in ("truth", *VARIANTS):
        s = summary[variant]
        lines.append(f"| {variant} | {s['seam_ratio_depth']:.2f} | {s['seam_ratio_rgb']:.2f} | "
                     f"{100 * s['below_floor_share']:.2f} % | {fmt(s['imagined_floor_absrel'], 3)} | "
                     f"{s['imagined_floor_frames']} |")
    lines += ["", "Seam ratio: mean gradient (log-depth, or luma) across the borders of the 8x8-pixel latent "
              "cells over the mean gradient elsewhere (1: no grid imprint). Imagined floor: pixels the ground "
              "truth says are floor and the start observation did not see. `latent_no_floor` does not clamp "
              "depth to the known floor plane (and so keeps no ground texture); `latent_no_ground` clamps it but keeps "
              "the floor's colours only as latent tokens (no ground texture)."]
    ae = summary["autoencoder"]
    lines += ["", f"The autoencoder alone (encode + decode of every ground-truth frame): PSNR "
              f"{ae['reconstruction_psnr_db']:.2f} dB, SSIM {ae['reconstruction_ssim']:.3f}, depth AbsRel "
              f"{ae['reconstruction_depth_absrel']:.3f}: the bound on the fidelity of anything decoded.", "",
              "Observed content: the pixels of each generated frame whose surface the start observation saw "
              "(ground-truth visibility, depth within 2 %), compared with the ground-truth renderer, in frames where "
              f"they are at least {OBSERVED_SHARE:.0%} of the view. Covered frames: whole frames the memory covered "
              f"to at least {COVERED_FRAME:.0%}, which includes content the model imagined earlier. Loop closure: "
              "frame generated on the return vs on the way out at the identical pose. `latent_no_reuse` always "
              "denoises from pure noise (memory reuse off); `latent_redraw` lets the denoiser redraw remembered "
              "tokens instead of keeping them (`keep_remembered` off); `latent_unrefined` decodes remembered tokens as "
              "read, without the checkpoint's read refiner.", "",
              "![loop closure](loop_closure.png)", "", "![examples](examples.png)", "", "![replay](replay.png)", ""]
    text = "\n".join(lines)
    (output / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=str, default=None, help="world model directory (default: shipped)")
    parser.add_argument("--output", type=Path, default=Path("evaluation"))
    parser.add_argument("--worlds", type=int, default=6, help="number of held-out test worlds")
    parser.add_argument("--frames", type=int, default=40, help="frames per out-and-back trajectory")
    parser.add_argument("--long-frames", type=int, default=LONG_FRAMES,
                        help="frames of each long rollout (drift, realism)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="network arithmetic (auto: bfloat16 where the hardware runs it natively)")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.long_frames < 6:
        parser.error("--long-frames must be at least 6")
    summary, examples = evaluate(args.checkpoint, args.worlds, args.frames, args.seed, args.device,
                                 args.precision, args.long_frames)
    (args.output / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    bar_chart({v: summary[v]["loop_closure_psnr_db"] for v in VARIANTS}, "Loop-closure consistency (higher is better)",
              "dB", args.output / "loop_closure.png", target=28.0)
    example_strip(examples["drives"], args.output / "examples.png")
    example_strip(examples["replay"], args.output / "replay.png", truth="seen", variants=REPLAY_VARIANTS)
    print(write_report(summary, args.output, args, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
