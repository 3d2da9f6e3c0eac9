"""The encode service both ends run: what a request asks, what a server computes, what a reply means.

A remote server (``remote_node``) and the in-process
:class:`~ped_sam_ros.core.transport.LocalTransport` handle a tile the same way:
:func:`check_encode_request` (is it for the model and a mode this server
runs?), :func:`run_encode` (the remote stage's tokens, as reply frames); the
edge reads the reply with :func:`read_encoded_reply`.  A server describes
itself with a :class:`ServerInfo`, sent as the ``info`` reply.

No sockets here: frames are made and read by :mod:`.wire`, and carried by a
transport.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import wire
from .model import SamGeometry, parse_mode
from .wire import EncodeRequest, WireError, decode_message, encode_message, pack_tokens, parse_encode_request


def check_encode_request(header: dict, arrays, model: str) -> EncodeRequest:
    """Validate a decoded encode request for a server running ``model``.

    Raises :class:`WireError` (whose ``code`` goes into the error reply)."""
    req = parse_encode_request(header, arrays)
    if req.model != model:
        raise WireError("wrong_model", f"this server runs {model}, the request is for {req.model}")
    try:  # exact, paper or k<N> (N groups offloaded) for this model
        parse_mode(req.mode, model)
    except ValueError as e:
        raise WireError("bad_mode", f"unknown mode {req.mode!r}: {e}") from None
    return req


def read_encode_request(frames: Sequence, model: str) -> EncodeRequest:
    """Decode and validate one encode request's frames (:func:`check_encode_request`)."""
    return check_encode_request(*decode_message(frames), model)


def run_encode(stage, req: EncodeRequest, queue_s: float = 0.0) -> List:
    """What a server computes for a valid request: the ``encoded`` reply's frames.

    ``queue_s`` (how long the request waited before this) is reported back with the compute time."""
    t0 = time.perf_counter()
    tokens = stage.encode_tile(req.pixels, req.tile, req.mode).cpu().numpy()
    compute_s = time.perf_counter() - t0
    return encode_message(
        {"type": "encoded", "id": req.id, "timing": {"compute_s": compute_s, "queue_s": queue_s}},
        pack_tokens(tokens, req.reply_dtype),
    )


def batch_key(req: EncodeRequest) -> Tuple[str, Tuple[int, int], str]:
    """Requests with equal keys (mode, tile token shape, reply dtype) can run as one batch."""
    return (req.mode, tuple(req.tile.token_shape), req.reply_dtype)


def run_encode_batch(stage, reqs: Sequence[EncodeRequest], queue_s: Sequence[float]) -> List[List]:
    """:func:`run_encode` for several requests of one :func:`batch_key`, computed as one batch
    through ``stage.encode_tiles``: the replies' frames, in the order of ``reqs``, each with its
    own request id.  Each reply reports its share of the batch's compute time and the batch size.

    A single request (the cloud baseline's whole frame, or a server holding one tile) is
    :func:`run_encode` itself, as is a stage without ``encode_tiles``."""
    if len({batch_key(r) for r in reqs}) > 1:
        raise ValueError("a batch needs requests of one mode, tile token shape and reply dtype")
    if len(reqs) == 1 or not hasattr(stage, "encode_tiles"):
        return [run_encode(stage, r, queue_s=q) for r, q in zip(reqs, queue_s)]
    t0 = time.perf_counter()
    tokens = stage.encode_tiles([(r.pixels, r.tile) for r in reqs], reqs[0].mode)
    share = (time.perf_counter() - t0) / len(reqs)
    return [
        encode_message(
            {"type": "encoded", "id": r.id, "timing": {"compute_s": share, "queue_s": q, "batch": len(reqs)}},
            pack_tokens(t.cpu().numpy(), r.reply_dtype),
        )
        for r, q, t in zip(reqs, queue_s, tokens)
    ]


@dataclass(frozen=True)
class EncodedReply:
    """An ``encoded`` reply as the edge reads it: the tile's tokens and the server's timing
    (``None`` where the server did not report it)."""

    tokens: np.ndarray  # (rows, cols, C) float32
    compute_s: Optional[float]
    queue_s: Optional[float]


