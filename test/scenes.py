"""Analytic ground truth for memory tests: exact z-depth of axis-aligned boxes by ray casting."""

from __future__ import annotations

import numpy as np


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Optical-frame cam_to_world at ``position`` looking at ``target`` (z forward, y down)."""
    z = np.asarray(target, float) - np.asarray(position, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    pose[:3, 3] = position
    return pose


def box_depth(boxes: list[tuple[tuple[float, float, float], tuple[float, float, float]]], cam_to_world: np.ndarray,
              K: np.ndarray, height: int, width: int) -> np.ndarray:
    """z-depth ``[H,W]`` of the nearest box surface hit by each pixel-centre ray (NaN if none).

    Boxes are ``(min_corner, max_corner)``; a camera inside a box sees its inner faces (a room).
    """
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T          # camera frame, z = 1
    directions = rays @ cam_to_world[:3, :3].T
    origin = cam_to_world[:3, 3]
    best = np.full((height, width), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for low, high in boxes:
            t1 = (np.asarray(low) - origin) / directions
            t2 = (np.asarray(high) - origin) / directions
            near = np.nanmax(np.minimum(t1, t2), axis=-1)
            far = np.nanmin(np.maximum(t1, t2), axis=-1)
            entering = (near <= far) & (near > 1e-6)
            leaving = (near <= far) & (near <= 1e-6) & (far > 1e-6)  # inside the box: hit its far side
            t = np.where(entering, near, np.where(leaving, far, np.inf))
            best = np.minimum(best, t)
    # Rays have unit z in the camera frame, so the ray parameter is the z-depth.
    return np.where(np.isfinite(best), best, np.nan).astype(np.float32)
