"""Ground-truth RGB-D renderer: what a camera at a given pose sees in a procedural world.

Headless on the CPU through MuJoCo's EGL backend (Mesa llvmpipe), OSMesa as a fallback. Depth is
metric z-depth along the optical axis (REP 118), read from the depth buffer without multisampling so it
is exact to the buffer's precision.
"""

from __future__ import annotations

import math
import os

if "MUJOCO_GL" not in os.environ:  # must be chosen before mujoco is imported
    os.environ["MUJOCO_GL"] = "egl"
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from mirage_ros.camera import validate_intrinsics  # noqa: E402
from mirage_ros.geometry import validate_transform  # noqa: E402
from mirage_ros.worlds.generator import World  # noqa: E402

#: MuJoCo cameras look down -z with y up; the optical frame looks down +z with y down.
_OPTICAL_TO_MUJOCO = np.diag([1.0, -1.0, -1.0])


class GroundTruthRenderer:
    """Renders ``rgb uint8 [H,W,3]`` and ``depth float32 [H,W]`` (m) of a world; reuse one per world."""

    def __init__(self, world: World, width: int = 128, height: int = 128) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        self.world = world
        self.width, self.height = int(width), int(height)
        self.model = mujoco.MjModel.from_xml_string(world.mjcf)
        self.data = mujoco.MjData(self.model)
        mujoco.mj_forward(self.model, self.data)
        self.camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "eye")
        self._gl = mujoco.GLContext(self.width, self.height)
        self._gl.make_current()
        self._context = mujoco.MjrContext(self.model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR  # reversed Z: best precision
        self._scene = mujoco.MjvScene(self.model, maxgeom=1000)
        self._options = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = self.camera_id
        self._viewport = mujoco.MjrRect(0, 0, self.width, self.height)
        extent = self.model.stat.extent
        # Reversed-Z depth buffer -> metric depth (float32 frustum constants as OpenGL uses them).
        near = np.float32(self.model.vis.map.znear * extent)
        far = np.float32(self.model.vis.map.zfar * extent)
        c = -(far + near) / (far - near)
        d = -(np.float32(2) * far * near) / (far - near)
        self._depth_c, self._depth_d = float(np.float32(-0.5) * c - np.float32(0.5)), float(np.float32(-0.5) * d)

    def _check_intrinsics(self, K: np.ndarray) -> float:
        """Vertical field of view (degrees) of ``K``; MuJoCo renders only square-pixel, centred cameras."""
        K = validate_intrinsics(K)
        cx, cy = (self.width - 1) / 2.0, (self.height - 1) / 2.0
        if abs(K[0, 2] - cx) > 1e-3 or abs(K[1, 2] - cy) > 1e-3:
            raise ValueError(f"K principal point ({K[0, 2]}, {K[1, 2]}) does not match a {self.width}x{self.height} "
                             f"image (expected ({cx}, {cy}))")
        if abs(K[0, 0] - K[1, 1]) > 1e-6 * K[0, 0] or K[0, 1] != 0:
            raise ValueError("K must have square pixels and no skew for this renderer")
        return math.degrees(2.0 * math.atan(self.height / 2.0 / K[1, 1]))

    def render(self, cam_to_world: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB and metric depth seen by a camera at ``cam_to_world`` (optical frame) with intrinsics ``K``."""
        fovy = self._check_intrinsics(K)
        pose = validate_transform(cam_to_world, "cam_to_world")
        self.model.cam_fovy[self.camera_id] = fovy
        self.data.cam_xpos[self.camera_id] = pose[:3, 3]
        self.data.cam_xmat[self.camera_id] = (pose[:3, :3] @ _OPTICAL_TO_MUJOCO).reshape(-1)
        self._gl.make_current()
        mujoco.mjv_updateScene(self.model, self.data, self._options, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._viewport, self._scene, self._context)
        rgb = np.empty((self.height, self.width, 3), dtype=np.uint8)
        buffer = np.empty((self.height, self.width), dtype=np.float32)
        mujoco.mjr_readPixels(rgb, buffer, self._viewport, self._context)
        # OpenGL rows run bottom-up.
        depth = (self._depth_d / (buffer.astype(np.float64) + self._depth_c)).astype(np.float32)
        depth[~np.isfinite(depth) | (depth <= 0) | (buffer <= 0)] = np.nan
        return np.ascontiguousarray(rgb[::-1]), np.ascontiguousarray(depth[::-1])

    def close(self) -> None:
        if self._gl is not None:
            self._context.free()
            self._gl.free()
            self._gl = None

    def __enter__(self) -> "GroundTruthRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
