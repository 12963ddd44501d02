"""mirage_sim services, called from another process: pause, step N, reset, save and load the memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from geometry_msgs.msg import Twist
from ros_harness import Recorder, call, node_args, node_process, ros_client, wait_until_running
from std_srvs.srv import Trigger

from mirage_ros.model import DEFAULT_CHECKPOINT
from mirage_ros.ros.conversions import image_to_array
from mirage_ros.srv import MemoryFile, Reset, StepFrames
from mirage_ros.training.metrics import psnr

pytestmark = pytest.mark.ros


def test_pause_step_and_reset(tiny_checkpoint):
    with node_process("mirage_ros.ros.sim_node", *node_args(tiny_checkpoint)), ros_client("operator") as client:
        recorder = Recorder(client)
        cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
        wait_until_running(client, recorder, cmd_vel)
        assert not call(client, StepFrames, "/mirage_sim/step", StepFrames.Request(frames=3)).success  # not paused
        assert call(client, Trigger, "/mirage_sim/pause", Trigger.Request()).success
        client.spin_for(0.5)
        count, statuses = len(recorder.images), len(recorder.statuses)
        client.spin_for(1.5)
        assert len(recorder.images) == count, "published while paused"
        assert len(recorder.statuses) == statuses, "status published while paused (SimStatus.msg: it is not)"
        assert call(client, StepFrames, "/mirage_sim/step", StepFrames.Request(frames=3)).success
        client.spin_until(lambda: len(recorder.images) >= count + 3, timeout=30, what="3 stepped frames")
        client.spin_for(1.0)
        assert len(recorder.images) == count + 3
        stepped = recorder.statuses[statuses:]
        assert len(stepped) == 3 and all(status.paused for status in stepped)  # stepped frames: status says paused
        assert call(client, Trigger, "/mirage_sim/resume", Trigger.Request()).success

        command = Twist()
        command.linear.x = 0.5
        driving = client.node.create_timer(0.02, lambda: cmd_vel.publish(command))
        client.spin_until(lambda: recorder.odometry[-1].pose.pose.position.x > 0.3, timeout=60, what="driving")
        client.node.destroy_timer(driving)
        client.spin_for(0.5)  # let commands already in flight arrive before the reset
        response = call(client, Reset, "/mirage_sim/reset", Reset.Request(use_seed=True, seed=7))
        assert response.success, response.message
        client.spin_for(0.5)
        count = len(recorder.odometry)
        client.spin_until(lambda: len(recorder.odometry) > count + 2, timeout=30, what="odometry after reset")
        assert abs(recorder.odometry[-1].pose.pose.position.x) < 0.05


@pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "world_model.json").is_file(), reason="no shipped checkpoint")
def test_saved_memory_reproduces_a_place_after_reset(tmp_path: Path):
    path = tmp_path / "memory.safetensors"
    args = node_args(DEFAULT_CHECKPOINT)
    with node_process("mirage_ros.ros.sim_node", *args), ros_client("mapper") as client:
        recorder = Recorder(client)
        cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
        wait_until_running(client, recorder, cmd_vel)
        assert call(client, Trigger, "/mirage_sim/pause", Trigger.Request()).success
        client.spin_for(0.5)
        before = image_to_array(recorder.images[-1])  # published at the start pose (nothing moved)
        assert call(client, MemoryFile, "/mirage_sim/save_memory", MemoryFile.Request(path=str(path))).success
        assert call(client, Reset, "/mirage_sim/reset", Reset.Request(use_seed=True, seed=3)).success  # elsewhere
        bad = call(client, MemoryFile, "/mirage_sim/load_memory", MemoryFile.Request(path=str(tmp_path / "nope")))
        assert not bad.success and "not found" in bad.message
        assert call(client, MemoryFile, "/mirage_sim/load_memory", MemoryFile.Request(path=str(path))).success
        count = len(recorder.images)
        assert call(client, StepFrames, "/mirage_sim/step", StepFrames.Request(frames=1)).success
        client.spin_until(lambda: len(recorder.images) > count, timeout=30, what="a frame from the loaded memory")
        after = image_to_array(recorder.images[-1])
    assert psnr(after, before) >= 30.0
