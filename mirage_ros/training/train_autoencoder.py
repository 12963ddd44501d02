"""Train the RGB-D autoencoder on rendered frames.

    mirage-train-autoencoder --data DATASET --output RUN_AE --steps 1500 --batch-size 16

Loss: L1 on colour and on normalised (log) depth where the depth is valid, L1 on their image
gradients (sharp edges, where depth errors concentrate), plus a small KL term. The network is fully
convolutional, so it trains on random crops (``--crop-size``; 64 px is ~5x cheaper per frame than
128 px on a CPU) and runs on whole frames. ``--init-from`` starts from another checkpoint's weights
(fine-tuning); a run directory with a checkpoint always resumes instead. After the last step the
latent statistics of a sample of training frames set ``latent_shift`` and ``scaling_factor``
(unit-variance latents for the denoiser) in the saved config. Rerun to resume.

``--decoder-only`` (with ``--init-from``) trains the decoder alone onto the frozen encoder, keeping the
latent space and its statistics, so a denoiser, a read refiner and memories made for that encoder still
fit; with ``--decoder-layers-per-block`` it makes a lighter (or deeper) decoder, which starts from the
weights of the layers the two decoders share:

    mirage-train-autoencoder --data DATASET --init-from MODEL/autoencoder --decoder-only \
        --decoder-layers-per-block 0 --output RUN_DECODER --steps 2500
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path

import torch
from accelerate import PartialState
import torch.nn.functional as F

from mirage_ros.model.autoencoder import RGBDAutoencoder
from mirage_ros.model.checkpoint import load_component
from mirage_ros.training.common import add_common_arguments, train_loop
from mirage_ros.worlds.dataset import FrameDataset, SequenceDataset

KL_WEIGHT = 1e-6
DEPTH_WEIGHT = 1.0


def batch_to_model_input(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``rgb [B,H,W,3]`` -> float ``[B,3,H,W]`` in [0, 1]; depth unchanged."""
    return batch["rgb"].permute(0, 3, 1, 2).float() / 255.0, batch["depth"].float()


