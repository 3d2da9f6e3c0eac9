"""The PED-SAM pipeline: frame -> tiles -> remote encoders -> merge -> edge
encoder -> SAM's prompt encoder and mask decoder -> masks in original pixels.

Preprocessing and decoding are segment_anything's own (``ResizeLongestSide``,
``SamPredictor``, ``SamAutomaticMaskGenerator``); only the image encoder is
replaced, by :class:`DistributedEncoder`.  No ROS, no network code here.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

from .geometry import (
    IMAGE_SIZE,
    Partition,
    PartitionError,
    Tile,
    check_max_share,
    round_robin_assignment,
    server_shares,
    validate_assignment,
)
from .model import EdgeStage, RemoteStage, sam_head
from .transport import RemoteEncodeError, ServerFrameStats, TileJob, TileResult, TokenCheck, Transport

#: what the edge does with the tiles of a server that failed or is suspect (see :class:`FallbackPolicy`)
FALLBACKS = ("fail", "spare", "reroute", "edge")
#: placement of a tile computed by the edge itself
EDGE = -1


@dataclass
class EncodeStats:
    """What one frame's encoding cost: seconds per stage and bytes on the wire."""

    timings: Dict[str, float] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    per_server: List[ServerFrameStats] = field(default_factory=list)
    #: what the fallback policy did for this frame, one line per re-placed tile (empty: nothing)
    fallback: List[str] = field(default_factory=list)
    edge_tiles: List[int] = field(default_factory=list)  # tiles the edge computed itself
    deadline_s: float = 0.0  # the remote deadline this frame had
    #: the frame hook's record (:attr:`TilePlan.record`: the privacy policy's plan), None without a hook
    privacy: Any = None

    @property
    def degraded(self) -> bool:
        return bool(self.fallback)


@dataclass
class TilePlan:
    """What a frame hook (:attr:`DistributedEncoder.frame_hook`, e.g. the edge's privacy policy in
    :mod:`ped_sam_ros.edge.privacy`) decided for one frame's tiles before any of them leaves:

    * ``crops``: tile -> the crop its server receives instead of the plain one (obfuscated);
    * ``local``: tiles the edge computes itself (the remote stage at the edge): no server sees them;
    * ``dropped``: tiles nobody computes; ``fill(tile, tokens, computed)`` gives their tokens
      from the merged grid (1xGxGxC) and the mask of the computed tokens (GxG bool).
    """

    crops: Dict[int, np.ndarray] = field(default_factory=dict)
    local: Tuple[int, ...] = ()
    dropped: Tuple[int, ...] = ()
    fill: Optional[Callable[[Tile, torch.Tensor, torch.Tensor], torch.Tensor]] = None
    record: Any = None  # kept in EncodeStats.privacy
    timings: Dict[str, float] = field(default_factory=dict)  # merged into EncodeStats.timings


#: ``hook(encoder, resized, orig_hw, prompts) -> TilePlan or None``; called by
#: :meth:`DistributedEncoder.encode_resized` before any tile leaves (it may call
#: :meth:`DistributedEncoder.set_layout` first)
FrameHook = Callable[
    ["DistributedEncoder", np.ndarray, Optional[Tuple[int, int]], Optional[Sequence[Any]]], Optional[TilePlan]
]


@dataclass(frozen=True)
class FallbackPolicy:
    """What happens to the tiles of a server that failed (deadline, lost connection, error reply,
    refused tokens) or is suspect, chosen by the operator:

    * ``fail``: the frame fails, with the reason;
    * ``spare``: the tiles go to one of the ``spares`` (servers that get no tiles otherwise);
    * ``reroute``: the tiles go to another live server, spares first, then the least loaded;
    * ``edge``: the edge computes them itself (it then holds the remote stage's weights).

    ``spare`` and ``reroute`` place a tile on a server only where ``max_share`` and
    ``allow_adjacent`` still hold for that frame; a tile no server may take fails the frame."""

    mode: str = "fail"
    spares: Tuple[int, ...] = ()

    def __post_init__(self):
        if self.mode not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.mode!r}")


