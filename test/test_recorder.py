"""Record a short closed-loop run with mirage_record (its own process) and read the bag back."""

from __future__ import annotations

import signal
import subprocess

import numpy as np
import pytest
from geometry_msgs.msg import Twist
from mcap_check import decode_every_message
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message
from ros_harness import ConsoleProcess, Recorder, node_args, node_process, ros_client, wait_until_running
from rosbags.rosbag2 import Reader
from rcl_interfaces.msg import Log
from rosgraph_msgs.msg import Clock

from mirage_ros.msg import SimStatus
from mirage_ros.ros.conversions import time_msg
from mirage_ros.ros.recorder import DEFAULT_TOPICS, message_class

pytestmark = pytest.mark.ros


class RecorderProcess(ConsoleProcess):
    """mirage_record writing `bag` in its own process, on sim time (as the launch file starts it), under the node
    name `name` (so its /rosout messages can be told apart)."""

    def __init__(self, bag, name: str = "mirage_record") -> None:
        super().__init__("-m", "mirage_ros.ros.recorder", "--ros-args", "-r", f"__node:={name}",
                         "-p", f"output:={bag}", "-p", "use_sim_time:=true")

    def stop(self) -> str:
        """Ctrl-C: the recorder finishes; it must exit cleanly, with no rosout error on the way out."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # fail with what the recorder said, not a bare timeout
            self.process.kill()
            self.process.wait(timeout=10)
            self.reader.join(timeout=10)
            pytest.fail("mirage_record did not exit within 60 s of Ctrl-C; its console:\n" + "".join(self.lines))
        self.reader.join(timeout=10)
        output = "".join(self.lines)
        assert self.process.returncode == 0, output
        assert "Failed to publish log message to rosout" not in output, output
        return output


def test_recorded_bag_holds_every_step_with_consistent_stamps(tiny_checkpoint, tmp_path):
    bag = tmp_path / "rollout"
    recorder = RecorderProcess(bag)
    try:
        with node_process("mirage_ros.ros.sim_node", *node_args(tiny_checkpoint)), ros_client("driver") as client:
            live = Recorder(client)
            cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
            wait_until_running(client, live, cmd_vel)
            command = Twist()
            command.linear.x, command.angular.z = 0.3, 0.4
            client.node.create_timer(0.05, lambda: cmd_vel.publish(command))
            # The recorder starts in parallel and may be slow to come up on a loaded machine: count the 50 frames
            # from its first recorded image (on sim time it records nothing before its first /clock, and discovery
            # is pairwise: in CI runs its bag began 27 and 38 frames after this client saw it subscribe).
            client.spin_until(lambda: recorder.has_said("recording /camera/image_raw: first message"), timeout=90,
                              what="the recorder to record its first image")
            joined = len(live.images)
            client.spin_until(lambda: len(live.images) > joined + 50, timeout=90, what="50 recorded frames")
    finally:
        recorder.stop()  # Ctrl-C: the recorder finishes the bag
    assert not (tmp_path / ".rollout.partial").exists()

    with Reader(bag) as reader:
        topics = {c.topic: c for c in reader.connections}
        messages: dict[str, list] = {topic: [] for topic in topics}
        for connection, timestamp, data in reader.messages():
            kind = message_class(connection.msgtype) if connection.msgtype != "tf2_msgs/msg/TFMessage" else None
            messages[connection.topic].append((timestamp, deserialize_message(data, kind) if kind else data))
    expected = {("/" + t if not t.startswith("/") else t) for t, kind in DEFAULT_TOPICS.items()
                if not kind.startswith("tf2_msgs")}
    assert expected <= set(topics), sorted(expected - set(topics))
    assert all(topics[t].msgdef.data for t in topics)  # definitions embedded, the custom one included
    assert "in_contact" in topics["/mirage_sim/status"].msgdef.data
    # The official MCAP reader decodes every message, SimStatus included, from those definitions alone.
    assert decode_every_message(bag) == {topic: len(values) for topic, values in messages.items()}

    stamp = lambda m: m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
    images = [stamp(m) for _, m in messages["/camera/image_raw"]]
    assert len(images) >= 30
    np.testing.assert_allclose(np.diff(images), 0.05, atol=1e-6)  # no step lost between first and last
    per_step = {topic: [stamp(m) for _, m in messages[topic]] for topic in
                ("/camera/image_raw", "/camera/depth/image_raw", "/camera/camera_info", "/camera/depth/camera_info",
                 "/odom", "/scan")}
    # Within the window where every subscription was matched, all topics hold the same steps.
    start, end = max(v[0] for v in per_step.values()), min(v[-1] for v in per_step.values())
    window = {t for t in images if start <= t <= end}
    assert len(window) >= 25
    for topic, values in per_step.items():
        assert {t for t in values if start <= t <= end} == window, topic
    bag_times = [t for t, _ in messages["/camera/image_raw"]]
    assert all(b >= a for a, b in zip(bag_times, bag_times[1:]))  # sim-time receive stamps, monotonic
    assert bag_times[0] < 1e12  # sim time (seconds since start), not wall-clock epoch
    assert isinstance(messages["/mirage_sim/status"][-1][1], SimStatus)


def test_without_clock_nothing_is_recorded_stamped_zero_and_the_recorder_says_why(tiny_checkpoint, tmp_path):
    """A simulator that does not own /clock next to a recorder on sim time: the recorder waits, warns, and
    records from the first /clock on; one stopped before any /clock leaves no bag."""
    waiting, never = RecorderProcess(tmp_path / "waiting", "record_waiting"), RecorderProcess(tmp_path / "never",
                                                                                              "record_never")
    try:
        with node_process("mirage_ros.ros.sim_node", *node_args(tiny_checkpoint, "-p", "publish_clock:=false")), \
                ros_client("clock") as client:
            live = Recorder(client)
            rosout: list[Log] = []
            client.node.create_subscription(Log, "/rosout", rosout.append, QoSProfile(depth=1000))
            cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
            wait_until_running(client, live, cmd_vel)
            # Each recorder warns on the first message it had to drop (a fixed wait was too short in one CI run).
            # Wait for the warnings on /rosout, not on the console: the console line is written first, and a Ctrl-C
            # between the two made the recorder's own log call fail to reach /rosout (one CI run).
            warned = lambda name: any(m.name == name and "no /clock has arrived" in m.msg for m in rosout)
            client.spin_until(lambda: warned("record_waiting") and warned("record_never"), timeout=90,
                              what="both recorders to receive frames before any /clock")
            never_output = never.stop()
            clock = client.node.create_publisher(Clock, "/clock", 10)
            ticks = iter(range(1_000_000))
            client.node.create_timer(0.05, lambda: clock.publish(Clock(clock=time_msg(1000.0 + 0.05 * next(ticks)))))
            # Frames published once the clock runs (counted as another subscriber sees them; slow under load).
            clocked = len(live.images)
            client.spin_until(lambda: len(live.images) >= clocked + 30, timeout=90, what="frames after the clock")
            client.spin_for(0.5)
    finally:
        output = waiting.stop()
    assert "no bag written: no message was recorded" in never_output and "for want of /clock" in never_output
    assert not (tmp_path / "never").exists() and not (tmp_path / ".never.partial").exists()
    assert "no /clock has arrived" in output and "for want of /clock" in output
    with Reader(tmp_path / "waiting") as reader:
        stamps = {connection.topic: [] for connection in reader.connections}
        for connection, timestamp, _ in reader.messages():
            stamps[connection.topic].append(timestamp)
    assert len(stamps["/camera/image_raw"]) >= 5  # of the 30+ published; fewer arrive when the cores are busy
    assert min(min(values) for values in stamps.values() if values) >= 1000e9  # nothing stamped before the clock
