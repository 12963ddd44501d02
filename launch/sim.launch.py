"""Start the mirage_ros learned camera simulator.

    ros2 launch mirage_ros sim.launch.py
    ros2 launch mirage_ros sim.launch.py namespace:=robot1 config:=/path/to/my_sim.yaml

The simulator owns /clock by default (config/sim.yaml: publish_clock); run consumers with
use_sim_time:=true.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    config = LaunchConfiguration("config")
    namespace = LaunchConfiguration("namespace")
    use_sim_time = LaunchConfiguration("use_sim_time")
    return LaunchDescription([
        DeclareLaunchArgument(
            "config", default_value=PathJoinSubstitution([FindPackageShare("mirage_ros"), "config", "sim.yaml"]),
            description="Parameter file of the mirage_sim node."),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of the simulated robot (run several side by side with different ones)."),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false",
            description="Follow /clock from elsewhere; leave false when mirage_sim publishes /clock itself."),
        Node(
            package="mirage_ros", executable="mirage_sim", name="mirage_sim", namespace=namespace,
            parameters=[config, {"use_sim_time": use_sim_time}], output="screen", emulate_tty=True),
    ])
