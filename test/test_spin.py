"""How a node process stops (``mirage_ros.ros.spin.run_node``): signals end it between callbacks, never
inside one, and a second signal (``ros2 launch`` adds its own SIGINT to the terminal's) does not cut the
clean-up short."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

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


class NodeConsole:
    def __init__(self, create_seconds: float) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SLOW_NODE, str(create_seconds)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines}"
            time.sleep(0.01)

    def finish(self, timeout: float = 30.0) -> str:
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self.reader.join(timeout=10)
        return "".join(self.lines)


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
                         ids=["ctrl-c", "ctrl-c-and-launch", "sigterm"])
def test_a_signal_stops_the_node_between_callbacks_and_the_clean_up_runs_whole(signals):
    node = NodeConsole(create_seconds=0.0)
    node.wait_for("callback started")
    for number in signals:
        node.process.send_signal(number)
        time.sleep(0.2)  # the second one lands while the callback still runs
    output = node.finish()
    assert node.process.returncode == 0, output
    assert "callback finished" in output and "[slow] closed" in output, output
    assert "Traceback" not in output, output


def test_ctrl_c_while_the_node_is_being_made_stops_at_once():
    node = NodeConsole(create_seconds=60.0)
    node.wait_for("creating")
    started = time.monotonic()
    node.process.send_signal(signal.SIGINT)
    output = node.finish()
    assert time.monotonic() - started < 20, output  # not the 60 s the node would take to be made
    assert node.process.returncode == 0 and "[slow]" not in output, output
