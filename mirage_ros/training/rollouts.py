"""The model's own rollouts along the training trajectories: the states inference really conditions on.

At inference only the first frame is real; every later frame is generated, remembered and read back,
so the denoiser meets memories and context latents made of its own (blurrier, imperfect) outputs. To
train on that, each training sequence is driven once by a ``WorldModel`` exactly as the simulator
drives it (``reset`` with the true first frame, then ``step`` at every pose of the trajectory, floor
known), and the generated latents with the depth that placed them in memory are cached. Examples
drawn from a rollout (``samples.py``) build their memory and context from these generated frames; the
decoded colour is kept too, so that the imagined world can be rendered from other cameras (the read
refiner's target on memories of generated frames).

A rollout can also be *anchored* (``anchor_every`` N): every Nth frame is observed (``WorldModel.observe``,
the truth) instead of generated, as a robot with a real camera now and then would. Its generated frames
then stray at most N - 1 steps from the truth, so the true next frame stays a fair target for them,
while the memory and context still hold what the model itself drew.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from mirage_ros.model.world_model import WorldModel
from mirage_ros.training.latents import load_sequences, save_sequences, weights_fingerprint
from mirage_ros.training.samples import LatentSequences
from mirage_ros.worlds.dataset import SequenceDataset


def roll_out_sequences(model: WorldModel, sequences: SequenceDataset, anchor_every: int = 0) -> LatentSequences:
    """Generate every sequence from its first true frame; frame 0 (and with ``anchor_every`` N > 0 every Nth
    frame, observed instead of generated) is the true frame's encoding."""
    if anchor_every < 0:
        raise ValueError(f"anchor_every must be >= 0 (0: never re-observe), got {anchor_every}")
    latents, depths, intrinsics, poses, colours = [], [], [], [], []
    progress = tqdm(range(len(sequences)), desc=f"rolling out {sequences.folder.name}", unit="sequence")
    for index in progress:
        item = sequences[index]
        rgb, depth = item["rgb"].numpy(), item["depth"].numpy().astype("float32")
        K, cam_to_world = item["K"].numpy(), item["cam_to_world"].numpy()
        model.reset(rgb[0], depth[0], K, cam_to_world[0])
        sequence_latents, sequence_depths, sequence_colours = [], [], []
        for i, pose in enumerate(cam_to_world):
            if i == 0 or (anchor_every and i % anchor_every == 0):
                if i:
                    model.observe(rgb[i], depth[i], K, pose)
                true_rgb = torch.from_numpy(rgb[i:i + 1]).permute(0, 3, 1, 2).float() / 255.0
                with torch.inference_mode():
                    sequence_latents.append(model.encode(
                        true_rgb.to(model.device), torch.from_numpy(depth[i:i + 1]).to(model.device)).cpu()[0])
                sequence_depths.append(torch.from_numpy(depth[i]))
                sequence_colours.append(torch.from_numpy(rgb[i]))
                continue
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


def load_or_build_rollouts(model: WorldModel, data: Path, split: str, cache: Path,
                           anchor_every: int = 0) -> LatentSequences:
    """The split's rollouts by ``model``, from ``cache`` when that very model (weights and sampling) made them
    with the same anchoring."""
    torch.set_flush_denormal(True)
    metadata = {"rollout_model": weights_fingerprint(model.autoencoder, model.denoiser) + repr(model.sampling),
                "split": split, "colour": "kept", "anchor_every": str(anchor_every)}
    sequences = load_sequences(cache, metadata)
    if sequences is None:
        sequences = roll_out_sequences(model, SequenceDataset(data, split), anchor_every)
        save_sequences(sequences, cache, metadata)
    return sequences
