"""Running one node as a process: init, spin until Ctrl-C or shutdown, clean up, exit code."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

#: Longest a stop request waits for the executor to come back (seconds): it is seen between callbacks.
STOP_POLL_S = 0.1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """SIGINT and SIGTERM as requests to stop once the running callback has returned.

    rclpy's own handlers turn Ctrl-C into a ``KeyboardInterrupt`` raised wherever the main thread happens
    to be: inside a callback (a bag record half written), inside rclpy's executor, or inside the clean-up
    when a second signal follows (``ros2 launch`` sends its own SIGINT after the terminal's). Once
    ``deferring``, a signal only sets ``received``, which the spin loop reads between callbacks, so a node
    stops between two messages and cleans up undisturbed; before that (while the node is being made, e.g.
    loading a model: nothing to save yet) it interrupts at once. After it the process is only exiting: a late
    SIGINT (launch's, after the terminal's) is moot and ignored, instead of killing the interpreter's tear-down
    with a signal exit status; SIGTERM still ends a process stuck on its way out."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = False

    def __enter__(self) -> "StopRequests":
        for number in STOP_SIGNALS:
            signal.signal(number, self._on_signal)
        return self

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        if not self.deferring:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = number

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_node(create: Callable[[], Node], name: str, args: list[str] | None = None) -> int:
    """Spin the node ``create()`` returns until SIGINT or SIGTERM (``StopRequests``) or an external
    shutdown. A configuration error (``ValueError``, ``FileExistsError``) prints the reason and exits with
    2; a node with a ``close()`` method gets it called on the way out, and what it returns is printed to the
    console (not logged: the summary must not depend on the graph still being there)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    with StopRequests() as stop:
        try:
            node = create()
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            stop.deferring = True
            while stop.received is None and executor.context.ok():
                executor.spin_once(timeout_sec=STOP_POLL_S)
        except (ValueError, FileExistsError) as error:
            print(f"{name}: {error}", flush=True)
            return 2
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            stop.deferring = True  # nothing interrupts the clean-up
            if node is not None:
                if hasattr(node, "close"):
                    print(f"[{name}] {node.close()}", flush=True)
                node.destroy_node()
            rclpy.try_shutdown()
    return 0
