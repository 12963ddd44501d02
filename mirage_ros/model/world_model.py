"""``WorldModel``: the per-step closed loop of the simulator.

``reset`` encodes an observation and writes it to the spatial memory. Each ``step(cam_to_world)``:
read the memory at the target camera -> denoise the next latent conditioned on the read and on the
previous frame -> decode RGB and metric depth -> write the newly generated tokens back, placed in 3D
with the decoder's own depth (no re-encode on the latent memory path).

The memory is pluggable so the paper's comparison can be run: ``"latent"`` (LatentSpatialMemory),
``"explicit"`` (an RGB-D point cloud rendered and re-encoded each step, the explicit-3D baseline) or
``"none"`` (no memory: the ablation).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from mirage_ros.camera import scale_intrinsics, validate_intrinsics
from mirage_ros.geometry import invert_transform, validate_transform
from mirage_ros.memory import ExplicitPointCloudMemory, LatentMemoryConfig, LatentSpatialMemory
from mirage_ros.memory.projection import pixel_rays, planar_depth, refine_depth_with_planes
from mirage_ros.model.autoencoder import RGBDAutoencoder
from mirage_ros.model.checkpoint import DEFAULT_CHECKPOINT, load_component
from mirage_ros.model.denoiser import MemoryConditionedDenoiser

MEMORY_KINDS = ("latent", "explicit", "none")
#: Relative depth difference up to which a remembered token's plane refines its decoded depth.
PLANE_AGREEMENT = 0.25
#: Arithmetic of the networks: ``auto`` is bfloat16 where the hardware runs it natively (CUDA with bf16,
#: CPUs with AVX-512 bf16/AMX: about 2x faster there), else float32.
PRECISIONS = ("float32", "bfloat16", "auto")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype ``precision`` means on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        precision = "bfloat16" if native else "float32"
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


@dataclass
class SamplingConfig:
    """How each frame is generated.

    ``num_inference_steps`` flow-matching steps from pure noise; when the memory already covers at
    least ``reuse_coverage`` of the view, generation instead starts from the memory read noised to
    ``reuse_sigma`` and takes ``reuse_steps`` steps (it need not regenerate what memory holds).

    ``keep_remembered``: remembered tokens are pasted into the sample at every step and into the
    result, so a revisited place is exactly what was seen (and a fully covered view skips the
    denoiser). Off, the memory read is the starting point and the condition, and the denoiser
    redraws every token: it can re-align remembered content to the new view (tokens are read on
    the coarse latent grid), at the price of revisits being only as stable as the denoiser.
    """

    num_inference_steps: int = 4
    reuse_coverage: float = 0.95
    reuse_sigma: float = 0.3
    reuse_steps: int = 1
    keep_remembered: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.num_inference_steps <= 50:
            raise ValueError(f"num_inference_steps must be in [1, 50], got {self.num_inference_steps}")
        if not 0.0 < self.reuse_coverage <= 1.0 + 1e-9 and self.reuse_coverage != 2.0:
            raise ValueError(f"reuse_coverage must be in (0, 1] (or 2 to disable), got {self.reuse_coverage}")
        if not 0.0 < self.reuse_sigma <= 1.0 or self.reuse_steps < 1:
            raise ValueError("reuse_sigma must be in (0, 1] and reuse_steps >= 1")

    def sigmas(self, coverage_fraction: float) -> list[float]:
        """Noise levels to visit, highest first (the scheduler appends the final 0)."""
        if coverage_fraction >= self.reuse_coverage:
            return np.linspace(self.reuse_sigma, 0.0, self.reuse_steps + 1)[:-1].tolist()
        return np.linspace(1.0, 0.0, self.num_inference_steps + 1)[:-1].tolist()


@dataclass
class StepTimings:
    """Seconds spent in each phase of the last step."""

    read: float = 0.0
    denoise: float = 0.0
    decode: float = 0.0
    write: float = 0.0

    @property
    def total(self) -> float:
        return self.read + self.denoise + self.decode + self.write


@dataclass
class StepResult:
    rgb: np.ndarray            # uint8 [H, W, 3]
    depth: np.ndarray          # float32 [H, W], metres along the optical axis
    coverage: float            # fraction of the latent grid the memory covered before generation
    timings: StepTimings = field(default_factory=StepTimings)


@dataclass
class MemoryView:
    """What the denoiser sees of the memory at the target camera, on the latent grid."""

    latent: torch.Tensor       # [C, h, w]
    coverage: torch.Tensor     # [h, w] bool
    depth: torch.Tensor        # [h, w] metres, 0 where uncovered
    pixel_coverage: torch.Tensor  # [H, W] bool, what is already known at image resolution
    depth_scale: torch.Tensor | None = None  # [H, W] decoded depth -> depth seen from here (None: 1)
    planar_depth: torch.Tensor | None = None  # [H, W] depth on the remembered token planes, NaN: unknown


def motion_features(previous_cam_to_world: np.ndarray, cam_to_world: np.ndarray) -> torch.Tensor:
    """``[12]`` camera motion from the previous frame to this one, in the previous camera's frame."""
    relative = invert_transform(previous_cam_to_world) @ cam_to_world
    return torch.from_numpy(np.concatenate([relative[:3, :3].reshape(-1), relative[:3, 3]])).float()


