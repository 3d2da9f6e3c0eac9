"""ROS 2 adapters (rclpy): the edge node and message conversions. The logic lives in
:mod:`ped_sam_ros.edge` and :mod:`ped_sam_ros.core`; this package only translates."""
