"""``GroundTexture``: the floor's colours as shown, kept top-down on the floor plane.

Why: most of what a robot sees of a place it has passed is floor, and a latent token of floor seen from
afar holds a long strip of it squashed along the view (a floor point at distance x images at f·h/x, so
coming closer stretches the strip by the distance ratio across the view and by its square along it). One
token cannot be redrawn for that stretch: on the replay scenario the latent memory's floor trails the
explicit point cloud's by 2.4 dB (model card). The floor is a plane the simulator knows (``floor_height``),
so its colours need no 3D points and no tokens: a 2D map of the floor, written from every observation's floor
pixels, painted back exactly where a new view's depth lies on the floor. Walls, shelves and boxes stay in
the latent memory, where they come back as well as explicit points do.

Cells are kept at several sizes (``cell_size`` times 1, 2, 4, ...: a mip pyramid, sparse, in tiles of
``TILE`` x ``TILE`` cells sorted by key): a pixel writes each level whose cells are at least about its footprint
on the floor, and a view reads, per pixel, the finest level at least its own footprint that holds the place, else
the next coarser one (floor seen only from afar comes back at the resolution it was seen at, not as holes),
interpolated bilinearly between that level's cells, from dense windows of the levels around the view
(``Clipmap``). Only observations are written (running mean, weight capped at ``max_weight`` so lighting that
changes still shows): the model's own frames are not. Written frame by frame, imagined floor was locked in each
frame's shade, and a turn through unseen space left stripes of them on the floor (model card); the tokens keep
imagined floor as before, soft but of a piece. Bounded: past ``capacity`` cells, the least recently written
tiles are dropped (down to nine tenths of it).
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
#: Cells along a side of the square tiles the cells are kept in: a tile's key and write time are shared by its
#: 16 cells, which hold 4 bytes each (colour, and a state byte: the fused observation weight in its low seven bits,
#: whether the cell was mostly shown in the top one). The floor a robot sees comes in patches, so most of a tile
#: is used (five sixths in the memory benchmark): about 5.7 bytes a cell in all, against 17 kept cell by cell
#: (format 4).
TILE = 4
_WEIGHT_BITS, _SHOWN_BIT = 0x7F, 0x80
FIELDS = ("keys", "colors", "states", "last_written")
#: Read caches (``Clipmap``) kept, the most recently read first: one for each place being looked at, so several
#: robots' cameras apart do not cut one anew for each other every step.
CLIPMAPS_KEPT = 4
#: The fields of format 4 files (cell by cell), which ``load_state`` converts.
_CELL_FIELDS = ("keys", "colors", "weights", "areas", "last_written")


@dataclass(frozen=True)
class GroundTextureConfig:
    """``cell_size``: metres of the finest cells; ``levels``: pyramid levels, each twice the previous
    cell size; ``capacity``: cells kept at most over all levels; ``max_weight``: cap of a cell's fused
    observation weight (a new observation always has at least ``1 / (max_weight + 1)`` influence);
    ``clipmap_size``: cells across each level's window of the ``Clipmap`` a view reads from (128: 5 m of
    4 cm cells, 41 m of the 32 cm ones)."""

    cell_size: float = 0.04
    levels: int = 4
    capacity: int = 1_000_000
    max_weight: float = 8.0
    clipmap_size: int = 128

    def __post_init__(self) -> None:
        if not (0 < self.cell_size < 10 and 1 <= self.levels <= 16 and self.capacity >= 1
                and 1 <= self.max_weight <= _WEIGHT_BITS - 1 and 8 <= self.clipmap_size <= 4096):
            raise ValueError(f"invalid ground texture config {self}")


def on_plane(depth: torch.Tensor, plane_depth: torch.Tensor) -> torch.Tensor:
    """The pixels whose depth ``[H,W]`` lies on the floor plane (``plane_depth``, ``floor_geometry``): where a
    step put them (``projection.clamp_to_floor``), to rounding."""
    return torch.isfinite(plane_depth) & ((depth - plane_depth).abs() <= 1e-3 * plane_depth)


def pack_keys(cells: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
    """One int64 key per cell (or tile) ``[..., 2]`` (integer coordinates) of a ``level``."""
    cells = (cells + _OFFSET).clamp(0, (1 << _BITS) - 1)  # beyond +-5 000 km everything shares the border cells
    return (level << (2 * _BITS)) | (cells[..., 0] << _BITS) | cells[..., 1]


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The levels ``[N]`` and integer coordinates ``[N,2]`` of ``pack_keys``'s keys."""
    mask = (1 << _BITS) - 1
    return keys >> (2 * _BITS), torch.stack([(keys >> _BITS) & mask, keys & mask], dim=1) - _OFFSET


