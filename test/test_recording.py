"""Reading RGB-D recordings: encodings, poses from odometry or TF, stamp matching, ROS 1 and sqlite3
bags, and bad bags that fail with a clear error and leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from rosbags.convert import convert
from sensor_msgs.msg import Image

from mirage_ros.camera import PinholeCamera
from mirage_ros.geometry import OPTICAL_TO_CAMERA_LINK, make_transform, rpy_to_matrix
from mirage_ros.kinematics import BodyTwist, PlanarPose
from mirage_ros.ros import rollout
from mirage_ros.ros.bag import BagWriter, tf_message_cdr
from mirage_ros.ros.conversions import camera_info_msg, depth_image_msg, odometry_msg, time_msg
from mirage_ros.ros.recording import RecordingOptions, read_recording
from mirage_ros.worlds import dataset

CAMERA = PinholeCamera.from_matrix(np.array([[50.0, 0, 39.5], [0, 52.0, 29.5], [0, 0, 1]]), 80, 60)
BASE_TO_CAMERA_LINK = make_transform(rpy_to_matrix((0.0, 0.2, 0.0)), (0.1, 0.0, 0.4))
FRAMES = 6


def base_pose(k: int) -> PlanarPose:
    return PlanarPose(0.2 * k, 0.05 * k, 0.1 * k)


def rgb_of(k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    return rng.integers(0, 256, (CAMERA.height, CAMERA.width, 3), dtype=np.uint8)


def depth_of(k: int) -> np.ndarray:
    depth = np.full((CAMERA.height, CAMERA.width), 1.0 + 0.25 * k, np.float32)
    depth[:5, :5] = np.nan
    return depth


def colour_message(rgb: np.ndarray, encoding: str, stamp, frame: str) -> Image:
    layout = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
              "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]),
              "mono8": rgb[..., 0]}.get(encoding, rgb)
    layout = np.ascontiguousarray(layout)
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=layout.strides[0],
                data=layout.tobytes())
    msg.header.stamp, msg.header.frame_id = stamp, frame
    return msg


def write_recording(path: Path, rgb_encoding: str = "rgb8", depth_encoding: str = "32FC1", depth_offset: float = 0.0,
                    skip_topics: tuple[str, ...] = (), odometry: bool = True, tf: bool = True,
                    frames: int = FRAMES) -> Path:
    """A small RGB-D recording like a robot's: 10 Hz camera, odometry and/or TF, static camera chain."""
    topics = {"/camera/image_raw": "sensor_msgs/msg/Image", "/camera/depth/image_raw": "sensor_msgs/msg/Image",
              "/camera/camera_info": "sensor_msgs/msg/CameraInfo", "/odom": "nav_msgs/msg/Odometry",
              "/tf": "tf2_msgs/msg/TFMessage", "/tf_static": "tf2_msgs/msg/TFMessage"}
    if not odometry:
        skip_topics += ("/odom",)
    if not tf:
        skip_topics += ("/tf",)
    with BagWriter(path) as bag:
        for topic, kind in topics.items():
            if topic not in skip_topics:
                bag.add_topic(topic, kind)

        def write(topic: str, t: float, data: bytes) -> None:
            if topic not in skip_topics:
                bag.write(topic, int(round(t * 1e9)), data)

        write("/tf_static", 0.0, tf_message_cdr(bag.typestore, 0, [("base_link", "camera_link", BASE_TO_CAMERA_LINK),
                                                                   ("camera_link", "camera_optical_frame",
                                                                    OPTICAL_TO_CAMERA_LINK)]))
        for k in range(frames):
            t = 1.0 + 0.1 * k
            stamp = time_msg(t)
            pose = base_pose(k)
            write("/odom", t, serialize_message(odometry_msg(pose, BodyTwist(), stamp, "odom", "base_link")))
            write("/tf", t, tf_message_cdr(bag.typestore, int(round(t * 1e9)), [("odom", "base_link", pose.matrix())]))
            write("/camera/camera_info", t, serialize_message(camera_info_msg(CAMERA, stamp, "camera_optical_frame")))
            write("/camera/image_raw", t, serialize_message(colour_message(rgb_of(k), rgb_encoding, stamp,
                                                                           "camera_optical_frame")))
            depth = depth_image_msg(depth_of(k), time_msg(t + depth_offset), "camera_optical_frame")
            if depth_encoding == "16UC1":
                millimetres = np.nan_to_num(depth_of(k) * 1000.0).astype("<u2")
                depth.encoding, depth.step, depth.data = "16UC1", CAMERA.width * 2, millimetres.tobytes()
            elif depth_encoding != "32FC1":
                depth.encoding = depth_encoding
            write("/camera/depth/image_raw", t + depth_offset, serialize_message(depth))
    return path


