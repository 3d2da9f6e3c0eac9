"""Network adapters of the edge (ZeroMQ client, CurveZMQ key handling); no ROS here."""
