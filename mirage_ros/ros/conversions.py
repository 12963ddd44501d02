"""Conversions between ROS messages and the ROS-free core, with validation of everything that
arrives from the outside (a bad message raises ``ValueError``; the node logs it and carries on)."""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Transform, TransformStamped, Twist
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

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


# --------------------------------------------------------------------------- images and clouds
# cv_bridge and sensor_msgs_py are the usual tools; they are C++/ROS-install only, and these few lines
# of numpy do the same for the encodings a camera simulator needs.

#: Image encodings accepted on input, with their numpy dtype and channel count.
IMAGE_ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
                   "mono8": (np.uint8, 1), "32FC1": (np.float32, 1), "16UC1": (np.uint16, 1)}


def rgb_image_msg(rgb: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """``sensor_msgs/Image`` rgb8 of a uint8 ``[H, W, 3]`` array."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.data = rgb.tobytes()
    return msg


def depth_image_msg(depth: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """REP 118 depth: ``32FC1`` metres along the optical axis, NaN where there is no value."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got {depth.shape}")
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype("<f4")
    msg = Image(height=depth.shape[0], width=depth.shape[1], encoding="32FC1", is_bigendian=0,
                step=depth.shape[1] * 4)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.data = depth.tobytes()
    return msg


def image_to_array(msg: Image) -> np.ndarray:
    """Array of an Image: rgb8/bgr8/rgba8/bgra8 -> uint8 ``[H,W,3]`` in RGB order (alpha dropped),
    mono8 -> uint8 ``[H,W]``, 32FC1 -> float32 metres, 16UC1 -> float32 metres (millimetres / 1000,
    0 -> NaN). Any object with the fields of ``sensor_msgs/Image`` will do (e.g. a rosbags message)."""
    if msg.encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; expected one of {sorted(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = msg.width * channels * dtype.itemsize
    if msg.height == 0 or msg.width == 0 or msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image data ({len(msg.data)} bytes, step {msg.step}) does not fit "
                         f"{msg.width}x{msg.height} {msg.encoding}")
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8)[: msg.step * msg.height].reshape(msg.height, msg.step)
    array = rows[:, :row_bytes].copy().view(dtype).reshape(msg.height, msg.width, channels)
    if msg.encoding in ("bgr8", "bgra8"):
        array = array[..., 2::-1]
    elif msg.encoding == "rgba8":
        array = array[..., :3]
    if msg.encoding == "16UC1":
        array = np.where(array > 0, array.astype(np.float32) / 1000.0, np.float32(np.nan))
    array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array[..., 0] if channels == 1 else array)


def point_cloud_msg(points: np.ndarray, colors: np.ndarray | None, stamp: Time, frame_id: str) -> PointCloud2:
    """Unordered ``sensor_msgs/PointCloud2`` with float32 x, y, z and (if ``colors`` uint8 ``[N,3]``)
    the packed ``rgb`` float field RViz and PCL expect."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, name in enumerate("xyz")]
    if colors is None:
        record = np.ascontiguousarray(points, dtype="<f4")
    else:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if len(colors) != len(points):
            raise ValueError(f"{len(colors)} colours for {len(points)} points")
        packed = (colors[:, 0].astype(np.uint32) << 16) | (colors[:, 1].astype(np.uint32) << 8) | colors[:, 2]
        record = np.empty((len(points), 4), dtype="<f4")
        record[:, :3] = points
        record[:, 3] = packed.astype("<u4").view("<f4")
        fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
    msg = PointCloud2(height=1, width=len(points), fields=fields, is_bigendian=False,
                      point_step=record.shape[1] * 4, row_step=record.shape[1] * 4 * len(points), is_dense=True)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.data = record.tobytes()
    return msg
