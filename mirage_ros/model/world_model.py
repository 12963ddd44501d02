"""``WorldModel``: the per-step closed loop of the simulator.

``reset`` (or ``observe``) encodes a real observation and writes it to the spatial memory. Each
``step(cam_to_world)``: read the memory at the target camera -> redraw the read's token mosaic for this
view (``MemoryReadRefiner``, where the checkpoint has one) -> denoise the next latent conditioned on
the read and on the previous frame (``sampling.py``) -> decode RGB and metric depth (where the floor plane
is known: depth clamped to it, and the latent memory's ground texture paints the floor pixels with the colours
observations showed there, ``memory.ground``) -> write the newly generated tokens back (``memory.write_back``),
placed in 3D with the decoder's own depth (no re-encode on the latent memory path).

Several cameras can share one world (``add_camera``): ``step_cameras`` reads the memory at each, then
generates and decodes all their frames in batched network passes, and writes each back, so what one
camera imagined is what another sees when it looks there. ``step`` is its one-camera case.

The memory is any ``SpatialMemory``, so the paper's comparison can be run: ``"latent"``
(LatentSpatialMemory), ``"explicit"`` (an RGB-D point cloud rendered and re-encoded each step, the
explicit-3D baseline) or ``"none"`` (no memory: the ablation); ``build_memory`` is the only place that
tells them apart.
"""

from __future__ import annotations

import json
import stat
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from mirage_ros.camera import scale_intrinsics, validate_intrinsics
from mirage_ros.geometry import invert_transform, validate_transform
from mirage_ros.memory import (ExplicitPointCloudMemory, Frame, LatentMemoryConfig, LatentSpatialMemory, MemoryStats,
                               MemoryView, NoMemory, SpatialMemory, write_back)
from mirage_ros.memory.ground import GroundTexture
from mirage_ros.memory.projection import RayCache, clamp_to_floor, floor_geometry
from mirage_ros.memory.protocol import OBSERVED_SHARE
from mirage_ros.model.autoencoder import RGBDAutoencoder
from mirage_ros.model.checkpoint import DEFAULT_CHECKPOINT, load_component
from mirage_ros.model.denoiser import MOTION_FEATURES, MemoryConditionedDenoiser
from mirage_ros.model.read_refiner import ALIGNMENT_CHANNELS, MemoryReadRefiner
from mirage_ros.model.sampling import DenoiserCondition, SamplingConfig, sample_latent
from mirage_ros.model.tracing import TracedCalls

MEMORY_KINDS = ("latent", "explicit", "none")
#: Arithmetic of the networks: ``auto`` is bfloat16 where the hardware runs it natively (CUDA with bf16,
#: CPUs with AVX-512 BF16/AMX: on 2 such cores the decoder runs ~1.5x, a wholly new view ~1.3x faster), else float32.
PRECISIONS = ("float32", "bfloat16", "auto")
#: Version of ``world_model.json``; 1 had no memory settings (they were the defaults).
SETTINGS_VERSION = 2


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
    """One generated frame: ``rgb`` uint8 ``[H,W,3]``, ``depth`` float32 ``[H,W]`` metres along the
    optical axis, the share of the latent grid the memory covered before generation, the time per
    phase, how many denoiser evaluations it took (0: the memory held the whole view) and the generated
    ``latent`` ``[C,h,w]`` (what the memory stored; training on the model's own rollouts uses it)."""

    rgb: np.ndarray
    depth: np.ndarray
    coverage: float
    timings: StepTimings = field(default_factory=StepTimings)
    denoiser_calls: int = 0
    latent: torch.Tensor | None = None


@dataclass
class CameraTrack:
    """What a camera's next step continues from: its last latent (the denoiser's context) and pose."""

    context: torch.Tensor
    pose: np.ndarray


def motion_features(previous_cam_to_world: np.ndarray, cam_to_world: np.ndarray) -> torch.Tensor:
    """``[12]`` camera motion from the previous frame to this one, in the previous camera's frame."""
    relative = invert_transform(previous_cam_to_world) @ cam_to_world
    return torch.from_numpy(np.concatenate([relative[:3, :3].reshape(-1), relative[:3, 3]])).float()


