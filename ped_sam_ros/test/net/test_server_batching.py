"""The server runs compatible waiting requests as one batch, equal to one at a time.

Compatible: same mode, same tile token shape, same reply dtype.  A :class:`GatedStage`
holds the compute thread on the first request so that the others queue up behind it
(no timing involved); every reply is checked against the stage run on that request
alone, by request id.
"""

import threading

import numpy as np
import pytest
import torch

from helpers import TINY_B
from helpers.net import InProcessServer, RawClient, pixels_for
from ped_sam_ros.core import wire
from ped_sam_ros.core.geometry import TOKEN_GRID, Tile
from ped_sam_ros.core.model import RemoteStage
from ped_sam_ros.core.service import batch_key, run_encode, run_encode_batch
from ped_sam_ros.core.wire import EncodeRequest, decode_message, make_encode_request

WAIT_S = 60.0
pytestmark = pytest.mark.timeout(300)
# four 14x14-token tiles (one token shape) and one of another shape
SAME = [Tile(i, 0, 0, 14 * i, 14 * i + 14, 0, 14) for i in range(4)]
OTHER = Tile(4, 0, 0, 56, 64, 0, 14)


@pytest.fixture(scope="module")
def stage():
    torch.manual_seed(0)
    return RemoteStage(TINY_B, seed=5)


class GatedStage:
    """Wraps a RemoteStage: the first compute waits for :meth:`open`; every call is recorded
    as (kind, batch size)."""

    def __init__(self, stage):
        self.inner = stage
        self.geometry = stage.geometry
        self.started = threading.Event()
        self._gate = threading.Event()
        self.calls = []

    def open(self) -> None:
        self._gate.set()

    def _wait(self) -> None:
        self.started.set()
        if not self._gate.wait(WAIT_S):
            raise RuntimeError("GatedStage: never opened")

    def encode_tile(self, pixels, tile, mode):
        self._wait()
        self.calls.append(("one", 1))
        return self.inner.encode_tile(pixels, tile, mode)

    def encode_tiles(self, items, mode, max_batch=None):
        self._wait()
        self.calls.append(("batch", len(items)))
        return self.inner.encode_tiles(items, mode, max_batch)


def _request(rid, tile, seed, mode="paper", reply_dtype="float32", budget_ms=60000):
    return EncodeRequest(rid, TINY_B, mode, tile, pixels_for(tile, seed), budget_ms, reply_dtype)


def _tokens(reply_frames_or_pair, tile, dim):
    header, arrays = reply_frames_or_pair
    return header, wire.unpack_tokens(arrays, tile.token_shape + (dim,))


def test_run_encode_batch_equals_one_at_a_time(stage):
    reqs = [_request(f"r{i}", t, seed=i) for i, t in enumerate(SAME)]
    assert len({batch_key(r) for r in reqs}) == 1
    batched = run_encode_batch(stage, reqs, [0.0] * len(reqs))
    dim = stage.geometry.embed_dim
    for req, frames in zip(reqs, batched):
        header, got = _tokens(decode_message(frames), req.tile, dim)
        assert header["id"] == req.id and header["timing"]["batch"] == len(reqs)
        _, want = _tokens(decode_message(run_encode(stage, req)), req.tile, dim)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # different content per request: a mix-up between requests would be seen
    assert not np.allclose(
        _tokens(decode_message(batched[0]), SAME[0], dim)[1], _tokens(decode_message(batched[1]), SAME[1], dim)[1]
    )
    with pytest.raises(ValueError, match="one mode"):
        run_encode_batch(stage, [reqs[0], _request("x", SAME[1], 9, mode="exact")], [0.0, 0.0])


