"""Reading recordings: rosbag2 (MCAP or sqlite3) and ROS 1 ``.bag`` through ``rosbags``, no ROS install.

The one home of everything read from a bag: ``open_bag``, ``commands_from_bag`` (a recording's
``cmd_vel``) and ``read_recording``, which turns a robot's RGB-D recording into posed observations
(re-simulating the recorded place, training data from a user's own robot):

- RGB ``rgb8``/``bgr8``/``rgba8``/``bgra8``/``mono8``, depth ``32FC1`` (m) or ``16UC1`` (mm), the camera
  info's K at the images' own size (scaled where the info was made for another size), optionally
  resized to a model's resolution with K scaled along;
- poses from ``nav_msgs/Odometry`` or ``/tf`` (e.g. odom -> base_link), joined to the camera by the
  static chain of ``/tf_static``; the camera's TF frame is the images' ``frame_id`` or ``camera_frame``;
- RGB and depth matched by header stamp within a tolerance, the pose interpolated at the RGB stamp;
- a summary of the frames used and skipped (and why); a recording with no usable frame, missing
  topics or damaged data raises ``ValueError`` before anything is written anywhere.
"""

from __future__ import annotations

import argparse
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from rosbags.highlevel import AnyReader
from tqdm import tqdm

from mirage_ros.camera import scale_intrinsics
from mirage_ros.geometry import make_transform, quaternion_to_matrix
from mirage_ros.kinematics import PlanarPose
from mirage_ros.ros.bag import typestore_with_package_types
from mirage_ros.ros.conversions import image_to_array, planar_pose_from_matrix
from mirage_ros.simulator import Observation, Simulator

COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("32FC1", "16UC1")


@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """An open reader of a rosbag2 folder (MCAP or sqlite3) or a ROS 1 ``.bag`` file; a missing or
    damaged bag raises ``ValueError``. Bags without embedded definitions use the Jazzy types."""
    path = Path(path)
    if not ((path.is_dir() and (path / "metadata.yaml").is_file()) or (path.is_file() and path.suffix == ".bag")):
        raise ValueError(f"{path}: not a rosbag2 folder (no metadata.yaml) or ROS 1 .bag file")
    try:
        reader = AnyReader([path], default_typestore=typestore_with_package_types())
        reader.open()
    except Exception as error:  # rosbags raises several reader error types for damaged bags
        raise ValueError(f"{path}: cannot open the bag ({error})") from error
    try:
        yield reader
    finally:
        reader.close()