def resize_observation(rgb: np.ndarray, depth: np.ndarray, size_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``rgb`` uint8 [H0,W0,3] and depth [H0,W0] -> float rgb [3,H,W] in [0,1] and depth [H,W].

    Colour is area-averaged; depth is sampled at the nearest pixel so edges never blend foreground
    and background into a depth that belongs to neither.
    """
    # Copies (torch.tensor), so read-only arrays (decoded image files, ROS message buffers) need no warning.
    rgb_t = torch.tensor(rgb).permute(2, 0, 1).float().div(255.0)
    depth_t = torch.tensor(depth, dtype=torch.float32)
    if tuple(rgb_t.shape[1:]) != size_hw:
        rgb_t = F.interpolate(rgb_t[None], size=size_hw, mode="area")[0]
        depth_t = F.interpolate(depth_t[None, None], size=size_hw, mode="nearest-exact")[0, 0]
    return rgb_t, depth_t


def build_memory(kind: str, config: LatentMemoryConfig, channels: int,
                 encoder, device: torch.device) -> SpatialMemory:
    """The memory of ``kind`` (see ``MEMORY_KINDS``); ``encoder`` re-encodes the explicit baseline's
    renders, ``channels`` shapes the empty views of ``none``."""
    if kind == "latent":
        return LatentSpatialMemory(config, device=device)
    if kind == "explicit":
        return ExplicitPointCloudMemory(device=device, splat_radius=1, encoder=encoder, patch_size=config.patch_size)
    if kind == "none":
        return NoMemory(channels, config.patch_size, device)
    raise ValueError(f"memory must be one of {MEMORY_KINDS}, got {kind!r}")


def validate_observation(rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` uint8 ``[H,W,3]`` and a float ``depth [H,W]`` with at least one valid pixel, else ``ValueError``."""
    rgb, depth = np.asarray(rgb), np.asarray(depth)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f"depth shape {depth.shape} does not match rgb {rgb.shape[:2]}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(f"depth must be floating point metres, got {depth.dtype}")
    if not (np.isfinite(depth) & (depth > 0)).any():
        raise ValueError("depth has no valid (finite, positive) pixel")
    return rgb, depth


class WorldModel:
    """Latent world model with spatial memory; see the module docstring for the step loop.

    Frames: every pose is ``cam_to_world``, a 4x4 rigid transform from the camera's optical frame
    (z forward, x right, y down; REP 103) to the memory frame (the simulator's odometry frame).
    Intrinsics ``K`` are 3x3 pinhole matrices at the resolution of the image they belong to.

    ``floor_height``: where the floor plane ``z = floor_height`` of the memory frame (z up) is known,
    generated depth never goes below it and points within a few centimetres of it lie on it
    (``memory.projection.clamp_to_floor``); ``None``: no floor is assumed.

    ``refiner``: redraws latent memory reads for the viewpoint they are read from (``None``: remembered
    tokens are decoded as read, a mosaic wherever the view differs from the one that wrote them).

    ``precision``: the networks' arithmetic (``PRECISIONS``): their weights are cast to it, as diffusers'
    ``torch_dtype`` does (networks shared with another world model are cast for it too); memory, geometry
    and every output stay float32.

    ``trace_networks``: the networks run as recorded graphs (``traced``, ``tracing.py``: bit-identical
    results, ~40 % faster denoiser on a CPU); ``False``: plain eager PyTorch.
    """

    def __init__(self, autoencoder: RGBDAutoencoder, denoiser: MemoryConditionedDenoiser,
                 image_size: tuple[int, int] = (128, 128), memory: str = "latent",
                 memory_config: LatentMemoryConfig | None = None, sampling: SamplingConfig | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, precision: str = "float32",
                 floor_height: float | None = None, refiner: MemoryReadRefiner | None = None,
                 trace_networks: bool = True) -> None:
        self.device = torch.device(device)
        self.compute_dtype = resolve_precision(precision, self.device)
        for module in (autoencoder, denoiser, refiner):
            if module is not None:
                # nn.Module.to: every weight is cast (diffusers' own .to() warns about mixed-precision modules).
                nn.Module.to(module.eval(), self.device, self.compute_dtype)
                if self.device.type == "cpu":  # oneDNN convolutions run faster on channels-last (NHWC) weights
                    module.to(memory_format=torch.channels_last)
        self.autoencoder, self.denoiser, self.refiner = autoencoder, denoiser, refiner
        self.traced = TracedCalls(enabled=trace_networks)
        self.image_size = tuple(image_size)
        factor = autoencoder.downsample_factor
        if self.image_size[0] % factor or self.image_size[1] % factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {factor}")
        self.latent_size = (self.image_size[0] // factor, self.image_size[1] // factor)
        self.sampling = sampling or SamplingConfig()  # also builds the scheduler
        self.memory_config = memory_config or LatentMemoryConfig(patch_size=factor)
        if self.memory_config.patch_size != factor:
            raise ValueError(f"memory patch_size {self.memory_config.patch_size} must equal the autoencoder's "
                             f"downsampling factor {factor}")
        self.seed = seed
        self.floor_height = floor_height
        self._rays = RayCache(self.device)
        self.memory: SpatialMemory = build_memory(memory, self.memory_config, denoiser.config.latent_channels,
                                                  self.encode, self.device)
        self.K: np.ndarray | None = None
        self._cameras: list[CameraTrack] = []  # camera 0 first; empty before reset / load_memory
        self._generator = torch.Generator(device=self.device)
        self.steps = 0
        self.denoiser_calls = 0  # denoiser evaluations since the last start, over all cameras: the cost of a path

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **kwargs) -> "WorldModel":
        """Load the shipped default checkpoint (``path=None``) or a local directory with
        ``autoencoder/``, ``denoiser/``, optionally ``refiner/`` (diffusers layout) and
        ``world_model.json`` (image size, sampling and memory settings). ``kwargs`` go to the
        constructor and override the file's (``refiner=None`` turns a shipped refiner off); ``ground_texture``
        (bool) overrides that one memory setting of the file's (``LatentMemoryConfig.ground_texture``).

        Loading for inference also switches PyTorch's process-wide flush-denormal mode on: denormal
        floats make CPU convolutions ~100x slower as activations decay towards zero over a rollout,
        and flushing them changes no result that matters at image precision.
        """
        root = Path(path) if path is not None else DEFAULT_CHECKPOINT
        settings_path = root / "world_model.json"
        try:
            settings = json.loads(settings_path.read_text())
            image_size = tuple(int(n) for n in settings["image_size"])
            sampling = SamplingConfig(**settings.get("sampling", {}))
            memory_config = LatentMemoryConfig(**settings["memory"]) if "memory" in settings else None
            if "ground_texture" in kwargs:
                memory_config = replace(memory_config or LatentMemoryConfig(),
                                        ground_texture=bool(kwargs.pop("ground_texture")))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{settings_path}: not a readable world model settings file "
                             f"({type(error).__name__}: {error})") from error
        autoencoder = load_component(RGBDAutoencoder, root / "autoencoder")
        denoiser = load_component(MemoryConditionedDenoiser, root / "denoiser")
        if "refiner" not in kwargs and (root / "refiner").is_dir():
            kwargs["refiner"] = load_component(MemoryReadRefiner, root / "refiner")
        torch.set_flush_denormal(True)
        kwargs.setdefault("sampling", sampling)
        kwargs.setdefault("memory_config", memory_config)
        return cls(autoencoder, denoiser, image_size=image_size, **kwargs)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Write the checkpoint layout ``from_pretrained`` reads (weights as ``dtype`` safetensors)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        components = [("autoencoder", self.autoencoder), ("denoiser", self.denoiser)]
        if self.refiner is not None:
            components.append(("refiner", self.refiner))
        for name, component in components:
            original = next(component.parameters()).dtype
            # nn.Module.to: every weight is cast (diffusers' own .to() warns about mixed-precision modules).
            torch.nn.Module.to(component, dtype).save_pretrained(root / name, safe_serialization=True)
            torch.nn.Module.to(component, original)
            # diffusers writes the weights through a private temporary file (mode 0600); give them the
            # permissions of the config written beside them, so a shared checkpoint folder is readable.
            mode = stat.S_IMODE((root / name / "config.json").stat().st_mode)
            for weights in (root / name).glob("*.safetensors"):
                weights.chmod(mode)
        settings = {"format_version": SETTINGS_VERSION, "image_size": list(self.image_size),
                    "sampling": asdict(self.sampling), "memory": asdict(self.memory_config)}
        (root / "world_model.json").write_text(json.dumps(settings, indent=2) + "\n")

    @property
    def sampling(self) -> SamplingConfig:
        """How frames are generated; setting it (e.g. another step count) also sets up the scheduler."""
        return self._sampling

    @sampling.setter
    def sampling(self, config: SamplingConfig) -> None:
        self._sampling = config
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.denoiser.config.num_train_timesteps,
                                                         stochastic_sampling=config.stochastic_sampling)

    def encode(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Latents ``[B,C,h,w]`` float32 of ``rgb [B,3,H,W]`` in [0,1] and metric ``depth [B,H,W]`` (on the
        model's device), as the memory stores them, whatever the networks' precision."""
        return self.traced(self.autoencoder.encode, rgb, depth)

    def decode(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``rgb [B,3,H,W]`` in [0,1] and metric ``depth [B,H,W]``, float32, of latents ``[B,C,h,w]``
        (as decoded, before the memory's depth composition and the floor clamp of a step)."""
        return self.autoencoder.split_output(self.traced(self.autoencoder.decode_raw, latent))

    # ------------------------------------------------------------------ observations
    @torch.inference_mode()
    def reset(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> None:
        """Start a rollout from an observation: clear the memory, ``observe`` it and restart the noise
        seed, so equal resets and poses give equal rollouts. Arguments as for ``observe``."""
        arguments = self._validated(rgb, depth, K, cam_to_world)
        self.memory.clear()
        self._cameras = []
        self._observe(*arguments)
        self._generator.manual_seed(self.seed)
        self.steps = self.denoiser_calls = 0

    @torch.inference_mode()
    def observe(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> int:
        """Add a real observation to the memory without clearing it; camera 0's next step continues from
        it (its latent is the context, its pose the previous pose). Returns the memory entries written.

        ``rgb`` uint8 ``[H,W,3]`` and ``depth`` float ``[H,W]`` (metres along the optical axis; NaN or
        <= 0: no depth) of any resolution, resized to the model's; ``K`` their intrinsics (3x3, at
        ``H x W``); ``cam_to_world`` the camera's optical-frame pose in the memory frame (4x4). Bad
        input raises ``ValueError`` and changes nothing. Later steps generate with this ``K``.
        """
        return self._observe(*self._validated(rgb, depth, K, cam_to_world))

    def _validated(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> tuple:
        rgb, depth = validate_observation(rgb, depth)
        K = scale_intrinsics(validate_intrinsics(K), rgb.shape[:2], self.image_size)
        return rgb, depth, K, validate_transform(cam_to_world, "cam_to_world")

    def _observe(self, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> int:
        rgb_t, depth_t = resize_observation(rgb, depth, self.image_size)
        rgb_t, depth_t = rgb_t.to(self.device), depth_t.to(self.device)
        latent = self.encode(rgb_t[None], depth_t[None])[0]
        written = write_back(self.memory, Frame(rgb_t, depth_t, latent, K, cam_to_world, observed=True), view=None)
        if self._ground is not None:  # its floor pixels, as observed
            self._ground.observe(rgb_t, depth_t, floor_geometry(self._rays(K, *self.image_size), cam_to_world,
                                                                self.floor_height))
        self.K = K
        self._cameras[:1] = [CameraTrack(latent, cam_to_world)]
        return written

    # ------------------------------------------------------------------ memory files and queries
    def save_memory(self, path: str | Path) -> None:
        """Write the memory to a safetensors file; ``ValueError`` (nothing written) where it cannot be."""
        self.memory.save(path)

    @torch.inference_mode()
    def load_memory(self, path: str | Path, K: np.ndarray, cam_to_world: np.ndarray) -> float:
        """Replace the memory with a saved one and continue from it with one camera at ``cam_to_world``
        (``K`` at the model's image size): the first step's context is the memory read there. Returns
        that view's coverage. A corrupt file, or one made for another model (channels, patch size),
        raises ``ValueError`` and changes nothing."""
        K = validate_intrinsics(K)
        cam_to_world = validate_transform(cam_to_world, "cam_to_world")
        self.memory.load(path, channels=self.denoiser.config.latent_channels)
        self.K = K
        self._cameras = []
        coverage = self.add_camera(cam_to_world)
        self._generator.manual_seed(self.seed)
        self.steps = self.denoiser_calls = 0
        return coverage

    @torch.inference_mode()
    def add_camera(self, cam_to_world: np.ndarray) -> float:
        """Another camera in the same world, numbered after the others (``step_cameras`` takes their
        poses in that order): its first step's context is the memory read at ``cam_to_world``. Returns
        that view's coverage. Needs the intrinsics of a ``reset`` or ``load_memory`` first."""
        if self.K is None:
            raise RuntimeError("call reset() with an observation (or load_memory) before add_camera()")
        cam_to_world = validate_transform(cam_to_world, "cam_to_world")
        view = self._read(cam_to_world, surface_depth=False)
        self._cameras.append(CameraTrack(view.latent, cam_to_world))
        return view.coverage_fraction

    @property
    def num_cameras(self) -> int:
        """Cameras stepped together by ``step_cameras`` (1 after ``reset``, more with ``add_camera``)."""
        return len(self._cameras)

    def memory_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Stored positions ``[N,3]`` (memory frame, metres) and display colours uint8 ``[N,3]``."""
        return self.memory.points()

    def memory_stats(self) -> MemoryStats:
        """Entries held, their bytes, observations since the last clear, last read's coverage."""
        return self.memory.stats()

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Warm each network (``TracedCalls.warm``) on zeros at the shapes the cameras' steps use: the first
        real steps then pay no one-off costs (traces, kernel set-up; about a second in all on a CPU). A
        real-time loop calls this before its clock starts. Nothing the model holds changes."""
        if not self._cameras:
            raise RuntimeError("call reset() with an observation (or load_memory) before warm_up()")
        cameras, (h, w) = len(self._cameras), self.latent_size
        latent = torch.zeros(cameras, self.denoiser.config.latent_channels, h, w, device=self.device)
        grid = torch.zeros(cameras, h, w, device=self.device)
        calls = []
        for batch in sorted({1, cameras}):  # cameras sharing a noise schedule are denoised together
            sigma, motion = torch.zeros(batch, device=self.device), torch.zeros(batch, MOTION_FEATURES, device=self.device)
            calls.append((self.denoiser.forward, latent[:batch], sigma, latent[:batch], grid[:batch], grid[:batch],
                          latent[:batch], motion))
        calls.append((self.autoencoder.decode_raw, latent))
        if self.refiner is not None:  # redraws one camera's read at a time
            fine, factor = None, self.refiner.config.supersample
            if factor > 1:
                fine_latent = torch.zeros(1, latent.shape[1], h * factor, w * factor, device=self.device)
                fine_grid = fine_latent[:, 0]
                fine = (fine_latent, fine_grid, fine_grid, fine_latent[:, :ALIGNMENT_CHANNELS])
            calls.append((self.refiner.forward, latent[:1], grid[:1], grid[:1], latent[:1, :ALIGNMENT_CHANNELS], fine))
        for method, *args in calls:
            self.traced.warm(method, *args)

    # ------------------------------------------------------------------ the loop
    def step(self, cam_to_world: np.ndarray, K: np.ndarray | None = None) -> StepResult:
        """Generate the frame seen from ``cam_to_world`` (4x4, optical frame -> memory frame) and
        remember what it adds. ``K``: intrinsics at the model's image size; default the last ones given
        (``reset``, ``observe``, ``load_memory`` or an earlier step). The one-camera ``step_cameras``."""
        return self.step_cameras([cam_to_world], K)[0]

    @torch.inference_mode()
    def step_cameras(self, cam_to_worlds: Sequence[np.ndarray], K: np.ndarray | None = None) -> list[StepResult]:
        """One step of every camera (``num_cameras`` poses, in camera order; ``K`` as for ``step``).

        Each camera reads the memory at its pose; their latents are then denoised together (one batched
        denoiser pass per noise level for the cameras that share a schedule, ``sample_latent``) and
        decoded in one batched pass; each frame is written back in camera order. All reads come
        before any write, so cameras that see the same new place in the same step both generate it.
        Every result carries the timings of the whole step.
        """
        if not self._cameras:
            raise RuntimeError("call reset() with an observation (or load_memory) before step()")
        if len(cam_to_worlds) != len(self._cameras):
            raise ValueError(f"{len(self._cameras)} cameras, but {len(cam_to_worlds)} poses to step them to")
        poses = [validate_transform(pose, "cam_to_world") for pose in cam_to_worlds]
        if K is not None:
            self.K = validate_intrinsics(K)
        timings = StepTimings()
        started = self._clock()
        views = [self._read(pose, surface_depth=self.sampling.keep_remembered) for pose in poses]
        timings.read = self._clock() - started

        started = self._clock()
        motion = torch.stack([motion_features(track.pose, pose).to(self.device)
                              for track, pose in zip(self._cameras, poses)])
        condition = DenoiserCondition.build(torch.stack([view.latent for view in views]),
                                            torch.stack([view.coverage for view in views]),
                                            torch.stack([view.depth for view in views]),
                                            torch.stack([track.context for track in self._cameras]), motion,
                                            self.autoencoder)
        output = sample_latent(partial(self.traced, self.denoiser.forward), self.scheduler, condition,
                               self.sampling, self._generator)
        timings.denoise = self._clock() - started

        started = self._clock()
        rgbs, depths = self.decode(output.latent)
        frames = []
        for rgb, depth, latent, view, pose in zip(rgbs, depths, output.latent, views, poses):
            if view.surfaces is not None:
                # Remembered pixels: on their token planes where the decoded depth agrees (memory.projection).
                depth = view.surfaces.compose(depth)
            if self.floor_height is not None:
                floor = floor_geometry(self._rays(self.K, *self.image_size), pose, self.floor_height)
                depth = clamp_to_floor(depth, floor)
                if self._ground is not None:
                    rgb = self._ground.paint(rgb, depth, floor)
            frames.append(Frame(rgb, depth, latent, self.K, pose))
        timings.decode = self._clock() - started

        started = self._clock()
        for frame, view in zip(frames, views):
            write_back(self.memory, frame, view)
        timings.write = self._clock() - started

        self._cameras = [CameraTrack(frame.latent, frame.cam_to_world) for frame in frames]
        self.steps += 1
        self.denoiser_calls += sum(output.denoiser_calls)
        return [StepResult((frame.rgb.permute(1, 2, 0) * 255.0).round().to(torch.uint8).cpu().numpy(),
                           frame.depth.float().cpu().numpy(), view.coverage_fraction, timings, calls,
                           frame.latent.float().cpu())
                for frame, view, calls in zip(frames, views, output.denoiser_calls)]

    @property
    def _ground(self) -> GroundTexture | None:
        """The memory's ground texture where the floor plane is known and the memory keeps one."""
        return getattr(self.memory, "ground", None) if self.floor_height is not None else None

    def _clock(self) -> float:
        """Wall-clock seconds once the device has finished the work queued so far: CUDA runs kernels
        asynchronously, so without the wait a phase's time would be billed to whichever phase next
        copies to the host."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _read(self, cam_to_world: np.ndarray, surface_depth: bool) -> MemoryView:
        """The memory's view at ``cam_to_world``, its token mosaic redrawn by the refiner where there is
        one and the memory says how its tokens sit in the view (``MemoryView.alignment``): on the tokens
        the refiner learned to redraw (observed ones, unless it ``redraws_imagined``). Refined tokens
        are at this view's scale, so their decoded depth needs no rescaling."""
        view = self.memory.read_view(cam_to_world, self.K, self.image_size, surface_depth=surface_depth)
        if self.refiner is None or view.alignment is None:
            return view
        redrawn = view.coverage
        if not self.refiner.config.redraws_imagined and view.observed is not None:
            redrawn = redrawn & (view.observed >= OBSERVED_SHARE)
        weight = self.refiner.redraw_weight(view.alignment) * redrawn
        if not bool((weight > 0).any()):  # nothing to redraw (e.g. a revisit): skip the network
            return view
        normalize = self.autoencoder.normalize_read_depth
        fine, factor = None, self.refiner.config.supersample
        if factor > 1:  # read only now: most steps with new content skip the refiner
            read = self.memory.read_supersampled(cam_to_world, self.K, self.image_size, factor)
            fine = tuple(tensor[None] for tensor in (read.latent, read.coverage.float(),
                                                     normalize(read.depth, read.coverage), read.alignment))
        refined = self.traced(self.refiner.forward, view.latent[None], view.coverage[None].float(),
                              normalize(view.depth, view.coverage)[None], view.alignment[None], fine)[0]
        surfaces = view.surfaces
        if surfaces is not None:  # a redrawn token is at this view's scale; a kept one at its writer's
            surfaces = replace(surfaces, cell_scale=surfaces.cell_scale ** (1 - weight))
        latent = view.latent + weight * (refined - view.latent)
        return replace(view, latent=latent, surfaces=surfaces, alignment=None)

    def nearest_surface(self, x: float, y: float, min_height: float, max_height: float) -> float:
        """Horizontal distance (m) from ``(x, y)`` to the nearest remembered surface between the two
        heights (memory frame, z up); ``inf`` when there is none."""
        return self.memory.nearest_surface(x, y, min_height, max_height)

