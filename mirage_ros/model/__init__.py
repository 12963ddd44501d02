"""The world model: RGB-D autoencoder, memory-read refiner, memory-conditioned denoiser, the sampling loop
and the step loop (``WorldModel``: reset / observe / step over a spatial memory)."""

from mirage_ros.model.autoencoder import RGBDAutoencoder
from mirage_ros.model.checkpoint import DEFAULT_CHECKPOINT, load_component
from mirage_ros.model.denoiser import MemoryConditionedDenoiser
from mirage_ros.model.read_refiner import MemoryReadRefiner
from mirage_ros.model.sampling import DenoiserCondition, SamplingConfig, sample_latent
from mirage_ros.model.world_model import StepResult, WorldModel

__all__ = ["DEFAULT_CHECKPOINT", "DenoiserCondition", "MemoryConditionedDenoiser", "MemoryReadRefiner", "RGBDAutoencoder",
           "SamplingConfig", "StepResult", "WorldModel", "load_component", "sample_latent"]
