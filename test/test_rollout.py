"""Offline rollouts to rosbag2: determinism, inputs, seeding from a bag, failures leave nothing behind."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mcap_check import decode_every_message
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import Image

from mirage_ros.ros import rollout
from mirage_ros.ros.conversions import image_to_array
from mirage_ros.ros.recording import read_recording
from mirage_ros.training.metrics import psnr


def read_bag(path: Path) -> list[tuple[str, int, bytes]]:
    with Reader(path) as reader:
        return [(connection.topic, timestamp, bytes(data)) for connection, timestamp, data in reader.messages()]


def run(tiny_checkpoint: Path, output: Path, *extra: str) -> int:
    return rollout.main(["--model", str(tiny_checkpoint), "--output", str(output), *extra])


def test_same_seed_and_commands_give_identical_bags(tiny_checkpoint, tmp_path):
    commands = tmp_path / "commands.csv"
    commands.write_text("t,vx,vy,wz\n0.0,0.4,0.0,0.0\n0.5,0.3,0.0,0.6\n1.0,0.0,0.0,-0.8\n")
    for name in ("a", "b"):
        assert run(tiny_checkpoint, tmp_path / name, "--commands", str(commands), "--duration", "1.5") == 0
    first, second = read_bag(tmp_path / "a"), read_bag(tmp_path / "b")
    assert first == second
    topics = {topic for topic, _, _ in first}
    assert {"/camera/image_raw", "/camera/depth/image_raw", "/camera/camera_info", "/odom", "/scan", "/clock",
            "/tf", "/cmd_vel"} <= topics
    images = [(t, data) for topic, t, data in first if topic == "/camera/image_raw"]
    assert len(images) == 15 and all(b[0] - a[0] == 100_000_000 for a, b in zip(images, images[1:]))
    with Reader(tmp_path / "a") as reader:  # the custom and standard definitions travel with the bag
        assert all(connection.msgdef.data for connection in reader.connections)
    assert decode_every_message(tmp_path / "a") == Counter(topic for topic, _, _ in first)


def test_poses_input_and_batch(tiny_checkpoint, tmp_path):
    poses = tmp_path / "poses.json"
    poses.write_text(json.dumps([{"t": 0.0, "x": 0.0, "y": 0.0, "yaw": 0.0}, {"t": 0.3, "x": 0.2, "y": 0.1, "yaw": 0.3}]))
    assert run(tiny_checkpoint, tmp_path / "sweep", "--poses", str(poses), "--duration", "0.5", "--batch", "2") == 0
    bags = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    assert bags == ["rollout_world00000", "rollout_world00001"]
    assert read_bag(tmp_path / "sweep" / bags[0]) != read_bag(tmp_path / "sweep" / bags[1])  # other worlds
    # The batch loads the model once; a rollout of the second world alone writes the very same bag.
    assert run(tiny_checkpoint, tmp_path / "alone", "--poses", str(poses), "--duration", "0.5", "--world-seed", "1") == 0
    assert read_bag(tmp_path / "alone") == read_bag(tmp_path / "sweep" / bags[1])


def test_parallel_jobs_write_the_bags_a_rollout_alone_writes_with_their_threads(tiny_checkpoint, tmp_path):
    import torch

    threads = torch.get_num_threads()
    assert run(tiny_checkpoint, tmp_path / "sweep", "--duration", "0.4", "--batch", "3", "--jobs", "2") == 0
    bags = sorted((tmp_path / "sweep").iterdir())
    assert [bag.name for bag in bags] == [f"rollout_world{i:05d}" for i in range(3)]
    try:  # each of the 2 workers ran with half the threads: a rollout alone with as many writes the same bag
        torch.set_num_threads(max(1, threads // 2))
        assert run(tiny_checkpoint, tmp_path / "alone", "--duration", "0.4", "--world-seed", "2") == 0
    finally:
        torch.set_num_threads(threads)
    assert read_bag(tmp_path / "alone") == read_bag(bags[2])
    assert run(tiny_checkpoint, tmp_path / "bad", "--batch", "2", "--jobs", "0") == 2


@pytest.mark.parametrize("content, message", [
    ("t,vx,vy,wz\n0.0,nan,0,0\n", "NaN"),
    ("t,vx,vy,wz\n0.0,0.1,0,0\n0.0,0.2,0,0\n", "increase"),
    ("t,speed\n0.0,1.0\n", "missing columns"),
])
def test_bad_command_files_fail_cleanly(tiny_checkpoint, tmp_path, content, message, capsys):
    path = tmp_path / "commands.csv"
    path.write_text(content)
    assert run(tiny_checkpoint, tmp_path / "out", "--commands", str(path)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_bags_fail_cleanly_and_seeding_reproduces_the_first_frame(tiny_checkpoint, tmp_path, capsys):
    assert run(tiny_checkpoint, tmp_path / "out", "--commands-from-bag", str(tmp_path / "missing")) == 2
    assert "not a rosbag2 folder" in capsys.readouterr().err
    assert run(tiny_checkpoint, tmp_path / "source", "--duration", "0.5") == 0
    assert run(tiny_checkpoint, tmp_path / "out", "--commands-from-bag", str(tmp_path / "source")) == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 99}\n")
    assert run(tiny_checkpoint, tmp_path / "out2", "--seed-bag", str(broken)) == 2
    assert "cannot open the bag" in capsys.readouterr().err and not (tmp_path / "out2").exists()

    # Seeding: the rollout starts from the recorded first frame at its recorded pose.
    frame = read_recording(tmp_path / "source").frames[0]
    first = next(data for topic, _, data in read_bag(tmp_path / "source") if topic == "/camera/image_raw")
    np.testing.assert_array_equal(frame.rgb, image_to_array(deserialize_message(first, Image)))
    assert frame.K.shape == (3, 3) and np.isfinite(frame.depth).any()


def test_seeding_from_a_recorded_bag_reproduces_its_first_frame(tmp_path):
    """Shipped model: a rollout seeded from a bag of this package, standing still at the recorded pose,
    regenerates the recorded first image (the acceptance bar is 30 dB PSNR)."""
    assert rollout.main(["--output", str(tmp_path / "source"), "--duration", "0.3"]) == 0
    still = tmp_path / "still.csv"
    still.write_text("t,vx,vy,wz\n0.0,0.0,0.0,0.0\n")
    assert rollout.main(["--output", str(tmp_path / "seeded"), "--seed-bag", str(tmp_path / "source"),
                         "--commands", str(still), "--duration", "0.3"]) == 0

    def first_image(bag: Path) -> np.ndarray:
        data = next(data for topic, _, data in read_bag(bag) if topic == "/camera/image_raw")
        return image_to_array(deserialize_message(data, Image))

    assert psnr(first_image(tmp_path / "seeded"), first_image(tmp_path / "source")) >= 30.0
