"""``GroundTexture``: the floor's colours as shown, kept top-down on the floor plane.

Why: most of what a robot sees of a place it has passed is floor, and a latent token of floor seen from
afar holds a long strip of it squashed along the view (a floor point at distance x images at f·h/x, so
coming closer stretches the strip by the distance ratio across the view and by its square along it). One
token cannot be redrawn for that stretch: on the replay scenario the latent memory's floor trails the
explicit point cloud's by 2.4 dB (model card). The floor is a plane the simulator knows (``floor_height``),
so its colours need no 3D points and no tokens: a 2D map of the floor, written from every observation's floor
pixels, painted back exactly where a new view's depth lies on the floor. Walls, shelves and boxes stay in
the latent memory, where they come back as well as explicit points do.

Cells are kept at several sizes (``cell_size`` times 1, 2, 4, ...: a mip pyramid, sparse): a pixel writes
each level whose cells are at least about its footprint on the floor, and a view reads, per pixel (on 2x2-pixel
blocks, upsampled), the finest level at least its own footprint that holds the place, else the next coarser one
(floor seen only from afar comes back at the resolution it was seen at, not as holes), interpolated bilinearly
between that level's cells. Only observations are written (running mean, weight capped at ``max_weight`` so
lighting that changes still shows): the model's own frames are not. Written frame by frame, imagined floor was
locked in each frame's shade, and a turn through unseen space left stripes of them on the floor (model card); the
tokens keep imagined floor as before, soft but of a piece. Bounded: past ``capacity`` cells, the least recently
written are dropped (down to nine tenths of it).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mirage_ros.memory.projection import FloorRays

#: Bits per cell coordinate in a key (+-2^27 cells: +-5 000 km at 4 cm); the level sits above them.
_BITS = 28
_OFFSET = 1 << (_BITS - 1)
#: Metres above the floor plane within which an observed pixel counts as floor (true depth: objects
#: standing on the floor start above it).
OBSERVED_FLOOR_MARGIN = 0.02
#: Share of a coarser cell's area that frames must have shown for it to stand in for a finer cell nobody
#: wrote: without it, the coarse cells that straddle the border of the shown floor would paint the unseen floor
#: beside it.
MIN_SHOWN_AREA = 0.9
#: Pixels (standard deviation) over which newly drawn floor takes on the painted floor's colours beside it
#: (``seam_correction``), and the share of known pixels in that neighbourhood from which it does so fully.
SEAM_SIGMA, SEAM_SUPPORT = 6.0, 0.25
FIELDS = ("keys", "colors", "weights", "areas", "last_written")


@dataclass(frozen=True)
class GroundTextureConfig:
    """``cell_size``: metres of the finest cells; ``levels``: pyramid levels, each twice the previous
    cell size; ``capacity``: cells kept at most over all levels; ``max_weight``: cap of a cell's fused
    observation weight (a new observation always has at least ``1 / (max_weight + 1)`` influence)."""

    cell_size: float = 0.04
    levels: int = 4
    capacity: int = 1_000_000
    max_weight: float = 8.0

    def __post_init__(self) -> None:
        if not (0 < self.cell_size < 10 and 1 <= self.levels <= 16 and self.capacity >= 1
                and 1 <= self.max_weight <= 254):
            raise ValueError(f"invalid ground texture config {self}")


def on_plane(depth: torch.Tensor, plane_depth: torch.Tensor) -> torch.Tensor:
    """The pixels whose depth ``[H,W]`` lies on the floor plane (``plane_depth``, ``floor_geometry``): where a
    step put them (``projection.clamp_to_floor``), to rounding."""
    return torch.isfinite(plane_depth) & ((depth - plane_depth).abs() <= 1e-3 * plane_depth)


def _pack(cells: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
    """One int64 key per cell ``[..., 2]`` (integer cell coordinates) of a ``level``."""
    cells = (cells + _OFFSET).clamp(0, (1 << _BITS) - 1)  # beyond +-5 000 km everything shares the border cells
    return (level << (2 * _BITS)) | (cells[..., 0] << _BITS) | cells[..., 1]


def interior(pixels: torch.Tensor) -> torch.Tensor:
    """The ``pixels [H,W]`` whose eight neighbours (those in the image) are in the set too: what a frame shows
    of the floor is written without its border, where a pixel mixes the floor with the foot of a wall or box
    (their colour would otherwise ring every wall's base when the floor is painted from elsewhere)."""
    inside = F.avg_pool2d(pixels[None, None].float(), 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    return inside > 1 - 1e-3


def seam_correction(difference: torch.Tensor, known: torch.Tensor, sigma: float = SEAM_SIGMA) -> torch.Tensor:
    """``[3,H,W]``: the ``difference`` between the texture and the decoded frame on the ``known`` pixels, carried
    smoothly (normalised blur of about ``sigma`` pixels, on a 4x coarser grid: it only carries a shade) to the pixels
    around them and fading where no known pixel is near. Added to floor the frame draws anew beside the
    painted floor, it continues the painted floor's colours there instead of meeting them at an edge (the
    decoder's floor is often a shade off the texture's); the new floor's own pattern stays."""
    height, width = known.shape
    stack = torch.cat([difference.float() * known, known[None].float()])[None]              # [1,4,H,W]
    stack = F.avg_pool2d(stack, 4, ceil_mode=True)
    # Two box filters of 2r+1 cells on the 4x coarser grid: about a Gaussian of sigma, cheaper than a convolution.
    radius = max(1, round(sigma / 4 * math.sqrt(3 / 2)))
    for _ in range(2):
        stack = F.avg_pool2d(F.pad(stack, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1)
    stack = F.interpolate(stack, size=(height, width), mode="bilinear", align_corners=False)[0]
    blurred, weight = stack[:3], stack[3]
    fade = (weight / SEAM_SUPPORT).clamp(0, 1)
    return blurred / weight.clamp_min(1e-6) * fade


class GroundTexture:
    """A sparse mip pyramid of floor colours on the floor plane; see the module docstring."""

    def __init__(self, config: GroundTextureConfig | None = None, device: str | torch.device = "cpu") -> None:
        self.config = config or GroundTextureConfig()
        self.device = torch.device(device)
        self.clear()

    def clear(self) -> None:
        """Forget every cell."""
        self.keys = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.colors = torch.zeros((0, 3), dtype=torch.uint8, device=self.device)
        self.weights = torch.zeros(0, dtype=torch.uint8, device=self.device)
        self.areas = torch.zeros(0, dtype=torch.uint8, device=self.device)
        self.last_written = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.write_count = 0

    def __len__(self) -> int:
        return int(self.keys.numel())

    @property
    def nbytes(self) -> int:
        """Bytes the cells hold."""
        return sum(getattr(self, name).element_size() * getattr(self, name).numel() for name in FIELDS)

    # ------------------------------------------------------------------ keys
    def _cell_size(self, level: int | torch.Tensor) -> float | torch.Tensor:
        """Metres of a ``level``'s cells (an int, or a tensor of levels)."""
        return self.config.cell_size * 2.0 ** level

    def _keys(self, xy: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        """The keys of the cells of ``level`` (an int, or levels broadcast against ``xy [..., 2]``) holding ``xy``."""
        size = self._cell_size(level)
        if isinstance(size, torch.Tensor):
            size = size[..., None]
        return _pack(torch.floor(xy / size).long(), level)

    def _finest_level(self, footprint: torch.Tensor) -> torch.Tensor:
        """Per pixel, the finest level whose cells are at least about the pixel's footprint (half of it:
        a cell then gathers a pixel or more, so a written level has no holes at the resolution it was seen)."""
        ratio = (footprint / self.config.cell_size).clamp_min(1e-6)
        return torch.ceil(torch.log2(ratio) - 1).clamp(0, self.config.levels - 1).long()

    # ------------------------------------------------------------------ write
    @torch.inference_mode()
    def write(self, rgb: torch.Tensor, pixels: torch.Tensor, floor: FloorRays) -> int:
        """Remember the colours ``rgb [3,H,W]`` (in [0,1]) of the floor ``pixels [H,W]`` (``floor``:
        ``projection.floor_geometry`` of the camera). Returns the cells written or updated."""
        pixels = pixels & torch.isfinite(floor.footprint)
        if not bool(pixels.any()):
            return 0
        colors = rgb.permute(1, 2, 0)[pixels].float()
        points, footprint = floor.xy[pixels], floor.footprint[pixels]
        finest = self._finest_level(footprint)
        keys, values, areas = [], [], []
        for level in range(self.config.levels):
            chosen = finest <= level
            if bool(chosen.any()):
                keys.append(self._keys(points[chosen], level))
                values.append(colors[chosen])
                areas.append((footprint[chosen] / self._cell_size(level)) ** 2)
        keys = torch.cat(keys)
        unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        sums = torch.zeros((unique.numel(), 4), device=self.device).index_add_(
            0, inverse, torch.cat([torch.cat(values), torch.ones_like(keys, dtype=torch.float32)[:, None]], dim=1))
        shown = torch.zeros(unique.numel(), device=self.device).index_add_(0, inverse, torch.cat(areas)).clamp_max(1)
        self._merge(unique, sums[:, :3] / sums[:, 3:], shown)
        return int(unique.numel())

    def observe(self, rgb: torch.Tensor, depth: torch.Tensor, floor: FloorRays) -> int:
        """Write an observation's floor: the ``interior`` of its pixels within ``OBSERVED_FLOOR_MARGIN`` of the
        plane by their true ``depth [H,W]`` (``floor``: ``projection.floor_geometry`` of its camera). Returns the
        cells written."""
        heights = floor.height + depth.float() * floor.down
        pixels = (torch.isfinite(depth) & (depth > 0) & (heights.abs() < OBSERVED_FLOOR_MARGIN)
                  & torch.isfinite(floor.plane_depth))
        return self.write(rgb, interior(pixels), floor)

    @torch.inference_mode()
    def paint(self, rgb: torch.Tensor, depth: torch.Tensor, floor: FloorRays) -> torch.Tensor:
        """A generated frame ``rgb [3,H,W]`` with its pixels on the floor plane (by ``depth``, as a step put them
        there: ``projection.clamp_to_floor``; ``floor``: ``projection.floor_geometry`` of its camera) showing the
        texture wherever it holds their place: the floor's colours as observed, exactly where they lie. The rest
        of the floor, drawn by the model, is shaded into the painted floor beside it (``seam_correction``)."""
        on_floor = on_plane(depth, floor.plane_depth)
        colors, known = self._render_half(floor, on_floor)
        drawn = on_floor & ~known
        if bool(known.any()) and bool(drawn.any()):
            rgb = torch.where(drawn, (rgb + seam_correction(colors - rgb, known)).clamp(0, 1), rgb)
        return torch.where(known, colors.to(rgb.dtype), rgb)

    def _merge(self, keys: torch.Tensor, colors: torch.Tensor, areas: torch.Tensor) -> None:
        """Fold a write's cells (sorted unique ``keys``, ``colors`` in [0, 1], shown ``areas``) into the texture."""
        self.write_count += 1
        colors, areas = (colors * 255).round(), (areas * 255).round()
        index = torch.searchsorted(self.keys, keys).clamp_max(max(len(self) - 1, 0))
        known = (self.keys[index] == keys) if len(self) else torch.zeros_like(keys, dtype=torch.bool)
        old = index[known]
        prior = self.weights[old].float().clamp_max(self.config.max_weight)
        fused = (self.colors[old].float() * prior[:, None] + colors[known]) / (prior + 1)[:, None]
        self.colors[old] = fused.round().to(torch.uint8)
        self.weights[old] = (prior + 1).to(torch.uint8)
        self.areas[old] = torch.maximum(self.areas[old], areas[known].to(torch.uint8))
        self.last_written[old] = self.write_count
        new = ~known
        if not bool(new.any()):
            return
        count = int(new.sum())
        added = {"keys": keys[new], "colors": colors[new].to(torch.uint8),
                 "weights": torch.ones(count, dtype=torch.uint8, device=self.device),
                 "areas": areas[new].to(torch.uint8),
                 "last_written": torch.full((count,), self.write_count, dtype=torch.int32, device=self.device)}
        # Both key lists are sorted and disjoint: each entry's place in the merged list is its index plus the
        # number of the other list's keys before it (no sort of the whole texture per write).
        total = len(self) + count
        old_places = torch.arange(len(self), device=self.device) + torch.searchsorted(added["keys"], self.keys)
        new_places = torch.arange(count, device=self.device) + torch.searchsorted(self.keys, added["keys"])
        for name in FIELDS:
            current = getattr(self, name)
            merged = torch.empty((total, *current.shape[1:]), dtype=current.dtype, device=self.device)
            merged[old_places] = current
            merged[new_places] = added[name]
            setattr(self, name, merged)
        if len(self) > self.config.capacity:  # drop the least recently written (a tenth more: not every write)
            recent = torch.argsort(self.last_written, descending=True, stable=True)[:int(0.9 * self.config.capacity)]
            keep = torch.sort(recent).values  # sorted indices keep the keys sorted
            for name in FIELDS:
                setattr(self, name, getattr(self, name)[keep])

    # ------------------------------------------------------------------ read
    @torch.inference_mode()
    def render(self, xy: torch.Tensor, footprint: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colours ``[3,H,W]`` (zeros where unknown) and ``known [H,W]`` of the floor points ``xy [H,W,2]``
        at the pixels ``where [H,W]``: per pixel, the finest level at least its ``footprint`` that holds
        the place, else the next coarser one whose cell was mostly shown (``MIN_SHOWN_AREA``), interpolated
        bilinearly between that level's cells around the point (the known ones), so floor seen closer than
        it was shown comes back smooth, not as squares of one colour."""
        height, width = where.shape
        colors = torch.zeros((height * width, 3), device=self.device)
        known = torch.zeros(height * width, dtype=torch.bool, device=self.device)
        wanted = (where & torch.isfinite(footprint)).reshape(-1)
        if len(self) and bool(wanted.any()):
            points = xy.reshape(-1, 2)[wanted]
            finest = self._finest_level(footprint.reshape(-1)[wanted])
            levels = torch.arange(self.config.levels, device=self.device)[:, None]            # [L,1]
            index, hit = self._find(self._keys(points, levels))                                # [L,n]
            hit &= (levels == finest) | ((levels > finest) & (self.areas[index] >= MIN_SHOWN_AREA * 255))
            level = torch.full_like(finest, -1)
            for candidate in reversed(range(self.config.levels)):                            # the finest hit wins
                level = torch.where(hit[candidate], candidate, level)
            found = level >= 0
            colors[wanted.nonzero().squeeze(1)[found]] = self._bilinear(points[found], level[found])
            known[wanted] = found
        return colors.reshape(height, width, 3).permute(2, 0, 1), known.reshape(height, width)

    def _render_half(self, floor: FloorRays, on_floor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``render`` on a grid of 2x2-pixel blocks (their floor points and footprints), upsampled bilinearly:
        the floor's colours change slowly, and a quarter of the lookups keeps the paint a few milliseconds
        cheaper a step. A pixel counts as known where every block it is interpolated from is."""
        height, width = on_floor.shape
        if height % 2 or width % 2:
            return self.render(floor.xy, floor.footprint, on_floor)
        xy = F.avg_pool2d(floor.xy.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
        footprint = F.avg_pool2d(floor.footprint[None, None], 2)[0, 0] * 2
        wanted = F.avg_pool2d(on_floor[None, None].float(), 2)[0, 0] > 0
        colors, known = self.render(xy, footprint, wanted)
        colors = F.interpolate(colors[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
        known = F.interpolate(known[None, None].float(), scale_factor=2, mode="bilinear", align_corners=False)[0, 0]
        return colors, known > 0.999

    def _find(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each key's row in the texture and whether it is there."""
        index = torch.searchsorted(self.keys, keys).clamp_max(len(self) - 1)
        return index, self.keys[index] == keys

    def _bilinear(self, points: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``[n,3]`` colours at ``points [n,2]``, each interpolated between the four cells of its ``level``
        whose centres surround it (those the texture holds; the point's own cell always is)."""
        grid = points / self._cell_size(level)[:, None] - 0.5       # in cells, from the centre of cell 0
        base = torch.floor(grid)
        fraction = grid - base
        corners = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=self.device)[:, None]     # [4,1,2]
        index, hit = self._find(_pack(base.long() + corners, level))                              # [4,n]
        weights = torch.where(corners.bool(), fraction, 1 - fraction).prod(-1) * hit                 # [4,n]
        total = (weights[..., None] * self.colors[index].float()).sum(0)
        return total / weights.sum(0).clamp_min(1e-6)[:, None] / 255

    # ------------------------------------------------------------------ files
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and metadata to save (``load_state`` takes them back)."""
        tensors = {f"ground.{name}": getattr(self, name).detach().cpu().contiguous() for name in FIELDS}
        return tensors, {"ground_config": json.dumps(asdict(self.config)), "ground_write_count": str(self.write_count)}

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Replace the cells with saved ones (``state``); malformed ones raise ``ValueError`` and change
        nothing."""
        try:
            saved = json.loads(metadata["ground_config"])
            write_count = int(metadata["ground_write_count"])
            state = {name: tensors[f"ground.{name}"] for name in FIELDS}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed ground texture ({type(error).__name__}: {error})") from error
        if saved.get("cell_size") != self.config.cell_size or saved.get("levels") != self.config.levels:
            raise ValueError(f"ground texture saved with cells of {saved.get('cell_size')} m in "
                             f"{saved.get('levels')} levels, this one uses {self.config.cell_size} m in "
                             f"{self.config.levels}")
        count = state["keys"].shape[0] if state["keys"].dim() == 1 else -1
        shapes_ok = (count >= 0 and state["colors"].shape == (count, 3)
                     and all(state[name].shape == (count,) for name in ("weights", "areas", "last_written")))
        types_ok = all(state[name].dtype == getattr(self, name).dtype for name in FIELDS)
        if not (shapes_ok and types_ok):
            raise ValueError("ground texture tensors have inconsistent shapes or types")
        if count and not (bool((state["keys"][1:] > state["keys"][:-1]).all())
                          and bool((state["weights"] > 0).all())):
            raise ValueError("ground texture cells are unsorted or unweighted")
        for name in FIELDS:
            value = state[name].to(self.device)
            setattr(self, name, value)
        self.write_count = write_count

