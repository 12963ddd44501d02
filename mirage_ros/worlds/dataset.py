"""Training datasets of RGB-D sequences: a CLI that writes them and torch loaders that read them.

    mirage-dataset --output data/ --split train --worlds 40 --sequences-per-world 3 --frames 96
    mirage-dataset --output mydata/ --from-bag run1/ run2.bag --frames 96   # your robot's recordings

On-disk format (``format_version`` 1), one folder per split::

    <output>/<split>/index.json               dataset settings and one entry per sequence
    <output>/<split>/w<seed>_s<k>.safetensors one sequence: rgb uint8 [T,H,W,3], depth float32 [T,H,W]
                                              (metres, NaN = no value), cam_to_world float64 [T,4,4],
                                              base_poses float64 [T,3], K float64 [3,3]; metadata
                                              world_seed, split, kind, trajectory_seed

Splits are a function of the world seed (``split_of``), so evaluation always uses worlds that training
never saw, and the loader refuses a sequence whose seed belongs to another split.

Recordings (``--from-bag``, read by ``ros.recording`` with its matching rules, resized to the dataset's
size with K scaled) are cut into sequences of ``frames`` consecutive usable frames (a shorter rest is
dropped), and the same rule splits them: sequence k = 1, 2, ... of recording r gets the seed
``RECORDING_SEED_STRIDE * r + k``, so the 5th, 15th, ... sequence of every recording is validation data,
the 10th, 20th, ... test data, the rest training data. All recordings are read before anything is
written, so a bad one leaves no file behind. Every sequence file is
written under a temporary name and renamed when complete; rerunning the command skips finished files
(resume after an interruption), and ``index.json`` is rewritten last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from mirage_ros.camera import PinholeCamera
from mirage_ros.worlds.generator import generate_world
from mirage_ros.worlds.trajectories import TrajectoryConfig, generate_trajectory

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
#: Share of each trajectory kind in generated datasets.
KIND_WEIGHTS = {"explore": 0.4, "out_and_back": 0.25, "loop": 0.25, "rotate": 0.1}
#: Seeds of the sequences of recording r start at this multiple of r (a multiple of 10: ``split_of``
#: then splits sequence k of every recording alike).
RECORDING_SEED_STRIDE = 1_000_000


def split_of(world_seed: int) -> str:
    """Seeds ending in 0 are test worlds, in 5 validation worlds, the rest training worlds."""
    return {0: "test", 5: "val"}.get(world_seed % 10, "train")


def seeds_for(split: str, count: int, first: int = 0) -> list[int]:
    """The first ``count`` world seeds >= ``first`` that belong to ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    seeds, seed = [], first
    while len(seeds) < count:
        if split_of(seed) == split:
            seeds.append(seed)
        seed += 1
    return seeds


def sequence_name(world_seed: int, index: int) -> str:
    return f"w{world_seed:05d}_s{index}.safetensors"


def write_sequence(path: Path, tensors: dict[str, np.ndarray], entry: dict) -> None:
    """One sequence file (safetensors; ``entry`` as metadata), complete or not at all."""
    partial = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(partial), metadata={k: str(v) for k, v in entry.items()})
    os.replace(partial, path)


def _render_world(task: dict) -> list[dict]:
    """Render all sequences of one world (runs in a worker process); returns their index entries."""
    from mirage_ros.worlds.renderer import GroundTruthRenderer

    folder, seed = Path(task["folder"]), task["world_seed"]
    camera = PinholeCamera.from_hfov(task["width"], task["height"], task["hfov"])
    world = generate_world(seed)
    entries = []
    renderer = None
    try:
        for index in range(task["sequences"]):
            trajectory_seed = seed * 1000 + index
            rng = np.random.default_rng(trajectory_seed)
            kind = str(rng.choice(list(KIND_WEIGHTS), p=list(KIND_WEIGHTS.values())))
            config = TrajectoryConfig(camera_height=float(rng.uniform(0.35, 0.7)),
                                      camera_pitch=float(rng.uniform(0.0, 0.25)))
            entry = {"file": sequence_name(seed, index), "world_seed": seed, "split": split_of(seed), "kind": kind,
                     "trajectory_seed": trajectory_seed, "frames": task["frames"],
                     "camera_height": config.camera_height, "camera_pitch": config.camera_pitch}
            path = folder / entry["file"]
            if not path.exists():
                renderer = renderer or GroundTruthRenderer(world, camera.width, camera.height)
                trajectory = generate_trajectory(world, kind, task["frames"], trajectory_seed, config)
                frames = [renderer.render(pose, camera.K) for pose in trajectory.cam_to_world]
                tensors = {"rgb": np.stack([f[0] for f in frames]), "depth": np.stack([f[1] for f in frames]),
                           "cam_to_world": trajectory.cam_to_world, "base_poses": trajectory.base_poses, "K": camera.K}
                write_sequence(path, tensors, entry)
            entries.append(entry)
    finally:
        if renderer is not None:
            renderer.close()
    return entries


