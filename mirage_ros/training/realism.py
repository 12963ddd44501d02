"""A two-sample test of realism: can a small CNN, trained on the spot, tell generated RGB-D frames from
true frames at the same poses? Accuracy 0.5 means it cannot (indistinguishable), 1.0 that every frame
gives itself away. No pretrained network is needed (LPIPS, FID and the like need downloaded weights).

Frames are split into folds by group (a world), so the classifier is always tested on worlds it was
not trained on: it has to learn what generated frames look like, not where a world's frames are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Side (pixels) the frames are resized to for the classifier.
CLASSIFIER_SIZE = 128


@dataclass(frozen=True)
class RealismConfig:
    """Training of each fold's classifier: optimizer steps, batch size, learning rate and seed."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0


def frame_tensor(rgb: np.ndarray, depth: np.ndarray) -> torch.Tensor:
    """``[4,S,S]`` classifier input: RGB in [0, 1] and log-depth (no depth: far), area-resized."""
    colour = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    log_depth = torch.from_numpy(np.log(np.clip(np.nan_to_num(depth, nan=20.0), 0.05, 20.0)).astype(np.float32))
    x = torch.cat([colour, log_depth[None] / 3.0])
    return F.interpolate(x[None], size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="area")[0]


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))


def two_sample_accuracy(true_frames: torch.Tensor, generated: torch.Tensor, groups: np.ndarray,
                        test_mask: np.ndarray | None = None, config: RealismConfig = RealismConfig()) -> float:
    """Held-out accuracy of telling ``generated [N,4,S,S]`` from ``true_frames [N,4,S,S]`` (pairs at the
    same poses), in leave-one-group-out folds; ``test_mask [N]`` restricts what each fold is scored on
    (e.g. the last third of long rollouts), while it always trains on every pair of the other groups.
    With a single group its two halves are the folds."""
    if true_frames.shape != generated.shape or len(groups) != len(true_frames):
        raise ValueError("need as many true as generated frames, and a group for each pair")
    test_mask = np.ones(len(groups), dtype=bool) if test_mask is None else np.asarray(test_mask, dtype=bool)
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:  # one world only: its first and second halves are the folds
        groups = (np.arange(len(groups)) >= len(groups) // 2).astype(int)
    correct, total = 0, 0
    for fold, group in enumerate(np.unique(groups)):
        train = np.nonzero(groups != group)[0]
        test = np.nonzero((groups == group) & test_mask)[0]
        if len(train) == 0 or len(test) == 0:
            continue
        generator = torch.Generator().manual_seed(config.seed + fold)
        torch.manual_seed(config.seed + fold)
        model = classifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        inputs = torch.cat([true_frames[train], generated[train]])
        labels = torch.cat([torch.zeros(len(train)), torch.ones(len(train))])
        for _ in range(config.steps):
            batch = torch.randint(len(inputs), (config.batch_size,), generator=generator)
            loss = F.binary_cross_entropy_with_logits(model(inputs[batch])[:, 0], labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            said_true = model(true_frames[test])[:, 0] < 0
            said_generated = model(generated[test])[:, 0] >= 0
        correct += int(said_true.sum() + said_generated.sum())
        total += 2 * len(test)
    if total == 0:
        raise ValueError("no fold had frames to test on")
    return correct / total