class DeadlinePolicy:
    """Each frame's remote deadline: ``max(floor_s, factor x p95)`` of the recent frames' slowest
    round trips, never above the configured ``ceiling_s`` (all of it until ``min_samples``
    frames were measured).  A dead or hung server is thus noticed within a few healthy frame
    times instead of at the configured deadline."""

    def __init__(self, floor_s: float = 1.0, factor: float = 4.0, window: int = 50, min_samples: int = 5):
        if not floor_s > 0 or not factor > 0:
            raise ValueError("deadline floor and factor must be positive")
        self.floor_s = floor_s
        self.factor = factor
        self.min_samples = min_samples
        self._rtts: Deque[float] = collections.deque(maxlen=window)

    def add(self, round_trip_s: float) -> None:
        self._rtts.append(float(round_trip_s))

    def deadline(self, ceiling_s: float) -> float:
        if len(self._rtts) < self.min_samples:
            return ceiling_s
        ordered = sorted(self._rtts)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        return min(ceiling_s, max(self.floor_s, self.factor * p95))


def check_frame_shares(
    partition: Partition,
    assignment: Sequence[int],
    content_hw: Tuple[int, int],
    max_share: float,
    names: Optional[Sequence[str]] = None,
) -> List[float]:
    """The ``max_share`` policy on a frame whose content (after SAM's resize) is ``content_hw``:
    each server's share of its content pixels, or :class:`~.geometry.PartitionError` naming the
    server over the limit.  The one place the encoder checks it (per frame, and at construction
    for the best frame shape, :func:`lowest_max_share`)."""
    h, w = (int(v) for v in content_hw)
    shares = server_shares(partition, assignment, (h, w))
    check_max_share(shares, max_share, names, what=f"this {h}x{w} frame (after resizing)")
    return shares


def check_share_attainable(
    partition: Partition, assignment: Sequence[int], max_share: float, names: Optional[Sequence[str]] = None
) -> None:
    """Raise :class:`~.geometry.PartitionError` when no frame shape keeps every server within
    ``max_share`` (every frame would be refused), naming the best shape and its largest share.
    What can be said of ``max_share`` before a frame's shape is known (start-up checks)."""
    best, shape = lowest_max_share(partition, assignment)
    if best > max_share + 1e-9:
        try:
            check_frame_shares(partition, assignment, shape, max_share, names)
        except PartitionError as e:
            raise PartitionError(f"no frame shape keeps every server within max_share; on the best one, {e}") from None


def lowest_max_share(partition: Partition, assignment: Sequence[int]) -> Tuple[float, Tuple[int, int]]:
    """The smallest largest-server share over every content shape SAM's resize can give
    (``IMAGE_SIZE`` x 1..``IMAGE_SIZE`` and 1..``IMAGE_SIZE`` x ``IMAGE_SIZE``: portrait, square and
    landscape frames), and that shape: with ``max_share`` below it every frame would be refused."""
    side = np.arange(1, IMAGE_SIZE + 1)
    full = np.full(IMAGE_SIZE - 1, IMAGE_SIZE)
    hs = np.concatenate([np.full(IMAGE_SIZE, IMAGE_SIZE), side[:-1]])  # (1024, w) for every w, then (h, 1024)
    ws = np.concatenate([side, full])
    n = max((int(a) for a in assignment), default=-1) + 1
    pixels = np.zeros((max(n, 1), hs.size), np.int64)
    for tile in partition.tiles:
        y0, y1, x0, x1 = tile.pixel_box
        rows = np.clip(np.minimum(y1, hs) - y0, 0, None)
        cols = np.clip(np.minimum(x1, ws) - x0, 0, None)
        pixels[int(assignment[tile.index])] += rows * cols
    worst = (pixels / (hs * ws)).max(axis=0)
    i = int(worst.argmin())
    return float(worst[i]), (int(hs[i]), int(ws[i]))


