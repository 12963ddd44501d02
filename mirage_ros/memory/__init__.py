"""Spatial memories behind one protocol (``SpatialMemory``): the latent one (the paper's method, with its
ground texture for the known floor plane), the explicit RGB point-cloud baseline and none (the ablation)."""

from mirage_ros.memory.explicit import ExplicitPointCloudMemory, PointCloudRender
from mirage_ros.memory.ground import GroundTexture, GroundTextureConfig
from mirage_ros.memory.latent import LatentMemoryConfig, LatentSpatialMemory
from mirage_ros.memory.none import NoMemory
from mirage_ros.memory.projection import MemoryRead
from mirage_ros.memory.protocol import Frame, MemoryStats, MemoryView, SpatialMemory, SupersampledRead, write_back

__all__ = ["ExplicitPointCloudMemory", "Frame", "GroundTexture", "GroundTextureConfig", "LatentMemoryConfig",
           "LatentSpatialMemory", "MemoryRead", "MemoryStats", "MemoryView", "NoMemory", "PointCloudRender",
           "SpatialMemory", "SupersampledRead", "write_back"]
