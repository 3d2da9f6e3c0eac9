"""EdgeConfig of the in-process runtime tests (no ROS, no sockets: ``local_transport``)."""

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
