"""The package's own message is generated, importable, and travels between two processes."""

import subprocess
import sys
from pathlib import Path

import pytest
from ros_harness import ros_client

from mirage_ros.msg import SimStatus

pytestmark = pytest.mark.ros


def test_status_message_between_two_processes():
    received: list[SimStatus] = []
    publisher = subprocess.Popen([sys.executable, str(Path(__file__).with_name("status_publisher.py"))])
    try:
        with ros_client("status_listener") as client:
            client.node.create_subscription(SimStatus, "/test_status", received.append, 10)
            client.spin_until(lambda: len(received) >= 3, timeout=30, what="SimStatus from the other process")
    finally:
        publisher.terminate()
        publisher.wait(timeout=10)
    msg = received[-1]
    assert msg.steps >= 3 and msg.memory_tokens == 1234 and msg.memory_bytes == 5_000_000_000
    assert msg.view_coverage == pytest.approx(0.75) and msg.step_latency == pytest.approx(0.042)
    assert msg.paused is True and msg.header.frame_id == "odom"
