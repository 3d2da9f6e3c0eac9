"""A real launch_testing test: both launch files, one image in, a ``~/masks`` result with the
input header out, and every process ending with exit code 0 after launch's SIGINT.

Run with ``launch_test`` by ``test_launch_testing.py``, which sets PED_SAM_LT_PARAMS (the edge
params file), PED_SAM_LT_BASE_PORT (two free loopback ports from there), ROS_DOMAIN_ID and
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST. (Its file name does not start with ``test_``: pytest
does not collect it where launch_testing is missing.)
"""

import os
import time
import unittest

import launch
import launch_testing
import launch_testing.actions
import launch_testing.asserts
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

MODEL = "vit_b/w32h2"  # SAM's real geometry at a width a 2-core CPU runs fast (random weights)
SEED = "5"
NAMESPACE = "/lt"
IMAGE_TOPIC = "/lt/camera/image"
WAIT_S = 180.0


@launch_testing.ready_to_test_action_timeout(120)  # the default 15 s is short for a loaded 2-core machine
def generate_test_description():
    launch_dir = os.path.join(get_package_share_directory("ped_sam_ros"), "launch")
    remotes = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(launch_dir, "remotes.launch.py")),
        launch_arguments={
            "count": "2",
            "base_port": os.environ["PED_SAM_LT_BASE_PORT"],
            "model": MODEL,
            "seed": SEED,
            "torch_threads": "1",
        }.items(),
    )
    edge = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(launch_dir, "edge.launch.py")),
        launch_arguments={
            "namespace": NAMESPACE,
            "image_topic": IMAGE_TOPIC,
            "params_file": os.environ["PED_SAM_LT_PARAMS"],
            "fastdds_profile": "large_images_loopback",
        }.items(),
    )
    return launch.LaunchDescription([remotes, edge, launch_testing.actions.ReadyToTest()])


class TestOneImage(unittest.TestCase):
    def test_masks_carry_the_input_header(self):
        import numpy as np
        import rclpy
        from builtin_interfaces.msg import Time
        from rclpy.node import Node
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from ped_sam_msgs.msg import PointPrompt, Prompt, Prompts, SegmentationResult

        rclpy.init()
        node = Node("launch_testing_client")
        try:
            results = []
            node.create_subscription(SegmentationResult, f"{NAMESPACE}/edge_node/masks", results.append, 10)
            images = node.create_publisher(Image, IMAGE_TOPIC, 5)
            prompts = node.create_publisher(Prompts, f"{NAMESPACE}/edge_node/prompts", 10)
            end = time.monotonic() + WAIT_S
            while images.get_subscription_count() < 1 or prompts.get_subscription_count() < 1:
                self.assertLess(time.monotonic(), end, "the edge node never subscribed")
                rclpy.spin_once(node, timeout_sec=0.2)
            h, w = 96, 128
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[20:70, 30:90] = (200, 60, 40)
            header = Header(stamp=Time(sec=1234, nanosec=5678), frame_id="lt_camera")
            img = Image(
                header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=rgb.tobytes()
            )
            ask = Prompts(header=header, prompts=[Prompt(points=[PointPrompt(x=60.0, y=45.0, label=1)])])
            last_sent = 0.0
            while not any(r.header == header for r in results):
                self.assertLess(time.monotonic(), end, "no ~/masks result for the image")
                if time.monotonic() - last_sent > 3.0:  # best-effort image QoS: resend until one arrives
                    prompts.publish(ask)
                    images.publish(img)
                    last_sent = time.monotonic()
                rclpy.spin_once(node, timeout_sec=0.2)
            result = next(r for r in results if r.header == header)
            self.assertEqual((result.image_height, result.image_width), (h, w))
            self.assertTrue(result.random_weights)
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestCleanExit(unittest.TestCase):
    def test_every_process_exits_with_code_0(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
