"""What a colcon build and `ros2 launch` rely on: package.xml, the install rules and the files they name.

`ros2 launch` itself is not installable on our machines; these checks cover everything it relies on.
"""

import ast
import os
import re
from pathlib import Path

import yaml
from catkin_pkg.package import parse_package

from mirage_ros.ros.sim_node import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_format_3_and_declares_what_the_code_imports():
    package = parse_package(str(ROOT / "package.xml"))
    assert package.package_format == 3 and package.name == "mirage_ros"
    package.validate()
    depends = {d.name for d in package.build_depends + package.exec_depends + package.buildtool_depends}
    for needed in ("rclpy", "std_msgs", "geometry_msgs", "nav_msgs", "sensor_msgs", "rosgraph_msgs",
                   "rosidl_default_generators", "rosidl_default_runtime", "launch", "launch_ros",
                   "python3-numpy", "python3-transforms3d", "python3-torch"):
        assert needed in depends, needed
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}
    assert package.get_build_type() == "ament_cmake"


#: The system (non-ROS-package) keys package.xml may use: each was looked up in ros/rosdistro's
#: rosdep/python.yaml (commit 8468e88) and resolves on Ubuntu 24.04 (apt, or pip for the -pip keys).
#: Keys such as python3-diffusers-pip do not exist there: those dependencies are requirements.txt's.
RESOLVING_SYSTEM_KEYS = {"python3-numpy", "python3-yaml", "python3-transforms3d", "python3-torch", "python3-tqdm",
                         "python3-pil", "python3-rosbags-pip", "python3-mujoco-pip", "python3-pytest",
                         "python3-catkin-pkg"}


def test_package_xml_uses_only_rosdep_keys_that_resolve():
    package = parse_package(str(ROOT / "package.xml"))
    everything = package.build_depends + package.exec_depends + package.buildtool_depends + package.test_depends
    system_keys = {d.name for d in everything if d.name.startswith("python3-")}
    assert system_keys <= RESOLVING_SYSTEM_KEYS, sorted(system_keys - RESOLVING_SYSTEM_KEYS)
    # What no key covers is installed from requirements.txt, which the README's workspace recipe uses.
    requirements = (ROOT / "requirements.txt").read_text()
    for package_name in ("diffusers", "safetensors", "accelerate"):
        assert re.search(rf"^{package_name}\b", requirements, re.MULTILINE), package_name


def test_cmake_installs_interfaces_package_executables_launch_and_config():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    messages = sorted(f"{p.parent.name}/{p.name}" for p in [*(ROOT / "msg").glob("*.msg"), *(ROOT / "srv").glob("*.srv")])
    assert messages and all(f'"{m}"' in cmake for m in messages)
    assert "DESTINATION lib/${PROJECT_NAME}" in cmake
    assert re.search(r"install\(DIRECTORY launch config DESTINATION share/\$\{PROJECT_NAME\}\)", cmake)
    assert "DESTINATION ${PYTHON_INSTALL_DIR}/${PROJECT_NAME}" in cmake


def test_executables_exist_and_run_the_node_main():
    scripts = {p.name: p for p in (ROOT / "scripts").iterdir()}
    assert "mirage_sim" in scripts
    for path in scripts.values():
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env python3")
        ast.parse(path.read_text())


def test_launch_file_names_installed_executables_and_config():
    tree = ast.parse((ROOT / "launch" / "sim.launch.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    nodes = [{kw.arg: kw.value.value for kw in call.keywords if kw.arg in ("package", "executable")}
             for call in calls if getattr(call.func, "id", None) == "Node"]
    assert nodes
    ours = {p.name for p in (ROOT / "scripts").iterdir()}
    declared = {d.name for d in parse_package(str(ROOT / "package.xml")).exec_depends}
    for node in nodes:
        if node["package"] == "mirage_ros":
            assert node["executable"] in ours, node          # installed by CMakeLists.txt
        else:
            assert node["package"] in declared, node         # another package: a declared dependency
    arguments = {call.args[0].value for call in calls
                 if getattr(call.func, "id", None) == "DeclareLaunchArgument"}
    assert {"config", "namespace", "use_sim_time"} <= arguments
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert "sim.yaml" in strings and (ROOT / "config" / "sim.yaml").is_file()


def test_sim_yaml_sets_every_declared_parameter_and_nothing_else():
    document = yaml.safe_load((ROOT / "config" / "sim.yaml").read_text())
    (node_key, body), = document.items()
    assert node_key.endswith("mirage_sim")
    values = body["ros__parameters"]
    assert set(values) == {spec.name for spec in PARAMETERS}
    for spec in PARAMETERS:
        assert spec.error(values[spec.name]) is None, spec.name


def test_console_scripts_point_at_existing_functions():
    setup_source = (ROOT / "setup.py").read_text()
    for module, function in re.findall(r"= (mirage_ros[\w.]+):(\w+)", setup_source):
        source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
        assert f"def {function}(" in source, f"{module}:{function}"


def test_launch_file_ends_the_whole_launch_when_a_process_ends_and_checks_for_rviz2_first():
    tree = ast.parse((ROOT / "launch" / "sim.launch.py").read_text())
    functions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    called = lambda where: {getattr(call.func, "id", None) for call in ast.walk(where) if isinstance(call, ast.Call)}
    # Every process started has an on_exit handler, and that handler shuts the launch down, saying why.
    nodes = [call for call in ast.walk(tree) if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node"]
    assert len(nodes) == 3
    for node in nodes:
        handler, = [kw.value.id for kw in node.keywords if kw.arg == "on_exit"]
        assert {"Shutdown", "LogInfo"} <= called(functions[handler])
    # The processes are made in one function that first looks for rviz2 and raises (nothing started) without it.
    setup = functions["launch_setup"]
    assert all(any(node is inner for inner in ast.walk(setup)) for node in nodes)
    lookup = next(call for call in ast.walk(setup) if isinstance(call, ast.Call)
                  and getattr(call.func, "id", None) == "get_package_prefix")
    assert lookup.args[0].value == "rviz2"
    raises = [node for node in ast.walk(setup) if isinstance(node, ast.Raise)]
    assert raises and all(raise_.lineno < nodes[0].lineno for raise_ in raises)
    assert "OpaqueFunction" in called(functions["generate_launch_description"])