class DistributedEncoder:
    """SAM's image encoder, split: each tile's window-attention blocks run on a remote server
    (:class:`~.model.RemoteStage`, via the transport), the merged token grid goes through the
    rest here (:class:`~.model.EdgeStage`); which blocks run where is the mode's choice."""

    def __init__(
        self,
        edge: EdgeStage,
        transport: Transport,
        partition: Partition,
        assignment: Optional[Sequence[int]] = None,
        timeout_s: float = 30.0,
        allow_adjacent: bool = False,
        max_share: float = 1.0,
        *,
        fallback: Optional[FallbackPolicy] = None,
        deadlines: Optional[DeadlinePolicy] = None,
        token_check: Optional[TokenCheck] = None,
        edge_remote: Optional[Callable[[], RemoteStage]] = None,
        frame_hook: Optional[FrameHook] = None,
    ):
        if transport.geometry.spec != edge.geometry.spec:
            raise ValueError(f"the transport's servers run {transport.geometry.spec}, the edge {edge.geometry.spec}")
        self.edge = edge
        self.transport = transport
        self.partition = partition
        n = len(transport.server_names)
        self.fallback = fallback or FallbackPolicy()
        spares = sorted(set(self.fallback.spares))
        if any(not 0 <= s < n for s in spares):
            raise ValueError(f"spare server indexes {spares} out of range for {n} servers")
        primaries = [i for i in range(n) if i not in spares]
        if not primaries:
            raise ValueError("every server is a spare: at least one must serve tiles")
        if assignment is not None:
            self.assignment = list(assignment)
        else:
            self.assignment = [primaries[k] for k in round_robin_assignment(partition, len(primaries))]
        if set(self.assignment) & set(spares):
            raise ValueError(f"spare servers {sorted(set(self.assignment) & set(spares))} are also assigned tiles")
        if self.fallback.mode == "spare" and not spares:
            raise ValueError("fallback 'spare' needs at least one spare server")
        if self.fallback.mode == "edge" and edge_remote is None:
            raise ValueError("fallback 'edge' needs the remote stage at the edge (edge_remote)")
        self.max_share = max_share
        self.allow_adjacent = allow_adjacent
        self._validate_layout(partition, self.assignment)
        self.timeout_s = timeout_s  # the ceiling of every frame's deadline
        self.deadlines = deadlines or DeadlinePolicy()
        self.token_check = token_check if token_check is not None else TokenCheck()
        self._edge_remote_factory = edge_remote
        self._edge_remote: Optional[RemoteStage] = None
        self.edge_remote_build_s: Optional[float] = None
        self._lock = threading.Lock()
        self.frames_degraded = 0
        self.tiles_rerouted = 0
        self.tiles_at_edge = 0
        self.frame_hook = frame_hook

    def set_layout(self, partition: Partition, assignment: Sequence[int]) -> None:
        """Use another partition and assignment from the next frame on (a frame hook's
        per-frame-shape layout); checked like the constructor's."""
        self._validate_layout(partition, list(assignment))
        self.partition, self.assignment = partition, list(assignment)

    def _validate_layout(self, partition: Partition, assignment: Sequence[int]) -> None:
        """What can be checked before any frame: the assignment's structure (one valid server per
        tile, no two adjacent tiles on one server unless ``allow_adjacent``), and that *some* frame
        shape keeps every server within ``max_share`` (else every frame would be refused).  The
        share of a real frame depends on its aspect ratio, so ``max_share`` itself is checked per
        frame on its content (:meth:`check_frame_shares`), not here on a square frame: a layout
        balanced for 4:3 frames may give one server too much of a square one."""
        names = self.transport.server_names
        validate_assignment(partition, assignment, len(names), allow_adjacent=self.allow_adjacent)
        check_share_attainable(partition, assignment, self.max_share, names)

    def check_frame_shares(self, content_hw: Tuple[int, int]) -> List[float]:
        """Each server's share of this frame's content (after SAM's resize), or
        :class:`~.geometry.PartitionError` naming the server over ``max_share``."""
        return check_frame_shares(
            self.partition, self.assignment, content_hw, self.max_share, self.transport.server_names
        )

    @property
    def mode(self) -> str:
        return self.edge.mode

    @property
    def model_spec(self) -> str:
        return self.edge.geometry.spec

    def frame_deadline(self) -> float:
        """The remote deadline the next frame gets (:class:`DeadlinePolicy`, ceiling ``timeout_s``)."""
        return self.deadlines.deadline(self.timeout_s)

    def edge_remote_stage(self) -> RemoteStage:
        """The remote stage at the edge (``edge`` fallback), built on first use."""
        if self._edge_remote is None:
            if self._edge_remote_factory is None:
                raise RuntimeError("no remote stage at the edge: the fallback is not 'edge'")
            t0 = time.perf_counter()
            self._edge_remote = self._edge_remote_factory()
            self.edge_remote_build_s = time.perf_counter() - t0
        return self._edge_remote

    def crop_for(self, tile: Tile, resized: np.ndarray) -> np.ndarray:
        """The tile's :meth:`~.geometry.Tile.content_box` of the resized frame (empty when it is
        all padding)."""
        box = tile.content_box(resized.shape[:2])
        if box is None:
            return np.zeros((0, 0, 3), dtype=resized.dtype)
        y0, y1, x0, x1 = box
        return np.ascontiguousarray(resized[y0:y1, x0:x1])

    def jobs_for(self, resized: np.ndarray) -> List[TileJob]:
        """Cut the resized (unpadded) uint8 frame into per-tile crops: each tile's
        :meth:`~.geometry.Tile.content_box`, empty for a tile that is all padding."""
        return [TileJob(tile, self.assignment[tile.index], self.crop_for(tile, resized)) for tile in self.partition]

    # ------------------------------------------------------------ degraded mode

    def _fits(self, tile: Tile, server: int, placement: Mapping[int, int], content_hw) -> Optional[str]:
        """Why ``server`` may not take ``tile`` in this frame (None: it may)."""
        tiles = self.partition.tiles
        mine = [t for t, s in placement.items() if s == server and t != tile.index]
        if not self.allow_adjacent and len(self.transport.server_names) > 1:
            for t in mine:
                if tiles[t].is_adjacent(tile):
                    return f"tile {t} of that server is adjacent (allow_adjacent is false)"
        total = int(content_hw[0]) * int(content_hw[1])
        share = sum(tiles[t].content_pixels(content_hw) for t in [*mine, tile.index]) / total
        if share > self.max_share + 1e-9:
            return f"it would see {share:.1%} of the frame (max_share {self.max_share:.1%})"
        return None

    def _replace(
        self,
        lost: Sequence[int],
        placement: Dict[int, int],
        excluded: set,
        reasons: Mapping[int, str],
        content_hw,
        notes: List[str],
    ) -> None:
        """Place the ``lost`` tiles by the fallback policy (updating ``placement``), or raise
        :class:`RemoteEncodeError` naming the failed servers and why."""
        names = self.transport.server_names
        failed = sorted({placement[t] for t in lost} & excluded)
        health = self.transport.health()
        why = "; ".join(
            f"{names[s]}{f' ({health[s].endpoint})' if health[s].endpoint else ''}: {reasons.get(s, 'failed')}"
            for s in failed
        )
        policy = self.fallback.mode
        if policy == "fail":
            raise RemoteEncodeError(
                f"server(s) {', '.join(names[s] for s in failed)} failed and the fallback is 'fail': {why}",
                [names[s] for s in failed],
            )
        usable = self.transport.usable()
        if policy == "spare":
            candidates = [s for s in self.fallback.spares if s not in excluded and usable[s]]
        elif policy == "reroute":
            spares = [s for s in self.fallback.spares if s not in excluded and usable[s]]
            others = [s for s in range(len(names)) if s not in excluded and s not in spares and usable[s]]
            candidates = spares + others
        else:
            candidates = []
        for t in lost:
            tile = self.partition.tiles[t]
            src = names[placement[t]]
            if policy == "edge":
                placement[t] = EDGE
                notes.append(f"tile {t}: {src} -> edge")
                continue
            refusals = []
            if policy == "reroute":  # the least loaded first
                candidates.sort(key=lambda s: (s not in self.fallback.spares, sum(v == s for v in placement.values())))
            for s in candidates:
                problem = self._fits(tile, s, placement, content_hw)
                if problem is None:
                    placement[t] = s
                    notes.append(f"tile {t}: {src} -> {names[s]} ({policy})")
                    break
                refusals.append(f"{names[s]}: {problem}")
            else:
                detail = "; ".join(refusals) if refusals else f"no live {'spare' if policy == 'spare' else 'server'}"
                raise RemoteEncodeError(
                    f"tile {t} of failed server(s) {', '.join(names[s] for s in failed)} "
                    f"cannot be re-placed ({policy}: {detail}); {why}",
                    [names[s] for s in failed],
                )

    def _suspect_reason(self, server: int) -> str:
        h = self.transport.health()[server]
        what = "not connected" if not h.connected else f"suspect after {h.state}"
        return what + (f": {h.last_error}" if h.last_error else "")

    def _encode_tiles(
        self, resized: np.ndarray, crops: Sequence[np.ndarray], stats: EncodeStats, plan: Optional[TilePlan] = None
    ) -> List[TileResult]:
        """Every tile's tokens: remote where its server is usable, re-placed by the fallback
        policy where it is not or fails (each round gets the adaptive deadline); a ``plan``'s
        local tiles at the edge, its dropped tiles nowhere (no result)."""
        content_hw = resized.shape[:2]
        names = self.transport.server_names
        usable = self.transport.usable()
        dropped = set(plan.dropped) if plan is not None else set()
        placement: Dict[int, int] = {
            t.index: self.assignment[t.index] for t in self.partition if t.index not in dropped
        }
        if plan is not None:
            placement.update({t: EDGE for t in plan.local if t not in dropped})
        excluded = {s for s in set(placement.values()) if s != EDGE and not usable[s]}
        reasons = {s: self._suspect_reason(s) for s in excluded}
        results: Dict[int, TileResult] = {}
        lost = [t for t, s in placement.items() if s in excluded]
        for _ in range(len(names) + 1):  # each round excludes at least one more server
            if lost:
                self._replace(lost, placement, excluded, reasons, content_hw, stats.fallback)
            todo = [t for t, s in placement.items() if t not in results and s != EDGE]
            if not todo:
                break
            deadline = self.frame_deadline()
            stats.deadline_s = max(stats.deadline_s, deadline)
            jobs = [TileJob(self.partition.tiles[t], placement[t], crops[t]) for t in todo]
            rnd = self.transport.encode_partial(jobs, self.mode, deadline)
            failures = dict(rnd.failures)
            for job, r in zip(jobs, rnd.results):
                if r is None or job.server in failures:
                    continue
                problem = self.token_check.problem(r.tokens)
                if problem:
                    failures[job.server] = f"refused tokens for tile {job.tile.index}: {problem}"
                    self.transport.mark_failed(job.server, failures[job.server])
            good = [r for job, r in zip(jobs, rnd.results) if r is not None and job.server not in failures]
            if good and not failures:
                self.deadlines.add(max(r.round_trip_s for r in good))
            for r in good:
                results[r.tile.index] = r
            if not failures:
                break
            excluded |= set(failures)
            reasons.update(failures)
            lost = [t for t in todo if placement[t] in failures]
        edge_tiles = sorted(t for t, s in placement.items() if s == EDGE)
        if edge_tiles:
            stage = self.edge_remote_stage()
            for t in edge_tiles:
                tile = self.partition.tiles[t]
                t0 = time.perf_counter()
                tokens = stage.encode_tile(crops[t], tile, self.mode).numpy()
                results[t] = TileResult(tile, EDGE, tokens, 0, 0, 0.0, time.perf_counter() - t0)
        stats.edge_tiles = edge_tiles
        missing = [t.index for t in self.partition if t.index not in results and t.index not in dropped]
        if missing:  # defensive: the loop above either places every tile or raises
            raise RemoteEncodeError(f"tiles {missing} could not be encoded", [])
        if stats.fallback:
            with self._lock:
                self.frames_degraded += 1
                self.tiles_at_edge += len(edge_tiles)
                self.tiles_rerouted += sum(1 for t, s in placement.items() if s not in (EDGE, self.assignment[t]))
        return [results[t.index] for t in self.partition if t.index in results]

    def encode_resized(
        self, resized: np.ndarray, orig_hw: Optional[Tuple[int, int]] = None, prompts: Optional[Sequence[Any]] = None
    ) -> Tuple[torch.Tensor, EncodeStats]:
        """uint8 (h, w, 3) frame already resized to longest side 1024 -> 1x256x64x64 embedding.

        ``orig_hw`` and ``prompts`` (:class:`ObjectPrompt` in original pixels) are for the
        :attr:`frame_hook` only (the region of interest).  :meth:`encode_remote` then
        :meth:`finish` (a pipelined stream runs the two in different threads)."""
        return self.finish(*self.encode_remote(resized, orig_hw, prompts))

    def finish(self, tokens: torch.Tensor, stats: EncodeStats) -> Tuple[torch.Tensor, EncodeStats]:
        """The edge phase: merged tokens (from :meth:`encode_remote`) -> the 1x256x64x64 embedding
        on the edge stage's device; adds ``edge_encoder`` to ``stats.timings``.  Uses only the
        edge stage (never the transport)."""
        t0 = time.perf_counter()
        features = self.edge(tokens)
        stats.timings["edge_encoder"] = time.perf_counter() - t0
        return features, stats

    def encode_remote(
        self, resized: np.ndarray, orig_hw: Optional[Tuple[int, int]] = None, prompts: Optional[Sequence[Any]] = None
    ) -> Tuple[torch.Tensor, EncodeStats]:
        """The remote phase of :meth:`encode_resized`: this frame's merged 1x64x64xC float32 CPU
        tokens (from the servers, or the edge's fallback/local tiles) and its stats (no
        ``edge_encoder`` time yet).  Uses the transport, never the edge stage."""
        geom = self.edge.geometry
        if resized.dtype != np.uint8 or resized.ndim != 3 or resized.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 image, got {resized.dtype} {resized.shape}")
        if max(resized.shape[:2]) != geom.img_size:
            raise ValueError(f"the frame must be resized to longest side {geom.img_size}, got {resized.shape[:2]}")
        # the frame hook first (it runs the privacy policy and may change the layout for this frame's shape)
        plan = self.frame_hook(self, resized, orig_hw, prompts) if self.frame_hook is not None else None
        # The policy limits the share of *this* frame's content (its aspect ratio sets the shares)
        names = self.transport.server_names
        self.check_frame_shares(resized.shape[:2])
        stats = EncodeStats()
        t0 = time.perf_counter()
        crops = [self.crop_for(tile, resized) for tile in self.partition]
        if plan is not None:
            for t, crop in plan.crops.items():
                crops[t] = crop
            stats.privacy = plan.record
        t1 = time.perf_counter()
        results = self._encode_tiles(resized, crops, stats, plan)
        t2 = time.perf_counter()
        grid = geom.token_grid
        # merged in numpy: no torch kernel runs here, so a pipelined stream's I/O thread starts no
        # OpenMP team whose spinning workers would slow the edge phase running beside it
        merged = np.zeros((1, grid, grid, geom.embed_dim), np.float32)
        for r in results:
            w = r.tile
            merged[0, w.row0 : w.row1, w.col0 : w.col1] = r.tokens
        tokens = torch.from_numpy(merged)
        if plan is not None and plan.dropped:
            computed = torch.zeros(grid, grid, dtype=torch.bool)
            for r in results:
                computed[r.tile.row0 : r.tile.row1, r.tile.col0 : r.tile.col1] = True
            for t in plan.dropped:
                w = self.partition.tiles[t]
                fill = plan.fill(w, tokens, computed) if plan.fill is not None else 0.0
                tokens[0, w.row0 : w.row1, w.col0 : w.col1] = fill
        t3 = time.perf_counter()
        edge_s = sum(r.compute_s for r in results if r.server == EDGE)
        stats.timings = {"partition": t1 - t0, "remote": t2 - t1 - edge_s, "merge": t3 - t2}
        if stats.edge_tiles:
            stats.timings["edge_fallback" if stats.fallback else "edge_local"] = edge_s
        if plan is not None:
            stats.timings = {**plan.timings, **stats.timings}
        content = resized.shape[:2]
        total = content[0] * content[1]
        for s, name in enumerate(names):
            mine = [r for r in results if r.server == s]
            stats.per_server.append(
                ServerFrameStats(
                    name=name,
                    tiles=[r.tile.index for r in mine],
                    share=sum(r.tile.content_pixels(content) for r in mine) / total,
                    bytes_up=sum(r.bytes_up for r in mine),
                    bytes_down=sum(r.bytes_down for r in mine),
                    round_trip_s=max((r.round_trip_s for r in mine), default=0.0),
                    compute_s=sum(r.compute_s for r in mine),
                )
            )
        stats.bytes_up = sum(r.bytes_up for r in results)
        stats.bytes_down = sum(r.bytes_down for r in results)
        return tokens, stats


