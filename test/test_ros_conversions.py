"""Message conversions (no DDS traffic: plain rclpy message classes)."""

import math

import numpy as np
import pytest
from geometry_msgs.msg import Pose, Twist
from sensor_msgs.msg import Image

from mirage_ros.camera import PinholeCamera
from mirage_ros.kinematics import BodyTwist, PlanarPose
from mirage_ros.ros.conversions import (camera_info_msg, check_frame, depth_image_msg, image_to_array, odometry_msg,
                                        planar_pose_from_matrix, point_cloud_msg, pose_to_matrix, rgb_image_msg,
                                        seconds_of, time_msg, twist_from_msg)


def test_time_round_trip():
    assert seconds_of(time_msg(12.3456789)) == pytest.approx(12.3456789, abs=1e-9)
    assert time_msg(1.9999999999).nanosec < 1_000_000_000


def test_odometry_pose_and_frames():
    msg = odometry_msg(PlanarPose(1.0, 2.0, 0.5), BodyTwist(0.3, 0.0, 0.1), time_msg(1.0), "odom", "base_link")
    assert (msg.header.frame_id, msg.child_frame_id) == ("odom", "base_link")
    pose = planar_pose_from_matrix(pose_to_matrix(msg.pose.pose))
    assert (pose.x, pose.y, pose.yaw) == pytest.approx((1.0, 2.0, 0.5))
    assert msg.twist.twist.linear.x == 0.3 and msg.twist.twist.angular.z == 0.1


def test_camera_info_message():
    msg = camera_info_msg(PinholeCamera.from_hfov(64, 48, 1.0), time_msg(2.0), "camera_optical_frame")
    assert msg.distortion_model == "plumb_bob" and len(msg.d) == 5 and msg.header.frame_id == "camera_optical_frame"
    assert msg.p[3] == 0.0 and msg.p[7] == 0.0 and msg.k[8] == 1.0


def test_bad_twist_pose_and_frame():
    twist = Twist()
    twist.linear.x = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        twist_from_msg(twist)
    pose = Pose()
    pose.orientation.w = 0.5
    with pytest.raises(ValueError, match="unit"):
        pose_to_matrix(pose)
    with pytest.raises(ValueError, match="unknown frame"):
        check_frame("map", "odom", "initialpose")
    check_frame("/odom", "odom", "initialpose")


def test_rgb_and_depth_images_round_trip():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    msg = rgb_image_msg(rgb, time_msg(0.0), "cam")
    assert (msg.encoding, msg.step, msg.height, msg.width) == ("rgb8", 15, 6, 5)
    np.testing.assert_array_equal(image_to_array(msg), rgb)
    depth = rng.uniform(0.5, 5.0, (6, 5)).astype(np.float32)
    depth[0, 0], depth[1, 1] = np.nan, -1.0
    out = image_to_array(depth_image_msg(depth, time_msg(0.0), "cam"))
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1])  # REP 118: no value is NaN
    np.testing.assert_array_equal(out[2:], depth[2:])


def test_other_encodings_and_padding():
    bgr = Image(height=2, width=2, encoding="bgr8", step=8, data=bytes([1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0]))
    np.testing.assert_array_equal(image_to_array(bgr), [[[3, 2, 1], [6, 5, 4]], [[9, 8, 7], [12, 11, 10]]])
    millimetres = np.array([[0, 1500]], dtype="<u2")
    depth = image_to_array(Image(height=1, width=2, encoding="16UC1", step=4, data=millimetres.tobytes()))
    assert np.isnan(depth[0, 0]) and depth[0, 1] == pytest.approx(1.5)
    big_endian = np.array([[2.5]], dtype=">f4")
    assert image_to_array(Image(height=1, width=1, encoding="32FC1", is_bigendian=1, step=4,
                                data=big_endian.tobytes()))[0, 0] == 2.5


@pytest.mark.parametrize("msg, message", [
    (Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)), "unsupported"),
    (Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(5)), "does not fit"),
    (Image(height=2, width=2, encoding="rgb8", step=3, data=bytes(12)), "does not fit")])
def test_bad_images(msg, message):
    with pytest.raises(ValueError, match=message):
        image_to_array(msg)


def test_point_cloud_layout():
    points = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    colors = np.array([[255, 0, 0], [0, 128, 255]], dtype=np.uint8)
    msg = point_cloud_msg(points, colors, time_msg(0.0), "odom")
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"] and msg.point_step == 16 and msg.width == 2
    record = np.frombuffer(bytes(msg.data), dtype="<f4").reshape(2, 4)
    np.testing.assert_array_equal(record[:, :3], points)
    packed = record[:, 3].view("<u4")
    assert packed[0] == 0xFF0000 and packed[1] == 0x0080FF
    plain = point_cloud_msg(points, None, time_msg(0.0), "odom")
    assert plain.point_step == 12 and len(plain.data) == 24
