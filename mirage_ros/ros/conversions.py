"""Conversions between ROS messages and the ROS-free core, with validation of everything that
arrives from the outside (a bad message raises ``ValueError``; the node logs it and carries on)."""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Transform, TransformStamped, Twist
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo

from mirage_ros.camera import PinholeCamera
from mirage_ros.geometry import make_transform, matrix_to_quaternion, quaternion_to_matrix, yaw_of
from mirage_ros.kinematics import BodyTwist, PlanarPose


def time_msg(seconds: float) -> Time:
    """``builtin_interfaces/Time`` of a non-negative time in seconds (sim or wall clock)."""
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def seconds_of(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def twist_from_msg(msg: Twist) -> tuple[float, float, float]:
    """Planar part ``(vx, vy, wz)`` of a Twist; raises ``ValueError`` if any used field is not finite."""
    values = (msg.linear.x, msg.linear.y, msg.angular.z)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"twist has non-finite values: linear.x={values[0]}, linear.y={values[1]}, "
                         f"angular.z={values[2]}")
    return values


def check_frame(frame_id: str, expected: str, what: str) -> None:
    """Reject messages in a frame the node does not know (no tf2 lookup in the simulator)."""
    if frame_id.lstrip("/") != expected:
        raise ValueError(f"{what} is in unknown frame {frame_id!r}; expected {expected!r}")


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """4x4 of a ``geometry_msgs/Pose``; rejects NaN positions and non-unit quaternions."""
    o = pose.orientation
    rotation = quaternion_to_matrix((o.x, o.y, o.z, o.w))
    return make_transform(rotation, (pose.position.x, pose.position.y, pose.position.z))


def planar_pose_from_matrix(transform: np.ndarray) -> PlanarPose:
    """Project a 3D base pose onto the ground plane (x, y, heading)."""
    return PlanarPose(float(transform[0, 3]), float(transform[1, 3]), yaw_of(transform[:3, :3]))


def transform_msg(transform: np.ndarray) -> Transform:
    msg = Transform()
    msg.translation.x, msg.translation.y, msg.translation.z = (float(v) for v in transform[:3, 3])
    x, y, z, w = matrix_to_quaternion(transform[:3, :3])
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = float(x), float(y), float(z), float(w)
    return msg


def transform_stamped_msg(transform: np.ndarray, stamp: Time, parent: str, child: str) -> TransformStamped:
    msg = TransformStamped(transform=transform_msg(transform))
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, parent, child
    return msg


def odometry_msg(pose: PlanarPose, velocity: BodyTwist, stamp: Time, odom_frame: str, base_frame: str) -> Odometry:
    """Odometry of the simulated base: pose in ``odom_frame``, twist in ``base_frame`` (REP 105)."""
    msg = Odometry()
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, odom_frame, base_frame
    t = transform_msg(pose.matrix())
    msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z = (
        t.translation.x, t.translation.y, t.translation.z)
    msg.pose.pose.orientation = t.rotation
    msg.twist.twist.linear.x, msg.twist.twist.linear.y = velocity.vx, velocity.vy
    msg.twist.twist.angular.z = velocity.wz
    # The simulated base has no odometry drift: report small, non-zero variances on the planar
    # degrees of freedom and large ones on those a planar robot cannot observe.
    planar_variance, unobserved_variance = 1e-6, 1e3
    for index, variance in enumerate((planar_variance, planar_variance, unobserved_variance,
                                      unobserved_variance, unobserved_variance, planar_variance)):
        msg.pose.covariance[index * 7] = variance
        msg.twist.covariance[index * 7] = variance
    return msg


def camera_info_msg(camera: PinholeCamera, stamp: Time, frame_id: str) -> CameraInfo:
    """``sensor_msgs/CameraInfo`` per the message spec: plumb_bob, zero distortion, R = I, P = [K|0]."""
    fields = camera.camera_info_fields()
    msg = CameraInfo(width=fields["width"], height=fields["height"], distortion_model=fields["distortion_model"])
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.d, msg.k, msg.r, msg.p = fields["d"], fields["k"], fields["r"], fields["p"]
    return msg