def commands_from_bag(path: str | Path, topic: str = "/cmd_vel") -> np.ndarray:
    """Rows ``(t, vx, vy, wz)`` of the ``cmd_vel`` (Twist or TwistStamped) of a bag, ``t`` in seconds
    from its first message."""
    rows = []
    with open_bag(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise ValueError(f"{path}: no topic {topic} (topics: {sorted({c.topic for c in reader.connections})})")
        with read_errors(path):
            for connection, timestamp, data in reader.messages(connections=connections):
                message = reader.deserialize(data, connection.msgtype)
                twist = message.twist if hasattr(message, "twist") else message
                rows.append((timestamp * 1e-9, twist.linear.x, twist.linear.y, twist.angular.z))
    if not rows:
        raise ValueError(f"{path}: no message on {topic}")
    table = np.array(rows, dtype=np.float64)
    table[:, 0] -= table[0, 0]
    return table


@contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """Damaged data met while iterating a bag (corrupt chunks, undecodable messages) as ``ValueError``."""
    try:
        yield
    except ValueError:
        raise
    except Exception as error:  # rosbags, the MCAP and compression libraries raise their own types
        raise ValueError(f"{path}: cannot read the bag ({type(error).__name__}: {error})") from error


@dataclass(frozen=True)
class RecordingOptions:
    """Topics of an RGB-D recording, how its messages are matched, and the size to resize frames to."""

    rgb_topic: str = "/camera/image_raw"
    depth_topic: str = "/camera/depth/image_raw"
    camera_info_topic: str = "/camera/camera_info"
    odom_topic: str = "/odom"     # nav_msgs/Odometry; where the bag has none, /tf gives the poses
    camera_frame: str = ""        # TF frame (optical) of the images; empty: their header frame_id
    tolerance: float = 0.02       # s: the largest stamp difference of matched RGB, depth and pose
    pose_gap: float = 0.5         # s: poses are interpolated between samples at most this far apart
    size_hw: tuple[int, int] | None = None  # resize frames (and K) to this; None: keep their size

    def __post_init__(self) -> None:
        if not (self.tolerance >= 0 and self.pose_gap >= 0):
            raise ValueError("stamp tolerance and pose gap must not be negative")


@dataclass(frozen=True)
class RecordedFrame:
    """One usable frame: ``rgb`` uint8 ``[H,W,3]``, ``depth`` float32 m (NaN: none), ``K`` at that size,
    the optical frame's pose and the base's planar pose in the recording's odometry frame."""

    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    cam_to_odom: np.ndarray
    base_pose: PlanarPose

    def observation(self) -> Observation:
        return Observation(self.rgb, self.depth, self.K, self.cam_to_odom)


@dataclass
class RecordingSummary:
    """How many RGB frames a recording had, how many were used, and why the others were skipped."""

    path: Path
    images: int
    skipped: Counter = field(default_factory=Counter)
    pose_source: str = ""

    @property
    def used(self) -> int:
        return self.images - sum(self.skipped.values())

    def __str__(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return (f"{self.path}: {self.used} of {self.images} RGB frames used (poses from {self.pose_source})"
                + (f"; skipped: {reasons}" if reasons else ""))


@dataclass
class Recording:
    frames: list[RecordedFrame]
    summary: RecordingSummary
    odom_frame: str

    def observations(self) -> tuple[Observation, ...]:
        return tuple(frame.observation() for frame in self.frames)


class _Timeline:
    """Timed samples of one moving transform, interpolated (translation linear, rotation nlerp)."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, np.ndarray, np.ndarray]] = []

    def add(self, stamp_ns: int, translation: np.ndarray, quaternion: np.ndarray) -> None:
        self.samples.append((stamp_ns, translation, quaternion))

    def freeze(self) -> None:
        self.samples.sort(key=lambda sample: sample[0])
        self.stamps = np.array([s[0] for s in self.samples], dtype=np.int64)

    def at(self, stamp_ns: int, tolerance_ns: int, gap_ns: int) -> np.ndarray | None:
        index = int(np.searchsorted(self.stamps, stamp_ns))
        before = index - 1 if index > 0 else None
        after = index if index < len(self.stamps) else None
        if before is not None and after is not None and self.stamps[after] - self.stamps[before] <= gap_ns:
            (t0, p0, q0), (t1, p1, q1) = self.samples[before], self.samples[after]
            w = (stamp_ns - t0) / (t1 - t0) if t1 > t0 else 0.0
            q1 = q1 if np.dot(q0, q1) >= 0 else -q1
            q = (1 - w) * q0 + w * q1
            return make_transform(quaternion_to_matrix(q / np.linalg.norm(q)), (1 - w) * p0 + w * p1)
        nearest = min((i for i in (before, after) if i is not None), key=lambda i: abs(self.stamps[i] - stamp_ns))
        if abs(self.stamps[nearest] - stamp_ns) > tolerance_ns:
            return None
        _, p, q = self.samples[nearest]
        return make_transform(quaternion_to_matrix(q / np.linalg.norm(q)), p)


def _stamp_ns(message) -> int:
    return int(message.header.stamp.sec) * 1_000_000_000 + int(message.header.stamp.nanosec)


def _vector(value, names: str) -> np.ndarray:
    return np.array([float(getattr(value, n)) for n in names], dtype=np.float64)


class _TransformTree:
    """The frames of a recording: each child's parent, by a static transform or a timeline."""

    def __init__(self) -> None:
        self.static: dict[str, tuple[str, np.ndarray]] = {}
        self.moving: dict[str, tuple[str, _Timeline]] = {}

    def add_moving(self, parent: str, child: str, stamp_ns: int, translation: np.ndarray, quaternion: np.ndarray) -> None:
        self.moving.setdefault(child, (parent, _Timeline()))[1].add(stamp_ns, translation, quaternion)

    def add_static(self, parent: str, child: str, transform: np.ndarray) -> None:
        self.static[child] = (parent, transform)

    def freeze(self) -> None:
        for _, timeline in self.moving.values():
            timeline.freeze()

    def pose(self, frame: str, stamp_ns: int, options: RecordingOptions) -> tuple[str, np.ndarray, np.ndarray] | None:
        """``(root frame, frame_to_root, base_to_root)`` at ``stamp_ns``, where the base is the child of
        the moving transform nearest the root; ``None`` where a transform is missing or nothing moves."""
        tolerance, gap = int(options.tolerance * 1e9), int(options.pose_gap * 1e9)
        to_root, base_to_root, visited = np.eye(4), None, set()
        while frame not in visited:
            visited.add(frame)
            if frame in self.moving:
                parent, timeline = self.moving[frame]
                edge = timeline.at(stamp_ns, tolerance, gap)
                if edge is None:
                    return None
                base_to_root = np.eye(4)
            elif frame in self.static:
                parent, edge = self.static[frame]
            else:
                break
            to_root = edge @ to_root
            if base_to_root is not None:
                base_to_root = edge @ base_to_root
            frame = parent
        return None if base_to_root is None else (frame, to_root, base_to_root)


def _transform_of(transform) -> tuple[np.ndarray, np.ndarray]:
    return _vector(transform.translation, "xyz"), _vector(transform.rotation, "xyzw")


def _connections(reader: AnyReader, path: Path, topic: str, kinds: tuple[str, ...], what: str) -> list:
    found = [c for c in reader.connections if c.topic == topic]
    if not found:
        topics = sorted({c.topic for c in reader.connections})
        raise ValueError(f"{path}: no {what} topic {topic} (topics: {', '.join(topics)})")
    wrong = sorted({c.msgtype for c in found if c.msgtype not in kinds})
    if wrong:
        raise ValueError(f"{path}: {topic} carries {', '.join(wrong)}; expected {' or '.join(kinds)}")
    if sum(c.msgcount for c in found) == 0:
        raise ValueError(f"{path}: no {what} on {topic}")
    return found


def read_recording(path: str | Path, options: RecordingOptions | None = None, progress: bool = False) -> Recording:
    """The usable RGB-D frames of a recording with their poses, and a summary (see the module docstring).

    Raises ``ValueError`` for a bag that lacks images, depth, camera info or poses, has no usable frame,
    or is damaged.
    """
    path, options = Path(path), options or RecordingOptions()
    image_kind, info_kind = ("sensor_msgs/msg/Image",), ("sensor_msgs/msg/CameraInfo",)
    with open_bag(path) as reader:
        rgb_connections = _connections(reader, path, options.rgb_topic, image_kind, "images")
        depth_connections = _connections(reader, path, options.depth_topic, image_kind, "depth images")
        info_connections = _connections(reader, path, options.camera_info_topic, info_kind, "camera info")
        odom_connections = [c for c in reader.connections if c.topic == options.odom_topic]
        tf_connections = [c for c in reader.connections if c.topic in ("/tf", "/tf_static")]
        if odom_connections:
            _connections(reader, path, options.odom_topic, ("nav_msgs/msg/Odometry",), "odometry")
        elif not any(c.topic == "/tf" and c.msgcount for c in tf_connections):
            raise ValueError(f"{path}: no poses (neither odometry on {options.odom_topic} nor /tf)")
        skipped: Counter = Counter()
        with read_errors(path):
            tree, infos, rgb_stamps, depth_stamps = _first_pass(
                reader, options, rgb_connections + depth_connections + info_connections + odom_connections
                + tf_connections, skipped, progress, path.name)
            summary = RecordingSummary(path, len(rgb_stamps) + skipped["bad stamp"], skipped,
                                       f"odometry {options.odom_topic}" if odom_connections else "/tf")
            pairs = _match(sorted(rgb_stamps), np.array(sorted(depth_stamps), dtype=np.int64), options, skipped)
            posed = {}
            for rgb_stamp, depth_stamp in pairs.items():
                frame = (options.camera_frame or rgb_stamps[rgb_stamp]).lstrip("/")
                pose = tree.pose(frame, rgb_stamp, options)
                if pose is None:
                    skipped["no pose"] += 1
                else:
                    posed[rgb_stamp] = (depth_stamp, *pose)
            frames = _decode(reader, rgb_connections + depth_connections, options, posed, infos, skipped)
    if not frames:
        raise ValueError(f"no usable RGB-D frame: {summary}" + ("" if "no pose" not in skipped else
                         " (poses need a transform chain from the images' frame to a moving frame: record "
                         "/tf_static, or pass the camera's TF frame)"))
    roots = Counter(frame[0] for frame in frames)
    odom_frame = roots.most_common(1)[0][0]
    recorded = [f[1] for f in frames if f[0] == odom_frame]
    if len(recorded) < len(frames):
        skipped[f"pose not in {odom_frame}"] += len(frames) - len(recorded)
    return Recording(recorded, summary, odom_frame)


def _first_pass(reader: AnyReader, options: RecordingOptions, connections: list, skipped: Counter, progress: bool,
                name: str) -> tuple[_TransformTree, list, dict[int, str], set[int]]:
    """Pass 1 over the bag: the transform tree (odometry, /tf, /tf_static), the camera infos
    ``(stamp, width, height, K)`` and the stamps of the images (their pixels are decoded in pass 2)."""
    tree, infos, rgb_stamps, depth_stamps, tf_moving = _TransformTree(), [], {}, set(), []
    total = sum(c.msgcount for c in connections)
    for connection, _, data in tqdm(reader.messages(connections=connections), total=total, desc=f"reading {name}",
                                    unit="msg", disable=not progress):
        message = reader.deserialize(data, connection.msgtype)
        topic = connection.topic
        if topic == options.rgb_topic:
            stamp = _stamp_ns(message)
            if stamp <= 0 or stamp in rgb_stamps:
                skipped["bad stamp"] += 1
            else:
                rgb_stamps[stamp] = message.header.frame_id
        elif topic == options.depth_topic:
            depth_stamps.add(_stamp_ns(message))
        elif topic == options.camera_info_topic:
            k = getattr(message, "k", None)
            k = message.K if k is None else k  # ROS 1 names it K
            infos.append((_stamp_ns(message), int(message.width), int(message.height),
                          np.asarray(k, dtype=np.float64).reshape(3, 3)))
        elif topic == options.odom_topic:
            tree.add_moving(message.header.frame_id.lstrip("/"), message.child_frame_id.lstrip("/"),
                            _stamp_ns(message), _vector(message.pose.pose.position, "xyz"),
                            _vector(message.pose.pose.orientation, "xyzw"))
        else:
            for item in message.transforms:
                parent, child = item.header.frame_id.lstrip("/"), item.child_frame_id.lstrip("/")
                translation, rotation = _transform_of(item.transform)
                if topic == "/tf_static":
                    tree.add_static(parent, child, make_transform(quaternion_to_matrix(rotation), translation))
                else:
                    tf_moving.append((parent, child, _stamp_ns(item), translation, rotation))
    odometry_children = set(tree.moving)  # the odometry topic wins over /tf for the frames it moves
    for parent, child, stamp, translation, rotation in tf_moving:
        if child not in odometry_children:
            tree.add_moving(parent, child, stamp, translation, rotation)
    tree.freeze()
    return tree, infos, rgb_stamps, depth_stamps


def _match(rgb_stamps: list[int], depth_stamps: np.ndarray, options: RecordingOptions,
           skipped: Counter) -> dict[int, int]:
    """Each RGB stamp's nearest depth stamp within the tolerance."""
    pairs = {}
    tolerance = int(options.tolerance * 1e9)
    for stamp in rgb_stamps:
        index = int(np.searchsorted(depth_stamps, stamp))
        near = [depth_stamps[i] for i in (index - 1, index) if 0 <= i < len(depth_stamps)]
        best = min(near, key=lambda d: abs(int(d) - stamp)) if near else None
        if best is None or abs(int(best) - stamp) > tolerance:
            skipped["no matching depth"] += 1
        else:
            pairs[stamp] = int(best)
    return pairs


def _decode(reader: AnyReader, connections: list, options: RecordingOptions, posed: dict, infos: list,
            skipped: Counter) -> list[tuple[str, RecordedFrame]]:
    """Pass 2: decode the images of the posed pairs, check them, resize them; ``(root, frame)`` in stamp order."""
    from mirage_ros.model.world_model import resize_observation

    wanted_depth = {value[0]: stamp for stamp, value in posed.items()}
    rgb_arrays, depth_arrays, frames, failed = {}, {}, [], set()  # failed: skipped for a counted reason
    for connection, _, data in reader.messages(connections=connections):
        message = reader.deserialize(data, connection.msgtype)
        stamp = _stamp_ns(message)
        is_rgb = connection.topic == options.rgb_topic
        owner = stamp if is_rgb else wanted_depth.get(stamp)
        if owner not in posed or owner in failed or (is_rgb and owner in rgb_arrays):
            continue
        try:
            array = _image(message, COLOUR_ENCODINGS if is_rgb else DEPTH_ENCODINGS, "rgb" if is_rgb else "depth")
        except ValueError as error:
            skipped[str(error)] += 1
            failed.add(owner)
            continue
        (rgb_arrays if is_rgb else depth_arrays)[owner] = array
        if owner in rgb_arrays and owner in depth_arrays:
            rgb, depth = rgb_arrays.pop(owner), depth_arrays.pop(owner)
            depth_stamp, root, cam_to_root, base_to_root = posed[owner]
            reason, K = _intrinsics(infos, owner, rgb.shape[:2], depth.shape)
            if reason is None and not (np.isfinite(depth) & (depth > 0)).any():
                reason = "depth has no valid pixel"
            if reason is not None:
                skipped[reason] += 1
                failed.add(owner)
                continue
            if options.size_hw is not None and tuple(rgb.shape[:2]) != tuple(options.size_hw):
                rgb_t, depth_t = resize_observation(rgb, depth, tuple(options.size_hw))
                K = scale_intrinsics(K, rgb.shape[:2], tuple(options.size_hw))
                rgb = (rgb_t.permute(1, 2, 0) * 255.0).round().clamp(0, 255).byte().numpy()
                depth = depth_t.numpy()
            frames.append((owner, root, RecordedFrame(owner, rgb, depth.astype(np.float32), K, cam_to_root,
                                                      planar_pose_from_matrix(base_to_root))))
    if len(posed) > len(frames) + len(failed):
        skipped["image unreadable in the bag"] += len(posed) - len(frames) - len(failed)
    frames.sort(key=lambda item: item[0])
    return [(root, frame) for _, root, frame in frames]


def _image(message, encodings: tuple[str, ...], what: str) -> np.ndarray:
    if message.encoding not in encodings:
        raise ValueError(f"{what} encoding {message.encoding!r} (expected {', '.join(encodings)})")
    try:
        array = image_to_array(message)
    except ValueError as error:
        raise ValueError(f"{what} image data do not fit its size") from error
    if what == "rgb" and array.ndim == 2:  # mono8
        array = np.repeat(array[..., None], 3, axis=2)
    return array


def _intrinsics(infos: list, stamp: int, rgb_hw: tuple[int, int], depth_hw: tuple[int, int]) -> tuple[str | None, np.ndarray]:
    """The K of the camera info nearest ``stamp``, at the RGB size; or why there is none."""
    if tuple(depth_hw) != tuple(rgb_hw):
        return "depth size differs from rgb (record depth registered to the colour camera)", np.eye(3)
    _, width, height, K = min(infos, key=lambda info: abs(info[0] - stamp))
    if K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1:
        return "camera info without calibration (K)", np.eye(3)
    if (height, width) != tuple(rgb_hw) and width > 0 and height > 0:
        K = scale_intrinsics(K, (height, width), rgb_hw)
    return None, K


def start_in_recording(simulator: Simulator, path: str | Path, options: RecordingOptions | None = None,
                       progress: bool = False) -> RecordingSummary:
    """Make every usable frame of the recording at ``path`` (read at the simulator's image size) its start:
    the next ``reset`` maps them into the memory. Returns the reading summary."""
    options = replace(options or RecordingOptions(), size_hw=tuple(simulator.renderer.image_size))
    recording = read_recording(path, options, progress)
    simulator.start = replace(simulator.start, recording=recording.observations())
    return recording.summary


def add_recording_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of ``RecordingOptions`` (topics, camera frame, stamp tolerance)."""
    defaults = RecordingOptions()
    group = parser.add_argument_group("recordings (--map-bag, --from-bag)")
    group.add_argument("--rgb-topic", default=defaults.rgb_topic, help="sensor_msgs/Image colour topic")
    group.add_argument("--depth-topic", default=defaults.depth_topic, help="depth topic (32FC1 m or 16UC1 mm), "
                       "registered to the colour camera")
    group.add_argument("--camera-info-topic", default=defaults.camera_info_topic, help="CameraInfo of the colour images")
    group.add_argument("--odom-topic", default=defaults.odom_topic, help="nav_msgs/Odometry; without it, poses "
                       "come from /tf")
    group.add_argument("--camera-frame", default="", help="TF frame (optical) of the images; default: their frame_id")
    group.add_argument("--stamp-tolerance", type=float, default=defaults.tolerance,
                       help="largest stamp difference (s) of matched colour, depth and pose")


def options_from_arguments(args: argparse.Namespace, size_hw: tuple[int, int] | None) -> RecordingOptions:
    return RecordingOptions(rgb_topic=args.rgb_topic, depth_topic=args.depth_topic,
                            camera_info_topic=args.camera_info_topic, odom_topic=args.odom_topic,
                            camera_frame=args.camera_frame, tolerance=args.stamp_tolerance, size_hw=size_hw)
