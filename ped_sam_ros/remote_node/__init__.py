"""PED-SAM remote encoder server: a ZeroMQ ROUTER in front of the remote stage of SAM's encoder.

One home for everything only the server does: :mod:`.server` (the request loop,
:class:`~.server.EncoderServer`), :mod:`.keys` (its Curve key pair, the client
keys it trusts, ``ped-sam-keys``), :mod:`.policy` (which addresses it may bind
without Curve) and :mod:`.__main__` (``python -m remote_node`` / ``ped-sam-remote``).
What both ends run comes from ``ped_sam_ros``: the encode service and codec
(``ped_sam_ros.core``) and Curve key files (``ped_sam_ros.net.curve``); nothing
there imports this package.

No ROS here: it runs on machines that only have Python, torch, segment_anything
and pyzmq.  ``python -m remote_node --help`` for usage.
"""
