"""Start the mirage_ros learned camera simulator.

    ros2 launch mirage_ros sim.launch.py
    ros2 launch mirage_ros sim.launch.py namespace:=robot1 rviz:=true record:=true
    ros2 launch mirage_ros sim.launch.py config:=/path/to/my_sim.yaml

The simulator owns /clock by default (config/sim.yaml: publish_clock), so everything started here runs
on sim time, and so should your planners (use_sim_time:=true).
"""

from launch.actions import DeclareLaunchArgument, GroupAction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    config = LaunchConfiguration("config")
    namespace = LaunchConfiguration("namespace")
    use_sim_time = LaunchConfiguration("use_sim_time")
    share = FindPackageShare("mirage_ros")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution([share, "config", "sim.yaml"]),
                              description="Parameter file of the mirage_sim node."),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the simulated robot (run several side by side)."),
        DeclareLaunchArgument("use_sim_time", default_value="true",
                              description="Nodes started here follow /clock (mirage_sim publishes it by default)."),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz with config/mirage.rviz."),
        DeclareLaunchArgument("record", default_value="false",
                              description="Record the simulator's topics to a rosbag2 (MCAP) folder."),
        DeclareLaunchArgument("bag", default_value="mirage_rollout",
                              description="Output folder of the recording (must not exist yet)."),
        GroupAction([
            PushRosNamespace(namespace),
            Node(package="mirage_ros", executable="mirage_sim", name="mirage_sim",
                 parameters=[config, {"use_sim_time": use_sim_time}], output="screen", emulate_tty=True),
            Node(package="mirage_ros", executable="mirage_record", name="mirage_record",
                 parameters=[{"output": LaunchConfiguration("bag"), "use_sim_time": use_sim_time}],
                 output="screen", condition=IfCondition(LaunchConfiguration("record"))),
            Node(package="rviz2", executable="rviz2", name="rviz2",
                 arguments=["-d", PathJoinSubstitution([share, "config", "mirage.rviz"])],
                 parameters=[{"use_sim_time": use_sim_time}], condition=IfCondition(LaunchConfiguration("rviz"))),
        ]),
    ])
