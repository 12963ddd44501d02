import math

import pytest

from mirage_ros.kinematics import BaseLimits, BodyTwist, PlanarBase, PlanarPose, integrate_body_twist

FAST = BaseLimits(max_linear_velocity=2.0, max_angular_velocity=3.0,
                  max_linear_acceleration=1e3, max_angular_acceleration=1e3)


def drive(base: PlanarBase, command: tuple[float, float, float], steps: int, dt: float = 0.05) -> PlanarPose:
    for k in range(steps):
        base.command(*command, stamp=k * dt)
        base.step(dt, now=(k + 1) * dt)
    return base.pose


def test_constant_arc_matches_circle():
    v, w, t = 0.5, 0.4, 3.0
    base = PlanarBase(limits=FAST)
    base.velocity = BodyTwist(v, 0.0, w)  # already cruising: no acceleration phase
    pose = drive(base, (v, 0.0, w), steps=60)
    radius = v / w
    assert pose.x == pytest.approx(radius * math.sin(w * t), abs=1e-9)
    assert pose.y == pytest.approx(radius * (1 - math.cos(w * t)), abs=1e-9)
    assert pose.yaw == pytest.approx(w * t, abs=1e-9)


def test_exact_integration_is_step_size_independent():
    start = PlanarPose(1.0, -1.0, 0.3)
    twist = BodyTwist(0.7, 0.2, -0.9)
    one = integrate_body_twist(start, twist, 2.0)
    many = start
    for _ in range(200):
        many = integrate_body_twist(many, twist, 0.01)
    assert (one.x, one.y, one.yaw) == pytest.approx((many.x, many.y, many.yaw), abs=1e-9)


def test_acceleration_ramp_is_integrated_exactly():
    limits = BaseLimits(max_linear_velocity=1.0, max_linear_acceleration=2.0)
    base = PlanarBase(limits=limits)
    pose = drive(base, (0.5, 0.0, 0.0), steps=20)  # 1 s: 0.25 s ramp, then cruise
    assert pose.x == pytest.approx(0.5**2 / (2 * 2.0) + 0.5 * (1.0 - 0.25), abs=1e-9)
    assert base.velocity.vx == pytest.approx(0.5)


def test_commands_are_clamped_and_diff_drive_cannot_strafe():
    base = PlanarBase("diff_drive", BaseLimits(max_linear_velocity=1.0, max_angular_velocity=1.0))
    target = base.command(5.0, 3.0, -4.0, stamp=0.0)
    assert (target.vx, target.vy, target.wz) == (1.0, 0.0, -1.0)
    holonomic = PlanarBase("holonomic", BaseLimits(max_linear_velocity=1.0))
    target = holonomic.command(3.0, 4.0, 0.0, stamp=0.0)
    assert math.hypot(target.vx, target.vy) == pytest.approx(1.0)
    assert target.vy / target.vx == pytest.approx(4 / 3)


def test_stale_command_stops_the_robot():
    base = PlanarBase(limits=FAST, command_timeout=0.5)
    base.command(1.0, 0.0, 0.0, stamp=0.0)
    for k in range(1, 9):
        base.step(0.05, now=k * 0.05)
    assert base.velocity.vx == pytest.approx(1.0)
    for k in range(9, 20):  # the command is older than 0.5 s from t = 0.55 on
        base.step(0.05, now=k * 0.05)
    assert base.velocity.vx == 0.0
    assert base.command_is_stale(1.0)


@pytest.mark.parametrize("command, message", [
    ((math.nan, 0, 0), "vx"), ((0, 0, math.inf), "wz"), ((1e6, 0, 0), "absurd"), ((0, 0, -1e5), "absurd")])
def test_bad_commands_raise_and_do_not_change_the_target(command, message):
    base = PlanarBase(limits=FAST)
    base.command(0.3, 0.0, 0.0, stamp=0.0)
    with pytest.raises(ValueError, match=message):
        base.command(*command, stamp=0.01)
    base.step(1.0, now=0.1)
    assert base.velocity.vx == pytest.approx(0.3)


@pytest.mark.parametrize("dt", [0.0, -0.1, math.nan])
def test_bad_dt(dt):
    with pytest.raises(ValueError, match="dt"):
        PlanarBase().step(dt, now=0.0)


def test_bad_configuration():
    with pytest.raises(ValueError, match="drive"):
        PlanarBase("tank")
    with pytest.raises(ValueError, match="max_linear_velocity"):
        BaseLimits(max_linear_velocity=-1.0)
    with pytest.raises(ValueError, match="finite"):
        PlanarPose(math.nan, 0.0, 0.0)
