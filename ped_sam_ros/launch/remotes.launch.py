"""Start N PED-SAM remote encoder servers (ped-sam-remote) on this machine.

    ros2 launch ped_sam_ros remotes.launch.py                       # the servers of config/remotes.yaml
    ros2 launch ped_sam_ros remotes.launch.py remotes_file:=/etc/ped_sam/remotes.yaml
    ros2 launch ped_sam_ros remotes.launch.py count:=4 base_port:=5601 checkpoint:=/opt/sam_vit_b_01ec64.pth

In a real deployment each server runs in its own administrative domain: start
them there (the same file with one entry, or `ped-sam-remote` directly). The
servers are not ROS nodes; they speak ZeroMQ only, so no DDS profile applies.

The executable is looked up where ``ros2 run`` looks (``<prefix>/lib/ped_sam_ros/``),
so it is found in a colcon install, a pip install and the project's venv alike.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.substitutions import ExecutableInPackage

PACKAGE = "ped_sam_ros"
#: the level names both launch files accept (the ROS severities)
LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]
#: ROS level name -> the server's --log-level (Python logging names)
SERVER_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "error": "error", "fatal": "error"}
OVERRIDES = (
    "model",
    "checkpoint",
    "seed",
    "server_keys_dir",
    "authorized_keys",
    "count",
    "base_port",
    "torch_threads",
    "device",
    "precision",
    "log_level",
)


def _servers(context, *args, **kwargs):
    from ped_sam_ros.edge.remotes import apply_overrides, load_remotes_file, remote_commands

    remotes_file = LaunchConfiguration("remotes_file").perform(context)
    if not os.path.isfile(remotes_file):
        raise RuntimeError(f"remotes_file {remotes_file!r} does not exist or is not a file")
    overrides = {k: LaunchConfiguration(k).perform(context) for k in OVERRIDES}
    overrides["log_level"] = SERVER_LOG_LEVELS[overrides["log_level"]]
    cfg = apply_overrides(load_remotes_file(remotes_file), overrides)
    # fails here, naming the directory it searched, if the package has no such executable
    executable = ExecutableInPackage(executable="ped-sam-remote", package=PACKAGE).perform(context)
    return [
        # the server stops within about 2 s of SIGINT; SIGTERM only if it did not
        ExecuteProcess(cmd=argv, name=name, output="screen", sigterm_timeout="5")
        for name, argv in remote_commands(cfg, executable=[executable])
    ]


def generate_launch_description():
    default_file = os.path.join(get_package_share_directory(PACKAGE), "config", "remotes.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "remotes_file",
                default_value=default_file,
                description="YAML list of servers (name, bind) and their model/weights/keys",
            ),
            DeclareLaunchArgument(
                "count",
                default_value="",
                description="Start this many loopback servers (remote-a, remote-b, ...) instead of the file's list",
            ),
            DeclareLaunchArgument("base_port", default_value="5601", description="First port with count:=N"),
            DeclareLaunchArgument("model", default_value="", description="Override the model (vit_b, vit_l, vit_h)"),
            DeclareLaunchArgument(
                "checkpoint", default_value="", description="Override: SAM checkpoint path (disables random weights)"
            ),
            DeclareLaunchArgument("seed", default_value="", description="Override the random-weights seed"),
            DeclareLaunchArgument(
                "server_keys_dir",
                default_value="",
                description="Override: directory with SERVER_NAME.key_secret (CurveZMQ)",
            ),
            DeclareLaunchArgument(
                "authorized_keys", default_value="", description="Override: directory with the edges' public keys"
            ),
            DeclareLaunchArgument("torch_threads", default_value="", description="Override torch CPU threads"),
            DeclareLaunchArgument(
                "device", default_value="", description="Override the device: auto, cpu, cuda or cuda:N"
            ),
            DeclareLaunchArgument(
                "precision", default_value="", description="Override the precision: float32, float16 or bfloat16"
            ),
            DeclareLaunchArgument(
                "log_level",
                default_value="info",
                choices=LOG_LEVELS,
                description="Log level of every server (warn and fatal map to the server's warning and error)",
            ),
            OpaqueFunction(function=_servers),
        ]
    )
