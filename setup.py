"""pip/setuptools metadata for development installs (`make setup` installs this tree in editable mode).

A ROS 2 workspace builds the package with ament_cmake instead (see CMakeLists.txt and package.xml):
colcon generates the interfaces in msg/ and installs this Python package next to them.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="mirage_ros",
    version="0.1.0",
    description="Learned camera simulator for ROS 2: latent diffusion world model with latent spatial memory",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mirage_ros", "mirage_ros.*"]),
    include_package_data=True,
    package_data={"mirage_ros": ["checkpoints/**/*"]},
    install_requires=_requirements(),
    entry_points={
        "console_scripts": [
            "mirage-sim = mirage_ros.ros.sim_node:main",
            "mirage-run = mirage_ros.ros.run:main",
            "mirage-record = mirage_ros.ros.recorder:main",
            "mirage-rollout = mirage_ros.ros.rollout:main",
            "mirage-dataset = mirage_ros.worlds.dataset:main",
            "mirage-contact-sheet = mirage_ros.worlds.contact_sheet:main",
            "mirage-train-autoencoder = mirage_ros.training.train_autoencoder:main",
            "mirage-train-denoiser = mirage_ros.training.train_denoiser:main",
            "mirage-train-refiner = mirage_ros.training.train_refiner:main",
            "mirage-export = mirage_ros.training.export:main",
            "mirage-evaluate = mirage_ros.training.evaluate:main",
        ],
    },
)
