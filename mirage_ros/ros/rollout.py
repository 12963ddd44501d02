"""``mirage-rollout``: imagined rollouts written straight to rosbag2 (MCAP), without DDS.

    mirage-rollout --output bags/run0                       # the scripted tour, 30 s, shipped model
    mirage-rollout --commands cmds.csv --output bags/run1   # t,vx,vy,wz rows (seconds, m/s, rad/s)
    mirage-rollout --poses poses.json --output bags/run2    # [{"t":..,"x":..,"y":..,"yaw":..}, ...]
    mirage-rollout --commands-from-bag recorded/ --output bags/run3
    mirage-rollout --seed-bag recorded/ --output bags/run4  # imagine beyond a recording's first frame
    mirage-rollout --batch 8 --output bags/sweep            # 8 rollouts over world seeds, 8 bags

The simulator is built from the same ``config/sim.yaml`` as the node and every step writes the same
messages the node publishes (``ros/frame_messages.py``), stamped with sim time, plus ``/clock``, ``/tf``
and the commands. Faster than real time, deterministic per seed (messages are written in canonical
CDR, so equal rollouts give byte-identical bags); a failure leaves no finished-looking bag.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from tqdm import tqdm

from mirage_ros.geometry import OPTICAL_TO_CAMERA_LINK
from mirage_ros.kinematics import PlanarPose
from mirage_ros.ros.bag import BagWriter, tf_message_cdr, typestore_with_package_types
from mirage_ros.ros.conversions import image_to_array, planar_pose_from_matrix, pose_to_matrix, time_msg
from mirage_ros.ros.frame_messages import STEP_TOPICS, OutputConfig, frame_messages, resolve_frame_prefix
from mirage_ros.ros.parameters import default_config, parameters_from_yaml
from mirage_ros.ros.sim_node import NODE_NAME, PARAMETERS
from mirage_ros.simulator import StartSpec, build_simulator
from mirage_ros.tour import tour_rows
from mirage_ros.worlds.contact_sheet import contact_sheet


@dataclass
class Schedule:
    """Timed inputs: rows ``(t, a, b, c)`` = commands (vx, vy, wz) or poses (x, y, yaw); the latest row
    at or before a time applies."""

    times: np.ndarray
    values: np.ndarray
    kind: str  # "commands" | "poses"

    def __post_init__(self) -> None:
        if len(self.times) == 0:
            raise ValueError("the input has no rows")
        if not (np.all(np.isfinite(self.times)) and np.all(np.isfinite(self.values))):
            raise ValueError("the input contains NaN or inf")
        if np.any(np.diff(self.times) <= 0):
            raise ValueError("input times must increase strictly")

    def at(self, t: float) -> np.ndarray | None:
        index = int(np.searchsorted(self.times, t + 1e-9, side="right")) - 1
        return None if index < 0 else self.values[index]

    @property
    def duration(self) -> float:
        return float(self.times[-1])


def read_table(path: Path, columns: tuple[str, ...], kind: str) -> Schedule:
    """CSV (with a header naming ``columns``) or JSON (a list of objects with those keys)."""
    if not path.is_file():
        raise ValueError(f"input file not found: {path}")
    try:
        if path.suffix == ".json":
            rows = [[float(row[c]) for c in columns] for row in json.loads(path.read_text())]
        else:
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                missing = set(columns) - set(reader.fieldnames or [])
                if missing:
                    raise ValueError(f"missing columns {sorted(missing)}")
                rows = [[float(row[c]) for c in columns] for row in reader]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read {kind} ({error})") from error
    table = np.array(rows, dtype=np.float64).reshape(-1, len(columns))
    return Schedule(table[:, 0], table[:, 1:], kind)


def commands_from_bag(path: Path, topic: str = "/cmd_vel") -> Schedule:
    """The ``cmd_vel`` (Twist or TwistStamped) of an existing rosbag2, times relative to its first message."""
    rows = []
    typestore = typestore_with_package_types()
    with open_bag(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise ValueError(f"{path}: no topic {topic} (topics: {sorted(c.topic for c in reader.connections)})")
        for connection, timestamp, data in reader.messages(connections=connections):
            message = typestore.deserialize_cdr(data, connection.msgtype)
            twist = message.twist if hasattr(message, "twist") else message
            rows.append((timestamp * 1e-9, twist.linear.x, twist.linear.y, twist.angular.z))
    table = np.array(rows, dtype=np.float64)
    table[:, 0] -= table[0, 0]
    return Schedule(table[:, 0], table[:, 1:], "commands")


@contextmanager
def open_bag(path: Path) -> Iterator[Reader]:
    """An open rosbag2 reader (MCAP or sqlite3); a missing or damaged bag raises ``ValueError``."""
    if not Path(path).is_dir() or not (Path(path) / "metadata.yaml").is_file():
        raise ValueError(f"{path}: not a rosbag2 folder (no metadata.yaml)")
    reader = Reader(path)
    try:
        reader.open()
    except Exception as error:  # rosbags raises several reader error types for damaged bags
        raise ValueError(f"{path}: cannot open the bag ({error})") from error
    try:
        yield reader
    finally:
        reader.close()


def first_observation(path: Path, prefix: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, PlanarPose]:
    """RGB, depth, K and base pose of the first complete frame (image, depth, camera info and
    odometry with the same stamp) of a rosbag2, e.g. one recorded by this package."""
    wanted = {f"{prefix}/camera/image_raw": Image, f"{prefix}/camera/depth/image_raw": Image,
              f"{prefix}/camera/camera_info": CameraInfo, f"{prefix}/odom": Odometry}
    seen: dict[tuple[int, int], dict[str, object]] = {}
    with open_bag(path) as reader:
        connections = [c for c in reader.connections if c.topic in wanted]
        missing = set(wanted) - {c.topic for c in connections}
        if missing:
            raise ValueError(f"{path}: missing topics {sorted(missing)}")
        for connection, _, data in reader.messages(connections=connections):
            message = deserialize_message(data, wanted[connection.topic])
            stamp = (message.header.stamp.sec, message.header.stamp.nanosec)
            frame = seen.setdefault(stamp, {})
            frame[connection.topic] = message
            if len(frame) == len(wanted):
                info = frame[f"{prefix}/camera/camera_info"]
                pose = planar_pose_from_matrix(pose_to_matrix(frame[f"{prefix}/odom"].pose.pose))
                return (image_to_array(frame[f"{prefix}/camera/image_raw"]),
                        image_to_array(frame[f"{prefix}/camera/depth/image_raw"]),
                        np.array(info.k, dtype=np.float64).reshape(3, 3), pose)
    raise ValueError(f"{path}: no frame with image, depth, camera info and odometry at the same stamp")


def tour_schedule(duration: float) -> Schedule:
    """The scripted tour (``mirage_ros.tour``) as commands for ``duration`` seconds."""
    table = tour_rows(duration)
    return Schedule(table[:, 0], table[:, 1:], "commands")


def rollout_to_bag(params: dict, schedule: Schedule, steps: int, output: Path, start: StartSpec | None = None,
            initial_pose: PlanarPose | None = None, preview: Path | None = None, progress: bool = True) -> Path:
    """Run one rollout into the bag ``output``; returns its path."""
    simulator = build_simulator(params)
    if start is not None:
        simulator.start = start
    if initial_pose is not None:
        simulator.initial_pose = initial_pose
    simulator.reset()
    dt = 1.0 / params["rate"]
    output_settings = OutputConfig.from_parameters(params, resolve_frame_prefix(params["frame_prefix"], "/"))
    preview_frames = []
    with BagWriter(output) as bag:
        for topic, kind in STEP_TOPICS.items():
            bag.add_topic("/" + topic, f"{kind.__module__.split('.')[0]}/msg/{kind.__name__}")
        for topic, type_name in (("/clock", "rosgraph_msgs/msg/Clock"), ("/tf", "tf2_msgs/msg/TFMessage"),
                                 ("/tf_static", "tf2_msgs/msg/TFMessage"), ("/cmd_vel", "geometry_msgs/msg/Twist")):
            bag.add_topic(topic, type_name)
        out = output_settings
        bag.write("/tf_static", 0, tf_message_cdr(bag.typestore, 0, [
            (out.base_frame, out.camera_frame, simulator.mount.base_to_camera_link),
            (out.camera_frame, out.optical_frame, OPTICAL_TO_CAMERA_LINK)]))
        for k in tqdm(range(steps), desc=f"rollout {output.name}", unit="step", disable=not progress):
            t = k * dt
            values = schedule.at(t)
            pose = None
            if schedule.kind == "commands":
                vx, vy, wz = values if values is not None else (0.0, 0.0, 0.0)
                simulator.base.command(vx, vy, wz, stamp=t)
                command = Twist()
                command.linear.x, command.linear.y, command.angular.z = float(vx), float(vy), float(wz)
                bag.write_canonical("/cmd_vel", int(round(t * 1e9)), serialize_message(command))
            elif values is not None:
                pose = PlanarPose(*values)
            now = t + dt
            frame = simulator.step(dt, now, pose)
            stamp, nanoseconds = time_msg(now), int(round(now * 1e9))
            bag.write_canonical("/clock", nanoseconds, serialize_message(Clock(clock=stamp)))
            for topic, message in frame_messages(frame, stamp, simulator.camera, simulator.mount,
                                                 output_settings).items():
                bag.write_canonical("/" + topic, nanoseconds, serialize_message(message))
            bag.write("/tf", nanoseconds, tf_message_cdr(bag.typestore, nanoseconds,
                                                         [(out.odom_frame, out.base_frame, frame.pose.matrix())]))
            if preview is not None and k % max(1, steps // 18) == 0:
                preview_frames.append((frame.result.rgb, frame.result.depth))
    if preview is not None and preview_frames:
        contact_sheet(preview_frames, columns=6, title=f"{output.name}: {steps} steps").save(preview)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--commands", type=Path, help="CSV/JSON of t, vx, vy, wz (s, m/s, rad/s)")
    source.add_argument("--poses", type=Path, help="CSV/JSON of t, x, y, yaw: the base follows these poses")
    source.add_argument("--commands-from-bag", type=Path, help="replay the /cmd_vel of an existing rosbag2")
    parser.add_argument("--seed-bag", type=Path, help="start from the first RGB-D frame of this rosbag2")
    parser.add_argument("--output", type=Path, required=True, help="bag folder (with --batch: parent folder)")
    parser.add_argument("--config", type=Path, default=None, help="node parameter file (default config/sim.yaml)")
    parser.add_argument("--duration", type=float, default=None, help="sim seconds (default: the input's length, "
                        "or 30 s for the scripted tour)")
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: the config's)")
    parser.add_argument("--world-seed", type=int, default=None, help="procedural start world (default: config)")
    parser.add_argument("--batch", type=int, default=1, help="N rollouts over N consecutive world seeds")
    parser.add_argument("--model", type=str, default=None, help="world model checkpoint (default: config/shipped)")
    parser.add_argument("--preview", action="store_true", help="also write <bag>.png, a contact sheet")
    args = parser.parse_args(argv)
    try:
        overrides = {k: v for k, v in (("seed", args.seed), ("world_seed", args.world_seed),
                                       ("model_path", args.model)) if v is not None}
        params = parameters_from_yaml(args.config or default_config(), NODE_NAME, PARAMETERS, overrides)
        if params["robots"]:
            raise ValueError("robots: mirage-rollout simulates one robot; several in one world run in mirage_sim")
        if args.commands:
            schedule = read_table(args.commands, ("t", "vx", "vy", "wz"), "commands")
        elif args.poses:
            schedule = read_table(args.poses, ("t", "x", "y", "yaw"), "poses")
        elif args.commands_from_bag:
            schedule = commands_from_bag(args.commands_from_bag)
        else:
            schedule = tour_schedule(args.duration or 30.0)
        duration = args.duration or max(schedule.duration, 1.0 / params["rate"])
        steps = max(1, int(round(duration * params["rate"])))
        start = initial_pose = None
        if args.seed_bag:
            rgb, depth, K, initial_pose = first_observation(args.seed_bag)
            start = StartSpec(rgb=rgb, depth=depth, K=tuple(K.reshape(-1)))
        if args.batch < 1:
            raise ValueError("--batch must be at least 1")
        outputs = ([args.output] if args.batch == 1 else
                   [args.output / f"rollout_world{params['world_seed'] + i:05d}" for i in range(args.batch)])
        started = time.perf_counter()
        for index, output in enumerate(outputs):
            run_params = dict(params, world_seed=params["world_seed"] + index)
            rollout_to_bag(run_params, schedule, steps, output, start, initial_pose,
                    output.with_suffix(".png") if args.preview else None)
        elapsed = time.perf_counter() - started
        print(f"{len(outputs)} rollout(s) of {steps} steps ({steps / params['rate']:.1f} s sim) in {elapsed:.1f} s: "
              f"{steps * len(outputs) / params['rate'] / elapsed:.2f}x real time -> {', '.join(map(str, outputs))}")
    except (ValueError, FileExistsError) as error:
        print(f"mirage-rollout: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
