"""Build the edge pipeline from an :class:`EdgeConfig`: weights, transport, segmenter."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ped_sam_ros.core.model import EdgeStage, RemoteStage, get_geometry
from ped_sam_ros.core.pipeline import DeadlinePolicy, DistributedEncoder, FallbackPolicy, PedSamPredictor, Segmenter
from ped_sam_ros.core.transport import LocalTransport, TokenCheck, TokenLimits, Transport

from .config import EdgeConfig
from .privacy import build_privacy_hook

log = logging.getLogger(__name__)

TransportFactory = Callable[[EdgeConfig], Transport]


@dataclass
class EdgePipeline:
    """The edge's half of SAM plus the way to its remote half."""

    config: EdgeConfig
    edge: EdgeStage
    transport: Transport
    encoder: DistributedEncoder
    segmenter: Segmenter

    def close(self) -> None:
        self.transport.close()


def build_edge_stage(config: EdgeConfig) -> EdgeStage:
    """The edge stage on the configured device and precision (weights moved there once)."""
    geom = get_geometry(config.model)
    options = config.stage_options()
    if config.random_weights:
        return EdgeStage(geom, config.mode, seed=config.seed, **options)  # as `remote_node --random-weights`
    return EdgeStage.from_checkpoint(geom, config.checkpoint, config.mode, **options)


def build_remote_stage(config: EdgeConfig) -> RemoteStage:
    """The servers' stage with the same weights (for :func:`local_transport` and the ``edge``
    fallback), on the edge's device and precision."""
    geom = get_geometry(config.model)
    options = config.stage_options()
    if config.random_weights:
        return RemoteStage(geom, seed=config.seed, **options)
    return RemoteStage.from_checkpoint(geom, config.checkpoint, **options)


def local_transport(config: EdgeConfig) -> Transport:
    """Every configured server run in this process (tests, no network)."""
    return LocalTransport(
        build_remote_stage(config),
        token_dtype=config.wire_precision,
        names=config.server_names,
        pixel_codec=config.pixel_codec,
    )


def zmq_transport(config: EdgeConfig) -> Transport:
    """One DEALER per configured server (CurveZMQ when keys are configured)."""
    from ped_sam_ros.net.zmq_client import ZmqTransport

    return ZmqTransport(
        config.server_addresses(),
        get_geometry(config.model),
        token_dtype=config.wire_precision,
        client_secret_key=config.client_secret_key or None,
        pixel_codec=config.pixel_codec,
    )


def build_pipeline(
    config: EdgeConfig, transport: Optional[Transport] = None, transport_factory: Optional[TransportFactory] = None
) -> EdgePipeline:
    """Edge stage (checkpoint or random weights), transport (ZeroMQ unless given)
    and a :class:`Segmenter` over the distributed encoder."""
    config.validate()
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    edge = build_edge_stage(config)
    if transport is None:
        transport = (transport_factory or zmq_transport)(config)
    try:
        encoder = DistributedEncoder(
            edge,
            transport,
            config.partition,
            config.assignment,
            timeout_s=config.deadline_s,
            allow_adjacent=config.allow_adjacent,
            max_share=config.max_share,
            fallback=FallbackPolicy(config.fallback, tuple(config.spare_indexes)),
            deadlines=DeadlinePolicy(config.deadline_floor_s, config.deadline_factor),
            token_check=TokenCheck(TokenLimits(config.token_max_abs, config.token_rms_factor)),
            edge_remote=(lambda: build_remote_stage(config))
            if config.fallback == "edge" or config.needs_edge_remote
            else None,
        )
        encoder.frame_hook = build_privacy_hook(config, encoder)  # None unless privacy.* / layout auto
        if config.fallback == "edge" or config.needs_edge_remote:
            # only when configured: the servers' weights at the edge, loaded now so that the
            # first fault does not wait for them
            encoder.edge_remote_stage()
            log.info("edge fallback: the remote stage is loaded at the edge (%.1f s)", encoder.edge_remote_build_s)
    except Exception:
        transport.close()
        raise
    segmenter = Segmenter(
        PedSamPredictor(encoder), multimask_output=config.multimask, amg_options=config.amg.to_kwargs()
    )
    return EdgePipeline(config, edge, transport, encoder, segmenter)