def test_server_batches_compatible_waiting_requests_and_matches_replies_by_id(stage, ctx):
    gated = GatedStage(stage)
    dim = stage.geometry.embed_dim
    with InProcessServer(TINY_B, gated) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            first = _request("hold", SAME[0], seed=100)
            assert c.send(make_encode_request(first))
            assert gated.started.wait(WAIT_S), "the compute thread never started"
            reqs = [_request(f"same-{i}", t, seed=i) for i, t in enumerate(SAME)]  # one batch of 4
            reqs += [
                _request("other-shape", OTHER, seed=7),
                _request("other-mode", SAME[1], seed=8, mode="exact"),
                _request("other-dtype", SAME[2], seed=9, reply_dtype="float16"),
                _request("expired", SAME[3], seed=10, budget_ms=0.001),
            ]
            for r in reqs:
                assert c.send(make_encode_request(r))
            # every request is queued behind "hold" (it has not been given back): then open
            pause = threading.Event()  # never set: a bounded wait
            for _ in range(600):
                with srv.server._lock:
                    if srv.server._queued_jobs == len(reqs):
                        break
                pause.wait(0.05)
            gated.open()
            got = {}
            for _ in range(len(reqs) + 1):
                r = c.recv(WAIT_S)
                assert r is not None, f"only {len(got)} replies: {sorted(got)}"
                got[r[0]["id"]] = r
        finally:
            c.close()
    assert sorted(got) == sorted(["hold"] + [r.id for r in reqs])
    assert (got["expired"][0]["type"], got["expired"][0]["code"]) == ("error", "deadline_expired")
    for req in [first] + [r for r in reqs if r.id != "expired"]:
        header, arrays = got[req.id]
        assert header["type"] == "encoded", header
        tokens = wire.unpack_tokens(arrays, req.tile.token_shape + (dim,))
        want = stage.encode_tile(req.pixels, req.tile, req.mode).numpy()
        atol = 1e-5 if req.reply_dtype == "float32" else 1e-2 * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(tokens, want, rtol=0, atol=atol, err_msg=req.id)
    # "hold" alone; then the four compatible ones together; each incompatible one alone
    assert gated.calls[0] == ("one", 1)
    assert sorted(gated.calls[1:]) == sorted([("batch", 4), ("one", 1), ("one", 1), ("one", 1)]), gated.calls
    assert got["same-0"][0]["timing"]["batch"] == 4
    assert srv.server.batches == {1: 4, 4: 1} and srv.server.requests_served == 8
    assert srv.server._queued_jobs == 0 and srv.server._queued_bytes == 0


def test_whole_frame_cloud_request_is_a_batch_of_one(stage, ctx):
    whole = Tile(0, 0, 0, 0, TOKEN_GRID, 0, TOKEN_GRID)
    gated = GatedStage(stage)
    gated.open()
    with InProcessServer(TINY_B, gated) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            reply = c.request(make_encode_request(_request("cloud", whole, seed=3)), WAIT_S)
        finally:
            c.close()
    assert reply is not None and reply[0]["type"] == "encoded" and reply[0]["id"] == "cloud"
    assert gated.calls == [("one", 1)] and srv.server.batches == {1: 1}


def test_max_batch_bounds_a_batch(stage, ctx):
    gated = GatedStage(stage)
    with InProcessServer(TINY_B, gated, max_batch=2) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            assert c.send(make_encode_request(_request("hold", SAME[0], seed=100)))
            assert gated.started.wait(WAIT_S)
            for i, t in enumerate(SAME):
                assert c.send(make_encode_request(_request(f"s{i}", t, seed=i)))
            for _ in range(600):
                with srv.server._lock:
                    if srv.server._queued_jobs == len(SAME):
                        break
                threading.Event().wait(0.05)
            gated.open()
            ids = set()
            for _ in range(len(SAME) + 1):
                r = c.recv(WAIT_S)
                assert r is not None and r[0]["type"] == "encoded"
                ids.add(r[0]["id"])
        finally:
            c.close()
    assert ids == {"hold", "s0", "s1", "s2", "s3"}
    assert max(n for _, n in gated.calls) == 2 and sum(n for _, n in gated.calls) == 5, gated.calls
