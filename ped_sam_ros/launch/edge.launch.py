"""Start the PED-SAM edge node.

    ros2 launch ped_sam_ros edge.launch.py image_topic:=/camera/image_raw namespace:=/robot
    ros2 launch ped_sam_ros edge.launch.py params_file:=/path/edge.yaml log_level:=debug
    ros2 launch ped_sam_ros edge.launch.py fastdds_profile:=large_images_loopback   # this host only

The remote servers run elsewhere (see remotes.launch.py); their endpoints, the
model and the keys are in the params file (default: this package's config/edge.yaml).

``log_level`` is the edge node's own level (its ROS logger and the pipeline's Python
logging); rcl and rmw keep theirs. ``fastdds_profile`` goes to the edge node's process only
(never to the rest of a launch that includes this file):

* ``large_images`` (default): config/fastdds_large_images.xml, shared memory big enough for
  whole images; UDP as usual, so other hosts (rviz on a laptop, the rest of the robot) see it;
* ``large_images_loopback``: the same with UDP on 127.0.0.1 only: invisible to other hosts;
* ``none``: no profile from here (Fast DDS's defaults, or your FASTDDS_DEFAULT_PROFILES_FILE);
* a path to your own Fast DDS XML profile.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "ped_sam_ros"
#: the level names both launch files accept (the ROS severities)
LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"]
#: fastdds_profile names -> files in this package's config/
FASTDDS_PROFILES = {
    "large_images": "fastdds_large_images.xml",
    "large_images_loopback": "fastdds_large_images_loopback.xml",
}
NO_PROFILE = "none"


def fastdds_env(choice: str, config_dir: str) -> dict:
    """The environment the edge node's process gets for ``fastdds_profile:=<choice>``."""
    choice = choice.strip()
    if choice in ("", NO_PROFILE):
        return {}
    path = os.path.join(config_dir, FASTDDS_PROFILES[choice]) if choice in FASTDDS_PROFILES else choice
    if not os.path.isfile(path):
        raise RuntimeError(
            f"fastdds_profile: {choice!r} is neither one of {sorted(FASTDDS_PROFILES)} or "
            f"'{NO_PROFILE}' nor an existing file"
        )
    return {"FASTDDS_DEFAULT_PROFILES_FILE": os.path.abspath(path)}


def _edge_node(context, *args, **kwargs):
    """The Node, once the arguments are known: checks the params file, picks the DDS profile."""
    config_dir = os.path.join(get_package_share_directory(PACKAGE), "config")
    params_file = LaunchConfiguration("params_file").perform(context)
    if not os.path.isfile(params_file):
        # launch_ros would only warn and start the node without it
        raise RuntimeError(f"params_file {params_file!r} does not exist or is not a file")
    env = fastdds_env(LaunchConfiguration("fastdds_profile").perform(context), config_dir)
    image_topic = LaunchConfiguration("image_topic")
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE", "none (the environment's Fast DDS settings)")
    return [
        LogInfo(msg=f"edge_node: params {params_file}; Fast DDS profile {profile}"),
        Node(
            package=PACKAGE,
            executable="edge_node",
            name="edge_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=[params_file],
            remappings=[
                ("~/image", image_topic),
                ("~/image/compressed", [image_topic, "/compressed"]),
            ],
            # the node's own option (before --ros-args): its logger and Python logging only
            arguments=["--log-level", LaunchConfiguration("log_level")],
            additional_env=env,
            output="screen",
            emulate_tty=True,
        ),
    ]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "edge.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "namespace",
                default_value="",
                description="Namespace of the edge node (its topics are <namespace>/edge_node/...)",
            ),
            DeclareLaunchArgument(
                "image_topic",
                default_value="/camera/image_raw",
                description="Camera topic (sensor_msgs/Image) remapped to ~/image; "
                "<image_topic>/compressed feeds ~/image/compressed",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="ROS 2 parameters file for the edge node (must exist)",
            ),
            DeclareLaunchArgument(
                "log_level",
                default_value="info",
                choices=LOG_LEVELS,
                description="Log level of the edge node and its Python logging (rcl/rmw unchanged)",
            ),
            DeclareLaunchArgument(
                "fastdds_profile",
                default_value="large_images",
                description="Fast DDS profile for the edge node's process only: large_images "
                "(32 MB shared memory, reachable from other hosts), large_images_loopback "
                "(same, UDP on 127.0.0.1 only: other hosts cannot see the node), "
                "none (keep the environment's), or a path to an XML profile",
            ),
            OpaqueFunction(function=_edge_node),
        ]
    )
