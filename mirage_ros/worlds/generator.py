"""Procedural indoor worlds as MuJoCo models, generated from an integer seed.

A world is a walled floor plan of 2-4 rooms joined by doorways, with furniture-like obstacles (boxes,
cylinders, shelves) of random size, colour and procedural texture, a ceiling (so every pixel has a
depth) and one of a few light setups. The same seed gives the byte-identical MJCF on any machine: all
randomness comes from ``numpy.random.default_rng(seed)`` and numbers are written with fixed precision.

The 2D footprint of walls and obstacles is kept as a list of shapes, from which trajectories plan in
free space and the contact sheet draws a top-down map. A saved world (MJCF) is loaded back by parsing
those shapes from the geoms named ``wall*`` and ``obstacle*`` (the boundary is the world size), so
nothing but the MJCF file is needed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WALL_HEIGHT = 2.5
#: Height (z, metres) of every generated world's floor plane: what a simulator tells the model as its floor.
FLOOR_HEIGHT = 0.0
WALL_THICKNESS = 0.1
DOOR_WIDTH = (1.1, 1.5)
LIGHT_SETUPS = ("bright", "warm", "dim", "contrast")


@dataclass(frozen=True)
class Footprint:
    """An obstacle's shape on the floor: a box (centre, half sizes, yaw) or a cylinder (centre, radius)."""

    kind: str                      # "box" | "cylinder"
    x: float
    y: float
    half_x: float                  # box half size along its own x, or cylinder radius
    half_y: float = 0.0
    yaw: float = 0.0

    def contains(self, px: np.ndarray, py: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points ``(px, py)`` lie within ``margin`` of the shape."""
        dx, dy = px - self.x, py - self.y
        if self.kind == "cylinder":
            return dx * dx + dy * dy <= (self.half_x + margin) ** 2
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        ox = np.maximum(np.abs(lx) - self.half_x, 0.0)
        oy = np.maximum(np.abs(ly) - self.half_y, 0.0)
        return ox * ox + oy * oy <= margin * margin


@dataclass
class World:
    """A generated (or loaded) world: its seed, MJCF text and floor-plan footprints."""

    seed: int
    mjcf: str
    size: tuple[float, float]                       # interior extent in x and y (m), from (0, 0)
    footprints: list[Footprint] = field(default_factory=list)

    def occupied(self, px: np.ndarray, py: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points are inside walls/obstacles (grown by ``margin``) or outside the world."""
        px, py = np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64)
        hit = (px < margin) | (py < margin) | (px > self.size[0] - margin) | (py > self.size[1] - margin)
        for footprint in self.footprints:
            hit |= footprint.contains(px, py, margin)
        return hit

    def occupancy_grid(self, resolution: float = 0.05, margin: float = 0.0) -> np.ndarray:
        """Boolean grid ``[ny, nx]``; cell ``(i, j)`` centres at ``((j + 0.5) r, (i + 0.5) r)``."""
        nx, ny = int(np.ceil(self.size[0] / resolution)), int(np.ceil(self.size[1] / resolution))
        xs = (np.arange(nx) + 0.5) * resolution
        ys = (np.arange(ny) + 0.5) * resolution
        gx, gy = np.meshgrid(xs, ys)
        return self.occupied(gx, gy, margin)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.mjcf)

    @classmethod
    def load(cls, path: str | Path) -> "World":
        """Load an MJCF written by ``save``; raises ``ValueError`` if it is missing or not a mirage world."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"world file not found: {path}")
        try:
            root = ET.fromstring(path.read_text())
        except (ET.ParseError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a valid MJCF file ({error})") from error
        return cls.from_mjcf_root(root, path.read_text(), str(path))

    @classmethod
    def from_mjcf_root(cls, root: ET.Element, mjcf: str, origin: str) -> "World":
        custom = {n.get("name"): n.get("data") for n in root.iter("text")}
        if root.tag != "mujoco" or "mirage_seed" not in custom or "mirage_size" not in custom:
            raise ValueError(f"{origin}: not a mirage_ros world (no mirage_seed/mirage_size metadata)")
        size = tuple(float(v) for v in custom["mirage_size"].split())
        footprints = []
        for geom in root.iter("geom"):
            name = geom.get("name", "")
            if not (name.startswith("wall") or name.startswith("obstacle")):
                continue
            x, y, _ = (float(v) for v in geom.get("pos").split())
            geom_size = [float(v) for v in geom.get("size").split()]
            yaw = float(geom.get("euler", "0 0 0").split()[2])
            if geom.get("type") == "cylinder":
                footprints.append(Footprint("cylinder", x, y, geom_size[0]))
            else:
                footprints.append(Footprint("box", x, y, geom_size[0], geom_size[1], yaw))
        return cls(int(custom["mirage_seed"]), mjcf, (size[0], size[1]), footprints)


def _fmt(*values: float) -> str:
    return " ".join(f"{v:.4f}" for v in values)


def _colour(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.95) -> tuple[float, float, float]:
    return tuple(float(v) for v in rng.uniform(lo, hi, 3))


class _Builder:
    """Collects MJCF assets and geoms while the layout is generated."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.assets: list[str] = []
        self.geoms: list[str] = []
        self.footprints: list[Footprint] = []
        self.materials = 0

    def material(self, repeat: tuple[float, float] = (1.0, 1.0)) -> str:
        """A new material with a random procedural texture."""
        rng, index = self.rng, self.materials
        self.materials += 1
        name = f"mat{index}"
        base, other = _colour(rng), _colour(rng)
        style = rng.choice(["checker", "flat_random", "flat_edge", "gradient", "plain"])
        size = int(rng.choice([32, 64]))
        if style == "checker":
            # Low-contrast tiles most of the time; occasionally a bold pattern.
            blend = rng.uniform(0.15, 0.6)
            other = tuple(b * (1 - blend) + o * blend for b, o in zip(base, other))
            texture = f'builtin="checker" rgb1="{_fmt(*base)}" rgb2="{_fmt(*other)}"'
        elif style == "flat_random":
            texture = (f'builtin="flat" rgb1="{_fmt(*base)}" mark="random" random="{rng.uniform(0.02, 0.2):.4f}" '
                       f'markrgb="{_fmt(*other)}"')
        elif style == "flat_edge":
            texture = f'builtin="flat" rgb1="{_fmt(*base)}" mark="edge" markrgb="{_fmt(*other)}"'
        elif style == "gradient":
            texture = f'builtin="gradient" rgb1="{_fmt(*base)}" rgb2="{_fmt(*other)}"'
        else:
            texture = f'builtin="flat" rgb1="{_fmt(*base)}" rgb2="{_fmt(*base)}"'
        self.assets.append(f'<texture name="tex{index}" type="2d" {texture} width="{size}" height="{size}"/>')
        self.assets.append(f'<material name="{name}" texture="tex{index}" texrepeat="{_fmt(*repeat)}" '
                           f'specular="{rng.uniform(0.0, 0.4):.4f}" shininess="{rng.uniform(0.0, 0.5):.4f}"/>')
        return name

    def box(self, name: str, x: float, y: float, z: float, hx: float, hy: float, hz: float, material: str,
            yaw: float = 0.0, footprint: bool = True) -> None:
        self.geoms.append(f'<geom name="{name}" type="box" pos="{_fmt(x, y, z)}" size="{_fmt(hx, hy, hz)}" '
                          f'euler="0 0 {yaw:.4f}" material="{material}"/>')
        if footprint:
            self.footprints.append(Footprint("box", round(x, 4), round(y, 4), round(hx, 4), round(hy, 4), round(yaw, 4)))

    def cylinder(self, name: str, x: float, y: float, radius: float, half_height: float, material: str) -> None:
        self.geoms.append(f'<geom name="{name}" type="cylinder" pos="{_fmt(x, y, half_height)}" '
                          f'size="{_fmt(radius, half_height)}" material="{material}"/>')
        self.footprints.append(Footprint("cylinder", round(x, 4), round(y, 4), round(radius, 4)))


