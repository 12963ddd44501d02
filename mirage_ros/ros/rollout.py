"""``mirage-rollout``: imagined rollouts written straight to rosbag2 (MCAP), without DDS.

    mirage-rollout --output bags/run0                       # the demo tour (mirage_ros/tour.py), 30 s
    mirage-rollout --commands cmds.csv --output bags/run1   # t,vx,vy,wz rows (seconds, m/s, rad/s)
    mirage-rollout --poses poses.json --output bags/run2    # [{"t":..,"x":..,"y":..,"yaw":..}, ...]
    mirage-rollout --commands-from-bag recorded/ --output bags/run3
    mirage-rollout --seed-bag recorded/ --output bags/run4  # imagine beyond a recording's first frame
    mirage-rollout --map-bag recorded/ --poses route.json --output bags/run5  # new routes through a recorded place
    mirage-rollout --renderer ground_truth --output bags/truth  # the same topics from the true procedural world
    mirage-rollout --batch 8 --output bags/sweep            # 8 rollouts over world seeds, 8 bags
    mirage-rollout --batch 8 --jobs 2 --output bags/sweep   # the same, two at a time

The simulator is built from the same ``config/sim.yaml`` as the node and every step writes the same
messages the node publishes (``ros/frame_messages.py``), stamped with sim time, plus ``/clock``, ``/tf``
and the commands. Faster than real time, deterministic per seed and thread count (messages are written in
canonical CDR, so equal rollouts give byte-identical messages; torch's thread count changes the networks'
rounding); a failure leaves no finished-looking bag.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from geometry_msgs.msg import Twist
from rclpy.serialization import serialize_message
from rosgraph_msgs.msg import Clock
from tqdm import tqdm

from mirage_ros.geometry import OPTICAL_TO_CAMERA_LINK
from mirage_ros.kinematics import PlanarPose
from mirage_ros.model.world_model import MEMORY_KINDS, WorldModel
from mirage_ros.ros.bag import BagWriter, tf_message_cdr
from mirage_ros.ros.conversions import time_msg
from mirage_ros.ros.frame_messages import STEP_TOPICS, OutputConfig, frame_messages, resolve_frame_prefix
from mirage_ros.ros.parameters import default_config, parameters_from_yaml
from mirage_ros.ros.recording import (RecordingOptions, add_recording_arguments, options_from_arguments,
                                      read_recording, start_in_recording)
from mirage_ros.ros.recording import commands_from_bag as recorded_commands
from mirage_ros.ros.sim_node import NODE_NAME, PARAMETERS
from mirage_ros.sensors import RangeScan
from mirage_ros.simulator import RENDERERS, StartSpec, build_simulator, build_world_model
from mirage_ros.tour import Tour
from mirage_ros.worlds.contact_sheet import contact_sheet


#: Seconds of sim time a rollout of the demo tour lasts unless told otherwise.
TOUR_DURATION = 30.0


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
    """The ``cmd_vel`` (Twist or TwistStamped) of an existing bag, times relative to its first message."""
    table = recorded_commands(path, topic)
    return Schedule(table[:, 0], table[:, 1:], "commands")


def rollout_to_bag(params: dict, schedule: Schedule | Tour, steps: int, output: Path, start: StartSpec | None = None,
                   initial_pose: PlanarPose | None = None, preview: Path | None = None, progress: bool = True,
                   map_bag: Path | None = None, recording_options: RecordingOptions | None = None,
                   model: WorldModel | None = None) -> Path:
    """Run one rollout into the bag ``output``; returns its path. ``schedule``: timed inputs, or a
    ``Tour`` steered each step from the base's pose and the scan of the last frame. ``map_bag``: the
    memory is built from every usable frame of this recording first (its odometry frame is the rollout's).
    ``model``: the world model of an earlier rollout with these parameters, to use again (``build_simulator``)."""
    simulator = build_simulator(params, progress=progress, model=model)
    if start is not None:
        simulator.start = start
    if map_bag is not None:
        print(start_in_recording(simulator, map_bag, recording_options, progress), file=sys.stderr)
    if initial_pose is not None:
        simulator.initial_pose = initial_pose
    simulator.reset()
    dt = 1.0 / params["rate"]
    output_settings = OutputConfig.from_parameters(params, resolve_frame_prefix(params["frame_prefix"], "/"))
    preview_frames, scan = [], None
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
            if isinstance(schedule, Tour):
                kind, (forward, yaw_rate) = "commands", schedule.command(simulator.base.pose, scan)
                values = np.array([forward, 0.0, yaw_rate])
            else:
                kind, values = schedule.kind, schedule.at(t)
            pose = None
            if kind == "commands":
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
            messages = frame_messages(frame, stamp, simulator.camera, simulator.mount, output_settings)
            for topic, message in messages.items():
                bag.write_canonical("/" + topic, nanoseconds, serialize_message(message))
            if isinstance(schedule, Tour):  # what the tour reads next step, as make run reads the scan topic
                laser = messages.get("scan")
                scan = (RangeScan.from_laser(laser.angle_min, laser.angle_increment, laser.ranges) if laser is not None
                        else RangeScan.from_depth(frame.result.depth, simulator.camera.K,
                                                  simulator.mount.base_to_optical, simulator.camera.hfov))
            bag.write("/tf", nanoseconds, tf_message_cdr(bag.typestore, nanoseconds,
                                                         [(out.odom_frame, out.base_frame, frame.pose.matrix())]))
            if preview is not None and k % max(1, steps // 18) == 0:
                preview_frames.append((frame.result.rgb, frame.result.depth))
    if preview is not None and preview_frames:
        contact_sheet(preview_frames, columns=6, title=f"{output.name}: {steps} steps").save(preview)
    return output


@dataclass(frozen=True)
class Rollout:
    """One rollout of a batch: ``rollout_to_bag``'s arguments but the model (``schedule`` None: a fresh
    demo tour)."""

    params: dict
    schedule: Schedule | None
    steps: int
    output: Path
    start: StartSpec | None = None
    initial_pose: PlanarPose | None = None
    preview: Path | None = None
    map_bag: Path | None = None
    recording_options: RecordingOptions | None = None

    def run(self, model: WorldModel, progress: bool = True) -> Path:
        return rollout_to_bag(self.params, self.schedule or Tour(), self.steps, self.output, self.start,
                              self.initial_pose, self.preview, progress, self.map_bag, self.recording_options, model)


def run_rollouts(rollouts: list[Rollout], jobs: int = 1) -> list[Path]:
    """Run ``rollouts`` (of one model: the first one's parameters but the world seed) and return their bags.

    One job: one model, loaded and traced once, reset by each rollout, so each bag is the one a rollout of
    that world alone writes. Several: ``jobs`` worker processes (spawned, not forked: torch's thread pools
    do not survive a fork), each with its own model and ``torch.get_num_threads() // jobs`` threads, take
    the rollouts in turn. The memory read and write, the depth composition and the messages are mostly
    single-threaded, so on a CPU parallel rollouts finish more of a batch per second than threads within
    one. Each bag is then the one a rollout alone writes with that many threads (the networks' rounding
    depends on the thread count). A failed rollout raises here; the bags finished before it stay."""
    if jobs <= 1:
        model = build_world_model(rollouts[0].params)
        return [rollout.run(model) for rollout in rollouts]
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=_start_worker, initargs=(threads,)) as pool:
        bags = list(tqdm(pool.imap(_run_in_worker, rollouts), total=len(rollouts), desc="rollouts", unit="bag"))
        pool.close()  # let the workers exit on their own: terminated ones leave semaphores behind
        pool.join()
    return bags


#: The model of a ``run_rollouts`` worker process, built by its first rollout (an error there reaches the
#: caller; one raised by a pool's initializer would only make the pool start the worker again, for ever).
_worker_model: WorldModel | None = None


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_worker(rollout: Rollout) -> Path:
    global _worker_model
    if _worker_model is None:
        _worker_model = build_world_model(rollout.params)
    return rollout.run(_worker_model, progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--commands", type=Path, help="CSV/JSON of t, vx, vy, wz (s, m/s, rad/s)")
    source.add_argument("--poses", type=Path, help="CSV/JSON of t, x, y, yaw: the base follows these poses")
    source.add_argument("--commands-from-bag", type=Path, help="replay the /cmd_vel of an existing rosbag2")
    parser.add_argument("--seed-bag", type=Path, help="start from the first RGB-D frame of this bag")
    parser.add_argument("--map-bag", type=Path, help="build the memory from every usable RGB-D frame of this bag "
                        "(a recorded place), then drive the route through it")
    parser.add_argument("--memory", choices=MEMORY_KINDS, default=None, help="spatial memory (default: the config's)")
    parser.add_argument("--renderer", choices=RENDERERS, default=None, help="model (learned) or ground_truth "
                        "(the procedural world itself); default: the config's")
    parser.add_argument("--output", type=Path, required=True, help="bag folder (with --batch: parent folder)")
    parser.add_argument("--config", type=Path, default=None, help="node parameter file (default config/sim.yaml)")
    parser.add_argument("--duration", type=float, default=None, help="sim seconds (default: the input's length, "
                        f"or {TOUR_DURATION:g} s of the demo tour)")
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: the config's)")
    parser.add_argument("--world-seed", type=int, default=None, help="procedural start world (default: config)")
    parser.add_argument("--batch", type=int, default=1, help="N rollouts over N consecutive world seeds")
    parser.add_argument("--jobs", type=int, default=1, help="with --batch: run the rollouts in J processes at once, "
                        "each with 1/J of torch's threads (more throughput on a CPU: much of a step is single-threaded)")
    parser.add_argument("--model", type=str, default=None, help="world model checkpoint (default: config/shipped)")
    parser.add_argument("--preview", action="store_true", help="also write <bag>.png, a contact sheet")
    add_recording_arguments(parser)
    args = parser.parse_args(argv)
    try:
        overrides = {k: v for k, v in (("seed", args.seed), ("world_seed", args.world_seed),
                                       ("model_path", args.model), ("renderer", args.renderer),
                                       ("memory", args.memory)) if v is not None}
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
            schedule = None  # the demo tour, a fresh one per rollout
        default_duration = TOUR_DURATION if schedule is None else max(schedule.duration, 1.0 / params["rate"])
        duration = args.duration or default_duration
        steps = max(1, int(round(duration * params["rate"])))
        start = initial_pose = None
        recording_options = options_from_arguments(args, size_hw=None)
        if args.seed_bag:
            first = read_recording(args.seed_bag, recording_options).frames[0]
            start, initial_pose = StartSpec(rgb=first.rgb, depth=first.depth, K=tuple(first.K.reshape(-1))), first.base_pose
        if args.seed_bag and args.map_bag:
            raise ValueError("--seed-bag and --map-bag both say where to start; give one")
        if args.batch < 1:
            raise ValueError("--batch must be at least 1")
        if args.jobs < 1:
            raise ValueError("--jobs must be at least 1")
        outputs = ([args.output] if args.batch == 1 else
                   [args.output / f"rollout_world{params['world_seed'] + i:05d}" for i in range(args.batch)])
        rollouts = [Rollout(dict(params, world_seed=params["world_seed"] + index), schedule, steps, output, start,
                            initial_pose, output.with_suffix(".png") if args.preview else None, args.map_bag,
                            recording_options) for index, output in enumerate(outputs)]
        started = time.perf_counter()
        run_rollouts(rollouts, min(args.jobs, len(rollouts)))
        elapsed = time.perf_counter() - started
        print(f"{len(outputs)} rollout(s) of {steps} steps ({steps / params['rate']:.1f} s sim) in {elapsed:.1f} s: "
              f"{steps * len(outputs) / params['rate'] / elapsed:.2f}x real time -> {', '.join(map(str, outputs))}")
    except (ValueError, FileExistsError) as error:
        print(f"mirage-rollout: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
