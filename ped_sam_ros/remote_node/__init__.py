"""PED-SAM remote encoder server (ZeroMQ ROUTER + the remote stage of SAM's encoder).

No ROS here: it runs on machines that only have Python, torch, segment_anything
and pyzmq.  ``python -m remote_node --help`` for usage.
"""
