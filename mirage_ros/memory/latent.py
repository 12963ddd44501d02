"""``LatentSpatialMemory``: the world model's latent tokens, kept in 3D.

Write (lift): every latent token gets a 3D point from the depth of its image patch. The patch's valid
depths are split at their largest relative gap; if that gap is a real discontinuity the token is placed
on the nearer cluster only (an edge token belongs to the object in front, never to the empty space
between object and wall), at the back-projection of the cluster pixel nearest the cluster's image
centroid: always a real surface point, never an average that floats in front of a crease. Each token
also keeps the depth it was seen at (fused like its features), because its features encode depth as
seen from there. Tokens are keyed by voxel: repeated observations of a voxel fuse (confidence-weighted
running mean, confidence capped so newer observations keep a say) instead of appending, and past
``capacity`` voxels the least recently seen are evicted, so memory stops growing once a place is known.

Read (query): stored points are projected into the target camera on the latent grid and the nearest
surface per latent pixel wins in a deterministic z-buffer (see ``projection.py``). A token seen from
closer than it was written covers more than one latent pixel: it is splatted over its footprint so
approaching a surface leaves no pinholes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mirage_ros.camera import scale_intrinsics
from mirage_ros.memory.projection import (MemoryRead, depth_tensor, intrinsics_tensor, pixel_rays, pose_tensor,
                                          to_world, zbuffer)

FORMAT_VERSION = 2
_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_FIELDS = ("keys", "positions", "normals", "features", "view_depths", "weights", "extents", "last_seen")


@dataclass(frozen=True)
class LatentMemoryConfig:
    """Settings of a ``LatentSpatialMemory``.

    ``patch_size``: image pixels per latent token side (the autoencoder's downsampling factor).
    ``voxel_size``: metres; one token is kept per voxel. ``capacity``: voxels kept at most.
    ``min_valid_fraction``: share of a patch's pixels that must have depth for it to become a token.
    ``edge_gap``: relative depth jump between a patch's sorted depths that counts as a discontinuity.
    ``max_confidence``: cap of the fused observation weight (recency: a new observation always has
    at least ``1 / (max_confidence + 1)`` influence). ``max_splat_radius``: footprint splat cap in latent
    pixels (0 disables splatting). ``feature_dtype``: ``"float16"`` or ``"float32"`` storage.
    """

    patch_size: int = 8
    voxel_size: float = 0.05
    capacity: int = 200_000
    min_valid_fraction: float = 0.25
    edge_gap: float = 0.1
    max_confidence: float = 8.0
    max_splat_radius: int = 1
    feature_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.capacity < 1 or self.max_splat_radius < 0:
            raise ValueError("patch_size and capacity must be >= 1 and max_splat_radius >= 0")
        if not (0 < self.voxel_size < 10 and 0 < self.min_valid_fraction <= 1 and self.edge_gap > 0
                and self.max_confidence >= 1):
            raise ValueError(f"invalid memory config {self}")
        if self.feature_dtype not in ("float16", "float32"):
            raise ValueError(f"feature_dtype must be float16 or float32, got {self.feature_dtype!r}")


@dataclass(frozen=True)
class MemoryStats:
    tokens: int                 # stored tokens (one per occupied voxel)
    voxels: int                 # occupied voxels
    observations: int           # tokens written since the last clear, before fusion
    bytes: int                  # bytes held by the stored tensors
    last_read_coverage: float   # fraction of the latent grid covered by the last read


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def surface_normals(points: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Unit normals ``[H,W,3]`` of a camera-frame point map, facing the camera.

    Each pixel differences with the horizontal and vertical neighbour whose depth is closer to its own
    (one-sided at depth edges, so a foreground pixel never takes the slope towards the background).
    """
    def tangent(dim: int) -> torch.Tensor:
        forward = torch.roll(points, -1, dim) - points
        backward = points - torch.roll(points, 1, dim)
        forward_ok = torch.roll(usable, -1, dim)
        backward_ok = torch.roll(usable, 1, dim)
        size = points.shape[dim]
        index = torch.arange(size, device=points.device)
        edge_shape = [1, 1]
        edge_shape[dim] = size
        forward_ok = forward_ok & (index < size - 1).view(edge_shape)
        backward_ok = backward_ok & (index > 0).view(edge_shape)
        use_forward = forward_ok & (~backward_ok | (forward[..., 2].abs() <= backward[..., 2].abs()))
        return torch.where(use_forward.unsqueeze(-1), forward, backward)

    normal = torch.cross(tangent(1), tangent(0), dim=-1)
    normal = torch.where((normal * points).sum(-1, keepdim=True) > 0, -normal, normal)  # face the camera
    return _unit(normal)


def voxel_keys(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """One int64 key per point: its voxel's integer coordinates packed 21 bits each (+-52 km at 5 cm)."""
    cells = torch.floor(points / voxel_size).long() + _OFFSET
    if bool(((cells < 0) | (cells >= 1 << _BITS)).any()):
        raise ValueError("points too far from the origin for the voxel key range")
    return (cells[:, 0] << (2 * _BITS)) | (cells[:, 1] << _BITS) | cells[:, 2]


def _group_mean(keys: torch.Tensor, values: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Unique sorted keys, the mean of each value per key, the count per key and each key's group."""
    unique, inverse, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    means = []
    for value in values:
        total = torch.zeros((unique.numel(), *value.shape[1:]), dtype=value.dtype, device=value.device)
        total.index_add_(0, inverse, value)
        means.append(total / counts.view(-1, *([1] * (value.dim() - 1))).to(value.dtype))
    return unique, means, counts, inverse


class LatentSpatialMemory:
    """A bounded, fused 3D cache of latent tokens; see the module docstring. It never needs gradients:
    every operation runs in inference mode, so it can be used from inside or outside one."""

    def __init__(self, config: LatentMemoryConfig | None = None, device: str | torch.device = "cpu") -> None:
        self.config = config or LatentMemoryConfig()
        self.device = torch.device(device)
        self.clear()

    # ------------------------------------------------------------------ state
    def clear(self) -> None:
        """Forget everything (the channel count is set again by the next write)."""
        self.channels: int | None = None
        self._set_state(self._empty_state(0))
        self.observations = 0
        self.write_count = 0
        self.last_read_coverage = 0.0

    def _empty_state(self, channels: int) -> dict[str, torch.Tensor]:
        dtype = getattr(torch, self.config.feature_dtype)
        return {"keys": torch.zeros(0, dtype=torch.long, device=self.device),
                "positions": torch.zeros((0, 3), dtype=torch.float32, device=self.device),
                "normals": torch.zeros((0, 3), dtype=torch.float16, device=self.device),
                "features": torch.zeros((0, channels), dtype=dtype, device=self.device),
                "view_depths": torch.zeros(0, dtype=torch.float16, device=self.device),
                "weights": torch.zeros(0, dtype=torch.float32, device=self.device),
                "extents": torch.zeros(0, dtype=torch.float32, device=self.device),
                "last_seen": torch.zeros(0, dtype=torch.long, device=self.device)}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        for name in _FIELDS:
            setattr(self, name, state[name])

    def stats(self) -> MemoryStats:
        held = sum(getattr(self, name).numel() * getattr(self, name).element_size() for name in _FIELDS)
        return MemoryStats(int(self.keys.numel()), int(self.keys.numel()), self.observations, held,
                           self.last_read_coverage)

    # ------------------------------------------------------------------ write
    def _lift(self, latent: torch.Tensor, depth: torch.Tensor, usable: torch.Tensor, K: torch.Tensor,
              cam_to_world: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Token points ``[M,3]`` and unit normals ``[M,3]`` in the world, features ``[M,C]``, the
        depths they were seen at ``[M]`` and footprint extents ``[M]`` (metres)."""
        channels, h, w = latent.shape
        p = self.config.patch_size
        points = pixel_rays(K, h * p, w * p) * depth.unsqueeze(-1)            # camera frame, [H,W,3]
        normals = surface_normals(points, usable)
        patches = lambda x: x.reshape(h, p, w, p, *x.shape[2:]).transpose(1, 2).reshape(h * w, p * p, *x.shape[2:])
        patch_depth, patch_usable, patch_points = patches(depth), patches(usable), patches(points)
        patch_normals = patches(normals)
        enough = patch_usable.float().mean(1) >= self.config.min_valid_fraction
        # Largest relative gap between consecutive sorted valid depths: a discontinuity splits the
        # patch and only its near side is kept.
        sorted_depth = torch.sort(torch.where(patch_usable, patch_depth, torch.full_like(patch_depth, float("inf"))), 1).values
        ratio = sorted_depth[:, 1:] / sorted_depth[:, :-1]
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        gap, gap_at = torch.max(ratio, dim=1)
        limit = torch.where(gap - 1.0 > self.config.edge_gap, sorted_depth.gather(1, gap_at[:, None]).squeeze(1),
                            torch.full_like(gap, float("inf")))
        member = patch_usable & (patch_depth <= limit[:, None])
        count = member.sum(1)
        token = enough & (count > 0)
        # The token sits on a real surface point: the member pixel nearest the members' image centroid
        # (a 3D mean would float in front of concave creases such as a wall meeting the ceiling).
        offsets = torch.stack(torch.meshgrid(torch.arange(p, device=depth.device), torch.arange(p, device=depth.device),
                                             indexing="ij"), -1).reshape(p * p, 2).to(depth.dtype)
        weights = member.to(depth.dtype)
        centroid = (weights @ offsets) / count.clamp_min(1).unsqueeze(-1).to(depth.dtype)
        distance = ((offsets[None] - centroid[:, None]) ** 2).sum(-1)
        chosen = torch.argmin(torch.where(member, distance, torch.full_like(distance, float("inf"))), dim=1)
        rows = torch.arange(h * w, device=depth.device)
        surface, normal = patch_points[rows, chosen], patch_normals[rows, chosen]
        extent = p * surface[:, 2] / K[0, 0]                                   # token footprint in metres
        ids = torch.nonzero(token).squeeze(1)
        world = to_world(surface[ids], cam_to_world)
        world_normals = normal[ids] @ cam_to_world[:3, :3].T
        features = latent.reshape(channels, h * w).T[ids]
        return world, world_normals, features, surface[ids, 2], extent[ids]

    @torch.inference_mode()
    def write(self, latent: torch.Tensor, depth: np.ndarray | torch.Tensor, K: np.ndarray,
              cam_to_world: np.ndarray, valid: np.ndarray | torch.Tensor | None = None) -> int:
        """Lift a frame's tokens into the memory; returns how many tokens were written.

        ``latent [C,h,w]``, ``depth [H,W]`` metres with ``H = h * patch_size``, ``K`` at image resolution,
        ``cam_to_world`` in the optical convention, ``valid [H,W]`` bool (pixels allowed to become
        memory). Raises ``ValueError`` naming the bad argument; a failed write changes nothing.
        """
        latent = torch.as_tensor(latent, device=self.device)
        if latent.dim() != 3 or not latent.is_floating_point():
            raise ValueError(f"latent must be a float tensor [C, h, w], got {latent.dtype} {tuple(latent.shape)}")
        if not bool(torch.isfinite(latent).all()):
            raise ValueError("latent contains NaN or inf")
        if self.channels is not None and latent.shape[0] != self.channels:
            raise ValueError(f"latent has {latent.shape[0]} channels, the memory holds {self.channels}")
        channels, h, w = latent.shape
        p = self.config.patch_size
        depth, usable = depth_tensor(depth, (h * p, w * p), self.device, valid)
        K_t = intrinsics_tensor(K, self.device)
        pose = pose_tensor(cam_to_world, self.device)
        points, normals, features, view_depths, extents = self._lift(latent.to(torch.float64), depth, usable, K_t, pose)
        if points.shape[0] == 0:
            return 0
        keys = voxel_keys(points, self.config.voxel_size)  # may raise: still nothing changed
        self.channels = channels
        if self.features.shape[1] != channels:
            self._set_state(self._empty_state(channels))
        self.write_count += 1
        self.observations += int(points.shape[0])
        self._fuse(keys, points, normals, features, view_depths.log(), extents)
        return int(points.shape[0])

    def _fuse(self, keys: torch.Tensor, points: torch.Tensor, normals: torch.Tensor, features: torch.Tensor,
              log_depths: torch.Tensor, extents: torch.Tensor) -> None:
        """Merge new tokens into the store; features and the depths they encode (mixed in log space)
        get the same weights."""
        new_keys, (new_points, new_normals, new_features, new_log_depths), counts, group = _group_mean(
            keys, [points, normals, features, log_depths])
        new_extents = torch.full((new_keys.numel(),), float("inf"), dtype=torch.float64, device=self.device)
        new_extents.scatter_reduce_(0, group, extents, "amin")
        new_weights = counts.to(torch.float64)
        position = torch.searchsorted(self.keys, new_keys)
        found = torch.zeros_like(new_keys, dtype=torch.bool)
        if self.keys.numel():
            found = self.keys[position.clamp(max=self.keys.numel() - 1)] == new_keys
        old = position[found]
        if old.numel():
            w_old = self.weights[old].to(torch.float64).clamp(max=self.config.max_confidence)
            w_new = new_weights[found]
            total = w_old + w_new
            mix = (w_new / total).unsqueeze(1)
            self.positions[old] = (self.positions[old].double() * (1 - mix) + new_points[found] * mix).float()
            self.normals[old] = _unit(self.normals[old].double() * (1 - mix) + new_normals[found] * mix).half()
            self.features[old] = (self.features[old].double() * (1 - mix) + new_features[found] * mix).to(self.features.dtype)
            mix = mix.squeeze(1)
            self.view_depths[old] = torch.exp(self.view_depths[old].double().log() * (1 - mix)
                                              + new_log_depths[found] * mix).half()
            self.weights[old] = total.clamp(max=self.config.max_confidence).float()
            self.extents[old] = torch.minimum(self.extents[old], new_extents[found].float())
            self.last_seen[old] = self.write_count
        fresh = ~found
        if fresh.any():
            merged_keys = torch.cat([self.keys, new_keys[fresh]])
            order = torch.argsort(merged_keys, stable=True)
            self.keys = merged_keys[order]
            self.positions = torch.cat([self.positions, new_points[fresh].float()])[order]
            self.normals = torch.cat([self.normals, _unit(new_normals[fresh]).half()])[order]
            self.features = torch.cat([self.features, new_features[fresh].to(self.features.dtype)])[order]
            self.view_depths = torch.cat([self.view_depths, new_log_depths[fresh].exp().half()])[order]
            self.weights = torch.cat([self.weights, new_weights[fresh].float()])[order]
            self.extents = torch.cat([self.extents, new_extents[fresh].float()])[order]
            self.last_seen = torch.cat([self.last_seen, torch.full((int(fresh.sum()),), self.write_count,
                                                                   dtype=torch.long, device=self.device)])[order]
        self._evict()

    def _evict(self) -> None:
        """Drop the least recently seen voxels beyond ``capacity`` (ties: lower key first)."""
        excess = self.keys.numel() - self.config.capacity
        if excess <= 0:
            return
        oldest = torch.argsort(self.last_seen, stable=True)[:excess]
        keep = torch.ones_like(self.keys, dtype=torch.bool)
        keep[oldest] = False
        self._set_state({name: getattr(self, name)[keep] for name in _FIELDS})

    # ------------------------------------------------------------------ read
    @torch.inference_mode()
    def read(self, cam_to_world: np.ndarray, K: np.ndarray, latent_hw: tuple[int, int]) -> MemoryRead:
        """The memory seen from ``cam_to_world`` with image-resolution ``K`` on an ``latent_hw`` grid."""
        h, w = int(latent_hw[0]), int(latent_hw[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"latent_hw must be positive, got {latent_hw}")
        p = self.config.patch_size
        K_image = intrinsics_tensor(K, self.device)
        K_latent = torch.as_tensor(scale_intrinsics(K_image.cpu().numpy(), (h * p, w * p), (h, w)),
                                   dtype=torch.float64, device=self.device)
        pose = pose_tensor(cam_to_world, self.device)
        channels = self.channels or 0
        latent = torch.zeros((channels, h * w), dtype=torch.float32, device=self.device)
        radius = None
        # A surface is seen from its front side only: tokens facing away from the camera are culled
        # (moved behind it), so the far side of a wall never shows through it.
        eye = pose[:3, 3].float()
        front = ((eye - self.positions) * self.normals.float()).sum(1) > 0
        behind_camera = eye - pose[:3, 2].float()  # a point 1 m behind the camera is never drawn
        points = torch.where(front.unsqueeze(1), self.positions, behind_camera)
        if self.config.max_splat_radius and self.keys.numel():
            camera_z = (self.positions - eye) @ pose[:3, 2].float()
            footprint = self.extents * float(K_latent[0, 0]) / camera_z.clamp_min(1e-6)  # latent pixels
            radius = torch.ceil((footprint - 1.0) / 2).long().clamp(0, self.config.max_splat_radius)
        winner, depth, hit = zbuffer(points, pose, K_latent, (h, w), radius, self.normals)
        covered = winner >= 0
        if channels:
            latent[:, covered] = self.features[winner[covered]].float().T
        source_depth = torch.full((h * w,), float("nan"), device=self.device)
        source_depth[covered] = self.view_depths[winner[covered]].float()
        # Each shown token's plane in this camera's frame: n_cam . X_cam = n . (position - eye).
        planes = torch.full((h * w, 4), float("nan"), device=self.device)
        rotation = pose[:3, :3].float()
        normals = self.normals[winner[covered]].float()
        planes[covered, :3] = normals @ rotation
        planes[covered, 3] = (normals * (self.positions[winner[covered]].float() - eye)).sum(1)
        self.last_seen[hit] = self.write_count
        coverage = covered.reshape(h, w)
        self.last_read_coverage = float(coverage.float().mean())
        return MemoryRead(latent.reshape(channels, h, w), coverage, depth.float().reshape(h, w),
                          source_depth.reshape(h, w), planes.reshape(h, w, 4))

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write the memory to a safetensors file (tensors + config and format version as metadata)."""
        metadata = {"format": "mirage_ros.LatentSpatialMemory", "format_version": str(FORMAT_VERSION),
                    "config": json.dumps(asdict(self.config)), "channels": str(self.channels or 0),
                    "observations": str(self.observations), "write_count": str(self.write_count)}
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _FIELDS}
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(path)

    @torch.inference_mode()
    def load(self, path: str | Path) -> None:
        """Replace the memory with a saved one; a missing, corrupt, truncated or mismatched file raises
        ``ValueError`` and leaves the current memory untouched."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"memory file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as reader:
                metadata = reader.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{path}: not a readable safetensors memory file ({error})") from error
        if metadata.get("format") != "mirage_ros.LatentSpatialMemory":
            raise ValueError(f"{path}: not a LatentSpatialMemory file")
        if metadata.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"{path}: format version {metadata.get('format_version')} is not {FORMAT_VERSION}")
        saved = json.loads(metadata["config"])
        for name in ("patch_size", "voxel_size", "feature_dtype"):
            if saved.get(name) != getattr(self.config, name):
                raise ValueError(f"{path}: saved with {name}={saved.get(name)}, this memory uses "
                                 f"{getattr(self.config, name)}")
        channels = int(metadata["channels"])
        state = {name: tensors.get(name) for name in _FIELDS}
        expected = self._empty_state(channels)
        count = state["keys"].shape[0] if state["keys"] is not None else -1
        for name in _FIELDS:
            tensor = state[name]
            if (tensor is None or tensor.dtype != expected[name].dtype or tensor.shape[0] != count
                    or tuple(tensor.shape[1:]) != tuple(expected[name].shape[1:])):
                raise ValueError(f"{path}: tensor {name!r} is missing or has the wrong type or shape")
        if count and not (bool(torch.all(state["keys"][1:] > state["keys"][:-1]))
                          and bool(torch.isfinite(state["positions"]).all())
                          and bool((state["view_depths"].float() > 0).all())
                          and bool(torch.isfinite(state["features"].float()).all())):
            raise ValueError(f"{path}: memory content is inconsistent (unsorted keys or non-finite values)")
        self._set_state({name: tensor.to(self.device) for name, tensor in state.items()})
        self.channels = channels or None
        self.observations = int(metadata["observations"])
        self.write_count = int(metadata["write_count"])
        self.last_read_coverage = 0.0
