"""The world model: RGB-D autoencoder, memory-conditioned denoiser and the step loop
(``mirage_ros.model.world_model.WorldModel``)."""

from mirage_ros.model.autoencoder import RGBDAutoencoder
from mirage_ros.model.checkpoint import DEFAULT_CHECKPOINT, load_component
from mirage_ros.model.denoiser import MemoryConditionedDenoiser

__all__ = ["DEFAULT_CHECKPOINT", "MemoryConditionedDenoiser", "RGBDAutoencoder", "load_component"]
