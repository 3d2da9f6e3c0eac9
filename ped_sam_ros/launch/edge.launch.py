"""Start the PED-SAM edge node.

    ros2 launch ped_sam_ros edge.launch.py image_topic:=/camera/image_raw namespace:=/robot
    ros2 launch ped_sam_ros edge.launch.py params_file:=/path/edge.yaml log_level:=debug

The remote servers run elsewhere (see remotes.launch.py); their endpoints, the
model and the keys are in the params file (default: this package's config/edge.yaml).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import LaunchConfigurationNotEquals
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory('ped_sam_ros')
    default_params = os.path.join(share, 'config', 'edge.yaml')
    default_profile = os.path.join(share, 'config', 'fastdds_large_images.xml')
    namespace = LaunchConfiguration('namespace')
    image_topic = LaunchConfiguration('image_topic')
    params_file = LaunchConfiguration('params_file')
    log_level = LaunchConfiguration('log_level')

    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the edge node (its topics are <namespace>/edge_node/...)'),
        DeclareLaunchArgument('image_topic', default_value='/camera/image_raw',
                              description='Camera topic (sensor_msgs/Image) remapped to ~/image; '
                                          '<image_topic>/compressed feeds ~/image/compressed'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='ROS 2 parameters file for the edge node'),
        DeclareLaunchArgument('log_level', default_value='info',
                              choices=['debug', 'info', 'warn', 'error', 'fatal'],
                              description='Logging level of the edge node'),
        DeclareLaunchArgument('fastdds_profile', default_value=default_profile,
                              description='Fast DDS XML profile for the node (FASTDDS_DEFAULT_PROFILES_FILE): '
                                          'shared memory big enough for whole images; give the camera the same. '
                                          'Empty: keep the environment\'s setting'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', LaunchConfiguration('fastdds_profile'),
                               condition=LaunchConfigurationNotEquals('fastdds_profile', '')),
        Node(
            package='ped_sam_ros',
            executable='edge_node',
            name='edge_node',
            namespace=namespace,
            parameters=[params_file],
            remappings=[
                ('~/image', image_topic),
                ('~/image/compressed', [image_topic, '/compressed']),
            ],
            arguments=['--ros-args', '--log-level', log_level],
            output='screen',
            emulate_tty=True,
        ),
    ])