def _resize_observation(rgb: np.ndarray, depth: np.ndarray, size_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``rgb`` uint8 [H0,W0,3] and depth [H0,W0] -> float rgb [3,H,W] in [0,1] and depth [H,W].

    Colour is area-averaged; depth is sampled at the nearest pixel so edges never blend foreground
    and background into a depth that belongs to neither.
    """
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255.0)
    depth_t = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
    if tuple(rgb_t.shape[1:]) != size_hw:
        rgb_t = F.interpolate(rgb_t[None], size=size_hw, mode="area")[0]
        depth_t = F.interpolate(depth_t[None, None], size=size_hw, mode="nearest-exact")[0, 0]
    return rgb_t, depth_t


class WorldModel:
    """Latent world model with spatial memory; see the module docstring for the step loop."""

    def __init__(self, autoencoder: RGBDAutoencoder, denoiser: MemoryConditionedDenoiser,
                 image_size: tuple[int, int] = (128, 128), memory: str = "latent",
                 memory_config: LatentMemoryConfig | None = None, sampling: SamplingConfig | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, precision: str = "float32") -> None:
        if memory not in MEMORY_KINDS:
            raise ValueError(f"memory must be one of {MEMORY_KINDS}, got {memory!r}")
        # Denormal floats make CPU convolutions ~100x slower as activations decay towards zero over a
        # rollout; flushing them to zero changes no result that matters at fp16/fp32 image precision.
        torch.set_flush_denormal(True)
        self.device = torch.device(device)
        self.compute_dtype = resolve_precision(precision, self.device)
        self.autoencoder = autoencoder.to(self.device).eval()
        self.denoiser = denoiser.to(self.device).eval()
        if self.device.type == "cpu":
            # oneDNN convolutions run faster on channels-last (NHWC) weights on a CPU.
            for module in (self.autoencoder, self.denoiser):
                module.to(memory_format=torch.channels_last)
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=denoiser.config.num_train_timesteps)
        self.image_size = tuple(image_size)
        factor = autoencoder.downsample_factor
        if self.image_size[0] % factor or self.image_size[1] % factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {factor}")
        self.latent_size = (self.image_size[0] // factor, self.image_size[1] // factor)
        self.memory_kind = memory
        self.sampling = sampling or SamplingConfig()
        self.seed = seed
        memory_config = memory_config or LatentMemoryConfig(patch_size=factor)
        if memory == "latent":
            self.memory = LatentSpatialMemory(memory_config, device=self.device)
        elif memory == "explicit":
            self.memory = ExplicitPointCloudMemory(device=self.device, splat_radius=1)
        else:
            self.memory = None
        self.K: np.ndarray | None = None
        self._pixel_rays: torch.Tensor | None = None  # [H, W, 3] of K, for per-pixel plane depth
        self._context: torch.Tensor | None = None
        self._previous_pose: np.ndarray | None = None
        self._generator = torch.Generator(device=self.device)
        self._feature_to_rgb: torch.Tensor | None = None
        self.steps = 0

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **kwargs) -> "WorldModel":
        """Load the shipped default checkpoint (``path=None``) or a local directory with
        ``autoencoder/``, ``denoiser/`` (diffusers layout) and ``world_model.json``."""
        root = Path(path) if path is not None else DEFAULT_CHECKPOINT
        settings_path = root / "world_model.json"
        try:
            settings = json.loads(settings_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{settings_path}: not a readable world model settings file ({error})") from error
        autoencoder = load_component(RGBDAutoencoder, root / "autoencoder")
        denoiser = load_component(MemoryConditionedDenoiser, root / "denoiser")
        sampling = kwargs.pop("sampling", None) or SamplingConfig(**settings.get("sampling", {}))
        return cls(autoencoder, denoiser, image_size=tuple(settings["image_size"]), sampling=sampling, **kwargs)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Write the checkpoint layout ``from_pretrained`` reads (weights as ``dtype`` safetensors)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        for name, component in (("autoencoder", self.autoencoder), ("denoiser", self.denoiser)):
            original = next(component.parameters()).dtype
            # nn.Module.to: every weight is cast (diffusers' own .to() warns about mixed-precision modules).
            torch.nn.Module.to(component, dtype).save_pretrained(root / name, safe_serialization=True)
            torch.nn.Module.to(component, original)
        settings = {"format_version": 1, "image_size": list(self.image_size), "sampling": asdict(self.sampling)}
        (root / "world_model.json").write_text(json.dumps(settings, indent=2) + "\n")

    def _autocast(self) -> torch.autocast:
        """Network arithmetic in ``compute_dtype``; memory, geometry and outputs stay float32."""
        return torch.autocast(self.device.type, dtype=self.compute_dtype,
                              enabled=self.compute_dtype != torch.float32)

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def reset(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> None:
        """Start a rollout from an observation of any resolution (resized to the model's)."""
        rgb = np.asarray(rgb)
        depth = np.asarray(depth)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
        if depth.shape != rgb.shape[:2]:
            raise ValueError(f"depth shape {depth.shape} does not match rgb {rgb.shape[:2]}")
        valid = np.isfinite(depth) & (depth > 0)
        if not valid.any():
            raise ValueError("depth has no valid (finite, positive) pixel")
        cam_to_world = validate_transform(cam_to_world, "cam_to_world")
        self._set_intrinsics(scale_intrinsics(validate_intrinsics(K), rgb.shape[:2], self.image_size))
        rgb_t, depth_t = _resize_observation(rgb, depth, self.image_size)
        rgb_t, depth_t = rgb_t.to(self.device), depth_t.to(self.device)
        with self._autocast():
            latent = self.autoencoder.encode(rgb_t[None], depth_t[None])[0].float()
        if self.memory is not None:
            self.memory.clear()
        self._write(latent, rgb_t, depth_t, cam_to_world, new=torch.isfinite(depth_t) & (depth_t > 0))
        self._fit_token_colors(latent, rgb_t)
        self._start(latent, cam_to_world)

    @torch.inference_mode()
    def start_from_memory(self, path: str | Path, K: np.ndarray, cam_to_world: np.ndarray) -> float:
        """Continue from a saved latent memory instead of an observation; returns the view's coverage.

        ``K`` is at the model's image size. The context of the first step is the memory read at
        ``cam_to_world``; a corrupt or mismatched file raises ``ValueError`` and changes nothing.
        """
        if self.memory_kind != "latent":
            raise ValueError(f"saved memories are latent memories; this model uses {self.memory_kind!r}")
        K = validate_intrinsics(K)
        cam_to_world = validate_transform(cam_to_world, "cam_to_world")
        self.memory.load(path)
        self._set_intrinsics(K)
        read = self.memory.read(cam_to_world, K, self.latent_size)
        self._start(read.latent.float(), cam_to_world)
        return read.coverage_fraction

    def _set_intrinsics(self, K: np.ndarray) -> None:
        """Intrinsics at the model's image size, and the pixel rays that depend on nothing else."""
        self.K = K
        self._pixel_rays = pixel_rays(torch.as_tensor(K, dtype=torch.float64, device=self.device), *self.image_size)

    def _start(self, context: torch.Tensor, cam_to_world: np.ndarray) -> None:
        self._context = context
        self._previous_pose = cam_to_world
        self._generator.manual_seed(self.seed)
        self.steps = 0

    def save_memory(self, path: str | Path) -> None:
        if self.memory_kind != "latent":
            raise ValueError(f"only latent memories can be saved; this model uses {self.memory_kind!r}")
        self.memory.save(path)

    def _fit_token_colors(self, latent: torch.Tensor, rgb: torch.Tensor) -> None:
        """Least-squares linear map from a token's features to its patch's mean colour (for display)."""
        factor = self.autoencoder.downsample_factor
        colors = F.avg_pool2d(rgb[None], factor)[0].reshape(3, -1).T.double()           # [h*w, 3]
        features = latent.reshape(latent.shape[0], -1).T.double()
        design = torch.cat([features, torch.ones_like(features[:, :1])], dim=1)
        self._feature_to_rgb = torch.linalg.lstsq(design, colors, driver="gelsd").solution.float()

    def memory_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Stored token positions ``[N,3]`` (memory frame) and display colours uint8 ``[N,3]``."""
        if self.memory_kind == "latent" and self.memory.keys.numel():
            positions = self.memory.positions.float()
            if self._feature_to_rgb is None:
                colors = torch.full_like(positions, 0.7)
            else:
                features = self.memory.features.float()
                design = torch.cat([features, torch.ones_like(features[:, :1])], dim=1)
                colors = (design @ self._feature_to_rgb).clamp(0, 1)
            return positions.cpu().numpy(), (colors * 255).round().to(torch.uint8).cpu().numpy()
        if self.memory_kind == "explicit" and self.memory.positions.numel():
            return self.memory.positions.cpu().numpy(), self.memory.colors.cpu().numpy()
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)

    def nearest_obstacle(self, x: float, y: float, min_height: float, max_height: float) -> float:
        """Horizontal distance (m) from ``(x, y)`` to the nearest remembered surface between the two
        heights (memory frame, z up); ``inf`` when there is none.

        A latent token stands for a surface patch (its position, normal and footprint), so the distance
        is to that patch: along the normal, plus any sideways overshoot beyond half its footprint.
        Explicit-memory points are dense: plain point distance.
        """
        if self.memory_kind == "none":
            return math.inf
        positions = self.memory.positions
        band = (positions[:, 2] >= min_height) & (positions[:, 2] <= max_height)
        if not bool(band.any()):
            return math.inf
        offset = torch.tensor([x, y], dtype=torch.float64) - positions[band, :2].double()
        if self.memory_kind == "explicit":
            return float(offset.norm(dim=1).min())
        normal = self.memory.normals[band, :2].double()
        normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-6)
        along = (offset * normal).sum(1)
        sideways = (offset - along[:, None] * normal).norm(dim=1)
        overshoot = (sideways - self.memory.extents[band].double() / 2).clamp_min(0)
        return float(torch.hypot(along, overshoot).min())

    def memory_stats(self) -> tuple[int, int]:
        """Tokens (or points) held and their bytes."""
        if self.memory_kind == "latent":
            stats = self.memory.stats()
            return stats.tokens, stats.bytes
        if self.memory_kind == "explicit":
            return int(self.memory.positions.shape[0]), self.memory.bytes
        return 0, 0

    @torch.inference_mode()
    def step(self, cam_to_world: np.ndarray) -> StepResult:
        """Generate the frame seen from ``cam_to_world`` and remember it."""
        if self._context is None:
            raise RuntimeError("call reset() with an observation before step()")
        cam_to_world = validate_transform(cam_to_world, "cam_to_world")
        timings = StepTimings()
        started = time.perf_counter()
        view = self._read(cam_to_world)
        timings.read = time.perf_counter() - started

        started = time.perf_counter()
        coverage_fraction = float(view.coverage.float().mean())
        with self._autocast():
            latent = self._denoise(view, motion_features(self._previous_pose, cam_to_world), coverage_fraction)
        timings.denoise = time.perf_counter() - started

        started = time.perf_counter()
        with self._autocast():
            raw = self.autoencoder.decode_raw(latent[None])
        rgb, depth = self.autoencoder.split_output(raw.float())  # metric depth computed in float32
        rgb, depth = rgb[0], depth[0]
        if view.depth_scale is not None and self.sampling.keep_remembered:
            # Remembered tokens: the decoded depth, rescaled from where the token was seen to here,
            # refined to the exact depth on the token's plane where the two agree.
            depth = refine_depth_with_planes(depth * view.depth_scale, view.planar_depth, PLANE_AGREEMENT)
        timings.decode = time.perf_counter() - started

        started = time.perf_counter()
        self._write(latent, rgb, depth, cam_to_world, new=~view.pixel_coverage)
        timings.write = time.perf_counter() - started

        self._context = latent
        self._previous_pose = cam_to_world
        self.steps += 1
        rgb_u8 = (rgb.permute(1, 2, 0) * 255.0).round().to(torch.uint8).cpu().numpy()
        return StepResult(rgb_u8, depth.float().cpu().numpy(), coverage_fraction, timings)

    def _denoise(self, view: MemoryView, motion: torch.Tensor, coverage_fraction: float) -> torch.Tensor:
        """The explicit sampling loop: x0-prediction turned into flow-matching velocity per step.

        With ``keep_remembered``, what memory holds is not regenerated: at every step the covered
        tokens of the sample are replaced by the memory read noised to the current level (inpainting),
        and the result keeps the remembered tokens, so revisited places stay as they were and errors
        cannot compound there.
        """
        keep = self.sampling.keep_remembered
        if keep and bool(view.coverage.all()):
            return view.latent  # memory holds every token of the view: there is nothing to generate
        sigmas = self.sampling.sigmas(coverage_fraction)
        self.scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        noise = torch.randn((1, *view.latent.shape), generator=self._generator, device=self.device)
        memory_latent = view.latent[None]
        start = sigmas[0]
        sample = noise if start >= 1.0 else (1.0 - start) * memory_latent + start * noise
        coverage = view.coverage[None].float()
        depth = torch.where(view.coverage, self.autoencoder.normalize_depth(view.depth), torch.zeros_like(view.depth))[None]
        context, motion = self._context[None], motion[None].to(self.device)
        known = coverage.unsqueeze(1) if keep else torch.zeros_like(coverage.unsqueeze(1))
        for timestep, sigma in zip(self.scheduler.timesteps, self.scheduler.sigmas):
            sample = known * ((1.0 - sigma) * memory_latent + sigma * noise) + (1.0 - known) * sample
            sigma_batch = sigma.reshape(1).to(self.device)
            clean = self.denoiser(sample, sigma_batch, memory_latent, coverage, depth, context, motion).float()
            velocity = (sample - clean) / sigma
            sample = self.scheduler.step(velocity, timestep, sample).prev_sample
        return (known * memory_latent + (1.0 - known) * sample)[0]

    # ------------------------------------------------------------------ memory access
    def _read(self, cam_to_world: np.ndarray) -> MemoryView:
        channels = self.denoiser.config.latent_channels
        h, w = self.latent_size
        if self.memory_kind == "none":
            empty = torch.zeros((h, w), dtype=torch.bool, device=self.device)
            return MemoryView(torch.zeros((channels, h, w), device=self.device), empty,
                              torch.zeros((h, w), device=self.device),
                              torch.zeros(self.image_size, dtype=torch.bool, device=self.device))
        if self.memory_kind == "latent":
            read = self.memory.read(cam_to_world, self.K, self.latent_size)
            factor = self.autoencoder.downsample_factor
            to_pixels = lambda grid: grid.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
            # Remembered tokens are decoded as they were seen; rescale their depth to this viewpoint.
            scale = torch.where(read.coverage, read.depth / read.source_depth, torch.ones_like(read.depth))
            # Only kept tokens use their plane depth; redrawn ones are decoded afresh.
            planes = (planar_depth(read.planes, read.depth, self._pixel_rays)
                      if self.sampling.keep_remembered else None)
            return MemoryView(read.latent.float(), read.coverage, torch.nan_to_num(read.depth) * read.coverage,
                              to_pixels(read.coverage), to_pixels(scale), planes)
        # Explicit baseline: render RGB-D at image resolution, then re-encode it (the cost the paper removes).
        render = self.memory.read(cam_to_world, self.K, self.image_size)
        with self._autocast():  # NaN depth = far
            latent = self.autoencoder.encode(render.latent.float()[None], render.depth[None])[0].float()
        factor = self.autoencoder.downsample_factor
        token_coverage = F.avg_pool2d(render.coverage[None, None].float(), factor)[0, 0] >= 0.999
        nearest = torch.where(render.coverage, render.depth, torch.full_like(render.depth, 1e9))
        token_depth = -F.max_pool2d(-nearest[None, None], factor)[0, 0]
        return MemoryView(latent, token_coverage, torch.where(token_coverage, token_depth, torch.zeros_like(token_depth)),
                          render.coverage)

    def _write(self, latent: torch.Tensor, rgb: torch.Tensor, depth: torch.Tensor, cam_to_world: np.ndarray,
               new: torch.Tensor) -> None:
        if self.memory_kind == "none" or not bool(new.any()):
            return
        if self.memory_kind == "latent":
            self.memory.write(latent, depth, self.K, cam_to_world, valid=new)
        else:
            self.memory.write(rgb, depth, self.K, cam_to_world, valid=new)
