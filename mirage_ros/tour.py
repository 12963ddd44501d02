"""The scripted demo tour: a fixed, repeating sequence of drive segments. ``make run`` drives the node
with it over ``cmd_vel`` and ``mirage-rollout`` uses it when given no other input."""

from __future__ import annotations

import numpy as np

#: (seconds, forward m/s, yaw rate rad/s) segments of the tour, repeated.
TOUR = ((3.0, 0.5, 0.0), (1.5, 0.0, 1.05), (2.0, 0.4, 0.3), (1.0, 0.0, -0.8), (3.0, 0.5, 0.0), (2.0, 0.0, 1.57))
TOUR_PERIOD = sum(segment[0] for segment in TOUR)


def tour_command(elapsed: float) -> tuple[float, float]:
    """Forward speed (m/s) and yaw rate (rad/s) ``elapsed`` seconds into the tour."""
    elapsed %= TOUR_PERIOD
    for duration, forward, yaw_rate in TOUR:
        if elapsed < duration:
            return forward, yaw_rate
        elapsed -= duration
    return TOUR[-1][1], TOUR[-1][2]


def tour_rows(duration: float) -> np.ndarray:
    """``[N,4]`` rows ``(t, vx, vy, wz)``: the tour's segment starts until ``duration`` seconds."""
    rows, t = [], 0.0
    while t < duration:
        for seconds, forward, yaw_rate in TOUR:
            rows.append((t, forward, 0.0, yaw_rate))
            t += seconds
    return np.array(rows, dtype=np.float64)
