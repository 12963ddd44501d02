"""How a node process stops (``mirage_ros.ros.spin.run_node``, and ``mirage-run``): signals end it between
callbacks, never inside one, and a second signal (``ros2 launch`` adds its own SIGINT to the terminal's) does not
cut the clean-up short."""

from __future__ import annotations

import signal
import textwrap
import time

import pytest
from ros_harness import ConsoleProcess

from mirage_ros.ros.parameters import default_config

pytestmark = pytest.mark.ros

#: A node whose one timer callback takes a second, with a close() that also takes time, run by run_node.
SLOW_NODE = textwrap.dedent("""
    import sys, time
    from rclpy.node import Node
    from mirage_ros.ros.spin import run_node

    class Slow(Node):
        def __init__(self):
            print("creating", flush=True)
            time.sleep(float(sys.argv[1]))
            super().__init__("slow")
            self.timer = self.create_timer(0.05, self.work)

        def work(self):
            self.timer.cancel()
            print("callback started", flush=True)
            time.sleep(1.0)
            print("callback finished", flush=True)

        def close(self):
            time.sleep(0.5)
            return "closed"

    raise SystemExit(run_node(Slow, "slow", sys.argv[2:]))
""")


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=["ctrl-c", "ctrl-c-and-launch", "sigterm"])
def test_a_signal_stops_the_node_between_callbacks_and_the_clean_up_runs_whole(signals):
    node = ConsoleProcess("-c", SLOW_NODE, "0")
    node.wait_for("callback started")
    for number in signals:
        node.process.send_signal(number)
        time.sleep(0.2)  # the second one lands while the callback still runs
    output = node.finish()
    assert node.process.returncode == 0, output
    assert "callback finished" in output and "[slow] closed" in output, output
    assert "Traceback" not in output, output


def test_ctrl_c_while_the_node_is_being_made_stops_at_once():
    node = ConsoleProcess("-c", SLOW_NODE, "60")
    node.wait_for("creating")
    started = time.monotonic()
    node.process.send_signal(signal.SIGINT)
    output = node.finish()
    assert time.monotonic() - started < 20, output  # not the 60 s the node would take to be made
    assert node.process.returncode == 0 and "[slow]" not in output, output


def test_mirage_run_until_ctrl_c_still_writes_its_report(tiny_checkpoint, tmp_path):
    """``make run DURATION=0``: Ctrl-C, twice as a hurried user would, ends the run and the report is written."""
    config = tmp_path / "sim.yaml"
    config.write_text(default_config().read_text().replace('model_path: ""', f'model_path: "{tiny_checkpoint}"'))
    assert str(tiny_checkpoint) in config.read_text()
    run = ConsoleProcess("-m", "mirage_ros.ros.run", "--duration", "0", "--config", str(config),
                         "--output", str(tmp_path / "report"))
    run.wait_for("  step ", timeout=120)  # progress: odometry is flowing
    for _ in range(2):
        run.process.send_signal(signal.SIGINT)
        time.sleep(0.2)
    output = run.finish(timeout=60)
    assert run.process.returncode == 0 and "Traceback" not in output, output
    assert (tmp_path / "report" / "frames.png").is_file() and (tmp_path / "report" / "path.png").is_file()
    assert len((tmp_path / "report" / "odometry.csv").read_text().splitlines()) > 2