def _partition_walls(builder: _Builder, size: tuple[float, float]) -> list[tuple[float, float]]:
    """Interior walls with one doorway each; returns the doorway centres (kept clear of furniture)."""
    rng = builder.rng
    width, depth = size
    t, h = WALL_THICKNESS / 2, WALL_HEIGHT / 2
    doors: list[tuple[float, float]] = []
    wall_material = builder.material((2.0, 1.0))
    split_x = float(rng.uniform(0.4, 0.6) * width)

    def wall_with_door(name: str, along_x: bool, fixed: float, start: float, end: float) -> None:
        door = float(rng.uniform(*DOOR_WIDTH))
        centre = float(rng.uniform(start + door / 2 + 0.3, end - door / 2 - 0.3))
        for part, (a, b) in enumerate(((start, centre - door / 2), (centre + door / 2, end))):
            mid, half = (a + b) / 2, (b - a) / 2
            if along_x:
                builder.box(f"{name}_{part}", mid, fixed, h, half, t, h, wall_material)
            else:
                builder.box(f"{name}_{part}", fixed, mid, h, t, half, h, wall_material)
        doors.append((centre, fixed) if along_x else (fixed, centre))

    wall_with_door("wall_split", False, split_x, 0.0, depth)
    rooms = int(rng.integers(2, 5))
    if rooms >= 3:
        wall_with_door("wall_left", True, float(rng.uniform(0.35, 0.65) * depth), 0.0, split_x)
    if rooms >= 4:
        wall_with_door("wall_right", True, float(rng.uniform(0.35, 0.65) * depth), split_x, width)
    return doors


