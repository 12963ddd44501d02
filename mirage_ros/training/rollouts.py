"""The model's own rollouts along the training trajectories: the states inference really conditions on.

At inference only the first frame is real; every later frame is generated, remembered and read back,
so the denoiser meets memories and context latents made of its own (blurrier, imperfect) outputs. To
train on that, each training sequence is driven once by a ``WorldModel`` exactly as the simulator
drives it (``reset`` with the true first frame, then ``step`` at every pose of the trajectory, floor
known), and the generated latents with the depth that placed them in memory are cached. Examples
drawn from a rollout (``samples.py``) build their memory and context from these generated frames; the
decoded colour is kept too, so that the imagined world can be rendered from other cameras (the read
refiner's target on memories of generated frames).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from mirage_ros.model.world_model import WorldModel
from mirage_ros.training.latents import load_sequences, save_sequences, weights_fingerprint
from mirage_ros.training.samples import LatentSequences
from mirage_ros.worlds.dataset import SequenceDataset


def roll_out_sequences(model: WorldModel, sequences: SequenceDataset) -> LatentSequences:
    """Generate every sequence from its first true frame; frame 0 is the true frame's encoding."""
    latents, depths, intrinsics, poses, colours = [], [], [], [], []
    progress = tqdm(range(len(sequences)), desc=f"rolling out {sequences.folder.name}", unit="sequence")
    for index in progress:
        item = sequences[index]
        rgb, depth = item["rgb"].numpy(), item["depth"].numpy().astype("float32")
        K, cam_to_world = item["K"].numpy(), item["cam_to_world"].numpy()
        model.reset(rgb[0], depth[0], K, cam_to_world[0])
        first_rgb, first_depth = (torch.from_numpy(rgb[:1]).permute(0, 3, 1, 2).float() / 255.0,
                                  torch.from_numpy(depth[:1]))
        with torch.inference_mode():
            sequence_latents = [model.autoencoder.encode(first_rgb.to(model.device),
                                                         first_depth.to(model.device)).float().cpu()[0]]
        sequence_depths, sequence_colours = [first_depth[0]], [torch.from_numpy(rgb[0])]
        for pose in cam_to_world[1:]:
            result = model.step(pose)
            sequence_latents.append(result.latent)
            sequence_depths.append(torch.from_numpy(result.depth))
            sequence_colours.append(torch.from_numpy(result.rgb))
        latents.append(torch.stack(sequence_latents))
        depths.append(torch.stack(sequence_depths))
        colours.append(torch.stack(sequence_colours).permute(0, 3, 1, 2).contiguous())
        intrinsics.append(K)
        poses.append(cam_to_world)
    return LatentSequences(latents, depths, intrinsics, poses, colours)


def load_or_build_rollouts(model: WorldModel, data: Path, split: str, cache: Path) -> LatentSequences:
    """The split's rollouts by ``model``, from ``cache`` when that very model (weights and sampling) made them."""
    torch.set_flush_denormal(True)
    metadata = {"rollout_model": weights_fingerprint(model.autoencoder, model.denoiser) + repr(model.sampling),
                "split": split, "colour": "kept"}
    sequences = load_sequences(cache, metadata)
    if sequences is None:
        sequences = roll_out_sequences(model, SequenceDataset(data, split))
        save_sequences(sequences, cache, metadata)
    return sequences