def _check_settings(folder: Path, settings: dict) -> None:
    """``ValueError`` where ``folder`` holds a dataset with other settings."""
    index_path = folder / "index.json"
    if index_path.exists():
        previous = json.loads(index_path.read_text())
        if any(previous.get(k) != v for k, v in settings.items()):
            raise ValueError(f"{folder} holds a dataset with other settings; use another --output")


def _prepare_split(folder: Path, settings: dict) -> Path:
    """The split's folder, created (``ValueError`` where it holds another dataset); its old index is
    removed: the index is rewritten last, once every sequence file is complete."""
    _check_settings(folder, settings)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    index_path.unlink(missing_ok=True)
    return index_path


def write_dataset(output: Path, split: str, worlds: int, sequences_per_world: int, frames: int,
                  width: int = 128, height: int = 128, hfov: float = math.pi / 2, workers: int = 2,
                  first_seed: int = 0, progress: bool = True) -> Path:
    """Render a split (resuming where an earlier run stopped); returns its folder."""
    folder = Path(output) / split
    settings = {"format_version": FORMAT_VERSION, "split": split, "width": width, "height": height, "hfov": hfov,
                "frames": frames, "sequences_per_world": sequences_per_world}
    index_path = _prepare_split(folder, settings)
    tasks = [{"folder": str(folder), "world_seed": seed, "sequences": sequences_per_world, "frames": frames,
              "width": width, "height": height, "hfov": hfov} for seed in seeds_for(split, worlds, first_seed)]
    entries: list[dict] = []
    with get_context("spawn").Pool(max(1, workers)) as pool:
        bar = tqdm(total=len(tasks) * sequences_per_world * frames, unit="frame", desc=f"rendering {split}",
                   disable=not progress)
        for world_entries in pool.imap(_render_world, tasks):
            entries.extend(world_entries)
            bar.update(sum(e["frames"] for e in world_entries))
        bar.close()
    index_path.write_text(json.dumps({**settings, "sequences": entries}, indent=1) + "\n")
    return folder


