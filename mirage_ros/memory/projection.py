"""Geometry shared by both memories: input validation, back-projection, projection and a
deterministic z-buffer with optional footprint splats.

The z-buffer never relies on the order in which a scatter with repeated indices lands (undefined in
PyTorch, nondeterministic on CUDA). Each candidate's key packs its quantised depth above its point
index, and a per-pixel ``amin`` reduction of those keys picks the nearest candidate (ties: the lower
index); depth and feature are then taken from that same point. ``amin`` over integers is exact and
order-independent, so results are identical run to run and on CPU and CUDA.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from mirage_ros.camera import validate_intrinsics
from mirage_ros.geometry import validate_transform

#: Points closer than this to the camera plane are not projected (metres).
NEAR_PLANE = 0.02
#: Depth quantum of the z-buffer ordering key (metres); reported depths stay exact.
DEPTH_QUANTUM = 1e-5
#: Bits of a z-buffer key that hold the point index (the rest hold the quantised depth).
_INDEX_BITS = 24
#: Relative depth handicap per pixel of splat offset, so a token's own pixel beats its neighbours'
#: footprints on the same surface while a genuinely nearer surface still wins.
SPLAT_DEPTH_PENALTY = 0.01
#: With surface normals: candidates whose surfaces lie within this relative depth of each other at the
#: pixel centre count as the same surface, and the one projecting nearest the centre wins.
SURFACE_TOLERANCE = 0.03
#: With surface normals, a point's plane depth on a pixel's ray is clamped to within this factor of the
#: point's own depth (a plane seen edge-on would otherwise reach any depth).
PLANE_DEPTH_RANGE = 1.5
#: Relative difference between a token plane's depth and the decoded depth up to which a remembered
#: pixel takes the plane's exact depth (``RememberedSurfaces.compose``): 1, within a factor of two. The
#: decoded depth only has to pick the right surface; a plane is the better estimate of its depth
#: (evaluation: seen-content AbsRel 0.031 at 0.5, 0.027 here).
PLANE_AGREEMENT = 1.0
#: Points of generated depth less than this (metres) above the floor are put on the floor. Imagined floor
#: depth AbsRel: 0.118 at 3 cm, 0.097 at 6 cm, 0.074 at 10 cm; the price is paid by surfaces less than
#: this above the floor (AbsRel of points 5-20 cm up: 0.125, 0.129, 0.157), below any scan's height band.
FLOOR_SNAP = 0.06
#: Neighbouring token planes whose depths at a pixel agree within this (relative) count as one surface
#: and are blended there (``RememberedSurfaces.compose``); planes fitted to imagined depth disagree by
#: several per cent across a cell border (depth seam ratio 1.47 at 0.08, 1.25 at 0.2).
SAME_SURFACE = 0.2
#: The same for pixels of cells showing imagined tokens. Their planes come from generated depth, whose
#: planes disagree by tens of per cent on one surface: blended only within 0.2, neighbouring pixels took
#: different planes and the depth broke into jagged steps (3 held-out worlds, long drives: 1.04 % of
#: neighbouring pixel pairs step by > 0.15 in log depth at 0.2, 0.68 % at 0.6, truth 0.55 %). Observed
#: tokens keep 0.2: across a real edge (a box before a wall) a wider blend puts pixels between the two.
IMAGINED_SAME_SURFACE = 0.6
#: An imagined token nearer by more than this factor than the median depth of the cells around it
#: (``OUTLIER_WINDOW`` x ``OUTLIER_WINDOW``, itself included) is an outlier there: a bit of imagined
#: surface left floating by a frame whose depth was off (typically imagined floor a few tens of
#: centimetres too high), drawn as a near square once the camera comes close. It takes its
#: neighbourhood's depth scale and no plane (``RememberedSurfaces.settle_imagined_outliers``). The
#: window is wider than a splatted token (3 x 3 cells), so a lone token cannot outvote its surroundings.
#: Only nearer ones: a further token is mostly background seen past a depth edge, often beside space
#: not yet seen; settling those too (even only the ones without like neighbours) put steps along such
#: edges (evaluation depth seam ratio 1.17 -> 1.25-1.28).
OUTLIER_RATIO = 1.3
OUTLIER_WINDOW = 5
#: Generated pixels next to remembered ones take the remembered pixels' depth correction (composed /
#: decoded, in log space), spread by a Gaussian of this width (in latent cells) and fading away from
#: remembered content (``extend_correction``). The decoder draws a new cell beside remembered tokens
#: with their depth as their writer saw it, while the remembered pixels are rescaled to this view and
#: put on their planes: without the correction new imagined surfaces stepped away from the remembered
#: ones at the cell border (demo tour: a log-depth step 11x the image's mean gradient), and once written
#: back the imagined world became a patchwork of surfaces at different depths. Half a cell carries the
#: correction about a cell and a half in. Long drives (5 held-out worlds, 1490 frames), none / 0.25 /
#: 0.5 / 1 cell: depth seams over the last third 2.30 / 1.32 / 1.31 / 1.48, realism accuracy (whole /
#: last third) 0.746 / 0.801, 0.751 / 0.799, 0.743 / 0.764, 0.787 / 0.830; mean |log depth error|
#: 0.41 / 0.40 / 0.44 / 0.52 (a wide correction compounds: imagined geometry drifts from frame to frame).
CORRECTION_SPREAD = 0.5
#: Weight of "no correction" in that spread: the correction fades to half where the Gaussian coverage
#: by remembered pixels is this (demo tour, 1 cell: seam ratio 1.10 at 0.005, 1.24 at 0.3).
CORRECTION_FADE = 0.05
#: Bits of the ordering key holding the candidate's handicapped distance to the pixel centre (1/64 pixel units).
_CENTRE_BITS = 16


@dataclass
class MemoryRead:
    """A latent memory seen from a camera, on the latent grid: ``latent [C,h,w]`` (zeros where
    uncovered), ``coverage [h,w]`` bool and ``depth [h,w]`` metres along the optical axis, NaN where
    uncovered.

    ``source_depth [h,w]``: the depth at which each shown token was observed. A token's features
    encode the depth of the view that wrote it; ``depth / source_depth`` is the factor that turns its
    decoded depth into depth seen from this camera.

    ``planes [h,w,4]``: each shown token's surface plane in this camera's frame, ``(n, d)`` with
    ``n . X = d`` (NaN where uncovered); see ``RememberedSurfaces``.

    ``offsets [h,w,2]``: where each shown token's point projects, relative to the centre of the cell
    that shows it (latent pixels, x then y; 0 where uncovered): the sub-cell misalignment of the
    mosaic, which a read refiner undoes (``model/read_refiner.py``).

    ``observed [h,w]``: the share of each shown token's fused observations that were real rather than
    imagined (0 where uncovered).
    """

    latent: torch.Tensor
    coverage: torch.Tensor
    depth: torch.Tensor
    source_depth: torch.Tensor
    planes: torch.Tensor
    offsets: torch.Tensor
    observed: torch.Tensor

    @property
    def coverage_fraction(self) -> float:
        return float(self.coverage.float().mean())


def pose_tensor(cam_to_world: np.ndarray | torch.Tensor, device: torch.device, name: str = "cam_to_world") -> torch.Tensor:
    array = cam_to_world.detach().cpu().numpy() if torch.is_tensor(cam_to_world) else cam_to_world
    return torch.as_tensor(validate_transform(array, name), dtype=torch.float64, device=device)


def intrinsics_tensor(K: np.ndarray | torch.Tensor, device: torch.device, name: str = "K") -> torch.Tensor:
    array = K.detach().cpu().numpy() if torch.is_tensor(K) else K
    try:
        validated = validate_intrinsics(array, name)
    except np.linalg.LinAlgError as error:
        raise ValueError(f"{name} is singular") from error
    return torch.as_tensor(validated, dtype=torch.float64, device=device)


def depth_tensor(depth: np.ndarray | torch.Tensor, shape: tuple[int, int], device: torch.device,
                 valid: np.ndarray | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth as float64 ``[H,W]`` and the mask of pixels that may become memory (finite, positive, ``valid``)."""
    depth = torch.as_tensor(depth, device=device)
    if tuple(depth.shape) != shape:
        raise ValueError(f"depth must have shape {shape}, got {tuple(depth.shape)}")
    if not depth.is_floating_point():
        raise ValueError(f"depth must be a floating point array in metres, got {depth.dtype}")
    if torch.isinf(depth).any():
        raise ValueError("depth contains inf (use NaN for pixels without depth)")
    depth = depth.to(torch.float64)
    usable = torch.isfinite(depth) & (depth > 0)
    if valid is not None:
        valid = torch.as_tensor(valid, device=device)
        if tuple(valid.shape) != shape or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool mask of shape {shape}, got {valid.dtype} {tuple(valid.shape)}")
        usable &= valid
    if not bool(usable.any()):
        raise ValueError("depth has no valid pixel (empty frame): nothing to write")
    return torch.where(usable, depth, torch.zeros_like(depth)), usable


def pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[H,W,3]`` camera-frame rays with z = 1 through pixel centres (integer coordinates)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=K.dtype, device=K.device),
                          torch.arange(width, dtype=K.dtype, device=K.device), indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    return pixels @ torch.linalg.inv(K).T


class RayCache:
    """``pixel_rays`` of the last camera asked for, per dtype (float32 unless asked): they depend on
    nothing but ``K`` and the image size, and a simulator's camera rarely changes."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._last: dict[torch.dtype, tuple[tuple, torch.Tensor]] = {}

    def __call__(self, K: np.ndarray, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (np.asarray(K, dtype=np.float64).tobytes(), height, width)
        if dtype not in self._last or self._last[dtype][0] != key:
            K64 = torch.as_tensor(np.asarray(K, dtype=np.float64), device=self.device)
            self._last[dtype] = key, pixel_rays(K64, height, width).to(dtype)
        return self._last[dtype][1]


class FloorRays:
    """Where each pixel's ray meets the floor plane (``floor_geometry``): ``down [H,W]`` (world z per unit of
    optical depth, < 0 looking down), ``plane_depth [H,W]`` (optical depth of the floor along the ray, inf where
    the ray never meets it), ``height`` (the camera's, metres above the floor), and on first use ``xy [H,W,2]``
    (the meeting point) and ``footprint [H,W]`` (metres of floor one pixel covers there: the side of its patch):
    the depth clamp, on every step, needs neither."""

    def __init__(self, world_rays: torch.Tensor, camera_xy: torch.Tensor, spacing: torch.Tensor, height: float) -> None:
        self._world_rays, self._camera_xy, self._spacing = world_rays, camera_xy, spacing
        self.down = world_rays[..., 2]
        self.height = height
        self._meets = (self.down < -1e-6) & (height > 0)
        self.plane_depth = torch.where(self._meets, height / (-self.down).clamp_min(1e-6),
                                       torch.full_like(self.down, math.inf))

    @functools.cached_property
    def xy(self) -> torch.Tensor:
        depth = torch.where(self._meets, self.plane_depth, torch.zeros_like(self.down))
        return self._camera_xy + depth[..., None] * self._world_rays[..., :2]

    @functools.cached_property
    def footprint(self) -> torch.Tensor:
        # A pixel's patch of floor: its solid angle (spacing² cos³ of the off-axis angle, on the z = 1 image
        # plane) times distance² over the cosine of incidence; with distance = depth · |ray| and cos = 1/|ray| off
        # axis that is (spacing · depth)² / (|ray| · incidence cosine). Its side is the footprint.
        length = self._world_rays.norm(dim=-1)
        incidence = (-self.down / length).clamp_min(1e-3)
        return torch.where(self._meets, self.plane_depth * self._spacing / (length * incidence).sqrt(),
                           torch.full_like(self.down, math.inf))


def floor_geometry(rays: torch.Tensor, cam_to_world: np.ndarray, floor_height: float) -> FloorRays:
    """``FloorRays`` of a camera at ``cam_to_world`` over the floor plane ``z = floor_height`` (memory frame, z up);
    ``rays [H,W,3]``: camera-frame rays with z = 1 (``pixel_rays``) at the camera's intrinsics."""
    pose = torch.as_tensor(cam_to_world, dtype=torch.float32, device=rays.device)
    spacing = (rays[0, 1, 0] - rays[0, 0, 0]).abs().float()
    return FloorRays(rays.float() @ pose[:3, :3].T, pose[:2, 3], spacing, float(cam_to_world[2, 3]) - floor_height)


def clamp_to_floor(depth: torch.Tensor, floor: FloorRays, snap: float = FLOOR_SNAP) -> torch.Tensor:
    """``depth [H,W]`` with no point below the floor plane (``floor``: ``floor_geometry`` of its camera): a ray
    that reaches the floor ends there at the latest, and points less than ``snap`` metres above it are put on it
    (the floor is where the floor is). The simulator knows the camera's height and pitch, so this needs nothing
    from the model."""
    on_floor = torch.isfinite(floor.plane_depth) & (floor.height + depth.float() * floor.down < snap)
    return torch.where(on_floor, floor.plane_depth.to(depth.dtype), depth)


def to_pixel_grid(grid: torch.Tensor, factor: int) -> torch.Tensor:
    """A latent-grid map ``[h,w,...]`` repeated over each cell's ``factor x factor`` image pixels."""
    return grid.repeat_interleave(factor, 0).repeat_interleave(factor, 1)


@dataclass
class RememberedSurfaces:
    """The remembered tokens of a view as surfaces, to give each remembered pixel its depth once the
    frame is decoded (``compose``).

    ``planes [h,w,4]`` (each shown token's plane ``n . X = d`` in the camera frame), ``cell_depth
    [h,w]`` (depth at each cell centre, NaN where uncovered) and ``cell_scale [h,w]`` (depth now / depth
    when the token was seen: a token's features encode the depth it was seen at) come from a latent
    memory read; ``rays [H,W,3]`` are the image's ``pixel_rays``. ``imagined [h,w]`` (optional): cells
    showing imagined tokens. ``settled [h,w]`` (optional): cells whose token is an imagined outlier
    (set by ``settle_imagined_outliers``).
    """

    planes: torch.Tensor
    cell_depth: torch.Tensor
    cell_scale: torch.Tensor
    rays: torch.Tensor
    imagined: torch.Tensor | None = None
    settled: torch.Tensor | None = None

    def settle_imagined_outliers(self) -> "RememberedSurfaces":
        """These surfaces with every imagined floater (see ``OUTLIER_RATIO``; only ``imagined`` cells can be
        one) put back among its neighbours: its depth and scale become the median of the other cells of its
        window, it offers no plane, and its pixels take the surrounding planes, or a depth within
        ``OUTLIER_RATIO`` of theirs (``compose``). Observed tokens are never touched: a thin real object in
        front of a wall is what was seen."""
        if self.imagined is None:
            return self
        covered = torch.isfinite(self.cell_depth)
        log_depth = torch.log(self.cell_depth)
        outlier = self.imagined & covered & (window_median(log_depth, covered, OUTLIER_WINDOW) - log_depth
                                             > math.log(OUTLIER_RATIO))
        if not bool(outlier.any()):
            return self
        others = covered & ~outlier
        depth = window_median(log_depth, others, OUTLIER_WINDOW).exp()
        scale = window_median(torch.log(self.cell_scale), others, OUTLIER_WINDOW).exp()
        settled = outlier & torch.isfinite(depth)  # (a floater with no other cell around stays as it is)
        return replace(self, cell_depth=torch.where(settled, depth, self.cell_depth),
                       cell_scale=torch.where(settled, scale, self.cell_scale),
                       planes=torch.where(settled[..., None], torch.full_like(self.planes, float("nan")), self.planes),
                       settled=settled)

    def compose(self, decoded: torch.Tensor, agreement: float = PLANE_AGREEMENT,
                same_surface: float = SAME_SURFACE, max_deviation: float = 0.25,
                imagined_same_surface: float = IMAGINED_SAME_SURFACE) -> torch.Tensor:
        """Metric depth ``[H,W]`` of a decoded frame, its remembered pixels on their surfaces.

        Every pixel is surrounded by the centres of four latent cells. The decoded depth, rescaled to
        this viewpoint (the cells' scales blended bilinearly, in log space, among cells at similar
        depth), is the guide: it says which surface a pixel shows, to the pixel, even inside a cell
        that straddles an edge. Where one of the four token planes lies within ``agreement``
        (relative) of the guide, the pixel takes the exact depth on the planes: the bilinear blend of
        those within ``same_surface`` of the closest one (``imagined_same_surface`` in cells showing
        imagined tokens, whose planes fitted to generated depth disagree more). Planes of one surface
        thus join without a step at cell borders, and an edge stays where the decoder put it. Elsewhere
        the guide stays.
        Pixels of generated cells keep the decoded depth, corrected as their remembered neighbours were
        (``extend_correction``), so that new surfaces continue the remembered ones without a step.
        A plane is never used where the ray misses it or lands further than ``max_deviation``
        (relative) from its cell centre (grazing planes).
        In ``settled`` cells the guide is kept within ``OUTLIER_RATIO`` of the cell's (settled) centre
        depth, so their pixels take the planes around them.
        """
        height, width = decoded.shape
        h, w = self.cell_depth.shape
        if height % h or width % w or height // h != width // w:
            raise ValueError(f"latent grid {h}x{w} and image {height}x{width} have different cell sizes")
        layout = cell_layout(height, width, h, w, decoded.device)
        weight = layout.weight
        centre = self.cell_depth.float()
        centres, own_centre = layout.around(centre), layout.own(centre)                  # [4,H,W], [H,W]
        covered = torch.isfinite(own_centre)
        # Scale: blended over the surrounding cells at a depth like the pixel's own cell's.
        near = (torch.isfinite(centres) & ((centres - own_centre).abs() <= same_surface * own_centre)) | layout.is_own
        near_weight = weight * near
        log_scale = layout.around(torch.nan_to_num(torch.log(self.cell_scale.float())))
        scale = torch.exp((near_weight * log_scale).sum(0) / near_weight.sum(0))
        guide = decoded.float() * torch.where(covered, scale, torch.ones_like(scale))
        if self.settled is not None:  # an outlier's decoded depth stays within reach of its surroundings'
            settled = layout.own(self.settled)
            bounded = torch.minimum(torch.maximum(guide, own_centre / OUTLIER_RATIO), own_centre * OUTLIER_RATIO)
            guide = torch.where(settled, bounded, guide)
        # Candidates: the depth on each surrounding token's plane along this pixel's ray.
        plane = self.planes.float()
        normal = [layout.around(plane[..., axis]) for axis in range(3)]                  # 3 x [4,H,W]
        facing = normal[0] * self.rays[..., 0] + normal[1] * self.rays[..., 1] + normal[2] * self.rays[..., 2]
        candidate = layout.around(plane[..., 3]) / facing
        usable = (torch.isfinite(candidate) & (candidate > 0) & (weight > 0)  # weight 0: repeats at the border
                  & ((candidate - centres).abs() <= max_deviation * centres))
        candidate = torch.where(usable, candidate, torch.full_like(candidate, float("inf")))
        best = nearest_candidate(candidate, guide)
        tolerance = (same_surface if self.imagined is None else
                     torch.where(layout.own(self.imagined), imagined_same_surface, same_surface))
        together_weight = weight * (usable & ((candidate - best).abs() <= tolerance * best))
        blended = (together_weight * torch.where(together_weight > 0, candidate, torch.zeros_like(candidate))).sum(0)
        blended = blended / together_weight.sum(0).clamp_min(1e-12)
        on_plane = covered & torch.isfinite(best) & ((best - guide).abs() <= agreement * guide)
        remembered = torch.where(on_plane, blended, guide)
        generated = decoded.float()
        correction = extend_correction(torch.log(remembered / generated), covered, CORRECTION_SPREAD * (height // h))
        return torch.where(covered, remembered, generated * correction.exp()).to(decoded.dtype)


def nearest_candidate(candidates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Of ``candidates [K,H,W]``, the one nearest ``target [H,W]`` at each pixel (the first on ties):
    ``argmin`` over the leading dimension, in K - 1 elementwise passes, a tenth of the time of PyTorch's
    CPU ``argmin(0)`` on a 4x128x128 stack."""
    best, best_distance = candidates[0], (candidates[0] - target).abs()
    for candidate in candidates[1:]:
        distance = (candidate - target).abs()
        nearer = distance < best_distance
        best, best_distance = torch.where(nearer, candidate, best), torch.where(nearer, distance, best_distance)
    return best


def extend_correction(log_correction: torch.Tensor, known: torch.Tensor, sigma: float,
                      fade: float = CORRECTION_FADE) -> torch.Tensor:
    """``log_correction [H,W]`` where ``known``, spread over the other pixels: a Gaussian (``sigma``
    pixels) average of the known values around each pixel, weighted against ``fade`` of "no
    correction", so it fades to 0 away from them. Known pixels keep their value."""
    known = known & torch.isfinite(log_correction)
    values = torch.where(known, log_correction, torch.zeros_like(log_correction))
    if bool(known.all()) or not bool(known.any()):  # a revisit or a wholly new view: nothing to spread
        return values
    weight = known.to(values.dtype)
    spread = gaussian_blur(values, sigma) / (gaussian_blur(weight, sigma) + fade)
    return torch.where(known, values, spread)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image [H,W]`` blurred by a separable Gaussian (zero outside the image): two matrix products with
    banded matrices, which a CPU runs ~10x faster than PyTorch's single-channel ``conv2d``."""
    height, width = image.shape
    return (_blur_matrix(height, float(sigma), image.dtype, image.device) @ image
            @ _blur_matrix(width, float(sigma), image.dtype, image.device).T)


@functools.lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[size,size]``: row i holds the normalised Gaussian taps (radius ``ceil(3 sigma)``) centred on i,
    cut at the borders (zero padding)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    position = torch.arange(size, dtype=torch.float64, device=device)
    offset = position[None, :] - position[:, None]
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64, device=device) / sigma) ** 2)
    weight = torch.exp(-0.5 * (offset / sigma) ** 2) / taps.sum()
    return torch.where(offset.abs() <= radius, weight, torch.zeros_like(weight)).to(dtype)


def window_median(values: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """Median of ``values [h,w]`` over each cell's ``window x window`` neighbourhood (odd ``window``),
    among the ``valid`` cells; NaN where the neighbourhood has none."""
    masked = torch.where(valid, values, torch.full_like(values, float("nan")))
    padded = F.pad(masked[None, None], (window // 2,) * 4, value=float("nan"))
    return F.unfold(padded, window)[0].nanmedian(0).values.reshape(values.shape)


@dataclass(frozen=True)
class CellLayout:
    """For every pixel of an ``H x W`` image, the four latent cells (of an ``h x w`` grid) whose centres
    surround it, in the order top-left, top-right, bottom-left, bottom-right, and the cell it lies in.
    ``weight [4,H,W]``: float32 bilinear weights (summing to 1; at the border the nearest cells repeat
    with weight 0); ``is_own [4,H,W]``: which of the four is the pixel's own cell. A pixel's cells depend
    on its row and its column alone, so a map of cells is gathered one axis at a time (``around``,
    ``own``): two small gathers take a third of the time of one flat gather of every pixel."""

    rows: torch.Tensor          # [2,H] the cell row whose centre is above / below each pixel row
    columns: torch.Tensor       # [2,W] the cell column left / right of each pixel column
    own_rows: torch.Tensor      # [H]
    own_columns: torch.Tensor   # [W]
    weight: torch.Tensor
    is_own: torch.Tensor

    def around(self, grid: torch.Tensor) -> torch.Tensor:
        """``grid [h,w,...]`` at each pixel's four surrounding cells: ``[4,H,W,...]``."""
        top, bottom = grid.index_select(0, self.rows[0]), grid.index_select(0, self.rows[1])
        left, right = self.columns
        return torch.stack([top.index_select(1, left), top.index_select(1, right),
                            bottom.index_select(1, left), bottom.index_select(1, right)])

    def own(self, grid: torch.Tensor) -> torch.Tensor:
        """``grid [h,w,...]`` at each pixel's own cell: ``[H,W,...]``."""
        return grid.index_select(0, self.own_rows).index_select(1, self.own_columns)


@functools.lru_cache(maxsize=8)
def cell_layout(height: int, width: int, h: int, w: int, device: torch.device) -> CellLayout:
    """The ``CellLayout`` of an ``height x width`` image on an ``h x w`` grid (fixed per size, so kept)."""
    def axis(pixels: int, cells: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = (torch.arange(pixels, dtype=torch.float64, device=device) + 0.5) * cells / pixels - 0.5
        low = torch.floor(position).clamp(0, cells - 1)
        fraction = (position - low).clamp(0.0, 1.0)
        return torch.stack([low.long(), (low + 1).clamp(max=cells - 1).long()]), fraction

    rows, fy = axis(height, h)
    columns, fx = axis(width, w)
    fy = fy[:, None]
    weight = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]).float()
    own_rows = torch.arange(height, device=device) // (height // h)
    own_columns = torch.arange(width, device=device) // (width // w)
    is_own = torch.stack([(rows[i][:, None] == own_rows[:, None]) & (columns[j][None, :] == own_columns[None, :])
                          for i in (0, 1) for j in (0, 1)])
    return CellLayout(rows, columns, own_rows, own_columns, weight, is_own)


def project(camera: torch.Tensor, K: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(u, v)`` of camera-frame points ``[N,3]`` seen at depths ``z [N]`` through ``K`` (of the
    points' dtype; its entries enter as numbers, the same values without an indexing op each)."""
    (fx, skew, cx), (_, fy, cy) = K[0].tolist(), K[1].tolist()
    return (fx * camera[:, 0] + skew * camera[:, 1]) / z + cx, fy * camera[:, 1] / z + cy


def to_world(points_camera: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    return points_camera @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]


#: Metres by which ``in_view_frustum`` reaches behind the near plane, more than any rounding difference between
#: its depths and the z-buffer's.
_NEAR_SLACK = 1e-3


def in_view_frustum(points_world: torch.Tensor, eye: torch.Tensor, rotation: torch.Tensor, K: torch.Tensor,
                    hw: tuple[int, int], margin: float) -> torch.Tensor:
    """Which points ``[N,3]`` lie in front of the near plane and project within the ``hw`` grid widened by
    ``margin`` pixels (``K`` for that grid; ``eye``, ``rotation``: the camera's position and optical-frame
    rotation in the points' frame and dtype). The frustum is five half-spaces, so all points are tested with one
    ``[5,3] @ [3,N]`` product (transforming every point with the skinny ``[N,3] @ [3,3]`` and projecting it is ~6x
    slower). A conservative test: points near a face by rounding are kept, for a z-buffer's exact tests."""
    h, w = hw
    low, high_u, high_v = -margin - 0.5, w + margin - 0.5, h + margin - 0.5
    (fx, skew, cx), (_, fy, cy) = K[0].tolist(), K[1].tolist()
    # Each row n: a camera-frame point c is inside when n . c > 0 (u > low is fx c_x + skew c_y > (low - cx) c_z).
    sides = torch.tensor([[fx, skew, cx - low], [-fx, -skew, high_u - cx], [0.0, fy, cy - low],
                          [0.0, -fy, high_v - cy], [0.0, 0.0, 1.0]], dtype=rotation.dtype, device=points_world.device)
    normals = sides @ rotation.T                                                # the same planes in the world
    offsets = normals @ eye
    offsets[4] += NEAR_PLANE - _NEAR_SLACK
    return torch.addmm(-offsets[:, None], normals, points_world.T).amin(0) > 0  # amin: ~7x faster than all(0)


#: Relative slack for rounding in ``hidden_far_behind``: its camera coordinates may differ from the
#: z-buffer's own in the last bits, so it decides nothing that so small a difference could change.
_ROUNDING_SLACK = 1e-4


def hidden_far_behind(camera: torch.Tensor, K: torch.Tensor, hw: tuple[int, int],
                      splat_radius: torch.Tensor | None, competing: torch.Tensor) -> torch.Tensor:
    """Which points ``zbuffer`` with normals cannot show, so that a caller may leave them out unchanged.

    ``camera [N,3]`` camera-frame points (as ``zbuffer`` would compute them, up to rounding),
    ``splat_radius [N]`` as ``zbuffer`` takes it, ``competing [N]`` bool: the points it will be given (the
    others may be hidden too, but hide nothing). A point's ordering depth at any pixel is at least its own
    depth over ``PLANE_DEPTH_RANGE``, and at most that times its own depth at its own pixel, where it always
    competes (and covers the pixel, so no gap fill there depends on another point). So a point more than
    ``PLANE_DEPTH_RANGE ** 2 * (1 + SURFACE_TOLERANCE)`` times deeper than, at every pixel its splat reaches,
    some point whose own pixel that is can never be on the nearest surface there. Seen from inside a big
    memory most tokens are such (each latent pixel of a 100k-token room holds dozens), and the z-buffer's
    work is per candidate. Points whose pixel a rounding difference could change are never left out, nor
    used to leave others out.
    """
    h, w = hw
    z = camera[:, 2]
    u, v = project(camera, K, z.clamp_min(NEAR_PLANE))
    ui, vi = torch.round(u), torch.round(v)
    clear = ((z > NEAR_PLANE * (1 + _ROUNDING_SLACK)) & ((u - ui).abs() < 0.5 - _ROUNDING_SLACK)
             & ((v - vi).abs() < 0.5 - _ROUNDING_SLACK) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h))
    pixel = torch.where(clear, vi * w + ui, torch.zeros_like(ui)).long()
    # Nearest depths per pixel; points that cannot hide others go to a discarded slot past the last pixel.
    nearest = torch.full((h * w + 1,), float("inf"), dtype=z.dtype, device=z.device)
    nearest.scatter_reduce_(0, torch.where(clear & competing, pixel, h * w), z, "amin")
    nearest = nearest[:-1]
    # The farthest of those nearest depths over each splat's square (pixels off the grid hold no candidate).
    radius = torch.zeros_like(pixel) if splat_radius is None else splat_radius
    grid = nearest.view(1, 1, h, w)
    reach = torch.stack([nearest] + [F.max_pool2d(grid, 2 * r + 1, stride=1, padding=r).view(-1)
                                     for r in range(1, int(radius.max()) + 1 if radius.numel() else 1)])
    limit = PLANE_DEPTH_RANGE ** 2 * (1 + SURFACE_TOLERANCE) * (1 + _ROUNDING_SLACK)
    return clear & (z > reach[radius, pixel] * limit)


def zbuffer(points_world: torch.Tensor, cam_to_world: torch.Tensor, K: torch.Tensor, hw: tuple[int, int],
            splat_radius: torch.Tensor | None = None, normals_world: torch.Tensor | None = None,
            handicap: torch.Tensor | None = None,
            footprint: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest point per pixel of an ``hw`` image.

    Returns ``winner [h*w]`` (index of the point shown at each pixel, -1 if none), ``depth [h*w]``
    (its z-depth, NaN if none) and ``hit [N]`` (whether each point won at least one pixel).
    ``splat_radius [N]`` (ints, optional) widens each point to a square footprint of that radius.
    ``footprint [N]`` (optional, pixels) is the side of each point's true square footprint: a splat
    reaching a pixel whose centre that square does not cover (its own pixel is always covered) only
    fills a gap, so it competes there only where no point covers the pixel. Competing everywhere, a
    nearer point's splat hid the surface that was really there (a pillar's edge over the wall behind
    it) and showed a neighbouring place's content; dropped altogether, gaps opened on every surface
    seen closer than it was written, which long drives filled with near facets.

    Each candidate gets one int64 key, ``quantised depth << 24 | point index``; a per-pixel
    ``scatter_reduce(amin)`` of the keys is exact and order-independent, so the nearest candidate wins
    (ties: the lower point index) on any device, in one linear pass.

    ``normals_world [N,3]`` (optional) makes each point a small plane: candidates are compared by
    their plane's depth on the pixel's centre ray, and among those within ``SURFACE_TOLERANCE`` of
    the nearest (one surface) the one projecting nearest the pixel centre wins. Plain nearest-point
    ordering would pick, on a slanted surface such as the floor, whichever sample lies nearer the
    camera, showing content (and depth) from the wrong side of the pixel. ``handicap [N]`` (optional,
    with normals; pixels) is added to each point's distance from the centre in that contest.
    """
    h, w = hw
    count = points_world.shape[0]
    device = points_world.device
    winner = torch.full((h * w,), -1, dtype=torch.long, device=device)
    depth_out = torch.full((h * w,), float("nan"), dtype=torch.float64, device=device)
    hit = torch.zeros(count, dtype=torch.bool, device=device)
    if count == 0:
        return winner, depth_out, hit
    if count >= 1 << _INDEX_BITS:
        raise ValueError(f"at most {(1 << _INDEX_BITS) - 1} points can be projected at once, got {count}")
    rotation = cam_to_world[:3, :3].to(points_world.dtype)
    translation = cam_to_world[:3, 3].to(points_world.dtype)
    camera = (points_world - translation) @ rotation
    z = camera[:, 2]
    radius = splat_radius if splat_radius is not None else torch.zeros(count, dtype=torch.long, device=device)
    max_radius = int(radius.max())
    # Cull on the cheap first: behind the camera, NaN (culled by the caller) or outside the grid. Candidates are
    # gathered by index (``index_select``) and ones that cannot count are sent to a discarded last pixel
    # (``trash``) rather than dropped: each boolean-mask gather costs a pass of its own.
    u, v = project(camera, K.to(points_world.dtype), z)
    u_round, v_round = torch.round(u), torch.round(v)
    inside = ((z > NEAR_PLANE) & (u_round >= -max_radius) & (u_round < w + max_radius) & (v_round >= -max_radius)
              & (v_round < h + max_radius))
    index = torch.nonzero(inside).squeeze(1)
    if index.numel() == 0:
        return winner, depth_out, hit
    ui, vi = u_round.index_select(0, index).long(), v_round.index_select(0, index).long()
    z, radius, u_exact, v_exact = (x.index_select(0, index) for x in (z, radius, u, v))
    handicap = None if handicap is None else handicap.index_select(0, index)
    half_side = None if footprint is None else (footprint.index_select(0, index).to(points_world.dtype) / 2).clamp_min(0.5)
    if normals_world is not None:
        surface_normals = normals_world.index_select(0, index).to(points_world.dtype) @ rotation
        surface_points = camera.index_select(0, index)
        (ix, iskew, icx), (_, iy, icy) = torch.linalg.inv(K.double()).to(points_world.dtype)[:2].tolist()
    trash = h * w
    pixels, candidates, order_depth, centre_distance, gap_fill = [], [], [], [], []
    # Tokens without a footprint contribute one candidate; only splatted ones are expanded.
    for ring_radius in range(max_radius + 1):
        members = torch.nonzero(radius == ring_radius).squeeze(1)
        if members.numel() == 0:
            continue
        of = lambda x, rows=members: x.index_select(0, rows)[:, None]  # the ring members' values, one row each
        offsets = torch.arange(-ring_radius, ring_radius + 1, device=device)
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        dy, dx = dy.reshape(-1), dx.reshape(-1)
        ring = torch.maximum(dx.abs(), dy.abs())
        cu, cv = of(ui) + dx, of(vi) + dy
        valid = (cu >= 0) & (cu < w) & (cv >= 0) & (cv < h)
        pixels.append(torch.where(valid, cv * w + cu, trash).reshape(-1))
        candidates.append(of(index).expand_as(cu).reshape(-1))
        if half_side is not None:
            reach = of(half_side)
            gap_fill.append((((of(u_exact) - cu).abs() > reach) | ((of(v_exact) - cv).abs() > reach)).reshape(-1))
        depth = of(z)
        if normals_world is not None:
            # Depth of the point's plane on each candidate pixel's centre ray (z = 1 ray).
            cu_real, cv_real = cu.to(points_world.dtype), cv.to(points_world.dtype)
            ray_x = ix * cu_real + iskew * cv_real + icx
            ray_y = iy * cv_real + icy
            n = surface_normals.index_select(0, members)
            facing = n[:, 0:1] * ray_x + n[:, 1:2] * ray_y + n[:, 2:3]
            offset = (n * surface_points.index_select(0, members)).sum(1, keepdim=True)
            plane = torch.where(facing < -1e-3, offset / facing.clamp(max=-1e-3), depth)
            depth = torch.minimum(torch.maximum(plane, depth / PLANE_DEPTH_RANGE), depth * PLANE_DEPTH_RANGE)
            distance = torch.hypot(of(u_exact) - cu, of(v_exact) - cv)
            if handicap is not None:
                distance = distance + of(handicap).to(distance.dtype)
            centre_distance.append(distance.reshape(-1))
        order_depth.append((depth * (1.0 + SPLAT_DEPTH_PENALTY * ring)).reshape(-1))
    pixel, candidate, ordering = torch.cat(pixels), torch.cat(candidates), torch.cat(order_depth).double()
    if half_side is not None:
        gap = torch.cat(gap_fill)
        covered_by_footprint = torch.zeros(h * w + 1, dtype=torch.bool, device=device)
        covered_by_footprint[torch.where(gap, trash, pixel)] = True
        pixel = torch.where(gap & covered_by_footprint[pixel], trash, pixel)
    if normals_world is None:
        quantised = torch.round(ordering / DEPTH_QUANTUM).long().clamp(max=(1 << 38) - 1)
        key = (quantised << _INDEX_BITS) | candidate
    else:
        # Two passes: the nearest plane depth at each pixel, then, among the candidates within
        # SURFACE_TOLERANCE of it (one surface), the one projecting nearest the centre. A fixed depth
        # bucketing would split one surface at bucket borders and let the nearer sample win there.
        nearest = torch.full((h * w + 1,), float("inf"), dtype=torch.float64, device=device)
        nearest.scatter_reduce_(0, pixel, ordering, "amin")
        pixel = torch.where(ordering <= nearest[pixel] * (1.0 + SURFACE_TOLERANCE), pixel, trash)
        centre = torch.round(torch.cat(centre_distance) * 64).long().clamp(0, (1 << _CENTRE_BITS) - 1)
        key = (centre << _INDEX_BITS) | candidate
    best = torch.full((h * w + 1,), torch.iinfo(torch.long).max, dtype=torch.long, device=device)
    best.scatter_reduce_(0, pixel, key, "amin")
    best = best[:trash]
    covered = best != torch.iinfo(torch.long).max
    chosen_point = best[covered] & ((1 << _INDEX_BITS) - 1)
    winner[covered] = chosen_point
    # The reported depth is the winner's exact z (not the quantised, splat-handicapped ordering key).
    depth_lookup = torch.zeros(count, dtype=torch.float64, device=device)
    depth_lookup[index] = z.double()
    depth_out[covered] = depth_lookup[chosen_point]
    hit[chosen_point] = True
    return winner, depth_out, hit
