"""Test setup shared by all tests: ROS traffic stays on this machine, in a DDS domain of its own.

Every ROS test talks between separate processes over loopback
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``), in a ``ROS_DOMAIN_ID`` picked per test run among the
domains nobody on this machine is using, so parallel runs never see each other's topics.
"""

from __future__ import annotations

import os
import socket

import pytest


def _domain_in_use(domain_id: int) -> bool:
    # Fast DDS's first participant of a domain binds unicast port 7410 + 250 * domain_id.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", 7410 + 250 * domain_id))
        except OSError:
            return True
    return False


def _pick_domain_id() -> int:
    start = os.getpid() % 100
    for offset in range(100):
        candidate = 1 + (start + offset) % 100
        if not _domain_in_use(candidate):
            return candidate
    raise RuntimeError("no free ROS_DOMAIN_ID between 1 and 100 on this machine")


os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_LOCALHOST_ONLY", None)
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ["ROS_DOMAIN_ID"] = str(_pick_domain_id())


def pytest_report_header(config: pytest.Config) -> str:
    return f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"


def make_tiny_world_model(memory: str = "latent", seed: int = 0, trace_networks: bool = True):
    """The one tiny random world model of the tests (64x64 images, 4 latent channels, 2 sampling steps):
    fast to run, identical every time it is built."""
    import torch

    from mirage_ros.model import MemoryConditionedDenoiser, RGBDAutoencoder, SamplingConfig, WorldModel

    torch.manual_seed(0)
    return WorldModel(RGBDAutoencoder(latent_channels=4, block_out_channels=(16, 16, 16, 16)),
                      MemoryConditionedDenoiser(latent_channels=4, sample_size=8, block_out_channels=(32, 32)),
                      (64, 64), memory=memory, sampling=SamplingConfig(num_inference_steps=2), seed=seed,
                      trace_networks=trace_networks)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """The tiny world model saved as a checkpoint directory: fast node tests that need no trained model."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny"
    make_tiny_world_model().save_pretrained(path)
    return path
