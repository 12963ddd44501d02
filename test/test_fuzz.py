"""Attacks on a running simulator from another process: every service with boundary and garbage
arguments, corrupt memory files, bad commands, poses and parameter sets. After each, the node must
have answered, be unchanged where the request failed, and still publish.

One node serves the whole module. It is paused first, so its state stands still between attacks:
the memory is read back by saving it (``~/save_memory`` answers with the file, byte for byte), the
base pose from the odometry of one stepped frame.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from geometry_msgs.msg import PoseWithCovarianceStamped, Twist
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from ros_harness import Recorder, call, initial_pose_message, node_args, node_process, ros_client, wait_until_running
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from std_srvs.srv import Trigger

from mirage_ros.srv import MemoryFile, Reset, StepFrames

pytestmark = pytest.mark.ros


class Harness:
    """The paused node under attack and the means to read its state."""

    def __init__(self, client, recorder: Recorder, cmd_vel, initialpose, folder: Path) -> None:
        self.client, self.recorder, self.cmd_vel, self.initialpose = client, recorder, cmd_vel, initialpose
        self.folder = folder
        self.snapshots = 0

    def service(self, kind, name: str, request):
        return call(self.client, kind, f"/mirage_sim/{name}", request)

    def memory(self) -> tuple[dict, dict]:
        """The memory as the node saves it: metadata and every tensor's bytes (equal: equal memory)."""
        self.snapshots += 1
        path = self.folder / f"snapshot{self.snapshots}.safetensors"
        response = self.service(MemoryFile, "save_memory", MemoryFile.Request(path=str(path)))
        assert response.success, response.message
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata()
        tensors = {name: tensor.numpy().tobytes() for name, tensor in load_file(str(path)).items()}
        path.unlink()
        return metadata, tensors

    def step_once(self) -> tuple[float, float]:
        """Generate one frame; returns the base position it was published with (proof of life)."""
        count, statuses = len(self.recorder.odometry), len(self.recorder.statuses)
        assert self.service(StepFrames, "step", StepFrames.Request(frames=1)).success
        self.client.spin_until(lambda: len(self.recorder.odometry) > count and len(self.recorder.statuses) > statuses,
                               timeout=30, what="a stepped frame and its status")
        position = self.recorder.odometry[-1].pose.pose.position
        return position.x, position.y

    def refused_without_change(self, attack, *args) -> str:
        """Run ``attack``; it must fail (or, for topics, be ignored), leaving memory and pose as they were."""
        pose = self.step_once()
        memory = self.memory()
        message = attack(*args)
        self.client.spin_for(0.2)  # topic attacks: let the message arrive
        assert self.memory() == memory, f"memory changed by a refused request ({args})"
        assert self.step_once() == pytest.approx(pose, abs=1e-9), f"base moved by a refused request ({args})"
        return message


def failed_load(h: Harness, path: Path) -> str:
    response = h.service(MemoryFile, "load_memory", MemoryFile.Request(path=str(path)))
    assert not response.success, f"{path.name} was accepted"
    return response.message


def failed_save(h: Harness, path: str) -> str:
    response = h.service(MemoryFile, "save_memory", MemoryFile.Request(path=path))
    assert not response.success, f"saving to {path!r} was accepted"
    assert not list(Path(path).parent.glob("*.partial")) if Path(path).parent.is_dir() else True
    return response.message


def variant(source: Path, target: Path, tensors: dict | None = None, metadata: dict | None = None,
            drop: tuple[str, ...] = ()) -> Path:
    """A copy of the saved memory ``source`` with some tensors or metadata replaced or dropped."""
    original = load_file(str(source))
    with safe_open(str(source), framework="pt") as reader:
        meta = dict(reader.metadata())
    original.update(tensors or {})
    meta.update(metadata or {})
    save_file({k: v.contiguous() for k, v in original.items() if k not in drop}, str(target),
              metadata={k: v for k, v in meta.items() if k not in drop})
    return target


