"""``max_share`` in the distributed encoder is checked on each frame's real content, not on a square
frame at construction: a layout balanced for 4:3 frames is accepted, serves 4:3 frames and refuses a
square one (whose shares it exceeds) before any tile leaves; a limit that no frame shape can meet is
refused at construction (tiny random-weight model, LocalTransport)."""

import numpy as np
import pytest

from helpers import TINY_B
from ped_sam_ros.core.geometry import Partition, PartitionError, content_shape, server_shares, validate_assignment
from ped_sam_ros.core.layout import best_layout
from ped_sam_ros.core.pipeline import DistributedEncoder, lowest_max_share
from ped_sam_ros.core.transport import LocalTransport

FOUR_THREE = (768, 1024)  # a 480x640 camera frame after SAM's resize
LIMIT = 0.26  # the 4:3 layout gives one server at most 25.5 % of a 4:3 frame, 31.6 % of a square one
NAMES = ["a", "b", "c", "d"]


class _Recording:
    """A transport that records the tiles it is asked to send, then delegates."""

    def __init__(self, inner):
        self.inner, self.sent = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_partial(self, jobs, mode, timeout_s):
        self.sent.extend(j.tile.index for j in jobs)
        return self.inner.encode_partial(jobs, mode, timeout_s)


@pytest.fixture(scope="module")
def stages():
    from ped_sam_ros.core.model import EdgeStage, RemoteStage

    return EdgeStage(TINY_B, "paper", seed=3), RemoteStage(TINY_B, seed=3)


@pytest.fixture(scope="module")
def layout():
    lay = best_layout(FOUR_THREE, 4)
    shares_43 = server_shares(lay.partition, lay.assignment, FOUR_THREE)
    shares_sq = server_shares(lay.partition, lay.assignment)
    # the case this module is about: fine on 4:3 content, over the limit on a square frame
    assert max(shares_43) <= LIMIT < max(shares_sq)
    with pytest.raises(PartitionError):  # what a square-frame check at construction said
        validate_assignment(lay.partition, list(lay.assignment), 4, max_share=LIMIT)
    return lay


def _encoder(stages, partition, assignment, max_share):
    edge, remote = stages
    transport = _Recording(LocalTransport(remote, num_servers=4, names=NAMES))
    return DistributedEncoder(edge, transport, partition, list(assignment), max_share=max_share), transport


def _resized(hw, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def test_a_4_3_layout_is_accepted_and_each_frame_checked_on_its_content(stages, layout):
    enc, transport = _encoder(stages, layout.partition, layout.assignment, LIMIT)
    assert content_shape((480, 640)) == FOUR_THREE
    tokens, stats = enc.encode_remote(_resized(FOUR_THREE))
    assert sorted(transport.sent) == list(range(len(layout.partition)))
    assert tokens.shape[:3] == (1, 64, 64)
    assert max(s.share for s in stats.per_server) == pytest.approx(layout.max_share, abs=1e-9)
    assert layout.max_share <= LIMIT
    transport.sent.clear()
    # a square frame: one server would see 31.6 % of it; refused before any tile is sent
    with pytest.raises(PartitionError, match=r"would see 31\.6% of this 1024x1024 frame.*limit of 26\.0%"):
        enc.encode_remote(_resized((1024, 1024)))
    assert transport.sent == []
    # and the 4:3 frame still passes afterwards (nothing is remembered from the refused frame)
    enc.encode_remote(_resized(FOUR_THREE, seed=1))
    assert sorted(transport.sent) == list(range(len(layout.partition)))


def test_set_layout_accepts_the_same_layout_and_checks_per_frame(stages, layout):
    enc, transport = _encoder(stages, Partition.grid(1, 1), [0], 1.0)
    enc.max_share = LIMIT
    enc.set_layout(layout.partition, layout.assignment)  # a frame hook's per-shape layout
    with pytest.raises(PartitionError, match="1024x1024 frame"):
        enc.encode_remote(_resized((1024, 1024)))
    assert transport.sent == []
    enc.encode_remote(_resized(FOUR_THREE))
    assert len(transport.sent) == len(layout.partition)


def test_a_limit_no_frame_shape_can_meet_is_refused_at_construction(stages, layout):
    best, shape = lowest_max_share(layout.partition, layout.assignment)
    assert shape == FOUR_THREE and best == pytest.approx(max(server_shares(layout.partition, layout.assignment, shape)))
    with pytest.raises(
        PartitionError,
        match=r"no frame shape keeps every server within max_share; on the best one.*25\.5% of this 768x1024",
    ):
        _encoder(stages, layout.partition, layout.assignment, 0.25)
    _encoder(stages, layout.partition, layout.assignment, best)  # exactly the best is allowed


@pytest.mark.parametrize(
    "partition,assignment",
    [
        (Partition.grid(2, 2), [0, 1, 2, 3]),
        (Partition.grid(3, 3), [0, 1, 0, 1, 0, 1, 0, 1, 0]),
        (best_layout(FOUR_THREE, 4).partition, best_layout(FOUR_THREE, 4).assignment),
        (best_layout((576, 1024), 4).partition, best_layout((576, 1024), 4).assignment),
    ],
    ids=["2x2", "3x3-two-servers", "4:3-K4", "16:9-K4"],
)
def test_lowest_max_share_is_the_minimum_over_frame_shapes(partition, assignment):
    """Against a brute-force scan of shapes (every 4th content size, portrait and landscape)."""
    best, shape = lowest_max_share(partition, assignment)
    assert best == pytest.approx(max(server_shares(partition, assignment, shape)), abs=1e-12)
    for side in range(4, 1025, 4):
        for hw in ((1024, side), (side, 1024)):
            assert max(server_shares(partition, assignment, hw)) >= best - 1e-12


def test_the_node_config_refuses_only_a_limit_no_frame_shape_meets():
    """EdgeConfig's start-up check is the encoder's: 2x2 on four servers gives one server 31.6 % of
    a square frame but only 28.1 % of a 1024x896 one, so 0.30 starts (and each frame is checked)."""
    from ped_sam_ros.core.transport import ServerAddress
    from ped_sam_ros.edge.config import EdgeConfig

    four = [ServerAddress(n, f"tcp://127.0.0.1:{i + 1}") for i, n in enumerate(NAMES)]
    assert max(server_shares(Partition.grid(2, 2), [0, 1, 2, 3])) > 0.30

    def problems(limit):
        return EdgeConfig(model=TINY_B, random_weights=True, grid="2x2", servers=four, max_share=limit).problems()

    assert problems(0.30) == []
    (err,) = problems(0.25)
    assert "no frame shape keeps every server within max_share" in err and "28.1% of this 1024x896" in err
