"""Running one node as a process: init, spin until Ctrl-C or shutdown, clean up, exit code."""

from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def run_node(create: Callable[[], Node], name: str, args: list[str] | None = None) -> int:
    """Spin the node ``create()`` returns. A configuration error (``ValueError``, ``FileExistsError``)
    prints the reason and exits with 2; a node with a ``close()`` method gets it called on the way out,
    and what it returns is printed: by then Ctrl-C may have shut the context down, and logging through
    the node would fail to reach /rosout."""
    rclpy.init(args=args)
    node = None
    try:
        node = create()
        rclpy.spin(node)
    except (ValueError, FileExistsError) as error:
        print(f"{name}: {error}", flush=True)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if hasattr(node, "close"):
                print(f"[{name}] {node.close()}", flush=True)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