def write_recordings_dataset(output: Path, bags: list[Path], frames: int, width: int = 128, height: int = 128,
                             options=None, progress: bool = True) -> dict[str, Path]:
    """Training sequences from RGB-D recordings (see the module docstring); returns the folder of
    each split that received sequences. ``options``: ``ros.recording.RecordingOptions`` (topics...)."""
    from dataclasses import replace

    from mirage_ros.ros.recording import RecordingOptions, read_recording

    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    options = replace(options or RecordingOptions(), size_hw=(height, width))
    sequences: dict[str, list[tuple[dict, dict]]] = {split: [] for split in SPLITS}
    for r, bag in enumerate(bags):
        recording = read_recording(bag, options, progress)
        print(recording.summary)
        recorded = recording.frames
        for k in range(1, len(recorded) // frames + 1):
            chunk = recorded[(k - 1) * frames: k * frames]
            if any(not np.allclose(f.K, chunk[0].K) for f in chunk):
                raise ValueError(f"{bag}: the camera intrinsics change within the recording")
            seed = RECORDING_SEED_STRIDE * r + k
            entry = {"file": f"r{r:03d}_s{k:04d}.safetensors", "world_seed": seed, "split": split_of(seed),
                     "kind": "recording", "trajectory_seed": seed, "frames": frames, "recording": str(bag),
                     "first_stamp_ns": chunk[0].stamp_ns}
            tensors = {"rgb": np.stack([f.rgb for f in chunk]), "depth": np.stack([f.depth for f in chunk]),
                       "cam_to_world": np.stack([f.cam_to_odom for f in chunk]),
                       "base_poses": np.array([[f.base_pose.x, f.base_pose.y, f.base_pose.yaw] for f in chunk]),
                       "K": chunk[0].K}
            sequences[entry["split"]].append((entry, tensors))
    if not any(sequences.values()):
        raise ValueError(f"the recordings hold no sequence of {frames} usable frames; lower --frames")
    settings = {"format_version": FORMAT_VERSION, "width": width, "height": height, "frames": frames,
                "source": "recordings", "recordings": [str(bag) for bag in bags]}
    for split, items in sequences.items():  # every split checked before any is touched
        if items:
            _check_settings(Path(output) / split, {**settings, "split": split})
    folders = {}
    for split, items in sequences.items():
        if items:
            folder = Path(output) / split
            index_path = _prepare_split(folder, {**settings, "split": split})
            for entry, tensors in items:
                write_sequence(folder / entry["file"], tensors, entry)
            index_path.write_text(json.dumps({**settings, "split": split, "sequences": [e for e, _ in items]},
                                             indent=1) + "\n")
            folders[split] = folder
    return folders


class SequenceDataset(torch.utils.data.Dataset):
    """The sequences of one split; item ``i`` is a dict of tensors of sequence ``i`` (loaded lazily)."""

    def __init__(self, root: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.folder = Path(root) / split
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise ValueError(f"{index_path} not found: not a finished mirage dataset split "
                             f"(run mirage-dataset --split {split})")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{index_path}: format_version {self.index.get('format_version')} is not {FORMAT_VERSION}")
        for entry in self.index["sequences"]:
            if entry["split"] != split or split_of(entry["world_seed"]) != split:
                raise ValueError(f"{entry['file']} (world {entry['world_seed']}) does not belong to split {split}")
        self.entries = self.index["sequences"]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        with safe_open(str(self.folder / entry["file"]), framework="pt") as handle:
            item = {key: handle.get_tensor(key) for key in handle.keys()}
        item.update(world_seed=entry["world_seed"], kind=entry["kind"])
        return item


class FrameDataset(torch.utils.data.Dataset):
    """Every frame of a split as ``{"rgb": uint8 [H,W,3], "depth": float32 [H,W]}`` (held in memory)."""

    def __init__(self, sequences: SequenceDataset) -> None:
        items = [sequences[i] for i in range(len(sequences))]
        if not items:
            raise ValueError(f"{sequences.folder}: the split has no sequence")
        self.rgb = torch.cat([item["rgb"] for item in items])
        self.depth = torch.cat([item["depth"] for item in items])

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, index: int) -> dict:
        return {"rgb": self.rgb[index], "depth": self.depth[index]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="dataset root folder")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--worlds", type=int, default=40, help="number of worlds (seeds of the split)")
    parser.add_argument("--first-seed", type=int, default=0, help="start looking for seeds of the split here")
    parser.add_argument("--sequences-per-world", type=int, default=3)
    parser.add_argument("--frames", type=int, default=96, help="frames per sequence")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--hfov", type=float, default=math.pi / 2, help="horizontal field of view (rad)")
    parser.add_argument("--workers", type=int, default=2, help="parallel rendering processes")
    parser.add_argument("--from-bag", type=Path, nargs="+", metavar="BAG", help="make the dataset from these "
                        "RGB-D recordings (rosbag2 folders or ROS 1 .bag files) instead of procedural worlds; "
                        "every split that gets sequences is written")
    from mirage_ros.ros.recording import add_recording_arguments, options_from_arguments

    add_recording_arguments(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.from_bag:
        try:
            folders = write_recordings_dataset(args.output, args.from_bag, args.frames, args.width, args.height,
                                               options_from_arguments(args, None))
        except ValueError as error:
            print(f"mirage-dataset: error: {error}", file=sys.stderr)
            return 2
        print(", ".join(f"{folder}: {len(json.loads((folder / 'index.json').read_text())['sequences'])} sequences"
                        for folder in folders.values()) + f" in {time.perf_counter() - started:.1f} s")
        return 0
    folder = write_dataset(args.output, args.split, args.worlds, args.sequences_per_world, args.frames, args.width,
                           args.height, args.hfov, args.workers, args.first_seed)
    total = args.worlds * args.sequences_per_world * args.frames
    print(f"{folder}: {total} frames in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