def expected_camera(k: int) -> np.ndarray:
    return base_pose(k).matrix() @ BASE_TO_CAMERA_LINK @ OPTICAL_TO_CAMERA_LINK


@pytest.mark.parametrize("rgb_encoding, depth_encoding", [("rgb8", "32FC1"), ("bgr8", "16UC1"), ("rgba8", "32FC1"),
                                                          ("bgra8", "32FC1"), ("mono8", "16UC1")])
def test_frames_poses_and_intrinsics_come_back_in_every_encoding(tmp_path, rgb_encoding, depth_encoding):
    recording = read_recording(write_recording(tmp_path / "bag", rgb_encoding, depth_encoding))
    assert recording.summary.used == FRAMES and not recording.summary.skipped and recording.odom_frame == "odom"
    for k, frame in enumerate(recording.frames):
        rgb = rgb_of(k) if rgb_encoding != "mono8" else np.repeat(rgb_of(k)[..., :1], 3, axis=2)
        np.testing.assert_array_equal(frame.rgb, rgb)
        np.testing.assert_allclose(frame.depth, depth_of(k), atol=1e-3 if depth_encoding == "16UC1" else 0)
        np.testing.assert_allclose(frame.K, CAMERA.K)
        np.testing.assert_allclose(frame.cam_to_odom, expected_camera(k), atol=1e-9)
        assert frame.base_pose.x == pytest.approx(base_pose(k).x) and frame.base_pose.yaw == pytest.approx(0.1 * k)


def test_tf_poses_ros1_and_sqlite3_bags_and_resizing(tmp_path):
    source = write_recording(tmp_path / "bag")
    reference = read_recording(source)
    from_tf = read_recording(write_recording(tmp_path / "tf_only", odometry=False))
    assert from_tf.summary.pose_source == "/tf"
    for a, b in zip(reference.frames, from_tf.frames):
        np.testing.assert_allclose(a.cam_to_odom, b.cam_to_odom, atol=1e-9)
    for destination, storage in ((tmp_path / "ros1.bag", "sqlite3"), (tmp_path / "sqlite", "sqlite3")):
        convert([source], destination, storage, 8, None, "file", None, None, [], [], [], [])
        converted = read_recording(destination)
        assert converted.summary.used == FRAMES
        for a, b in zip(reference.frames, converted.frames):
            np.testing.assert_array_equal(a.rgb, b.rgb)
            np.testing.assert_allclose(a.K, b.K)
            np.testing.assert_allclose(a.cam_to_odom, b.cam_to_odom, atol=1e-9)
    small = read_recording(source, RecordingOptions(size_hw=(30, 40)))
    frame = small.frames[0]
    assert frame.rgb.shape == (30, 40, 3) and frame.depth.shape == (30, 40)
    np.testing.assert_allclose(frame.K[0], [25.0, 0.0, 19.5])  # c' = (c + 0.5) s - 0.5


def test_unmatched_frames_are_skipped_with_reasons(tmp_path):
    path = write_recording(tmp_path / "bag", depth_offset=0.01)
    assert read_recording(path).summary.used == FRAMES  # within the default 20 ms
    with pytest.raises(ValueError, match="no matching depth"):
        read_recording(path, RecordingOptions(tolerance=0.005))
    recording = read_recording(write_recording(tmp_path / "no_static", skip_topics=("/tf_static",)),
                               RecordingOptions(camera_frame="base_link"))
    np.testing.assert_allclose(recording.frames[2].cam_to_odom, base_pose(2).matrix(), atol=1e-9)
    with pytest.raises(ValueError, match="no pose.*tf_static"):
        read_recording(tmp_path / "no_static")


