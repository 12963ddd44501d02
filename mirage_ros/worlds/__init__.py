"""Procedural MuJoCo worlds, the ground-truth RGB-D renderer, robot trajectories and datasets.

``renderer`` imports MuJoCo (and picks its headless GL backend), so it is imported explicitly.
"""

from mirage_ros.worlds.generator import Footprint, World, generate_world
from mirage_ros.worlds.trajectories import KINDS, Trajectory, TrajectoryConfig, generate_trajectory

__all__ = ["Footprint", "KINDS", "Trajectory", "TrajectoryConfig", "World", "generate_trajectory", "generate_world"]
