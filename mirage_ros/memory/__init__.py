"""Spatial memories: the latent one (the paper's method) and the explicit RGB point-cloud baseline."""

from mirage_ros.memory.explicit import ExplicitPointCloudMemory
from mirage_ros.memory.latent import LatentMemoryConfig, LatentSpatialMemory, MemoryStats
from mirage_ros.memory.projection import MemoryRead

__all__ = ["ExplicitPointCloudMemory", "LatentMemoryConfig", "LatentSpatialMemory", "MemoryRead", "MemoryStats"]