@pytest.mark.parametrize("change, message", [
    ({"skip_topics": ("/camera/depth/image_raw",)}, "no depth images topic /camera/depth/image_raw"),
    ({"skip_topics": ("/camera/image_raw",)}, "no images topic"),
    ({"skip_topics": ("/camera/camera_info",)}, "no camera info topic"),
    ({"odometry": False, "tf": False}, "no poses"),
    ({"depth_offset": 0.05}, "6 no matching depth"),
    ({"depth_encoding": "rgb8"}, "6 depth encoding 'rgb8'"),
    ({"rgb_encoding": "yuv422"}, "6 rgb encoding 'yuv422'"),
])
def test_bad_recordings_fail_clearly_and_leave_nothing_behind(tmp_path, tiny_checkpoint, capsys, change, message):
    path = write_recording(tmp_path / "bag", **change)
    assert rollout.main(["--model", str(tiny_checkpoint), "--output", str(tmp_path / "out"), "--map-bag", str(path),
                         "--duration", "0.3"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_a_corrupt_chunk_fails_clearly(tmp_path, tiny_checkpoint, capsys):
    path = write_recording(tmp_path / "bag")
    mcap = next(path.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)  # zero a stretch of chunk data
    mcap.write_bytes(bytes(data))
    assert rollout.main(["--model", str(tiny_checkpoint), "--output", str(tmp_path / "out"), "--map-bag", str(path),
                         "--duration", "0.3"]) == 2
    assert "cannot" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_dataset_from_recordings_round_trip_with_the_split_rule(tmp_path, capsys):
    bag = write_recording(tmp_path / "bag", frames=12)
    output = tmp_path / "data"
    assert dataset.main(["--output", str(output), "--from-bag", str(bag), "--frames", "2", "--width", "80",
                         "--height", "60"]) == 0
    train, val = dataset.SequenceDataset(output, "train"), dataset.SequenceDataset(output, "val")
    assert (len(train), len(val)) == (5, 1) and not (output / "test").exists()  # sequence 5 of 6 validates
    items = {item["world_seed"]: item for item in [*train, *val]}
    for k in range(1, 7):
        item = items[k]
        for offset in range(2):
            frame = 2 * (k - 1) + offset
            np.testing.assert_array_equal(item["rgb"][offset].numpy(), rgb_of(frame))
            np.testing.assert_allclose(item["depth"][offset].numpy(), depth_of(frame))
            np.testing.assert_allclose(item["cam_to_world"][offset].numpy(), expected_camera(frame), atol=1e-9)
        np.testing.assert_allclose(item["K"].numpy(), CAMERA.K)
    resized = tmp_path / "small"
    assert dataset.main(["--output", str(resized), "--from-bag", str(bag), "--frames", "2", "--width", "40",
                         "--height", "30"]) == 0
    assert dataset.SequenceDataset(resized, "train")[0]["rgb"].shape == (2, 30, 40, 3)
    broken = write_recording(tmp_path / "broken", skip_topics=("/camera/camera_info",))
    assert dataset.main(["--output", str(tmp_path / "never"), "--from-bag", str(bag), str(broken)]) == 2
    assert "no camera info topic" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_the_full_loop_record_dataset_train_export_simulate(tmp_path):
    """The README's loop on a recording: shards from the bag, the training commands unchanged on them,
    an exported checkpoint that re-simulates the recorded place."""
    from mirage_ros.training import export, train_autoencoder, train_denoiser

    bag = write_recording(tmp_path / "bag", frames=12)
    data = tmp_path / "data"
    assert dataset.main(["--output", str(data), "--from-bag", str(bag), "--frames", "4", "--width", "32",
                         "--height", "32"]) == 0
    common = ["--data", str(data), "--batch-size", "4", "--log-every", "1", "--workers", "0", "--mixed-precision", "no",
              "--steps", "2"]
    train_autoencoder.main(common + ["--output", str(tmp_path / "ae"), "--latent-channels", "4", "--block-out-channels",
                                     "16", "16", "16", "16", "--crop-size", "32"])
    train_denoiser.main(common + ["--output", str(tmp_path / "dn"), "--autoencoder", str(tmp_path / "ae" / "checkpoint"),
                                  "--block-out-channels", "32", "32"])
    assert export.main(["--autoencoder", str(tmp_path / "ae" / "checkpoint"), "--denoiser",
                        str(tmp_path / "dn" / "checkpoint"), "--output", str(tmp_path / "model"),
                        "--image-size", "32", "32"]) in (0, None)
    assert rollout.main(["--model", str(tmp_path / "model"), "--map-bag", str(bag), "--duration", "0.3",
                         "--output", str(tmp_path / "simulated")]) == 0
    assert read_recording(tmp_path / "simulated").frames[0].rgb.shape == (32, 32, 3)
