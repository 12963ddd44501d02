"""Train the RGB-D autoencoder on rendered frames.

    mirage-train-autoencoder --data DATASET --output RUN_AE --steps 1500 --batch-size 16

Loss: L1 on colour and on normalised (log) depth where the depth is valid, plus a small KL term.
After the last step the latent statistics of a sample of training frames set ``latent_shift`` and
``scaling_factor`` (unit-variance latents for the denoiser) in the saved config. Rerun to resume.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mirage_ros.model.autoencoder import RGBDAutoencoder
from mirage_ros.training.common import add_common_arguments, train_loop
from mirage_ros.worlds.dataset import FrameDataset, SequenceDataset

KL_WEIGHT = 1e-6
DEPTH_WEIGHT = 1.0


def batch_to_model_input(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``rgb [B,H,W,3]`` -> float ``[B,3,H,W]`` in [0, 1]; depth unchanged."""
    return batch["rgb"].permute(0, 3, 1, 2).float() / 255.0, batch["depth"].float()


def autoencoder_loss(model: RGBDAutoencoder, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    rgb, depth = batch_to_model_input(batch)
    if torch.rand(()) < 0.5:  # mirror augmentation
        rgb, depth = rgb.flip(-1), depth.flip(-1)
    target, reconstruction, kl = model(rgb, depth)
    valid = (torch.isfinite(depth) & (depth > 0)).unsqueeze(1).float()
    rgb_l1 = F.l1_loss(reconstruction[:, :3].float(), target[:, :3])
    depth_l1 = ((reconstruction[:, 3:].float() - target[:, 3:]).abs() * valid).sum() / valid.sum().clamp_min(1)
    kl_loss = kl.mean() / target[0].numel()
    loss = rgb_l1 + DEPTH_WEIGHT * depth_l1 + KL_WEIGHT * kl.mean()
    return loss, {"rgb_l1": float(rgb_l1), "depth_l1": float(depth_l1), "kl": float(kl_loss)}


@torch.no_grad()
def calibrate_latents(model: RGBDAutoencoder, frames: FrameDataset, count: int = 512) -> tuple[float, float]:
    """Mean and ``1 / std`` of unscaled latents over ``count`` frames."""
    model.eval()
    model.register_to_config(scaling_factor=1.0, latent_shift=0.0)
    indices = torch.linspace(0, len(frames) - 1, min(count, len(frames))).long()
    latents = []
    for chunk in indices.split(64):
        rgb, depth = batch_to_model_input({"rgb": frames.rgb[chunk], "depth": frames.depth[chunk]})
        latents.append(model.encode(rgb, depth))
    latents = torch.cat(latents)
    return float(latents.mean()), float(1.0 / latents.std())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--latent-channels", type=int, default=8)
    parser.add_argument("--block-out-channels", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    frames = FrameDataset(SequenceDataset(args.data, "train"))
    loader = torch.utils.data.DataLoader(frames, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    model = RGBDAutoencoder(latent_channels=args.latent_channels, block_out_channels=tuple(args.block_out_channels))
    print(f"autoencoder: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {len(frames)} frames")
    model = train_loop(args, model, loader, autoencoder_loss, "autoencoder")
    shift, scale = calibrate_latents(model, frames)
    model.register_to_config(latent_shift=shift, scaling_factor=scale)
    print(f"latent shift {shift:.4f}, scaling factor {scale:.4f}")
    # Only the config changed: rewrite it next to the weights and the saved optimizer state.
    model.save_config(args.output / "checkpoint")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