def _as_uint8_hwc(transformed_image: torch.Tensor) -> np.ndarray:
    x = transformed_image[0].permute(1, 2, 0).detach().cpu()
    if x.dtype != torch.uint8:
        x = x.round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.numpy())


class PedSamPredictor(SamPredictor):
    """``SamPredictor`` whose image embedding comes from a :class:`DistributedEncoder`.

    Everything else (resizing, prompt transforms, decoding, upscaling masks to
    the original size) is segment_anything's own code.
    """

    def __init__(self, encoder: DistributedEncoder):
        self.encoder = encoder
        self.last_stats: Optional[EncodeStats] = None
        self.roi_prompts: Optional[Sequence[ObjectPrompt]] = None  # the next image's prompts (frame hook's ROI)
        super().__init__(sam_head(encoder.edge))

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: Tuple[int, ...]) -> None:
        img_size = self.model.image_encoder.img_size
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[1] != 3
            or max(transformed_image.shape[2:]) != img_size
        ):
            raise ValueError(f"set_torch_image input must be 1x3xHxW with long side {img_size}")
        self.reset_image()
        self.original_size = original_image_size
        self.input_size = tuple(transformed_image.shape[-2:])
        self.features, self.last_stats = self.encoder.encode_resized(
            _as_uint8_hwc(transformed_image), tuple(original_image_size), self.roi_prompts
        )
        self.is_image_set = True


