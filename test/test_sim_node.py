"""mirage_sim in its own process, driven over rclpy from the test process on loopback."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped, Twist
from nav_msgs.msg import Odometry
from ros_harness import (ACCEL, RATE, Recorder, initial_pose_message, node_args, node_process, ros_client,
                         wait_until_running)
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, PointCloud2

from mirage_ros.msg import SimStatus
from mirage_ros.ros.conversions import image_to_array, seconds_of
from mirage_ros.ros.sim_node import CLOCK_CHECK_PERIOD_S

pytestmark = pytest.mark.ros

SPEED = 0.5
ROOT = Path(__file__).resolve().parents[1]


def straight_line_x(t: float) -> float:
    """Analytic distance after t seconds of a constant SPEED command from rest, ramping at ACCEL."""
    ramp = SPEED / ACCEL
    return ACCEL * t * t / 2 if t <= ramp else SPEED * ramp / 2 + SPEED * (t - ramp)


def test_cmd_vel_drives_odometry_and_every_step_publishes_one_consistent_frame(tiny_checkpoint):
    with node_process("mirage_ros.ros.sim_node", *node_args(tiny_checkpoint)), ros_client("driver") as client:
        recorder = Recorder(client)
        cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
        wait_until_running(client, recorder, cmd_vel)
        command = Twist()
        command.linear.x = SPEED
        client.node.create_timer(0.02, lambda: cmd_vel.publish(command))
        client.spin_until(lambda: recorder.odometry[-1].pose.pose.position.x > 0.6, timeout=60,
                          what="the robot to drive 0.6 m")
        client.spin_for(0.5)

    odometry = recorder.odometry
    moving = [i for i, msg in enumerate(odometry) if msg.twist.twist.linear.x > 0]
    t0 = seconds_of(odometry[moving[0]].header.stamp) - 1.0 / RATE  # the first moving step integrated one period
    for msg in odometry[moving[0]:]:
        t = seconds_of(msg.header.stamp) - t0
        assert msg.pose.pose.position.x == pytest.approx(straight_line_x(t), abs=1e-3)
        assert abs(msg.pose.pose.position.y) < 1e-9
    assert len(odometry) - moving[0] >= 10
    assert {(m.header.frame_id, m.child_frame_id) for m in odometry} == {("odom", "base_link")}

    # One stamp per step: image, depth, both camera infos and odometry share it; /clock ticks one period.
    stamps = {name: [seconds_of(m.header.stamp) for m in getattr(recorder, name)]
              for name in ("odometry", "images", "depths", "infos", "depth_infos")}
    # Compare over the window in which every subscription was already matched (they match one by one).
    start = max(values[0] for values in stamps.values())
    end = min(values[-1] for values in stamps.values())
    common = {t for t in stamps["odometry"] if start <= t <= end}
    assert len(common) >= 10
    for name, values in stamps.items():
        assert common == {t for t in values if start <= t <= end}, name
    np.testing.assert_allclose(np.diff(stamps["images"]), 1.0 / RATE, atol=1e-9)
    np.testing.assert_allclose(np.diff([seconds_of(m.clock) for m in recorder.clocks]), 1.0 / RATE, atol=1e-9)

    image, depth, info = recorder.images[-1], recorder.depths[-1], recorder.infos[-1]
    assert (image.encoding, image.width, image.height, image.step) == ("rgb8", 64, 64, 64 * 3)
    assert (depth.encoding, depth.step) == ("32FC1", 64 * 4)
    assert {m.header.frame_id for m in recorder.images + recorder.depths + recorder.infos} == {"camera_optical_frame"}
    values = image_to_array(depth)
    assert np.all(np.isnan(values) | (values > 0))
    fx = 32.0 / math.tan(0.6)
    np.testing.assert_allclose(info.k, [fx, 0, 31.5, 0, fx, 31.5, 0, 0, 1])
    assert (info.width, info.height, info.distortion_model) == (64, 64, "plumb_bob")
    np.testing.assert_array_equal(recorder.depth_infos[-1].k, info.k)
    status = recorder.statuses[-1]
    assert status.memory_tokens > 0 and status.memory_bytes > 0 and 0 <= status.view_coverage <= 1
    assert recorder.clouds and recorder.clouds[-1].header.frame_id == "odom" and recorder.clouds[-1].width > 0


def test_bad_input_is_rejected_and_the_node_keeps_running(tiny_checkpoint):
    with node_process("mirage_ros.ros.sim_node", *node_args(tiny_checkpoint)) as process, \
            ros_client("vandal") as client:
        recorder = Recorder(client)
        cmd_vel = client.node.create_publisher(Twist, "/cmd_vel", 10)
        initial_pose = client.node.create_publisher(PoseWithCovarianceStamped, "/initialpose", 10)
        wait_until_running(client, recorder, cmd_vel, initial_pose)
        for linear, angular in ((math.nan, 0.0), (0.0, math.inf), (1e9, 0.0), (0.0, -1e7)):
            twist = Twist()
            twist.linear.x, twist.angular.z = linear, angular
            cmd_vel.publish(twist)
        for bad in (initial_pose_message(5.0, 5.0, (0, 0, 0, 2.0)),          # non-unit quaternion
                    initial_pose_message(math.nan, 0.0, (0, 0, 0, 1.0)),     # NaN position
                    initial_pose_message(5.0, 5.0, (0, 0, 0, 1.0), "map")):  # unknown frame
            initial_pose.publish(bad)
        count = len(recorder.images)
        client.spin_until(lambda: len(recorder.images) > count + 5, timeout=60, what="images after the bad input")
        assert process.poll() is None, "the node died"
        position = recorder.odometry[-1].pose.pose.position
        assert (position.x, position.y) == (0.0, 0.0), "bad input moved the robot"
        initial_pose.publish(initial_pose_message(1.5, -2.0, (0, 0, math.sin(0.25), math.cos(0.25))))
        client.spin_until(lambda: recorder.odometry[-1].pose.pose.position.x == pytest.approx(1.5),
                          timeout=30, what="the robot to move to the initial pose")
    output = process.stdout.read()
    assert "rejected cmd_vel" in output and "rejected initialpose" in output


def test_shipped_config_is_accepted_and_bad_parameters_are_refused(tiny_checkpoint, tmp_path):
    config = ROOT / "config" / "sim.yaml"
    with node_process("mirage_ros.ros.sim_node", "--params-file", str(config), "-p", f"model_path:={tiny_checkpoint}"), \
            ros_client("probe") as client:
        statuses: list[SimStatus] = []
        client.node.create_subscription(SimStatus, "/mirage_sim/status", statuses.append, 10)
        client.spin_until(lambda: statuses, timeout=90, what="status from a node configured by sim.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mirage_sim:\n  ros__parameters:\n    drive: tank\n    rate: 10.0\n")
    with node_process("mirage_ros.ros.sim_node", "--params-file", str(bad)) as process:
        assert process.wait(timeout=60) == 2
        assert "mirage_sim: drive: must be one of" in process.stdout.read()


def test_a_namespaced_node_prefixes_its_frames_and_a_second_clock_owner_is_refused(tiny_checkpoint):
    with node_process("mirage_ros.ros.sim_node", *node_args(tiny_checkpoint), "-r", "__ns:=/robot1") as first, \
            ros_client("fleet_manager") as client:
        odometry, images = [], []
        client.node.create_subscription(Odometry, "/robot1/odom", odometry.append, 10)
        client.node.create_subscription(Image, "/robot1/camera/image_raw", images.append, 10)
        client.spin_until(lambda: odometry and images, timeout=90, what="the namespaced simulator")
        assert (odometry[-1].header.frame_id, odometry[-1].child_frame_id) == ("robot1/odom", "robot1/base_link")
        assert images[-1].header.frame_id == "robot1/camera_optical_frame"

        second_args = node_args(tiny_checkpoint, "-p", "clock_discovery_timeout:=10.0", "-r", "__ns:=/robot2")
        with node_process("mirage_ros.ros.sim_node", *second_args) as second:
            assert second.wait(timeout=60) == 2
            message = second.stdout.read()
        assert "mirage_sim: publish_clock: /clock is already published by /robot1/mirage_sim" in message
        client.node.create_publisher(Clock, "/clock", 10)  # a second clock, e.g. a bag played with --clock
        client.spin_for(2.0 * CLOCK_CHECK_PERIOD_S + 1.0)  # discovery, then at least one check
        assert first.poll() is None, "the clock owner stopped"
    assert "/fleet_manager also publishes /clock" in first.stdout.read()


def test_two_robots_in_one_node_have_their_own_topics_and_frames_one_clock_and_one_world(tiny_checkpoint, tmp_path):
    config = tmp_path / "robots.yaml"
    config.write_text("mirage_sim:\n  ros__parameters:\n    robots: [robot1, robot2]\n    robot2:\n"
                      "      initial_pose: [0.0, 0.0, 3.14159265]\n      drive: holonomic\n")
    robots = ("robot1", "robot2")
    with node_process("mirage_ros.ros.sim_node", *node_args(tiny_checkpoint, "--params-file", str(config))), \
            ros_client("fleet") as client:
        odometry, images, statuses = ({name: [] for name in robots} for _ in range(3))
        clocks, clouds = [], []
        for name in robots:
            client.node.create_subscription(Odometry, f"/{name}/odom", odometry[name].append, 50)
            client.node.create_subscription(Image, f"/{name}/camera/image_raw", images[name].append, 50)
            client.node.create_subscription(SimStatus, f"/{name}/mirage_sim/status", statuses[name].append, 50)
        client.node.create_subscription(Clock, "/clock", clocks.append, 500)
        client.node.create_subscription(PointCloud2, "/mirage_sim/memory_cloud", clouds.append, 5)
        cmd_vel = {name: client.node.create_publisher(Twist, f"/{name}/cmd_vel", 10) for name in robots}
        teleport = client.node.create_publisher(PoseWithCovarianceStamped, "/robot1/initialpose", 10)
        client.spin_until(lambda: all(len(images[n]) > 2 and cmd_vel[n].get_subscription_count() for n in robots)
                          and teleport.get_subscription_count() and clouds, timeout=90, what="both robots")
        forward, sideways = Twist(), Twist()
        forward.linear.x, sideways.linear.y = 0.5, 0.3
        driving = client.node.create_timer(0.05, lambda: (cmd_vel["robot1"].publish(forward),
                                                          cmd_vel["robot2"].publish(sideways)))
        client.spin_until(lambda: odometry["robot1"][-1].pose.pose.position.x > 0.3
                          and abs(odometry["robot2"][-1].pose.pose.position.y) > 0.1, timeout=60, what="both driving")
        client.node.destroy_timer(driving)
        assert abs(odometry["robot1"][-1].pose.pose.position.y) < 1e-9  # each robot its own base and drive
        assert abs(odometry["robot2"][-1].pose.pose.position.x) < 1e-6
        # robot1 never looked back; robot2 did and imagined it: robot1 sees that when it turns there.
        turned = len(statuses["robot1"])
        teleport.publish(initial_pose_message(0.0, 0.0, (0.0, 0.0, 1.0, 0.0), frame="robot1/odom"))
        client.spin_until(lambda: len(statuses["robot1"]) > turned + 3, timeout=30, what="robot1 turned round")
        assert statuses["robot1"][-1].view_coverage > 0.9
        assert len(statuses["robot1"]) > 10 and statuses["robot1"][0].view_coverage == 1.0  # its own start view

    for name in robots:
        assert {(m.header.frame_id, m.child_frame_id) for m in odometry[name]} == {(f"{name}/odom", f"{name}/base_link")}
        assert {m.header.frame_id for m in images[name]} == {f"{name}/camera_optical_frame"}
        assert {m.header.frame_id for m in statuses[name]} == {f"{name}/odom"}
    assert {m.header.frame_id for m in clouds} == {"world"}
    ticks = np.array([seconds_of(m.clock) for m in clocks])
    assert len(ticks) > 20 and np.all(np.diff(ticks) > 0)  # one clock: strictly increasing
    np.testing.assert_allclose(np.diff(ticks), 1.0 / RATE, atol=1e-9)
    # Both robots' frames of a step carry that step's one stamp.
    stamps = {name: {seconds_of(m.header.stamp) for m in images[name]} for name in robots}
    assert len(stamps["robot1"] & stamps["robot2"]) > 10
