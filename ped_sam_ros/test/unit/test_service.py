"""The encode service both ends run, the transport interface's records, and LocalTransport.

No network here: the server side is ``core.service`` called directly, the edge side
``LocalTransport`` (which runs the same service on the same codec).
"""

import numpy as np
import pytest
import torch

from helpers import TINY_B, TINY_H
from ped_sam_ros.core import wire
from ped_sam_ros.core.geometry import Partition, Tile
from ped_sam_ros.core.model import EdgeStage, RemoteStage, get_geometry
from ped_sam_ros.core.pipeline import DistributedEncoder
from ped_sam_ros.core.service import ServerInfo, check_encode_request, read_encoded_reply, run_encode
from ped_sam_ros.core.transport import LocalTransport, ServerAddress, ServerInfoReply, TileJob
from ped_sam_ros.core.wire import EncodeRequest, WireError, decode_message, make_encode_request
from ped_sam_ros.edge.config import EdgeConfig, parse_servers

SMALL = Tile(0, 0, 0, 0, 2, 0, 2)  # 2x2 tokens (32x32 px)


@pytest.fixture(scope="module")
def stage():
    torch.manual_seed(0)
    return RemoteStage(TINY_B)


def _pixels(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _request_frames(model=TINY_B, mode="exact", dtype="float32"):
    return make_encode_request(EncodeRequest("r-1", model, mode, SMALL, _pixels(), 1000, dtype))


def test_server_info_round_trips_through_its_header():
    info = ServerInfo.describe(
        get_geometry(TINY_B), "srv", "w.pth", curve=True, requests_served=3, errors=1, uptime_s=2.5
    )
    assert (info.model, info.embed_dim, info.protocol) == (TINY_B, 32, wire.PROTOCOL_VERSION)
    assert info.remote_blocks["exact"] == tuple(get_geometry(TINY_B).remote_blocks("exact"))
    header = info.to_header()
    assert header["type"] == "info" and header["remote_blocks"]["paper"] == list(info.remote_blocks["paper"])
    header, _ = decode_message(wire.encode_message(dict(header, id="i", added_later="ignored")))
    assert ServerInfo.from_header(header) == info
    with pytest.raises(WireError, match="'errors'") as ei:
        ServerInfo.from_header({k: v for k, v in header.items() if k != "errors"})
    assert ei.value.code == "bad_reply"


def test_encode_request_is_checked_against_the_servers_model(stage):
    header, arrays = decode_message(_request_frames(model=TINY_H))
    with pytest.raises(WireError) as ei:
        check_encode_request(header, arrays, TINY_B)
    assert ei.value.code == "wrong_model"
    header, arrays = decode_message(_request_frames(mode="fast"))
    with pytest.raises(WireError) as ei:
        check_encode_request(header, arrays, TINY_B)
    assert ei.value.code == "bad_mode"


def test_run_encode_reply_reads_back_as_the_stages_tokens(stage):
    req = check_encode_request(*decode_message(_request_frames()), TINY_B)
    header, arrays = decode_message(run_encode(stage, req, queue_s=0.25), max_total_bytes=1 << 30)
    reply = read_encoded_reply(header, arrays, (2, 2, 32))
    np.testing.assert_array_equal(reply.tokens, stage.encode_tile(req.pixels, SMALL, "exact").numpy())
    assert reply.queue_s == 0.25 and reply.compute_s > 0
    with pytest.raises(WireError) as ei:
        read_encoded_reply(header, arrays, (2, 2, 16))  # a reply of another width
    assert ei.value.code == "bad_reply" and "16" in str(ei.value)
    with pytest.raises(WireError, match="unexpected reply type"):
        read_encoded_reply(dict(header, type="info"), arrays, (2, 2, 32))


def test_local_transport_reports_health_and_info_like_a_remote_one(stage):
    t = LocalTransport(stage, names=["a", "b"])
    assert t.geometry == stage.geometry and t.server_names == ["a", "b"]
    assert t.wait_connected(0) and t.wait_connected(5.0)
    (res,) = t.encode([TileJob(SMALL, 1, _pixels())], "exact", 5.0)
    assert res.tokens.shape == (2, 2, 32) and res.server == 1 and res.bytes_up > 32 * 32 * 3
    health = t.health()
    assert [(h.name, h.state, h.connected, h.requests, h.replies) for h in health] == [
        ("a", "ok", True, 0, 0),
        ("b", "ok", True, 1, 1),
    ]
    health[1].requests = 99  # a copy: the transport's own record is not touched
    assert t.health()[1].requests == 1
    replies = t.info()
    assert all(isinstance(r, ServerInfoReply) and r.error == "" for r in replies)
    assert [(r.name, r.info.name, r.info.model, r.info.requests_served) for r in replies] == [
        ("a", "a", TINY_B, 0),
        ("b", "b", TINY_B, 1),
    ]
    with pytest.raises(ValueError, match="2 names for 3 servers"):
        LocalTransport(stage, num_servers=3, names=["a", "b"])


def test_encoder_refuses_a_transport_of_another_model(stage):
    with pytest.raises(ValueError, match=f"servers run {TINY_B}, the edge {TINY_H}"):
        DistributedEncoder(EdgeStage(TINY_H), LocalTransport(stage, num_servers=4), Partition.grid(2, 2))


def test_config_server_addresses_carry_public_keys_only_with_curve(tmp_path):
    servers = parse_servers(["a=tcp://127.0.0.1:5601", "b=ipc:///tmp/b.sock"])
    assert servers == [ServerAddress("a", "tcp://127.0.0.1:5601"), ServerAddress("b", "ipc:///tmp/b.sock")]
    assert EdgeConfig(servers=servers).server_addresses() == servers
    cfg = EdgeConfig(servers=servers, server_public_keys_dir=str(tmp_path), client_secret_key="edge.key_secret")
    assert [a.public_key for a in cfg.server_addresses()] == [str(tmp_path / "a.key"), str(tmp_path / "b.key")]
    assert [(a.name, a.endpoint) for a in cfg.server_addresses()] == [(s.name, s.endpoint) for s in servers]