def random_crops(rgb: torch.Tensor, depth: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ``size``x``size`` window per sample (multiples of 8 keep the latent grid aligned)."""
    height, width = depth.shape[-2:]
    if size <= 0 or size >= min(height, width):
        return rgb, depth
    tops = torch.randint(0, (height - size) // 8 + 1, (len(depth),)) * 8
    lefts = torch.randint(0, (width - size) // 8 + 1, (len(depth),)) * 8
    rgb = torch.stack([im[:, t:t + size, x:x + size] for im, t, x in zip(rgb, tops, lefts)])
    depth = torch.stack([d[t:t + size, x:x + size] for d, t, x in zip(depth, tops, lefts)])
    return rgb, depth


def gradient_l1(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences, where both pixels of a pair are valid."""
    total, count = prediction.new_zeros(()), prediction.new_zeros(())
    for dim in (-1, -2):
        n = prediction.shape[dim] - 1
        pair = valid.narrow(dim, 0, n) * valid.narrow(dim, 1, n)
        error = (prediction.diff(dim=dim) - target.diff(dim=dim)).abs() * pair
        total, count = total + error.sum(), count + pair.sum() * prediction.shape[1]
    return total / count.clamp_min(1)


def replace_with_flat_walls(rgb: torch.Tensor, depth: torch.Tensor, share: float) -> None:
    """In place: about ``share`` of the samples become a flat wall, one random colour at one distance
    (0.5-10 m, log-uniform) filling the view. Rooms seldom show one, yet a flat wall must come back with its
    colour and distance; these samples keep a decoder that never saw one from drifting there."""
    flat = torch.rand(len(depth)) < share
    count = int(flat.sum())
    if count:
        rgb[flat] = torch.rand(count, 3, 1, 1).expand(count, 3, *rgb.shape[-2:])
        distance = torch.exp(torch.empty(count, 1, 1).uniform_(math.log(0.5), math.log(10.0)))
        depth[flat] = distance.expand(count, *depth.shape[-2:]).to(depth.dtype)


def autoencoder_loss(model: RGBDAutoencoder, batch: dict, crop_size: int = 0, edge_weight: float = 0.0,
                     flat_walls: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    rgb, depth = random_crops(*batch_to_model_input(batch), crop_size)
    if flat_walls > 0:
        replace_with_flat_walls(rgb, depth, flat_walls)
    if torch.rand(()) < 0.5:  # mirror augmentation
        rgb, depth = rgb.flip(-1), depth.flip(-1)
    target, reconstruction, kl = model(rgb, depth)
    reconstruction = reconstruction.float()
    valid = (torch.isfinite(depth) & (depth > 0)).unsqueeze(1).float()
    rgb_l1 = F.l1_loss(reconstruction[:, :3], target[:, :3])
    depth_l1 = ((reconstruction[:, 3:] - target[:, 3:]).abs() * valid).sum() / valid.sum().clamp_min(1)
    edges = (gradient_l1(reconstruction[:, :3], target[:, :3], torch.ones_like(valid))
             + gradient_l1(reconstruction[:, 3:], target[:, 3:], valid))
    kl_loss = kl.mean() / target[0].numel()
    loss = rgb_l1 + DEPTH_WEIGHT * depth_l1 + edge_weight * edges + KL_WEIGHT * kl.mean()
    parts = {"rgb_l1": rgb_l1, "depth_l1": depth_l1, "edge_l1": edges, "kl": kl_loss}
    return loss, {name: float(value.detach()) for name, value in parts.items()}


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


def start_from(source: RGBDAutoencoder, **changes: int | None) -> tuple[RGBDAutoencoder, list[str]]:
    """A new autoencoder with ``source``'s config and ``changes``, holding every weight of ``source`` whose
    name and shape it shares; also the names of the weights that start fresh."""
    model = RGBDAutoencoder.from_config(source.config, **changes)
    own, given = model.state_dict(), source.state_dict()
    shared = {name: value for name, value in given.items() if name in own and own[name].shape == value.shape}
    model.load_state_dict(shared, strict=False)
    return model, sorted(set(own) - set(shared))


def freeze_all_but_decoder(model: RGBDAutoencoder) -> None:
    """Only the decoding path (``post_quant_conv`` and the decoder) keeps gradients: the latents stay as they are."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(("vae.decoder.", "vae.post_quant_conv.")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--latent-channels", type=int, default=8)
    parser.add_argument("--block-out-channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--norm-num-groups", type=int, default=1,
                        help="GroupNorm groups; 1 keeps each channel's mean (with one group per channel, "
                             "the normalisation before the output erases flat colours and depths)")
    parser.add_argument("--crop-size", type=int, default=64,
                        help="train on random crops of this size (multiple of 8; 0 = whole frames)")
    parser.add_argument("--edge-weight", type=float, default=0.5, help="weight of the image-gradient L1 term")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="autoencoder checkpoint whose weights (and architecture) a new run starts from")
    parser.add_argument("--flat-walls", type=float, default=0.0,
                        help="share of the samples replaced by a flat wall of one colour at one distance")
    parser.add_argument("--decoder-layers-per-block", type=int, default=None,
                        help="residual layers per decoder resolution (diffusers' decoder has one more); "
                             "default: as the encoder (or as --init-from's)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="train only the decoder, onto --init-from's frozen encoder (its latent space and "
                             "latent statistics are kept)")
    args = parser.parse_args(argv)
    if args.crop_size % 8:
        parser.error(f"--crop-size must be a multiple of 8, got {args.crop_size}")
    if not 0.0 <= args.flat_walls <= 1.0:
        parser.error(f"--flat-walls is a share of the samples in [0, 1], got {args.flat_walls}")
    if args.decoder_only and args.init_from is None:
        parser.error("--decoder-only trains a decoder onto an existing encoder: give it with --init-from")
    if args.decoder_layers_per_block is not None and args.decoder_layers_per_block < 0:
        parser.error(f"--decoder-layers-per-block must be >= 0, got {args.decoder_layers_per_block}")
    torch.manual_seed(args.seed)
    frames = FrameDataset(SequenceDataset(args.data, "train"))
    loader = torch.utils.data.DataLoader(frames, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    changes = {} if args.decoder_layers_per_block is None else {"decoder_layers_per_block": args.decoder_layers_per_block}
    if args.init_from is not None:
        source = load_component(RGBDAutoencoder, args.init_from)
        # Normalisation groups hold no weights of their own: they may change when fine-tuning.
        model, fresh = start_from(source, norm_num_groups=args.norm_num_groups, **changes)
        if fresh:
            print(f"autoencoder: {len(fresh)} weights start fresh (not in {args.init_from}): {', '.join(fresh[:6])}"
                  + (", ..." if len(fresh) > 6 else ""))
        if args.decoder_only:
            freeze_all_but_decoder(model)
    else:
        model = RGBDAutoencoder(latent_channels=args.latent_channels, norm_num_groups=args.norm_num_groups,
                                block_out_channels=tuple(args.block_out_channels), **changes)
    print(f"autoencoder: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {len(frames)} frames")
    loss_fn = functools.partial(autoencoder_loss, crop_size=args.crop_size, edge_weight=args.edge_weight,
                                flat_walls=args.flat_walls)
    model = train_loop(args, model, loader, loss_fn, "autoencoder")
    state = PartialState()
    if state.is_main_process and not args.decoder_only:  # one process calibrates and writes
        shift, scale = calibrate_latents(model, frames)
        model.register_to_config(latent_shift=shift, scaling_factor=scale)
        print(f"latent shift {shift:.4f}, scaling factor {scale:.4f}")
        # Only the config changed: rewrite it next to the weights and the saved optimizer state.
        model.save_config(args.output / "checkpoint")
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
