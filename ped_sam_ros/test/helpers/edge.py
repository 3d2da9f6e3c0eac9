"""The in-process edge of the tests (no ROS, no sockets): a two-server EdgeConfig and a
transport wrapper that records what leaves the edge."""

from __future__ import annotations

from helpers import TINY_B1


def two_server_config(**overrides):
    """An :class:`~ped_sam_ros.edge.config.EdgeConfig` of :data:`helpers.TINY_B1` with random
    weights (seed 3), a 1x2 grid over two placeholder servers, ``left`` and ``right``
    (nothing listens there: the tests build their pipeline with an in-process transport);
    ``overrides`` replaces or adds fields."""
    from ped_sam_ros.core.transport import ServerAddress
    from ped_sam_ros.edge.config import EdgeConfig

    fields = dict(
        model=TINY_B1,
        random_weights=True,
        seed=3,
        grid="1x2",
        servers=[ServerAddress("left", "tcp://127.0.0.1:1"), ServerAddress("right", "tcp://127.0.0.1:2")],
    )
    fields.update(overrides)
    return EdgeConfig(**fields)


class RecordingTransport:
    """Wraps a transport: keeps every job (tile, crop) handed to ``encode`` or ``encode_partial``
    in ``jobs``, then delegates; so a test can see what would have left the edge."""

    def __init__(self, inner):
        self.inner, self.jobs = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, jobs, mode, timeout_s=60.0):
        self.jobs.extend(jobs)
        return self.inner.encode(jobs, mode, timeout_s)

    def encode_partial(self, jobs, mode, timeout_s):
        self.jobs.extend(jobs)
        return self.inner.encode_partial(jobs, mode, timeout_s)
