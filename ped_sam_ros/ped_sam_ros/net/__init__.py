"""ZeroMQ adapters: Curve key files (shared with the server, ``remote_node``) and the edge's client."""
