"""Start the mirage_ros learned camera simulator.

    ros2 launch mirage_ros sim.launch.py
    ros2 launch mirage_ros sim.launch.py namespace:=robot1 rviz:=true record:=true
    ros2 launch mirage_ros sim.launch.py config:=/path/to/my_sim.yaml

use_sim_time:=true (the default): mirage_sim owns /clock (its publish_clock follows use_sim_time, whatever
the config file says), stamps every output with sim time advancing exactly 1/rate per step, and every node
started here follows that clock; so should your planners (use_sim_time:=true). A second launch beside it
(namespace:=robot2) follows that clock with publish_clock:=false: only one node may own /clock.
use_sim_time:=false: nobody publishes /clock; mirage_sim stamps every output with the wall clock at its
step. Each step still advances the simulation by 1/rate, so where the model generates slower than `rate`
the robot moves slower than real time (SimStatus.real_time_factor < 1).

Any process started here that ends (a bad parameter, a crash, RViz closed) ends the whole launch, and the
launch says which one and its exit code; rviz:=true where rviz2 is not installed starts nothing and says so.
"""

from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch.actions import DeclareLaunchArgument, GroupAction, LogInfo, OpaqueFunction, Shutdown
from launch.conditions import IfCondition
from launch.events.process import ProcessExited
from launch.launch_context import LaunchContext
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

NO_RVIZ = "rviz:=true but rviz2 is not installed (sudo apt install ros-jazzy-rviz2): nothing started"


def end_launch(event: ProcessExited, context: LaunchContext) -> list | None:
    """``on_exit`` of every process started here: one that ends while the launch runs ends the launch."""
    if context.is_shutdown:
        return None  # Ctrl-C or another process already ended it
    reason = f"{event.process_name} exited with code {event.returncode}: shutting the launch down"
    return [LogInfo(msg=reason), Shutdown(reason=reason)]


def launch_setup(context: LaunchContext) -> list:
    """The processes to start; where one of them cannot be started, none (the launch ends and says why)."""
    rviz = LaunchConfiguration("rviz")
    if IfCondition(rviz).evaluate(context):
        try:
            get_package_prefix("rviz2")
        except PackageNotFoundError as error:
            raise RuntimeError(NO_RVIZ) from error  # the launch prints it and exits with 1
    use_sim_time = LaunchConfiguration("use_sim_time")
    publish_clock = LaunchConfiguration("publish_clock")
    share = FindPackageShare("mirage_ros")
    return [GroupAction([
        PushRosNamespace(LaunchConfiguration("namespace")),
        Node(package="mirage_ros", executable="mirage_sim", name="mirage_sim",
             parameters=[LaunchConfiguration("config"), {"use_sim_time": use_sim_time, "publish_clock": publish_clock}],
             output="screen", emulate_tty=True, on_exit=end_launch),
        Node(package="mirage_ros", executable="mirage_record", name="mirage_record",
             parameters=[{"output": LaunchConfiguration("bag"), "use_sim_time": use_sim_time}],
             output="screen", condition=IfCondition(LaunchConfiguration("record")), on_exit=end_launch),
        Node(package="rviz2", executable="rviz2", name="rviz2",
             arguments=["-d", PathJoinSubstitution([share, "config", "mirage.rviz"])],
             parameters=[{"use_sim_time": use_sim_time}], condition=IfCondition(rviz), on_exit=end_launch),
    ])]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("mirage_ros")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution([share, "config", "sim.yaml"]),
                              description="Parameter file of the mirage_sim node."),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the simulated robot; its frames get the same prefix "
                                          "(robot1/odom, ...). Several robots in one world: the robots parameter."),
        DeclareLaunchArgument("use_sim_time", default_value="true",
                              description="true: mirage_sim owns /clock and every node here follows it; "
                                          "false: no /clock, wall-clock stamps."),
        DeclareLaunchArgument("publish_clock", default_value=LaunchConfiguration("use_sim_time"),
                              description="mirage_sim owns /clock (default: use_sim_time); false: it follows "
                                          "another owner's /clock (a second simulator beside a first)."),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz with config/mirage.rviz."),
        DeclareLaunchArgument("record", default_value="false",
                              description="Record the simulator's topics to a rosbag2 (MCAP) folder."),
        DeclareLaunchArgument("bag", default_value="mirage_rollout",
                              description="Output folder of the recording (must not exist yet)."),
        OpaqueFunction(function=launch_setup),
    ])
