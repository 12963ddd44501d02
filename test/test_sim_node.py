"""mirage_sim in its own process, driven over rclpy from the test process on loopback."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped, Twist
from nav_msgs.msg import Odometry
from rclpy.qos import QoSProfile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo

from mirage_ros.msg import SimStatus
from mirage_ros.ros.conversions import seconds_of
from ros_harness import node_process, ros_client

pytestmark = pytest.mark.ros

RATE, SPEED, ACCEL = 20.0, 0.5, 2.0
NODE_ARGS = ("-p", f"rate:={RATE}", "-p", "publish_clock:=true", "-p", "command_timeout:=5.0",
             "-p", f"max_linear_acceleration:={ACCEL}", "-p", "image_width:=64", "-p", "image_height:=48",
             "-p", "horizontal_fov:=1.2")


def straight_line_x(t: float) -> float:
    """Analytic distance after t seconds of a constant SPEED command from rest, ramping at ACCEL."""
    ramp = SPEED / ACCEL
    return ACCEL * t * t / 2 if t <= ramp else SPEED * ramp / 2 + SPEED * (t - ramp)


class Recorder:
    def __init__(self, client) -> None:
        self.odometry: list[Odometry] = []
        self.infos: list[CameraInfo] = []
        self.clocks: list[Clock] = []
        self.statuses: list[SimStatus] = []
        depth = QoSProfile(depth=500)
        node = client.node
        node.create_subscription(Odometry, "/odom", self.odometry.append, depth)
        node.create_subscription(CameraInfo, "/camera/camera_info", self.infos.append, depth)
        node.create_subscription(Clock, "/clock", self.clocks.append, depth)
        node.create_subscription(SimStatus, "/mirage_sim/status", self.statuses.append, depth)


def test_cmd_vel_drives_odometry_and_camera_info():
    with node_process("mirage_ros.ros.sim_node", *NODE_ARGS), ros_client("driver") as client:
        recorder = Recorder(client)
        cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
        client.spin_until(lambda: cmd_vel.get_subscription_count() > 0 and recorder.odometry,
                          timeout=30, what="mirage_sim to start")
        command = Twist()
        command.linear.x = SPEED
        client.node.create_timer(0.02, lambda: cmd_vel.publish(command))
        client.spin_until(lambda: recorder.odometry[-1].pose.pose.position.x > 0.8, timeout=30,
                          what="the robot to drive 0.8 m")

    odometry = recorder.odometry
    moving = [i for i, msg in enumerate(odometry) if msg.twist.twist.linear.x > 0]
    first = odometry[moving[0]]
    # Sim time advances exactly one period per step; the first moving step integrated one period.
    t0 = seconds_of(first.header.stamp) - 1.0 / RATE
    for msg in odometry[moving[0]:]:
        t = seconds_of(msg.header.stamp) - t0
        assert msg.pose.pose.position.x == pytest.approx(straight_line_x(t), abs=1e-3)
        assert abs(msg.pose.pose.position.y) < 1e-9
    assert len(odometry) - moving[0] >= 15
    assert {msg.header.frame_id for msg in odometry} == {"odom"}
    assert {msg.child_frame_id for msg in odometry} == {"base_link"}

    # One stamp per step: every odometry stamp has a camera info and a clock tick of the same time.
    info_stamps = {seconds_of(msg.header.stamp) for msg in recorder.infos}
    odom_stamps = [seconds_of(msg.header.stamp) for msg in odometry]
    assert set(odom_stamps[:-1]) <= info_stamps
    clock = [seconds_of(msg.clock) for msg in recorder.clocks]
    np.testing.assert_allclose(np.diff(clock), 1.0 / RATE, atol=1e-9)
    np.testing.assert_allclose(np.diff(odom_stamps), 1.0 / RATE, atol=1e-9)

    info = recorder.infos[-1]
    assert info.header.frame_id == "camera_optical_frame"
    assert (info.width, info.height, info.distortion_model) == (64, 48, "plumb_bob")
    fx = 32.0 / math.tan(0.6)
    np.testing.assert_allclose(info.k, [fx, 0, 31.5, 0, fx, 23.5, 0, 0, 1])
    np.testing.assert_allclose(info.p, [fx, 0, 31.5, 0, 0, fx, 23.5, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(info.r, np.eye(3).ravel())
    assert recorder.statuses and recorder.statuses[-1].steps >= len(odometry) - 1


def _initial_pose(x: float, y: float, q: tuple[float, float, float, float], frame: str = "odom"):
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = frame
    msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = q
    return msg


def test_bad_input_is_rejected_and_the_node_keeps_running():
    with node_process("mirage_ros.ros.sim_node", *NODE_ARGS) as process, ros_client("vandal") as client:
        recorder = Recorder(client)
        cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
        initial_pose = client.node.create_publisher(PoseWithCovarianceStamped, "/initialpose", 10)
        client.spin_until(lambda: cmd_vel.get_subscription_count() > 0
                          and initial_pose.get_subscription_count() > 0 and recorder.odometry,
                          timeout=30, what="mirage_sim to start")
        bad_twists = []
        for linear, angular in ((math.nan, 0.0), (0.0, math.inf), (1e9, 0.0), (0.0, -1e7)):
            twist = Twist()
            twist.linear.x, twist.angular.z = linear, angular
            bad_twists.append(twist)
        for twist in bad_twists:
            cmd_vel.publish(twist)
        for bad in (_initial_pose(5.0, 5.0, (0, 0, 0, 2.0)),          # non-unit quaternion
                    _initial_pose(math.nan, 0.0, (0, 0, 0, 1.0)),     # NaN position
                    _initial_pose(5.0, 5.0, (0, 0, 0, 1.0), "map")):  # unknown frame
            initial_pose.publish(bad)
        count = len(recorder.odometry)
        client.spin_until(lambda: len(recorder.odometry) > count + 10, timeout=30,
                          what="odometry after the bad input")
        assert process.poll() is None, "the node died"
        position = recorder.odometry[-1].pose.pose.position
        assert (position.x, position.y) == (0.0, 0.0), "bad input moved the robot"

        # A valid initial pose still teleports the robot afterwards.
        initial_pose.publish(_initial_pose(1.5, -2.0, (0, 0, math.sin(0.25), math.cos(0.25))))
        client.spin_until(lambda: recorder.odometry[-1].pose.pose.position.x == pytest.approx(1.5),
                          timeout=30, what="the robot to move to the initial pose")
        assert recorder.odometry[-1].pose.pose.position.y == pytest.approx(-2.0)
    output = process.stdout.read()
    assert output.count("rejected cmd_vel") >= 1 and "rejected initialpose" in output


def test_shipped_config_is_accepted_and_bad_parameters_are_refused(tmp_path: Path):
    config = Path(__file__).resolve().parents[1] / "config" / "sim.yaml"
    with node_process("mirage_ros.ros.sim_node", "--params-file", str(config)), ros_client("probe") as client:
        statuses: list[SimStatus] = []
        client.node.create_subscription(SimStatus, "/mirage_sim/status", statuses.append, 10)
        client.spin_until(lambda: statuses, timeout=30, what="status from a node configured by sim.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mirage_sim:\n  ros__parameters:\n    drive: tank\n    rate: 10.0\n")
    with node_process("mirage_ros.ros.sim_node", "--params-file", str(bad)) as process:
        assert process.wait(timeout=30) == 2
        assert "drive must be one of" in process.stdout.read()
