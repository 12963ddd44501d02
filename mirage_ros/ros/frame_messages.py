"""The messages of one simulation step, built in one place for the live node and offline rollouts
alike (so a recorded rollout holds exactly what the node publishes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builtin_interfaces.msg import Time
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image, LaserScan, PointCloud2

from mirage_ros.camera import CameraMount, PinholeCamera
from mirage_ros.ros.conversions import camera_info_msg, depth_image_msg, odometry_msg, point_cloud_msg, rgb_image_msg
from mirage_ros.sensors import ScanConfig, depth_to_points, points_to_scan
from mirage_ros.simulator import SimFrame

#: Topic (relative to the robot namespace) -> message class, for every per-step output.
STEP_TOPICS = {
    "camera/image_raw": Image,
    "camera/camera_info": CameraInfo,
    "camera/depth/image_raw": Image,
    "camera/depth/camera_info": CameraInfo,
    "camera/depth/points": PointCloud2,
    "scan": LaserScan,
    "odom": Odometry,
}


#: ``frame_prefix`` value that derives the prefix from the node's namespace.
AUTO_FRAME_PREFIX = "auto"


def resolve_frame_prefix(value: str, namespace: str) -> str:
    """The prefix of every published frame id: ``auto`` gives ``robot1/`` in namespace ``/robot1`` (and
    ``fleet/robot1/`` in ``/fleet/robot1``) and nothing in the root namespace, so robots in separate
    namespaces never share a TF frame; any other value is used as given (empty: no prefix)."""
    if value != AUTO_FRAME_PREFIX:
        return value
    namespace = namespace.strip("/")
    return f"{namespace}/" if namespace else ""


@dataclass(frozen=True)
class OutputConfig:
    """What each step publishes and in which frames (already prefixed, see ``resolve_frame_prefix``)."""

    odom_frame: str = "odom"
    base_frame: str = "base_link"
    camera_frame: str = "camera_link"
    optical_frame: str = "camera_optical_frame"
    scan: ScanConfig | None = ScanConfig()   # None: no LaserScan
    depth_points: bool = True                # camera-frame PointCloud2 of the depth image

    @classmethod
    def from_parameters(cls, params: dict[str, Any], prefix: str = "") -> "OutputConfig":
        """What each step publishes, from the node's parameters, with frame ids prefixed by ``prefix``."""
        scan = ScanConfig(min_height=params["scan_min_height"], max_height=params["scan_max_height"],
                          range_min=params["scan_range_min"], range_max=params["scan_range_max"],
                          angle_increment=params["scan_angle_increment"]) if params["publish_scan"] else None
        return cls(odom_frame=prefix + params["odom_frame"], base_frame=prefix + params["base_frame"],
                   camera_frame=prefix + params["camera_frame"], optical_frame=prefix + params["optical_frame"],
                   scan=scan, depth_points=params["publish_depth_points"])


def frame_messages(frame: SimFrame, stamp: Time, camera: PinholeCamera, mount: CameraMount,
                   output: OutputConfig) -> dict[str, object]:
    """Every per-step message, keyed by topic, all with the same ``stamp``."""
    result = frame.result
    info = camera_info_msg(camera, stamp, output.optical_frame)
    messages: dict[str, object] = {
        "camera/image_raw": rgb_image_msg(result.rgb, stamp, output.optical_frame),
        "camera/camera_info": info,
        "camera/depth/image_raw": depth_image_msg(result.depth, stamp, output.optical_frame),
        "camera/depth/camera_info": info,
        "odom": odometry_msg(frame.pose, frame.velocity, stamp, output.odom_frame, output.base_frame),
    }
    points = depth_to_points(result.depth, camera.K) if output.depth_points or output.scan is not None else None
    if output.depth_points:
        messages["camera/depth/points"] = point_cloud_msg(points, None, stamp, output.optical_frame)
    if output.scan is not None:
        scan = output.scan
        angle_min, angle_max, ranges = points_to_scan(points, mount.base_to_optical, camera.hfov, scan)
        msg = LaserScan(angle_min=angle_min, angle_max=angle_max, angle_increment=scan.angle_increment,
                        time_increment=0.0, scan_time=0.0, range_min=scan.range_min, range_max=scan.range_max)
        msg.header.stamp, msg.header.frame_id = stamp, output.base_frame
        msg.ranges = ranges.tolist()
        messages["scan"] = msg
    return messages