def corrupt_files(good: Path, folder: Path) -> dict[str, Path]:
    """Every class of bad memory file, from the node's own valid one."""
    data = good.read_bytes()
    tensors = load_file(str(good))
    header_length = struct.unpack("<Q", data[:8])[0]
    files = {}

    def write(name: str, content: bytes) -> None:
        files[name] = folder / f"{name}.safetensors"
        files[name].write_bytes(content)

    write("empty", b"")
    write("truncated_header", data[:20])
    write("truncated_data", data[: len(data) // 2])
    write("huge_header_claim", struct.pack("<Q", 1 << 40) + data[8:])
    write("header_not_json", data[:8] + b"{" * header_length + data[8 + header_length:])
    flipped = bytearray(data)
    flipped[8 + header_length // 2] ^= 0xFF  # inside the JSON header
    write("bit_flipped_header", bytes(flipped))
    write("random_bytes", bytes(range(256)) * 8)
    keys = tensors["keys"]
    count = keys.shape[0]
    files["no_config"] = variant(good, folder / "no_config.safetensors", drop=("config",))
    files["config_is_list"] = variant(good, folder / "config_list.safetensors", metadata={"config": "[1, 2]"})
    files["config_not_json"] = variant(good, folder / "config_bad.safetensors", metadata={"config": "{nope"})
    files["other_format"] = variant(good, folder / "format.safetensors", metadata={"format": "something.else"})
    files["other_version"] = variant(good, folder / "version.safetensors", metadata={"format_version": "99"})
    files["channels_not_int"] = variant(good, folder / "channels.safetensors", metadata={"channels": "four"})
    files["other_voxel_size"] = variant(good, folder / "voxel.safetensors", metadata={
        "config": json.dumps({**json.loads(safe_open(str(good), "pt").metadata()["config"]), "voxel_size": 0.5})})
    files["missing_tensor"] = variant(good, folder / "missing.safetensors", drop=("extents",))
    files["zero_d_keys"] = variant(good, folder / "zero_d.safetensors", tensors={"keys": torch.tensor(3)})
    files["wrong_shape"] = variant(good, folder / "shape.safetensors", tensors={"positions": torch.zeros(count, 2)})
    files["wrong_length"] = variant(good, folder / "length.safetensors", tensors={"weights": torch.ones(count + 1)})
    files["wrong_dtype"] = variant(good, folder / "dtype.safetensors",
                                   tensors={"features": tensors["features"].double()})
    files["other_channels"] = variant(good, folder / "channels13.safetensors", metadata={"channels": "13"},
                                      tensors={"features": torch.zeros(count, 13, dtype=torch.float16)})
    files["unsorted_keys"] = variant(good, folder / "unsorted.safetensors", tensors={"keys": keys.flip(0)})
    for name in ("positions", "normals", "features", "view_depths", "weights", "extents"):
        bad = tensors[name].clone()
        bad.view(-1)[0] = float("nan")
        files[f"nan_{name}"] = variant(good, folder / f"nan_{name}.safetensors", tensors={name: bad})
    files["negative_weight"] = variant(good, folder / "negative.safetensors", tensors={"weights": -tensors["weights"]})
    files["directory"] = folder
    files["missing"] = folder / "does_not_exist.safetensors"
    return files


def twist(vx: float, wz: float = 0.0, vy: float = 0.0) -> Twist:
    msg = Twist()
    msg.linear.x, msg.linear.y, msg.angular.z = vx, vy, wz
    return msg


def parameter(name: str, value) -> Parameter:
    if isinstance(value, bool):
        v = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, float):
        v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    elif isinstance(value, int):
        v = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    else:
        v = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    return Parameter(name=name, value=v)


def test_no_request_takes_the_simulator_down(tiny_checkpoint, tmp_path):
    args = node_args(tiny_checkpoint, "-p", "command_timeout:=60.0")
    with node_process("mirage_ros.ros.sim_node", *args) as process, ros_client("attacker") as client:
        recorder = Recorder(client)
        cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
        initialpose = client.node.create_publisher(PoseWithCovarianceStamped, "/initialpose", 10)
        wait_until_running(client, recorder, cmd_vel, initialpose)
        h = Harness(client, recorder, cmd_vel, initialpose, tmp_path)
        assert h.service(Trigger, "pause", Trigger.Request()).success
        outcomes: dict[str, str] = {}

        # --- step and pause services: boundaries
        def bad_step(frames: int) -> str:
            response = h.service(StepFrames, "step", StepFrames.Request(frames=frames))
            assert not response.success, f"stepping {frames} frames was accepted"
            return response.message
        for frames in (0, 1001, 2**32 - 1):
            outcomes[f"step frames={frames}"] = h.refused_without_change(bad_step, frames)
        assert h.service(Trigger, "pause", Trigger.Request()).success  # pausing twice is harmless

        # --- reset with seeds the worlds do not have: fails, changes nothing
        for seed in (-1, -(2**63), 2**62):
            def bad_reset(value: int) -> str:
                response = h.service(Reset, "reset", Reset.Request(use_seed=True, seed=value))
                assert not response.success, f"reset to seed {value} was accepted"
                return response.message
            outcomes[f"reset seed={seed}"] = h.refused_without_change(bad_reset, seed)

        # --- save to places that cannot hold a file: fails, leaves nothing behind
        for path in ("", "/nonexistent-folder/memory.safetensors", "/proc/memory.safetensors", str(tmp_path),
                     str(tmp_path / ("x" * 300 + ".safetensors"))):
            outcomes[f"save {path[:40]!r}"] = h.refused_without_change(failed_save, h, path)
        assert not list(tmp_path.glob("*.partial"))

        # --- load every class of corrupt or mismatched memory file
        good = tmp_path / "good.safetensors"
        assert h.service(MemoryFile, "save_memory", MemoryFile.Request(path=str(good))).success
        (tmp_path / "bad").mkdir()
        for name, path in corrupt_files(good, tmp_path / "bad").items():
            outcomes[f"load {name}"] = h.refused_without_change(failed_load, h, path)

        # --- cmd_vel: non-finite and absurd commands are ignored (the base does not move)
        for command in (twist(math.nan), twist(math.inf), twist(0.0, -math.inf), twist(1e300), twist(-1e300),
                        twist(0.0, 1e9), twist(0.0, 0.0, math.nan)):
            outcomes[f"cmd_vel {command.linear.x, command.linear.y, command.angular.z}"] = h.refused_without_change(
                lambda c: h.cmd_vel.publish(c) or "ignored", command)

        # --- initialpose: NaN, inf, huge, outside the world, wrong frame, bad quaternions
        unit = (0.0, 0.0, 0.0, 1.0)
        for x, y, q, frame in ((math.nan, 0.0, unit, "odom"), (math.inf, 0.0, unit, "odom"), (1e6, 0.0, unit, "odom"),
                               (1e300, 0.0, unit, "odom"), (0.0, -2e4, unit, "odom"), (1.0, 0.0, unit, "map"),
                               (1.0, 0.0, (0.0, 0.0, 0.0, 0.0), "odom"), (1.0, 0.0, (0.0, 0.0, 0.0, 2.0), "odom"),
                               (1.0, 0.0, (math.nan, 0.0, 0.0, 1.0), "odom")):
            outcomes[f"initialpose {x, y, q, frame}"] = h.refused_without_change(
                lambda m: h.initialpose.publish(m) or "ignored", initial_pose_message(x, y, q, frame))

        # --- parameter sets: read-only, out of range, non-finite, wrong type, unknown
        for name, value in (("rate", 5.0), ("max_linear_velocity", -1.0), ("max_linear_velocity", math.nan),
                            ("max_linear_velocity", 1e9), ("command_timeout", "soon"), ("collision_radius", math.inf),
                            ("memory", "none"), ("no_such_parameter", 1.0)):
            def bad_set(n: str, v) -> str:
                response = h.service(SetParameters, "set_parameters", SetParameters.Request(
                    parameters=[parameter(n, v)]))
                assert not response.results[0].successful, f"{n}={v!r} was accepted"
                return response.results[0].reason
            outcomes[f"set {name}={value!r}"] = h.refused_without_change(bad_set, name, value)

        # --- valid requests still work afterwards, and the node is alive
        assert h.service(MemoryFile, "load_memory", MemoryFile.Request(path=str(good))).success
        h.initialpose.publish(initial_pose_message(1.5, -0.5, unit))
        client.spin_for(0.3)
        assert h.step_once() == pytest.approx((1.5, -0.5), abs=1e-6)
        steps_before = recorder.statuses[-1].steps
        response = h.service(Reset, "reset", Reset.Request(use_seed=True, seed=3))
        assert response.success, response.message
        assert h.step_once() == pytest.approx((0.0, 0.0), abs=1e-6)
        assert recorder.statuses[-1].steps == 1 < steps_before  # counted since the reset
        assert h.service(Trigger, "resume", Trigger.Request()).success
        count = len(recorder.images)
        client.spin_until(lambda: len(recorder.images) > count + 3, timeout=30, what="frames after resuming")
        assert process.poll() is None, "the simulator process died"
        print("\n".join(f"{attack}: {outcome}" for attack, outcome in outcomes.items()))
