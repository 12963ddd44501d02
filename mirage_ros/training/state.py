"""Resumable training state in safetensors + JSON (no pickle, unlike ``torch.save`` of an optimizer).

A run directory holds ``checkpoint/`` (the model in diffusers ``save_pretrained`` layout) and
``training_state.safetensors`` (optimizer moments, RNG state) with ``training_state.json`` (step,
optimizer hyper-parameters), and, when the run keeps one, the weights' moving average in
``checkpoint/ema/`` (same layout as the model). Both are written to temporary names and renamed, so an interrupted save
never leaves a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from diffusers import ModelMixin
from safetensors.torch import load_file, save_file

STATE_FORMAT_VERSION = 1


#: Folder of the moving-average weights inside a checkpoint.
EMA_FOLDER = "ema"


def save_training_state(run_dir: Path, model: ModelMixin, optimizer: torch.optim.Optimizer, step: int,
                        extra: dict | None = None, ema: ModelMixin | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = run_dir / "checkpoint.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    if ema is not None:
        ema.save_pretrained(staging / EMA_FOLDER, safe_serialization=True)

    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    index = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"optim.{index[id(param)]}.{key}"] = (value if torch.is_tensor(value)
                                                           else torch.tensor(value)).detach().cpu().contiguous()
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    meta = {"format_version": STATE_FORMAT_VERSION, "step": step, "param_groups": groups, **(extra or {})}
    save_file(tensors, staging / "training_state.safetensors")
    (staging / "training_state.json").write_text(json.dumps(meta, indent=2))

    final = run_dir / "checkpoint"
    if final.exists():
        os.replace(final, run_dir / "checkpoint.old")
    os.replace(staging, final)
    shutil.rmtree(run_dir / "checkpoint.old", ignore_errors=True)


def load_weights(model: ModelMixin, folder: Path) -> None:
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    model.load_state_dict({k: v.to(next(model.parameters()).dtype) for k, v in weights.items()}, strict=True)


def load_training_state(run_dir: Path, model: ModelMixin, optimizer: torch.optim.Optimizer,
                        ema: ModelMixin | None = None) -> dict:
    """Restore model weights, optimizer moments, RNG and (into ``ema``) the moving average from
    ``run_dir/checkpoint``; a checkpoint saved without a moving average starts it from the weights.
    Returns the metadata."""
    checkpoint = run_dir / "checkpoint"
    meta = json.loads((checkpoint / "training_state.json").read_text())
    if meta.get("format_version") != STATE_FORMAT_VERSION:
        raise ValueError(f"{checkpoint}: training state format {meta.get('format_version')} is not "
                         f"{STATE_FORMAT_VERSION}")
    load_weights(model, checkpoint)
    if ema is not None:
        load_weights(ema, checkpoint / EMA_FOLDER if (checkpoint / EMA_FOLDER).is_dir() else checkpoint)
    tensors = load_file(checkpoint / "training_state.safetensors")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            optimizer.state[params[int(index)]][key] = value
    for group, saved in zip(optimizer.param_groups, meta["param_groups"]):
        group.update(saved)
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoint" / "training_state.json").is_file()