def _furniture(builder: _Builder, world_size: tuple[float, float], doors: list[tuple[float, float]]) -> None:
    rng = builder.rng
    count = int(rng.integers(5, 12))
    placed = 0
    for _attempt in range(200):
        if placed == count:
            break
        kind = rng.choice(["box", "box", "cylinder", "shelf"])
        x, y = (float(v) for v in rng.uniform((0.5, 0.5), (world_size[0] - 0.5, world_size[1] - 0.5)))
        if kind == "cylinder":
            radius = float(rng.uniform(0.12, 0.4))
            candidate = Footprint("cylinder", x, y, radius)
            reach = radius
        else:
            if kind == "shelf":
                hx, hy, hz = float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.15, 0.25)), float(rng.uniform(0.7, 1.0))
            else:
                hx, hy, hz = (float(v) for v in rng.uniform((0.2, 0.2, 0.2), (0.7, 0.5, 0.5)))
            yaw = float(rng.choice([0.0, 0.0, np.pi / 2, rng.uniform(0, np.pi)]))
            candidate = Footprint("box", x, y, hx, hy, yaw)
            reach = float(np.hypot(hx, hy))
        # Keep doorways passable and leave corridors between obstacles.
        if any(np.hypot(x - dx, y - dy) < reach + 1.0 for dx, dy in doors):
            continue
        if any(np.hypot(x - f.x, y - f.y) < reach + max(f.half_x, f.half_y) + 0.8 for f in builder.footprints
               if not f.half_y > 1.0 and not f.half_x > 1.0):
            continue
        if x - reach < 0.3 or y - reach < 0.3 or x + reach > world_size[0] - 0.3 or y + reach > world_size[1] - 0.3:
            continue
        material = builder.material()
        name = f"obstacle{placed}"
        if kind == "cylinder":
            builder.cylinder(name, x, y, candidate.half_x, float(rng.uniform(0.3, 1.1)), material)
        elif kind == "shelf":
            builder.box(name, x, y, hz, hx, hy, hz, material, yaw)
            plank = builder.material()
            for level in range(1, int(rng.integers(2, 4)) + 1):
                z = 2 * hz * level / 4
                builder.box(f"plank{level}_{name}", x, y, z, hx * 1.02, hy * 1.1, 0.02, plank, yaw, footprint=False)
        else:
            builder.box(name, x, y, hz, hx, hy, hz, material, yaw)
        placed += 1


