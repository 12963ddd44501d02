"""Helpers for tests that run a node in another process and talk to it over rclpy."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class RosTestClient:
    """An rclpy node in the test process, with helpers to wait for traffic."""

    def __init__(self, name: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@contextmanager
def ros_client(name: str) -> Iterator[RosTestClient]:
    client = RosTestClient(name)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def node_process(module: str, *ros_args: str) -> Iterator[subprocess.Popen]:
    """Run ``python -m module --ros-args ros_args...`` in its own process for the duration of a test."""
    command = [sys.executable, "-m", module]
    if ros_args:
        command += ["--ros-args", *ros_args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
