"""A server that answers with NaN, inf or absurdly large tokens (float16 and int8 on the wire):
an in-process :class:`EncoderServer` over real ZeroMQ on loopback. Every such reply is
refused before merging, the server is marked suspect with the reason, the frame is finished
by the edge fallback with finite values only, and the server is taken back by a probe once
it answers correctly again."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from helpers import TINY_B
from helpers.net import InProcessServer
from ped_sam_ros.core.geometry import Partition
from ped_sam_ros.core.model import EdgeStage, RemoteStage
from ped_sam_ros.core.pipeline import DistributedEncoder, FallbackPolicy
from ped_sam_ros.core.transport import RemoteEncodeError, ServerAddress

pytestmark = pytest.mark.timeout(300)
SEED = 4


class PoisonStage:
    """A real remote stage whose outputs are replaced by ``value`` while ``poison`` is set."""

    def __init__(self, stage, value: float):
        self.inner, self.geometry, self.value, self.poison = stage, stage.geometry, value, True

    def encode_tile(self, pixels, tile, mode):
        out = self.inner.encode_tile(pixels, tile, mode)
        if self.poison:
            out = torch.full_like(out, self.value)
            out[0, 0, 0] = 0.0  # int8 needs a spread to carry a huge scale
        return out


@pytest.fixture(scope="module")
def stages():
    return EdgeStage(TINY_B, "paper", seed=SEED), RemoteStage(TINY_B, seed=SEED)


@pytest.fixture(scope="module")
def frame():
    return np.random.default_rng(5).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)


@pytest.mark.parametrize("wire", ["float16", "int8"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 6.0e4, 1.0e30])
def test_poisoned_replies_are_refused_and_the_server_taken_back_later(stages, frame, value, wire):
    from ped_sam_ros.net.zmq_client import ZmqTransport

    edge, remote = stages
    good = InProcessServer(TINY_B, remote)
    bad_stage = PoisonStage(remote, value)
    bad = InProcessServer(TINY_B, bad_stage)
    with good, bad:
        t = ZmqTransport(
            [ServerAddress("good", good.endpoint), ServerAddress("bad", bad.endpoint)], TINY_B, token_dtype=wire
        )
        try:
            assert t.wait_connected(30)
            enc = DistributedEncoder(
                edge,
                t,
                Partition.grid(1, 2),
                fallback=FallbackPolicy("edge"),
                edge_remote=lambda: remote,
                timeout_s=30.0,
            )
            emb, stats = enc.encode_resized(frame)
            assert torch.isfinite(emb).all(), "non-finite values reached the embedding"
            assert stats.edge_tiles == [1] and stats.fallback == ["tile 1: bad -> edge"]
            h = t.health()[1]
            # refused by the token check, or already by the int8 codec's own checks (a non-finite scale)
            assert h.suspect and h.state == "error", h
            assert any(w in h.last_error for w in ("refused tokens for tile 1", "bad reply", "error reply")), h
            assert not t.health()[0].suspect
            # while suspect it gets no tiles; once it answers correctly (a probe) it is back
            bad_stage.poison = False
            sent_before = t.health()[1].requests
            emb2, stats2 = enc.encode_resized(frame)
            assert stats2.edge_tiles == [1] and t.health()[1].requests == sent_before
            end = time.monotonic() + 10
            while not all(t.usable()):
                assert time.monotonic() < end, t.health()
                t.maintain()
                time.sleep(0.05)
            emb3, stats3 = enc.encode_resized(frame)
            assert not stats3.degraded and torch.isfinite(emb3).all()
            assert float((emb3 - emb).abs().max()) < 0.05  # the remote tile again, at wire precision
            # with the 'fail' policy the same reply fails the frame, naming the server and why
            bad_stage.poison = True
            enc.fallback = FallbackPolicy("fail")
            with pytest.raises(RemoteEncodeError, match="fallback is 'fail': bad .*(refused tokens|reply)"):
                enc.encode_resized(frame)
        finally:
            t.close()