def _lights(rng: np.random.Generator, size: tuple[float, float]) -> tuple[str, str]:
    """Headlight (ambient fill) and scene lights for one of ``LIGHT_SETUPS``."""
    setup = LIGHT_SETUPS[int(rng.integers(len(LIGHT_SETUPS)))]
    tint = {"bright": (1.0, 1.0, 1.0), "warm": (1.0, 0.85, 0.65), "dim": (0.7, 0.7, 0.8), "contrast": (1.0, 1.0, 0.95)}[setup]
    ambient = {"bright": 0.55, "warm": 0.45, "dim": 0.3, "contrast": 0.25}[setup]
    diffuse = {"bright": 0.6, "warm": 0.55, "dim": 0.4, "contrast": 0.9}[setup]
    headlight = (f'<headlight ambient="{_fmt(*(ambient * c for c in tint))}" diffuse="{_fmt(0.3, 0.3, 0.3)}" '
                 f'specular="0 0 0"/>')
    lights = []
    for index in range(int(rng.integers(1, 4))):
        x, y = rng.uniform((0.5, 0.5), (size[0] - 0.5, size[1] - 0.5))
        lights.append(f'<light name="light{index}" pos="{_fmt(x, y, WALL_HEIGHT - 0.1)}" dir="0 0 -1" '
                      f'directional="false" castshadow="false" attenuation="1 0.02 0" '
                      f'diffuse="{_fmt(*(diffuse * c for c in tint))}" specular="0.1 0.1 0.1"/>')
    return headlight, "\n    ".join(lights)


def generate_world(seed: int) -> World:
    """The world of ``seed`` (any non-negative integer)."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    size = (round(float(rng.uniform(6.0, 10.0)), 2), round(float(rng.uniform(6.0, 10.0)), 2))
    builder = _Builder(rng)
    t, h = WALL_THICKNESS / 2, WALL_HEIGHT / 2
    floor = builder.material((size[0] / 2, size[1] / 2))
    ceiling = builder.material((size[0] / 2, size[1] / 2))
    outer = builder.material((3.0, 1.0))
    builder.geoms.append(f'<geom name="floor" type="plane" pos="{_fmt(size[0] / 2, size[1] / 2, FLOOR_HEIGHT)}" '
                         f'size="{_fmt(size[0] / 2, size[1] / 2, 0.1)}" material="{floor}"/>')
    builder.geoms.append(f'<geom name="ceiling" type="box" pos="{_fmt(size[0] / 2, size[1] / 2, WALL_HEIGHT + t)}" '
                         f'size="{_fmt(size[0] / 2 + t, size[1] / 2 + t, t)}" material="{ceiling}"/>')
    builder.box("boundary_south", size[0] / 2, -t, h, size[0] / 2 + 2 * t, t, h, outer, footprint=False)
    builder.box("boundary_north", size[0] / 2, size[1] + t, h, size[0] / 2 + 2 * t, t, h, outer, footprint=False)
    builder.box("boundary_west", -t, size[1] / 2, h, t, size[1] / 2, h, outer, footprint=False)
    builder.box("boundary_east", size[0] + t, size[1] / 2, h, t, size[1] / 2, h, outer, footprint=False)
    doors = _partition_walls(builder, size)
    _furniture(builder, size, doors)
    headlight, lights = _lights(rng, size)
    assets = "\n    ".join(builder.assets)
    geoms = "\n    ".join(builder.geoms)
    mjcf = f"""<mujoco model="mirage_world_{seed}">
  <custom>
    <text name="mirage_seed" data="{seed}"/>
    <text name="mirage_size" data="{_fmt(*size)}"/>
  </custom>
  <statistic extent="1" center="{_fmt(size[0] / 2, size[1] / 2, 1.0)}"/>
  <visual>
    <global offwidth="1024" offheight="1024"/>
    <quality offsamples="0" shadowsize="0"/>
    <map znear="0.02" zfar="60"/>
    {headlight}
  </visual>
  <asset>
    {assets}
  </asset>
  <worldbody>
    {lights}
    <camera name="eye" mode="fixed" pos="0 0 1" quat="1 0 0 0" fovy="60"/>
    {geoms}
  </worldbody>
</mujoco>
"""
    return World(int(seed), mjcf, size, builder.footprints)
