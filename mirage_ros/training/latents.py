"""Encode a dataset split once with a frozen autoencoder: the denoiser trains on these latents.

For every sequence: latents ``[T,C,h,w]`` (posterior mode, scaled) and a depth ``[T,H,W]`` to place
them in memory: the rendered depth by default (one encoder pass per frame), or with
``decoder_depth=True`` the depth the autoencoder's decoder reconstructs, as at inference (a decoder
pass per frame too, several times slower on a CPU). Cached as one safetensors file (fp16) keyed by
the autoencoder's weights and that choice, so a different autoencoder never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from mirage_ros.model.autoencoder import RGBDAutoencoder
from mirage_ros.training.samples import LatentSequences
from mirage_ros.worlds.dataset import SequenceDataset


def weights_fingerprint(*modules: torch.nn.Module) -> str:
    """A short hash of the modules' weights and configs: caches built by other weights are never reused. A config's
    private entries (``_name_or_path``: where the weights were loaded from) are left out, so the same weights found
    in another folder (an exported checkpoint's copy) are recognised."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        config = getattr(module, "config", {})
        digest.update(str(sorted((key, value) for key, value in config.items() if not key.startswith("_"))).encode())
    return digest.hexdigest()[:16]


def save_sequences(sequences: LatentSequences, cache: Path, metadata: dict[str, str]) -> None:
    """Write ``sequences`` (fp16 latents and depths, uint8 colour when kept) to ``cache`` atomically, with ``metadata``."""
    tensors = {}
    for i in range(len(sequences)):
        tensors[f"latent.{i}"] = sequences.latents[i].half().contiguous()
        tensors[f"depth.{i}"] = sequences.depths[i].half().contiguous()
        tensors[f"K.{i}"] = torch.from_numpy(sequences.intrinsics[i])
        tensors[f"pose.{i}"] = torch.from_numpy(sequences.poses[i])
        if sequences.rgb is not None:
            tensors[f"rgb.{i}"] = sequences.rgb[i].contiguous()
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial")
    save_file(tensors, str(partial), metadata={**metadata, "sequences": str(len(sequences))})
    partial.replace(cache)


def load_sequences(cache: Path, metadata: dict[str, str]) -> LatentSequences | None:
    """The sequences cached at ``cache`` when its metadata matches ``metadata``, else ``None``."""
    if not cache.is_file():
        return None
    with safe_open(str(cache), framework="pt") as handle:
        stored = handle.metadata() or {}
        if any(stored.get(key) != value for key, value in metadata.items()):
            return None
        count = int(stored["sequences"])
        get = handle.get_tensor
        rgb = [get(f"rgb.{i}") for i in range(count)] if "rgb.0" in handle.keys() else None
        return LatentSequences([get(f"latent.{i}") for i in range(count)], [get(f"depth.{i}") for i in range(count)],
                               [get(f"K.{i}").numpy() for i in range(count)],
                               [get(f"pose.{i}").numpy() for i in range(count)], rgb)


@torch.no_grad()
def encode_sequences(autoencoder: RGBDAutoencoder, sequences: SequenceDataset, batch_size: int = 32,
                     decoder_depth: bool = False) -> LatentSequences:
    autoencoder.eval()
    latents, depths, intrinsics, poses = [], [], [], []
    for index in tqdm(range(len(sequences)), desc=f"encoding {sequences.folder.name}", unit="sequence"):
        item = sequences[index]
        rgb = item["rgb"].permute(0, 3, 1, 2).float() / 255.0
        sequence_latents, sequence_depths = [], []
        for start in range(0, len(rgb), batch_size):
            chunk = slice(start, start + batch_size)
            latent = autoencoder.encode(rgb[chunk], item["depth"][chunk].float())
            sequence_latents.append(latent)
            sequence_depths.append(autoencoder.decode(latent)[1] if decoder_depth else item["depth"][chunk].float())
        latents.append(torch.cat(sequence_latents).half())
        depths.append(torch.cat(sequence_depths).half())
        intrinsics.append(item["K"].numpy())
        poses.append(item["cam_to_world"].numpy())
    return LatentSequences(latents, depths, intrinsics, poses)


def load_or_build_latent_sequences(autoencoder: RGBDAutoencoder, data: Path, split: str, cache: Path,
                                   decoder_depth: bool = False) -> LatentSequences:
    """The split's latent sequences, from ``cache`` when it was built by this very autoencoder."""
    torch.set_flush_denormal(True)
    metadata = {"autoencoder": weights_fingerprint(autoencoder) + ("-decoder-depth" if decoder_depth else ""),
                "split": split}
    sequences = load_sequences(cache, metadata)
    if sequences is None:
        sequences = encode_sequences(autoencoder, SequenceDataset(data, split), decoder_depth=decoder_depth)
        save_sequences(sequences, cache, metadata)
    return sequences
