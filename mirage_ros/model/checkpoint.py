"""Loading of model components from local diffusers-layout directories, with clear errors.

Weights are safetensors only (never pickle); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from diffusers import ModelMixin

#: The checkpoint shipped inside the package (see its MODEL_CARD.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "default"

Component = TypeVar("Component", bound=ModelMixin)


def load_component(cls: type[Component], path: str | Path, dtype: torch.dtype = torch.float32) -> Component:
    """``cls.from_pretrained(path)`` from a local directory, in ``dtype``; a missing, corrupt or
    mismatched checkpoint raises ``ValueError`` naming the directory and the cause."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no config.json; not a {cls.__name__} checkpoint directory")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"{path}: no .safetensors weights (other formats are refused)")
    try:
        model = cls.from_pretrained(path, torch_dtype=dtype, use_safetensors=True, local_files_only=True,
                                    low_cpu_mem_usage=False)
    except Exception as error:  # diffusers raises OSError, ValueError, RuntimeError, SafetensorError...
        raise ValueError(f"{path}: cannot load {cls.__name__} checkpoint ({type(error).__name__}: {error})") from error
    return model.eval()
