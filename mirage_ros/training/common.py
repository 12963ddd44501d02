"""Pieces shared by the training CLIs: accelerate setup, the resumable loop, logging."""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from diffusers import ModelMixin
from tqdm import tqdm

from mirage_ros.training.state import has_checkpoint, load_training_state, save_training_state


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="dataset directory (mirage-dataset output)")
    parser.add_argument("--output", type=Path, required=True, help="run directory (checkpoints, log.jsonl)")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps in total")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (and at the end)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="bf16",
                        help="autocast precision (bf16 runs fast on AVX-512 CPUs and modern GPUs)")
    parser.add_argument("--workers", type=int, default=1, help="data loader worker processes")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="decay of the exponential moving average of the weights, written beside each "
                             "checkpoint as checkpoint/ema (what mirage-export ships); 0 turns it off")


class ExponentialMovingAverage:
    """A frozen copy of a model whose weights follow the trained ones slowly: averaging over the last
    ~1/(1-decay) steps smooths out the noise of the final steps, so it samples better than the raw
    weights. The decay ramps up from 0 over the first steps (``(1+step)/(10+step)``)."""

    def __init__(self, model: ModelMixin, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.model, self.decay = copy.deepcopy(model).eval().requires_grad_(False), decay

    @torch.no_grad()
    def update(self, model: ModelMixin, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for shadow, param in zip(self.model.parameters(), model.parameters()):
            shadow.lerp_(param.detach().to(shadow.dtype), 1.0 - decay)
        for shadow, buffer in zip(self.model.buffers(), model.buffers()):
            shadow.copy_(buffer)


def collate(items: list[dict]) -> dict:
    """A batch of equally shaped examples: each field stacked."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def example_loader(samples: torch.utils.data.Dataset, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """Batches of ``samples`` (``args.batch_size`` examples stacked, drawn by ``args.workers`` processes)."""
    return torch.utils.data.DataLoader(samples, batch_size=args.batch_size, num_workers=args.workers,
                                       collate_fn=collate, persistent_workers=args.workers > 0)


def infinite(loader: torch.utils.data.DataLoader) -> Iterator:
    while True:
        yield from loader


def learning_rate_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 10 % of steps (at most 100), then linear decay to 5 % at the end."""
    warmup = min(100, max(1, total // 10))
    return min(1.0, (step + 1) / warmup) * max(0.05, 1.0 - step / max(total, 1))


def train_loop(args: argparse.Namespace, model: ModelMixin, loader: torch.utils.data.DataLoader,
               loss_fn: Callable[[ModelMixin, dict], tuple[torch.Tensor, dict[str, float]]],
               description: str) -> ModelMixin:
    """Run (or resume) ``args.steps`` optimizer steps of ``loss_fn`` on ``loader`` batches.

    Resumes from ``args.output/checkpoint`` when present; writes a checkpoint every ``save_every``
    steps and at the end, and one JSON line of losses every ``log_every`` steps to ``log.jsonl``.

    Under ``accelerate launch`` with several processes, each process draws its own batches (its rank
    seeds its data and noise), gradients are averaged, and only the main process writes checkpoints
    and the log (the losses it logs are averaged over the processes); the others wait for it.
    """
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    torch.manual_seed(args.seed + accelerator.process_index)
    torch.set_flush_denormal(True)  # denormals make CPU kernels crawl; nothing learnable lives there
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    ema = ExponentialMovingAverage(model, args.ema_decay) if args.ema_decay > 0 else None
    start = 0
    if has_checkpoint(args.output):
        start = load_training_state(args.output, model, optimizer, ema.model if ema else None)["step"]
        accelerator.print(f"resuming {description} from step {start}")
    # The data loader is not handed to accelerate: examples are random draws and each process seeds its
    # own (seed + process index, above), so processes see different batches; they are moved here.
    model, optimizer = accelerator.prepare(model, optimizer)
    if ema is not None:
        ema.model.to(accelerator.device)  # the average follows the weights onto the accelerator
    if accelerator.is_main_process:
        args.output.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    batches = infinite(loader)
    progress = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=description,
                    disable=not accelerator.is_main_process, dynamic_ncols=True)
    started = time.time()
    log = open(args.output / "log.jsonl", "a") if accelerator.is_main_process else None
    try:
        for step in progress:
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = args.lr * learning_rate_factor(step, args.steps)
            batch = send_to_device(next(batches), accelerator.device)  # drawn outside autocast
            with accelerator.autocast():
                loss, parts = loss_fn(model, batch)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step)
            done = step + 1
            if done % args.log_every == 0 or done == args.steps:
                values = accelerator.reduce(torch.tensor([float(loss.detach()), *parts.values()],
                                                         device=accelerator.device), reduction="mean")
                if log is not None:
                    loss_value, *part_values = values.tolist()
                    record = {"step": done, "loss": loss_value, **dict(zip(parts, part_values)),
                              "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - started, 1)}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    progress.set_postfix(loss=f"{loss_value:.4f}")
            if done % args.save_every == 0 or done == args.steps:
                if accelerator.is_main_process:
                    save_training_state(args.output, accelerator.unwrap_model(model), optimizer, done,
                                        {"args": {k: str(v) for k, v in vars(args).items()}},
                                        ema.model if ema else None)
                accelerator.wait_for_everyone()
    finally:
        if log is not None:
            log.close()
    return accelerator.unwrap_model(model)