# ---------------------------------------------------------------------------
# Prompts and results, in original image pixels


@dataclass
class ObjectPrompt:
    """Prompts for one object: points (x, y, label 1=foreground/0=background) and/or a box."""

    points: List[Tuple[float, float, int]] = field(default_factory=list)
    box: Optional[Tuple[float, float, float, float]] = None  # x_min, y_min, x_max, y_max

    def validate(self) -> None:
        """Raise ValueError, with the reason, for a prompt SAM cannot take (points outside
        the image are allowed, as SamPredictor allows them)."""
        if not self.points and self.box is None:
            raise ValueError("a prompt needs at least one point or a box")
        for x, y, label in self.points:
            if label not in (0, 1):
                raise ValueError(f"point label must be 0 (background) or 1 (foreground), got {label}")
            if not (np.isfinite(x) and np.isfinite(y)):
                raise ValueError("point coordinates must be finite")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not all(np.isfinite(v) for v in self.box) or x1 <= x0 or y1 <= y0:
                raise ValueError(f"box {self.box} must have x_min < x_max and y_min < y_max")


@dataclass
class Instance:
    id: int
    mask: np.ndarray  # bool (H, W), original image size
    score: float  # SAM's predicted IoU
    stability_score: float
    bbox: Tuple[int, int, int, int]  # x, y, width, height in original pixels
    area: int


