"""Closed-loop benchmark of the mirage_sim node (shipped model, config/sim.yaml), over real DDS.

    .venv/bin/python benchmarks/sim_benchmark.py [--seconds 30] [--soak 600] [-p trace_networks:=false ...]

Runs the node in its own process and measures, from another process: published steps per second
with a subscriber attached; end-to-end latency from a cmd_vel to the first image rendered from the
moved pose; and with --soak, resident memory of the node over time under a wandering driver, the
step latency it reports (SimStatus.step_latency: read, denoise, decode, write, publish) and whether
any step was dropped (gaps in the sim-time stamps of the images).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 30))

from geometry_msgs.msg import Twist  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from ros_harness import ros_client  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from mirage_ros.msg import SimStatus  # noqa: E402
from mirage_ros.ros.conversions import seconds_of  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the rate measurement")
    parser.add_argument("--latency-trials", type=int, default=10)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak test (0: skip)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="another node parameter over config/sim.yaml's (repeatable)")
    args = parser.parse_args()
    command = [sys.executable, "-m", "mirage_ros.ros.sim_node", "--ros-args", "--params-file",
               str(ROOT / "config" / "sim.yaml"), "-p", "command_timeout:=1.0"]
    for param in args.param:
        command += ["-p", param]
    node = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with ros_client("mirage_benchmark") as client:
            arrivals: list[tuple[float, float]] = []  # (wall time, sim stamp)
            odometry: dict[float, Odometry] = {}
            latencies_reported: list[float] = []
            client.node.create_subscription(SimStatus, "/mirage_sim/status",
                                            lambda m: latencies_reported.append(m.step_latency), QoSProfile(depth=50))
            client.node.create_subscription(
                Image, "/camera/image_raw", lambda m: arrivals.append((time.monotonic(), seconds_of(m.header.stamp))),
                QoSProfile(depth=50))
            client.node.create_subscription(Odometry, "/odom", lambda m: odometry.__setitem__(seconds_of(m.header.stamp), m),
                                            QoSProfile(depth=50))
            cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
            client.spin_until(lambda: len(arrivals) > 5 and cmd_vel.get_subscription_count() > 0, timeout=180,
                              what="the simulator to start")

            wander = Twist()
            started = time.monotonic()

            def drive() -> None:
                t = time.monotonic() - started
                wander.linear.x, wander.angular.z = 0.3 + 0.2 * math.sin(0.3 * t), 0.6 * math.sin(0.17 * t)
                cmd_vel.publish(wander)

            timer = client.node.create_timer(0.05, drive)
            first = len(arrivals)
            client.spin_for(args.seconds)
            window = arrivals[first:]
            rate = (len(window) - 1) / (window[-1][0] - window[0][0])
            print(f"closed-loop rate with a subscriber: {rate:.2f} steps/s over {args.seconds:.0f} s (target >= 10)")

            client.node.destroy_timer(timer)
            latencies = []
            for _ in range(args.latency_trials):
                cmd_vel.publish(Twist())
                client.spin_for(1.5)  # stopped and settled (command timeout 1 s)
                sent = time.monotonic()
                go = Twist()
                go.angular.z = 1.0
                cmd_vel.publish(go)
                moved = lambda sent=sent: any(odometry.get(stamp) is not None
                                              and abs(odometry[stamp].twist.twist.angular.z) > 0
                                              for wall, stamp in arrivals if wall >= sent)
                client.spin_until(moved, timeout=10, what="an image from the moved pose")
                wall = min(w for w, stamp in arrivals if w >= sent and odometry.get(stamp) is not None
                           and abs(odometry[stamp].twist.twist.angular.z) > 0)
                latencies.append(wall - sent)
            print(f"cmd_vel -> first image from the new pose: median {1000 * np.median(latencies):.0f} ms, "
                  f"max {1000 * np.max(latencies):.0f} ms over {len(latencies)} trials (target <= 150 ms)")

            if args.soak > 0:
                timer = client.node.create_timer(0.05, drive)
                soak_start, samples, first = time.monotonic(), [], len(arrivals)
                first_status = len(latencies_reported)
                samples.append((0.0, rss_mib(node.pid)))
                while time.monotonic() - soak_start < args.soak:
                    client.spin_for(10.0)
                    samples.append((time.monotonic() - soak_start, rss_mib(node.pid)))
                stamps = np.array([stamp for _, stamp in arrivals[first:]])
                gaps = int(np.sum(np.diff(stamps) > 0.1 * 1.5))
                warm = [rss for t, rss in samples if t >= 60] or [samples[-1][1]]
                print(f"soak {args.soak:.0f} s: {len(stamps)} frames, {gaps} gaps in sim time (dropped steps); "
                      f"node RSS after warm-up min {min(warm):.0f} / max {max(warm):.0f} MiB "
                      f"({100 * (max(warm) / min(warm) - 1):.1f} % spread, target within 10 %)")
                step_ms = 1000 * np.array(latencies_reported[first_status:])
                print(f"soak RSS start {samples[0][1]:.0f} / end {samples[-1][1]:.0f} / max "
                      f"{max(r for _, r in samples):.0f} MiB; step latency p50 {np.percentile(step_ms, 50):.1f} / "
                      f"p95 {np.percentile(step_ms, 95):.1f} / max {step_ms.max():.1f} ms over {len(step_ms)} steps")
                print("RSS samples (s, MiB): " + ", ".join(f"{t:.0f}:{r:.0f}" for t, r in samples))
    finally:
        node.terminate()
        node.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