def tiles_of(levels: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tiles holding the cells of ``levels [N]`` at ``cells [N,2]`` (``unpack_keys``): their sorted unique tile
    keys, each cell's index among them and its place within its tile (row-major, ``TILE`` x ``TILE``)."""
    tiles, tile = torch.unique(pack_keys(torch.div(cells, TILE, rounding_mode="floor"), levels), sorted=True,
                               return_inverse=True)
    return tiles, tile, (cells[:, 1] % TILE) * TILE + cells[:, 0] % TILE


def interior(pixels: torch.Tensor) -> torch.Tensor:
    """The ``pixels [H,W]`` whose eight neighbours (those in the image) are in the set too: what a frame shows
    of the floor is written without its border, where a pixel mixes the floor with the foot of a wall or box
    (their colour would otherwise ring every wall's base when the floor is painted from elsewhere)."""
    inside = F.avg_pool2d(pixels[None, None].float(), 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    return inside > 1 - 1e-3


def opened(pixels: torch.Tensor) -> torch.Tensor:
    """The ``pixels [H,W]`` without their strands and specks under 3 pixels across (a morphological opening: the
    ``interior``, grown back by a pixel within the set). Seen from another pose, the edge of the far floor a view
    showed frays into thin rays of known pixels among unknown ones: painted, they streak the floor (``make run``
    with ``start_views: 1``); left to the model, ``seam_correction`` shades them into the painted floor."""
    # Grown by an average over 3x3 (> 0), not max_pool2d: five times the time on a CPU.
    grown = F.avg_pool2d(interior(pixels)[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    return pixels & grown


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
        self.keys = torch.zeros(0, dtype=torch.int64, device=self.device)                # tiles, sorted
        self.colors = torch.zeros((0, TILE * TILE, 3), dtype=torch.uint8, device=self.device)
        self.states = torch.zeros((0, TILE * TILE), dtype=torch.uint8, device=self.device)  # 0: an empty cell
        self.last_written = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.write_count = 0
        self._clipmaps: list[Clipmap] = []  # read caches, the most recently read first; cut on reads

    def __len__(self) -> int:
        """Cells held."""
        return int((self.states > 0).sum())

    @property
    def nbytes(self) -> int:
        """Bytes the cells' tiles hold."""
        return sum(getattr(self, name).element_size() * getattr(self, name).numel() for name in FIELDS)

    @property
    def clipmap(self) -> Clipmap | None:
        """The read cache of the last read (``None`` before the first read, or after tiles were dropped): rebuilt
        from the cells on demand, not part of what the texture keeps or saves."""
        return self._clipmaps[0] if self._clipmaps else None

    @property
    def cache_nbytes(self) -> int:
        """Bytes of the read caches held now (up to ``CLIPMAPS_KEPT`` clipmaps)."""
        return sum(t.element_size() * t.numel() for clipmap in self._clipmaps for t in (clipmap.flags, clipmap.texels))

    # ------------------------------------------------------------------ keys
    def _cell_size(self, level: int | torch.Tensor) -> float | torch.Tensor:
        """Metres of a ``level``'s cells (an int, or a tensor of levels)."""
        return self.config.cell_size * 2.0 ** level

    def _keys(self, xy: torch.Tensor, level: int) -> torch.Tensor:
        """The keys of the cells of ``level`` holding the floor points ``xy [..., 2]``."""
        return pack_keys(torch.floor(xy / self._cell_size(level)).long(), level)

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
        colors, known = self.render(floor.xy, floor.footprint, on_floor)
        known = opened(known)
        drawn = on_floor & ~known
        if bool(known.any()) and bool(drawn.any()):
            rgb = torch.where(drawn, (rgb + seam_correction(colors - rgb, known)).clamp(0, 1), rgb)
        return torch.where(known, colors.to(rgb.dtype), rgb)

    def _merge(self, keys: torch.Tensor, colors: torch.Tensor, areas: torch.Tensor) -> None:
        """Fold a write's cells (sorted unique cell ``keys``, ``colors`` in [0, 1], shown ``areas``) into the texture."""
        self.write_count += 1
        levels, cells = unpack_keys(keys)
        tiles, inverse, cell = tiles_of(levels, cells)
        self._add_tiles(tiles)
        row = torch.searchsorted(self.keys, tiles)[inverse]
        state = self.states[row, cell]
        prior = (state & _WEIGHT_BITS).float().clamp_max(self.config.max_weight)  # 0 for a cell not held yet
        fused = (self.colors[row, cell].float() * prior[:, None] + (colors * 255).round()) / (prior + 1)[:, None]
        shown = ((areas * 255).round() >= MIN_SHOWN_AREA * 255) | (state >= _SHOWN_BIT)
        fused = fused.round().to(torch.uint8)
        self.colors[row, cell] = fused
        self.states[row, cell] = (prior + 1).to(torch.uint8) | (shown.to(torch.uint8) * _SHOWN_BIT)
        self.last_written[row] = self.write_count
        for clipmap in self._clipmaps:
            clipmap.paste(levels, cells, fused, shown)
        if len(self) > self.config.capacity:  # drop the least recently written (a tenth more: not every write)
            self._clipmaps = []
            recent = torch.argsort(self.last_written, descending=True, stable=True)
            held = (self.states[recent] > 0).sum(1).cumsum(0)
            keep = torch.sort(recent[held <= int(0.9 * self.config.capacity)]).values  # keys stay sorted
            self._set_state({name: getattr(self, name)[keep] for name in FIELDS})

    def _add_tiles(self, tiles: torch.Tensor) -> None:
        """Add empty tiles for those of the sorted unique ``tiles`` keys not held yet. Both key lists are sorted
        and disjoint: each entry's place in the merged list is its index plus the number of the other list's keys
        before it (no sort of the whole texture per write)."""
        count = len(self.keys)
        index = torch.searchsorted(self.keys, tiles).clamp_max(max(count - 1, 0))
        new = tiles[self.keys[index] != tiles] if count else tiles
        if not new.numel():
            return
        added = {"keys": new, "colors": torch.zeros((len(new), TILE * TILE, 3), dtype=torch.uint8, device=self.device),
                 "states": torch.zeros((len(new), TILE * TILE), dtype=torch.uint8, device=self.device),
                 "last_written": torch.zeros(len(new), dtype=torch.int32, device=self.device)}
        old_places = torch.arange(count, device=self.device) + torch.searchsorted(new, self.keys)
        new_places = torch.arange(len(new), device=self.device) + torch.searchsorted(self.keys, new)
        merged = {}
        for name in FIELDS:
            current = getattr(self, name)
            merged[name] = torch.empty((count + len(new), *current.shape[1:]), dtype=current.dtype, device=self.device)
            merged[name][old_places] = current
            merged[name][new_places] = added[name]
        self._set_state(merged)

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        for name in FIELDS:
            setattr(self, name, state[name])

    # ------------------------------------------------------------------ read
    @torch.inference_mode()
    def render(self, xy: torch.Tensor, footprint: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colours ``[3,H,W]`` (zeros where unknown) and ``known [H,W]`` of the floor points ``xy [H,W,2]``
        at the pixels ``where [H,W]``: per pixel, the finest level at least its ``footprint`` that holds
        the place, else the next coarser one whose cell was mostly shown (``MIN_SHOWN_AREA``), interpolated
        bilinearly between that level's cells around the point (the known ones), so floor seen closer than
        it was shown comes back smooth, not as squares of one colour. Read from the ``Clipmap`` around the
        view's nearest floor point: a handful of whole-image operations, whatever the number of cells."""
        height, width = where.shape
        wanted = where & torch.isfinite(footprint)
        if not self.keys.numel() or not bool(wanted.any()):
            return torch.zeros((3, height, width), device=self.device), torch.zeros_like(wanted)
        clipmap = self._clipmap_for(xy, footprint, wanted)
        finest = self._finest_level(footprint)
        grid = clipmap.grid(xy)                                                               # [L,H,W,2]
        own = F.grid_sample(clipmap.flags, grid, mode="nearest", align_corners=True)          # [L,2,H,W]
        levels = torch.arange(self.config.levels, device=self.device)[:, None, None]
        usable = (own[:, 0] > 0) & ((levels == finest) | ((levels > finest) & (own[:, 1] > 0))) & wanted
        level = torch.zeros_like(finest)
        for candidate in reversed(range(1, self.config.levels)):  # the finest usable level wins (a loop: a
            level = torch.where(usable[candidate], candidate, level)  # reduction over levels is slower)
        level = torch.where(usable[0], 0, level)
        mixed = F.grid_sample(clipmap.texels, clipmap.stacked_grid(xy, level), align_corners=True)[0]
        known = usable.any(0)
        return torch.where(known, mixed[:3] / mixed[3].clamp_min(1e-6), 0.0), known

    def _clipmap_for(self, xy: torch.Tensor, footprint: torch.Tensor, wanted: torch.Tensor) -> "Clipmap":
        """The clipmap to read ``xy`` from: one whose centre the view's nearest floor point (smallest footprint) is
        within an eighth of its window of, else a new one cut around that point. The ``CLIPMAPS_KEPT`` most recently
        read are kept: cameras in different places (several robots) each keep theirs."""
        nearest = torch.where(wanted, footprint, torch.inf).reshape(-1).argmin()
        centre = xy.reshape(-1, 2)[nearest]
        index = next((index for index, clipmap in enumerate(self._clipmaps)
                      if float((centre - clipmap.centre).abs().max()) <= clipmap.recentre_distance), None)
        clipmap = Clipmap.cut(self, centre) if index is None else self._clipmaps.pop(index)
        self._clipmaps.insert(0, clipmap)
        del self._clipmaps[CLIPMAPS_KEPT:]
        return clipmap

    def cells(self, tiles: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cells held (in the ``tiles`` of these indices only, if given): levels ``[N]``, integer coordinates
        ``[N,2]``, colours ``[N,3]`` (uint8) and whether each was mostly shown ``[N]`` (``MIN_SHOWN_AREA``)."""
        keys, colors, states = self.keys, self.colors, self.states
        if tiles is not None:
            keys, colors, states = keys[tiles], colors[tiles], states[tiles]
        held = states > 0                                                                   # [M,T*T]
        levels, corners = unpack_keys(keys)
        within = torch.arange(TILE * TILE, device=self.device)
        offsets = torch.stack([within % TILE, torch.div(within, TILE, rounding_mode="floor")], dim=1)   # [T*T,2]
        coordinates = (corners[:, None, :] * TILE + offsets)[held]
        return levels[:, None].expand_as(held)[held], coordinates, colors[held], states[held] >= _SHOWN_BIT

    # ------------------------------------------------------------------ files
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and metadata to save (``load_state`` takes them back)."""
        tensors = {f"ground.{name}": getattr(self, name).detach().cpu().contiguous() for name in FIELDS}
        return tensors, {"ground_config": json.dumps(asdict(self.config)), "ground_write_count": str(self.write_count)}

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Replace the cells with saved ones (``state``; or cell by cell, as format 4 files hold them); malformed
        ones raise ``ValueError`` and change nothing."""
        try:
            saved = json.loads(metadata["ground_config"])
            write_count = int(metadata["ground_write_count"])
            by_cell = "ground.weights" in tensors
            state = {name: tensors[f"ground.{name}"] for name in (_CELL_FIELDS if by_cell else FIELDS)}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed ground texture ({type(error).__name__}: {error})") from error
        if saved.get("cell_size") != self.config.cell_size or saved.get("levels") != self.config.levels:
            raise ValueError(f"ground texture saved with cells of {saved.get('cell_size')} m in "
                             f"{saved.get('levels')} levels, this one uses {self.config.cell_size} m in "
                             f"{self.config.levels}")
        if by_cell:
            state = _tiles_from_cells(state)
        count = state["keys"].shape[0] if state["keys"].dim() == 1 else -1
        shapes_ok = (count >= 0 and state["colors"].shape == (count, TILE * TILE, 3)
                     and state["states"].shape == (count, TILE * TILE) and state["last_written"].shape == (count,))
        types_ok = all(state[name].dtype == getattr(self, name).dtype for name in FIELDS)
        if not (shapes_ok and types_ok):
            raise ValueError("ground texture tensors have inconsistent shapes or types")
        if count and not (bool((state["keys"][1:] > state["keys"][:-1]).all())
                          and bool(((state["states"] & _WEIGHT_BITS) <= self.config.max_weight + 1).all())
                          and bool(((state["states"] > 0) == ((state["states"] & _WEIGHT_BITS) > 0)).all())):
            raise ValueError("ground texture tiles are unsorted or their cells' states invalid")
        self._set_state({name: state[name].to(self.device) for name in FIELDS})
        self.write_count = write_count
        self._clipmaps = []


def _tiles_from_cells(cells: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A format 4 texture's cells (``_CELL_FIELDS``: sorted cell keys, colours, weights, shown areas, writes) in
    tiles (``FIELDS``); a tile's write is its latest cell's. Malformed ones raise ``ValueError``."""
    keys, weights = cells["keys"], cells["weights"]
    count = keys.shape[0] if keys.dim() == 1 and keys.dtype == torch.int64 else -1
    if not (count >= 0 and cells["colors"].shape == (count, 3) and cells["colors"].dtype == torch.uint8
            and all(cells[name].shape == (count,) for name in ("weights", "areas", "last_written"))
            and bool((weights > 0).all()) and bool((weights <= _WEIGHT_BITS).all())):
        raise ValueError("ground texture cells have inconsistent shapes, types or weights")
    tiles, row, cell = tiles_of(*unpack_keys(keys))
    colors = torch.zeros((len(tiles), TILE * TILE, 3), dtype=torch.uint8)
    states = torch.zeros((len(tiles), TILE * TILE), dtype=torch.uint8)
    colors[row, cell] = cells["colors"]
    shown = cells["areas"].long() >= MIN_SHOWN_AREA * 255
    states[row, cell] = weights.to(torch.uint8) | (shown.to(torch.uint8) * _SHOWN_BIT)
    last_written = torch.zeros(len(tiles), dtype=torch.int32).scatter_reduce_(
        0, row, cells["last_written"].to(torch.int32), "amax")
    return {"keys": tiles, "colors": colors, "states": states, "last_written": last_written}


class Clipmap:
    """Dense copies of every level's cells in a window of ``clipmap_size`` cells around one floor point, what
    ``GroundTexture.render`` reads: the windows of a mip pyramid centred on the viewer (a clipmap, as terrain
    renderers use). A view looks its pixels up in all levels at once with two ``grid_sample`` calls instead
    of searching the sorted cells pixel by pixel and level by level: release v13 searched, on 2x2-pixel blocks
    to afford it, and its paint took longer for a quarter of the lookups (1.9 against 1.2 ms here). A window
    spans ``clipmap_size`` cells of its level, so fine levels, read only near the camera, need little of it;
    floor beyond the coarsest level's window (20 m with the defaults) is not painted. Cut anew when the view
    moves on or tiles are dropped (``_clipmap_for``; about 1 ms); a write pastes the cells it changes. The cells
    themselves stay what the texture keeps and saves. A read cache, not memory: 1.5 MiB each with the defaults,
    whatever the texture holds (``CLIPMAPS_KEPT`` at most)."""

    def __init__(self, centre: torch.Tensor, cell_sizes: torch.Tensor, size: int) -> None:
        """Empty windows of ``size`` cells of each level (``cell_sizes [L]``) centred on the floor point ``centre``."""
        count, device = len(cell_sizes), cell_sizes.device
        self.centre, self.size = centre.clone(), size
        self.origin = torch.floor(centre / cell_sizes[:, None]).long() - size // 2       # [L,2]: each window's cell 0
        self.flags = torch.zeros((count, 2, size, size), device=device)  # a cell is held; it was mostly shown
        self.texels = torch.zeros((1, 4, count * (size + 1), size), device=device)  # colour times held, held;
        self.recentre_distance = size / 8 * float(cell_sizes[0])  # levels stacked, a zero row between them
        # grid_sample coordinates are affine in the floor point, per level: cell centres at the integers of the
        # level's window (align_corners=True: bilinear weights are those of the four cells whose centres surround
        # a point, the nearest centre is the cell holding it), [-1, 1] across the window, or, in the stack,
        # across all the levels' rows (level l's row 0 is row l * (W + 1)).
        origin = self.origin.float()
        cells = torch.stack([torch.zeros(count, device=device), torch.arange(count, device=device) * (size + 1.0)],
                            dim=1) - origin - 0.5                                        # [L,2] in cells, + p / s
        span = torch.tensor([size - 1.0, size - 1.0], device=device) / 2
        stacked_span = torch.tensor([size - 1.0, self.texels.shape[2] - 1.0], device=device) / 2
        self.scale = 1 / (cell_sizes[:, None].float() * span)
        self.shift = (-origin - 0.5) / span - 1
        self.stacked_scale = 1 / (cell_sizes[:, None].float() * stacked_span)
        self.stacked_shift = cells / stacked_span - 1

    @classmethod
    def cut(cls, texture: GroundTexture, centre: torch.Tensor) -> "Clipmap":
        """The windows of ``texture``'s levels centred on the floor point ``centre [2]``."""
        clipmap = cls(centre, texture._cell_size(torch.arange(texture.config.levels, device=texture.device)),
                      texture.config.clipmap_size)
        tile_levels, corners = unpack_keys(texture.keys)
        first = corners * TILE - clipmap.origin[tile_levels]             # each tile's first cell in its window
        overlapping = ((first > -TILE) & (first < clipmap.size)).all(1)
        clipmap.paste(*texture.cells(torch.nonzero(overlapping).squeeze(1)))
        return clipmap

    def paste(self, levels: torch.Tensor, cells: torch.Tensor, colors: torch.Tensor, shown: torch.Tensor) -> None:
        """Copy held cells (``GroundTexture.cells``: levels, coordinates, colours, mostly shown) into the windows
        they fall in; a write pastes the cells it changed, so the next read need not cut anew."""
        offset = cells - self.origin[levels]
        inside = ((offset >= 0) & (offset < self.size)).all(1)
        levels, x, y = levels[inside], offset[inside, 0], offset[inside, 1]
        self.flags[levels, 0, y, x] = 1.0
        self.flags[levels, 1, y, x] = shown[inside].float()
        rows, texels = levels * (self.size + 1) + y, self.texels[0]
        texels[:3, rows, x] = colors[inside].float().T / 255
        texels[3, rows, x] = 1.0

    def grid(self, xy: torch.Tensor) -> torch.Tensor:
        """``grid_sample`` coordinates ``[L,H,W,2]`` of the floor points ``xy [H,W,2]`` in each level's window."""
        return torch.addcmul(self.shift[:, None, None, :], xy[None], self.scale[:, None, None, :])

    def stacked_grid(self, xy: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``[1,H,W,2]``: the floor points ``xy [H,W,2]`` in their ``level [H,W]``'s slab of ``texels``."""
        return torch.addcmul(self.stacked_shift[level], xy, self.stacked_scale[level])[None]