def _bbox_xywh(mask: np.ndarray) -> Tuple[int, int, int, int]:
    box = batched_mask_to_box(torch.from_numpy(mask)[None])[0].tolist()  # x0, y0, x1, y1 (inclusive)
    if not mask.any():
        return (0, 0, 0, 0)
    return (int(box[0]), int(box[1]), int(box[2] - box[0] + 1), int(box[3] - box[1] + 1))


class Segmenter:
    """Prompted and automatic segmentation over any ``SamPredictor``.

    With a :class:`PedSamPredictor` the embedding is distributed; with a plain
    ``SamPredictor`` it is ordinary SAM (the baselines).
    """

    def __init__(self, predictor: SamPredictor, multimask_output: bool = True, amg_options: Optional[Dict] = None):
        self.predictor = predictor
        self.multimask_output = multimask_output
        self.amg_options = dict(amg_options or {})
        self.stats: Optional[EncodeStats] = None
        #: prompts of the next :meth:`set_image` without its own (the frame hook's region of interest)
        self.roi_prompts: Optional[Sequence[ObjectPrompt]] = None

    def set_image(self, rgb: np.ndarray, prompts: Optional[Sequence[ObjectPrompt]] = None) -> Optional[EncodeStats]:
        """Encode ``rgb``; ``prompts`` (those :meth:`segment` will get) tell a distributed
        encoder's frame hook the region of interest (None: the whole frame)."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 HxWx3 image, got {rgb.dtype} {rgb.shape}")
        t0 = time.perf_counter()
        if prompts is None:
            prompts = self.roi_prompts
        if hasattr(self.predictor, "roi_prompts"):
            self.predictor.roi_prompts = list(prompts) if prompts else None
        self.predictor.set_image(rgb)
        self.stats = getattr(self.predictor, "last_stats", None)
        if self.stats is None:
            self.stats = EncodeStats(timings={"encoder": time.perf_counter() - t0})
        return self.stats

    @torch.no_grad()
    def segment(self, prompts: Sequence[ObjectPrompt]) -> List[Instance]:
        """One instance per prompt, ids 1..N in order (needs :meth:`set_image` first)."""
        if not self.predictor.is_image_set:
            raise RuntimeError("set_image() first")
        out = []
        for k, p in enumerate(prompts, start=1):
            p.validate()
            coords = np.array([[x, y] for x, y, _ in p.points], dtype=np.float32) if p.points else None
            labels = np.array([lab for _, _, lab in p.points], dtype=np.int64) if p.points else None
            box = np.array(p.box, dtype=np.float32) if p.box is not None else None
            logits, scores, _ = self.predictor.predict(
                coords, labels, box, multimask_output=self.multimask_output, return_logits=True
            )
            best = int(np.argmax(scores))
            lg = torch.from_numpy(logits[best])
            thr = self.predictor.model.mask_threshold
            mask = (lg > thr).numpy()
            stab = float(calculate_stability_score(lg[None], thr, 1.0)[0])
            out.append(Instance(k, mask, float(scores[best]), stab, _bbox_xywh(mask), int(mask.sum())))
        return out

    def segment_everything(self, rgb: np.ndarray) -> List[Instance]:
        """SAM's automatic mask generator over this frame: encoded once by :meth:`set_image`
        (distributed or not), then decoded by :func:`generate_masks`; ids 1..N, largest first."""
        self.set_image(rgb)
        return self.everything_from_embedding(rgb)

    def everything_from_embedding(self, rgb: np.ndarray) -> List[Instance]:
        """SAM's automatic mask generator over the embedding already held for ``rgb`` (after
        :meth:`set_image`: nothing is encoded again); ids 1..N, largest first."""
        records = generate_masks(self.predictor, rgb, self.amg_options)
        records.sort(key=lambda r: -r["area"])
        return [
            # the box from the mask itself, as for prompts (SAM's own AMG box is one pixel narrower)
            Instance(
                k,
                r["segmentation"],
                float(r["predicted_iou"]),
                float(r["stability_score"]),
                _bbox_xywh(r["segmentation"]),
                int(r["area"]),
            )
            for k, r in enumerate(records, start=1)
        ]


# ---------------------------------------------------------------------------
# SAM's automatic mask generator over an embedding already computed

_SAM_AMG_DEFAULTS = {k: v.default for k, v in inspect.signature(SamAutomaticMaskGenerator.__init__).parameters.items()}


@dataclass(frozen=True)
class AmgOptions:
    """The settings of SAM's automatic mask generator this package exposes (the edge's
    ``amg.*`` parameters, the evaluation's AMG runs).  The defaults are
    ``SamAutomaticMaskGenerator``'s own, read from its signature, so there is one source."""

    points_per_side: int = _SAM_AMG_DEFAULTS["points_per_side"]
    points_per_batch: int = _SAM_AMG_DEFAULTS["points_per_batch"]
    pred_iou_thresh: float = _SAM_AMG_DEFAULTS["pred_iou_thresh"]
    stability_score_thresh: float = _SAM_AMG_DEFAULTS["stability_score_thresh"]
    stability_score_offset: float = _SAM_AMG_DEFAULTS["stability_score_offset"]
    box_nms_thresh: float = _SAM_AMG_DEFAULTS["box_nms_thresh"]
    min_mask_region_area: int = _SAM_AMG_DEFAULTS["min_mask_region_area"]

    def to_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``SamAutomaticMaskGenerator`` (and :func:`generate_masks`)."""
        return dataclasses.asdict(self)

    def without_score_filters(self) -> AmgOptions:
        """The same settings with the predicted-IoU and stability filters off (non-maximum
        suppression kept): random weights predict meaningless scores, which would drop every mask."""
        return dataclasses.replace(self, pred_iou_thresh=0.0, stability_score_thresh=0.0)


class _HeldEmbedding:
    """Stands in for a predictor inside ``SamAutomaticMaskGenerator`` so the generator
    decodes the embedding the predictor already holds instead of encoding the image again:
    ``set_image`` only checks that the embedding is for an image of that size, and
    ``reset_image`` keeps it.  Everything else is the wrapped predictor."""

    def __init__(self, predictor: SamPredictor):
        self._predictor = predictor

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        p = self._predictor
        if not p.is_image_set or tuple(image.shape[:2]) != tuple(p.original_size):
            raise RuntimeError("the predictor holds no embedding of this image: call set_image(image) on it first")

    def reset_image(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


def generate_masks(
    predictor: SamPredictor, rgb: np.ndarray, options: Optional[Mapping[str, Any]] = None
) -> List[Dict[str, Any]]:
    """SAM's automatic mask generator over the embedding ``predictor`` holds for ``rgb``
    (``predictor.set_image(rgb)`` first; a plain ``SamPredictor`` or a :class:`PedSamPredictor`).

    ``options`` are ``SamAutomaticMaskGenerator`` keyword arguments (see :class:`AmgOptions`);
    crops (``crop_n_layers`` > 0) would need new embeddings and are refused.  Returns SAM's
    own records (``segmentation``, ``area``, ``predicted_iou``, ``stability_score``, ...).
    """
    kwargs = dict(options or {})
    if kwargs.get("crop_n_layers", 0):
        raise ValueError("crop_n_layers > 0 needs an embedding per crop; generate_masks decodes one embedding")
    amg = SamAutomaticMaskGenerator(predictor.model, **kwargs)
    amg.predictor = _HeldEmbedding(predictor)  # the one place SAM's generator is given our embedding
    return amg.generate(rgb)
