"""The degraded mode without a network: the token check, the adaptive deadline, and each
fallback policy of :class:`DistributedEncoder` over an in-process transport whose servers
can be made to fail or to return poisoned tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import TINY_B1
from ped_sam_ros.core.geometry import Partition
from ped_sam_ros.core.model import EdgeStage, RemoteStage
from ped_sam_ros.core.pipeline import EDGE, DeadlinePolicy, DistributedEncoder, FallbackPolicy
from ped_sam_ros.core.transport import EncodeRound, LocalTransport, RemoteEncodeError, TokenCheck, TokenLimits

SEED = 3
TOL = 2e-3  # float16 wire vs the edge's float32 tiles, after the edge blocks


# ------------------------------------------------------------------ token check


def test_token_check_refuses_non_finite_huge_and_outlying_tiles():
    check = TokenCheck(TokenLimits(max_abs=100.0, rms_factor=10.0, warmup=3))
    rng = np.random.default_rng(0)
    normal = [rng.normal(size=(4, 4, 8)).astype(np.float32) for _ in range(3)]
    assert check.reference_rms is None
    assert all(check.problem(t) is None for t in normal)
    assert 0.8 < check.reference_rms < 1.2
    nan = normal[0].copy()
    nan[1, 2, 3] = np.nan
    assert "not finite" in check.problem(nan)
    inf = normal[0].copy()
    inf[0, 0, 0] = -np.inf
    assert "1 of 128 token values are not finite" in check.problem(inf)
    huge = normal[0].copy()
    huge[2, 2, 2] = 6.0e4  # fits float16, far above any residual-stream value
    assert "exceeds the bound 100" in check.problem(huge)
    loud = normal[0] * 30.0  # every value under max_abs, the RMS 30x the reference
    assert np.abs(loud).max() < 100.0
    assert "x the reference" in check.problem(loud)
    assert check.refused == 4
    assert check.problem(normal[1] * 2.0) is None  # within the factor
    assert check.problem(np.zeros((0, 0, 8), np.float32)) is None  # an all-padding tile may be empty


def test_token_check_bounds_can_be_turned_off():
    check = TokenCheck(TokenLimits(max_abs=0.0, rms_factor=0.0, warmup=1))
    assert check.problem(np.full((2, 2, 4), 1e20, np.float32)) is None
    assert check.problem(np.full((2, 2, 4), np.nan, np.float32)) is not None  # finiteness always holds


# ------------------------------------------------------------------ deadline


def test_deadline_follows_round_trips_between_floor_and_ceiling():
    d = DeadlinePolicy(floor_s=1.0, factor=4.0, min_samples=5)
    assert d.deadline(30.0) == 30.0  # nothing measured yet: the configured deadline
    for rtt in (0.1, 0.12, 0.11, 0.1, 0.5):
        d.add(rtt)
    assert d.deadline(30.0) == pytest.approx(2.0)  # 4 x p95 (the 0.5 s frame)
    assert d.deadline(1.5) == 1.5  # the configured deadline stays the ceiling
    d2 = DeadlinePolicy(floor_s=1.0, factor=4.0, min_samples=1)
    d2.add(0.01)
    assert d2.deadline(30.0) == 1.0  # never below the floor


# ------------------------------------------------------------------ fallback policies


class FaultyTransport(LocalTransport):
    """In-process servers; ``down`` fail their jobs (like a lost connection), ``poison``
    return tokens of that value; failed servers become suspect until ``readmit``."""

    def __init__(self, stage, names):
        super().__init__(stage, token_dtype="float16", names=names)
        self.down: set = set()
        self.poison: dict = {}
        self.sent: list = []  # (tile, server) of every job sent

    def encode_partial(self, jobs, mode, timeout_s):
        self.sent += [(j.tile.index, j.server) for j in jobs]
        bad = {j.server for j in jobs if j.server in self.down}
        for s in bad:
            self.mark_failed(s, "connection lost")
        ok = [j for j in jobs if j.server not in bad]
        res = dict(zip([id(j) for j in ok], self.encode(ok, mode, timeout_s)))
        for r in res.values():
            if r.server in self.poison:
                r.tokens = np.full_like(r.tokens, self.poison[r.server])
        return EncodeRound([res.get(id(j)) for j in jobs], {s: "connection lost" for s in bad})

    def mark_failed(self, server, reason):
        self._health[server].suspect = True
        self._health[server].last_error = reason

    def readmit(self, server):
        self._health[server].suspect = False


@pytest.fixture(scope="module")
def stages():
    return EdgeStage(TINY_B1, "paper", seed=SEED), RemoteStage(TINY_B1, seed=SEED)


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (1024, 768, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def healthy(stages, frame):
    edge, remote = stages
    enc = DistributedEncoder(edge, LocalTransport(remote, 4, token_dtype="float16"), Partition.grid(2, 2))
    emb, _ = enc.encode_resized(frame)
    return emb


def _encoder(stages, fallback, spares=(), names=("a", "b", "c", "d", "e"), **kw):
    edge, remote = stages
    t = FaultyTransport(remote, list(names))
    enc = DistributedEncoder(
        edge,
        t,
        Partition.grid(2, 2),
        fallback=FallbackPolicy(fallback, tuple(spares)),
        edge_remote=(lambda: remote) if fallback == "edge" else None,
        **kw,
    )
    return enc, t


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_spares_get_no_tiles_until_a_server_fails(stages, frame, healthy):
    enc, t = _encoder(stages, "spare", spares=(4,))
    assert enc.assignment == [0, 1, 2, 3]  # round robin over the primaries only
    emb, stats = enc.encode_resized(frame)
    assert _diff(emb, healthy) <= TOL and not stats.degraded
    t.down = {2}  # fails during the frame: its tile goes to the spare, in the same frame
    emb, stats = enc.encode_resized(frame)
    assert _diff(emb, healthy) <= TOL
    assert stats.fallback == ["tile 2: c -> e (spare)"]
    assert [p.tiles for p in stats.per_server] == [[0], [1], [], [3], [2]]
    # while suspect it gets nothing: the spare takes its tile from the start
    t.sent.clear()
    emb, stats = enc.encode_resized(frame)
    assert _diff(emb, healthy) <= TOL and (2, 2) not in t.sent and (2, 4) in t.sent
    t.readmit(2)
    t.down.clear()
    emb, stats = enc.encode_resized(frame)
    assert not stats.degraded and stats.per_server[2].tiles == [2]
    assert (enc.frames_degraded, enc.tiles_rerouted) == (2, 2)


def test_fail_policy_names_the_server_and_why(stages, frame):
    enc, t = _encoder(stages, "fail", names=("a", "b", "c", "d"))
    t.down = {1}
    with pytest.raises(RemoteEncodeError, match=r"fallback is 'fail': b \(in-process\): connection lost") as ei:
        enc.encode_resized(frame)
    assert ei.value.servers == ["b"]
    t.down.clear()
    # not sent while suspect
    with pytest.raises(RemoteEncodeError, match=r"b \(in-process\): suspect after .*connection lost"):
        enc.encode_resized(frame)


def test_reroute_keeps_neighbours_apart_and_respects_max_share(stages, frame, healthy):
    enc, t = _encoder(stages, "reroute", names=("a", "b", "c", "d"))
    t.down = {0}
    emb, stats = enc.encode_resized(frame)
    assert _diff(emb, healthy) <= TOL
    # tile 0's neighbours are tiles 1 and 2 (servers b, c): only d (tile 3, a corner away) may take it
    assert stats.fallback == ["tile 0: a -> d (reroute)"]
    # with max_share 0.45 no server may take a second tile (the aligned 2x2 tiles hold 18-32 % of
    # this frame each): the frame fails, saying why
    enc, t = _encoder(stages, "reroute", names=("a", "b", "c", "d"), max_share=0.45)
    t.down = {0}
    with pytest.raises(RemoteEncodeError, match="cannot be re-placed.*max_share"):
        enc.encode_resized(frame)


def test_edge_fallback_computes_the_tiles_itself(stages, frame, healthy):
    enc, t = _encoder(stages, "edge", names=("a", "b", "c", "d"))
    t.down = {1, 3}
    emb, stats = enc.encode_resized(frame)
    assert _diff(emb, healthy) <= TOL
    assert stats.edge_tiles == [1, 3] and "edge_fallback" in stats.timings
    assert all(p.tiles == [] for p in (stats.per_server[1], stats.per_server[3]))
    assert enc.tiles_at_edge == 2


@pytest.mark.parametrize("value", [np.nan, np.inf, 6.0e4])
def test_poisoned_tokens_never_reach_the_embedding(stages, frame, healthy, value):
    enc, t = _encoder(stages, "edge", names=("a", "b", "c", "d"))
    t.poison = {2: value}
    emb, stats = enc.encode_resized(frame)
    assert torch.isfinite(emb).all() and _diff(emb, healthy) <= TOL
    assert stats.edge_tiles == [2] and enc.token_check.refused == 1
    h = t.health()[2]
    assert h.suspect and "refused tokens for tile 2" in h.last_error
    enc, t = _encoder(stages, "fail", names=("a", "b", "c", "d"))
    t.poison = {2: value}
    with pytest.raises(RemoteEncodeError, match="refused tokens"):
        enc.encode_resized(frame)


def test_policy_configuration_is_checked(stages):
    edge, remote = stages
    t = FaultyTransport(remote, ["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="needs at least one spare"):
        DistributedEncoder(edge, t, Partition.grid(2, 2), fallback=FallbackPolicy("spare"))
    with pytest.raises(ValueError, match="also assigned"):
        DistributedEncoder(edge, t, Partition.grid(2, 2), [0, 1, 2, 4], fallback=FallbackPolicy("spare", (4,)))
    with pytest.raises(ValueError, match="edge_remote"):
        DistributedEncoder(edge, t, Partition.grid(2, 2), fallback=FallbackPolicy("edge"))
    with pytest.raises(ValueError, match="fallback must be one of"):
        FallbackPolicy("retry")
    assert EDGE == -1