def read_encoded_reply(
    header: dict,
    arrays: Dict[str, np.ndarray],
    token_shape: Tuple[int, int, int],
    expected_format: Optional[str] = None,
) -> EncodedReply:
    """The tokens of a decoded ``encoded`` reply, checked against the ``(rows, cols, C)`` the edge expects
    and, when ``expected_format`` is given (the request's ``reply_dtype``), against the token format it
    asked for: a server answering in another format (a bug, or a downgrade) is refused, not decoded.

    Raises :class:`WireError` with code ``bad_reply`` (or the token codec's) for anything else."""
    if header.get("type") != "encoded":
        raise WireError("bad_reply", f"unexpected reply type {header.get('type')!r}")
    tokens = wire.unpack_tokens(arrays, token_shape, expected_format)
    timing = header.get("timing") if isinstance(header.get("timing"), dict) else {}
    return EncodedReply(tokens, _number(timing.get("compute_s")), _number(timing.get("queue_s")))


def _number(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# ---------------------------------------------------------------------------
# info


@dataclass(frozen=True)
class ServerInfo:
    """What a server says about itself in reply to ``info``: its model, its weights, its counters."""

    name: str
    model: str  # the geometry spec, e.g. "vit_b" or "vit_b/w32h2"
    modes: Tuple[str, ...]
    embed_dim: int
    remote_blocks: Dict[str, Tuple[int, ...]]  # mode -> the encoder blocks it runs on a tile
    token_dtypes: Tuple[str, ...]
    protocol: int
    checkpoint: str  # the checkpoint's file name, or a label such as "random(seed=0)"
    curve: bool
    requests_served: int
    errors: int
    uptime_s: float

    @classmethod
    def describe(
        cls,
        geometry: SamGeometry,
        name: str,
        checkpoint: str,
        *,
        curve: bool = False,
        requests_served: int = 0,
        errors: int = 0,
        uptime_s: float = 0.0,
    ) -> ServerInfo:
        """The info of a server running the remote stage of ``geometry``: every mode it serves
        (``exact``, ``k2`` .. ``k<G-1>``, ``paper``: its stage holds the blocks of all of them)."""
        return cls(
            name,
            geometry.spec,
            tuple(geometry.modes),
            geometry.embed_dim,
            {m: tuple(geometry.remote_blocks(m)) for m in geometry.modes},
            tuple(wire.TOKEN_DTYPES),
            wire.PROTOCOL_VERSION,
            checkpoint,
            curve,
            requests_served,
            errors,
            round(uptime_s, 3),
        )

    def to_header(self) -> dict:
        """The ``info`` reply's header fields (JSON types)."""
        d = dataclasses.asdict(self)
        d["modes"] = list(self.modes)
        d["token_dtypes"] = list(self.token_dtypes)
        d["remote_blocks"] = {m: list(b) for m, b in self.remote_blocks.items()}
        return dict(d, type="info")

    @classmethod
    def from_header(cls, header: dict) -> ServerInfo:
        """Read an ``info`` reply's header; fields this version does not know are ignored.

        Raises :class:`WireError` (``bad_reply``) naming the first missing or mistyped field."""

        def get(key: str, kind):
            v = header.get(key)
            if kind is float:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            else:
                ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
            if not ok:
                raise WireError("bad_reply", f"info reply: {key!r} must be a {kind.__name__}, got {v!r}")
            return v

        def strings(key: str) -> Tuple[str, ...]:
            v = get(key, list)
            if not all(isinstance(s, str) for s in v):
                raise WireError("bad_reply", f"info reply: {key!r} must be a list of strings")
            return tuple(v)

        blocks = get("remote_blocks", dict)
        if not all(
            isinstance(m, str)
            and isinstance(b, list)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in b)
            for m, b in blocks.items()
        ):
            raise WireError("bad_reply", "info reply: 'remote_blocks' must map modes to lists of block indexes")
        return cls(
            get("name", str),
            get("model", str),
            strings("modes"),
            get("embed_dim", int),
            {m: tuple(b) for m, b in blocks.items()},
            strings("token_dtypes"),
            get("protocol", int),
            get("checkpoint", str),
            get("curve", bool),
            get("requests_served", int),
            get("errors", int),
            float(get("uptime_s", float)),
        )
