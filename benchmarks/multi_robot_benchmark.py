"""Several robots in one imagined world: batched steps vs the robots stepped one after another.

    .venv/bin/python benchmarks/multi_robot_benchmark.py [--steps 40] [--robots 1 2 4] [--start-views N]

For each robot count N, side by side in one run and with the shipped model and config/sim.yaml:
"batched" is one simulator with N robots (one memory, one batched model step for all N cameras,
``Simulator.step_robots``); "one after another" is N single-robot simulators, each with its own model
and memory, stepped in turn (what N separate simulator processes on one machine would do). Every robot
drives its own arc from its own start pose. Prints, per N: simulation steps/s (every robot advancing
one step), robot frames/s, and the step latency (median and 95th percentile of the time to advance all
N robots one step), after a few warm-up steps. The two setups take turns step by step.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from mirage_ros.ros.parameters import default_config, parameters_from_yaml
from mirage_ros.ros.sim_node import NODE_NAME, PARAMETERS
from mirage_ros.simulator import Simulator, build_simulator

WARM_UP = 3


def robot_settings(params: dict, count: int) -> list[dict]:
    """``count`` robots on a circle of 0.5 m around the start, each facing outwards."""
    return [dict(params, initial_pose=[0.5 * math.cos(a), 0.5 * math.sin(a), a])
            for a in (2 * math.pi * i / count for i in range(count))]


def drive(simulators: list[Simulator], now: float) -> None:
    """Every robot on its own arc: forward, turning left or right by turns."""
    for sim in simulators:
        for index, robot in enumerate(sim.robots):
            robot.base.command(0.3, 0.0, 0.4 if index % 2 else -0.4, stamp=now)


def measure(setups: dict[str, list[Simulator]], steps: int, dt: float) -> dict[str, np.ndarray]:
    """Seconds each setup takes to advance all its robots by one step, for each of ``steps`` steps; the
    setups take turns step by step, so a load that changes during the run slows all of them alike."""
    for simulators in setups.values():
        for sim in simulators:
            sim.reset()
    latencies: dict[str, list[float]] = {name: [] for name in setups}
    for k in range(WARM_UP + steps):
        now = k * dt
        for name, simulators in setups.items():
            drive(simulators, now)
            started = time.perf_counter()
            for sim in simulators:
                sim.step_robots(dt, now + dt)
            if k >= WARM_UP:
                latencies[name].append(time.perf_counter() - started)
    return {name: np.array(values) for name, values in latencies.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="measured steps per configuration")
    parser.add_argument("--robots", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--start-views", type=int, default=None,
                        help="views of the world observed at the start (default: config/sim.yaml's; 1: the start "
                             "view alone, so the robots facing away from it generate every view)")
    args = parser.parse_args()
    overrides = {} if args.start_views is None else {"start_views": args.start_views}
    params = parameters_from_yaml(default_config(), NODE_NAME, PARAMETERS, overrides)
    dt = 1.0 / params["rate"]
    print(f"shipped model, config/sim.yaml (precision {params['precision']}, {params['num_inference_steps']} "
          f"denoising steps), {args.steps} steps after {WARM_UP} warm-up steps")
    print(f"{'robots':>6} | {'mode':<18} | {'steps/s':>8} | {'frames/s':>8} | {'latency p50':>11} | {'p95':>8}")
    for count in args.robots:
        settings = robot_settings(params, count)
        rows = measure({"batched": [build_simulator(params, settings)],
                        "one after another": [build_simulator(s) for s in settings]}, args.steps, dt)
        for mode, latencies in rows.items():
            rate = 1.0 / latencies.mean()
            print(f"{count:>6} | {mode:<18} | {rate:8.2f} | {count * rate:8.2f} | "
                  f"{1000 * np.median(latencies):8.1f} ms | {1000 * np.percentile(latencies, 95):5.1f} ms")
        speed_up = rows["one after another"].mean() / rows["batched"].mean()
        print(f"{count:>6} | batched speed-up: {speed_up:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
