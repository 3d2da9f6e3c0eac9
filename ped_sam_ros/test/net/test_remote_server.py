"""The remote server as a real process (``python -m remote_node``), over real sockets.

Malformed requests of every kind get an ``error`` reply and the server keeps
serving; an oversized frame is dropped by libzmq and the server keeps serving;
``info``; deadlines; the refusal to bind a non-loopback address without Curve;
CurveZMQ with an authorized and an unknown client key; ``ped-sam-keys``.
"""

import dataclasses
import json
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from helpers import TINY_B
from helpers.net import (
    REPO,
    RawClient,
    ServerProcess,
    checkpoint_args,
    header_frame,
    pixels_for,
    run_server_to_exit,
    server_env,
)
from ped_sam_ros.core import wire
from ped_sam_ros.core.geometry import Tile
from ped_sam_ros.core.model import RemoteStage, random_sam
from ped_sam_ros.core.wire import EncodeRequest, make_encode_request

SMALL = Tile(0, 0, 0, 0, 2, 0, 2)  # 2x2 tokens (32x32 px): a cheap valid request
REPLY_TIMEOUT_S = 20.0  # generous: the test machine may be loaded; replies normally take ms
pytestmark = pytest.mark.timeout(180)  # a hang fails the test instead of the whole run


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_b_checkpoint):
    s = ServerProcess(tmp_path_factory.mktemp("srv"), "srv-main", checkpoint_args(TINY_B, tiny_b_checkpoint))
    s.start()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def stage(tiny_b_checkpoint):
    return RemoteStage.from_checkpoint(TINY_B, tiny_b_checkpoint)


@pytest.fixture
def client(ctx, server):
    c = RawClient(ctx, server.endpoint)
    yield c
    c.close()


def encode_frames(
    rid="ok-1", window=SMALL, pixels=None, mode="exact", model=TINY_B, budget_ms=30000, reply_dtype="float32"
):
    if pixels is None:
        pixels = pixels_for(window)
    return make_encode_request(EncodeRequest(rid, model, mode, window, pixels, budget_ms, reply_dtype))


def assert_serves(client, stage, rid="ok-after", window=SMALL, mode="exact"):
    """A valid request gets the tokens the stage computes locally."""
    px = pixels_for(window, seed=7)
    reply = client.request(encode_frames(rid, window, px, mode), REPLY_TIMEOUT_S)
    assert reply is not None, "no reply to a valid request"
    header, arrays = reply
    assert header["type"] == "encoded", header
    assert header["id"] == rid
    assert header["timing"]["compute_s"] >= 0 and header["timing"]["queue_s"] >= 0
    got = wire.unpack_tokens(arrays, window.token_shape + (stage.geometry.embed_dim,))
    want = stage.encode_tile(px, window, mode).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _hdr(frames):
    return json.loads(bytes(frames[0]))


def _replace(frames, **changes):
    h = _hdr(frames)
    h.update(changes)
    return [json.dumps(h).encode()] + [bytes(f) for f in frames[1:]]


def _malformed():
    """name -> (frames, expected code, id the reply must carry)."""
    ok = encode_frames("m-1")
    px = bytes(ok[1])
    h = _hdr(ok)
    cases = {
        "garbage_bytes": ([b"\x00\xffGARBAGE\x13\x37"], "bad_header", None),
        "empty_header_frame": ([b""], "bad_header", None),
        "json_not_object": ([b"[1, 2, 3]"], "bad_header", None),
        "deeply_nested_json": ([b"[" * 16000], "bad_header", None),
        # json raises a plain ValueError for an integer of more than 4300 digits
        "integer_json_will_not_convert": (
            [b'{"v": 2, "type": "info", "id": "m-1", "n": ' + b"9" * 5000 + b"}"],
            "bad_header",
            None,
        ),
        "header_too_large": (
            [header_frame(v=wire.PROTOCOL_VERSION, type="info", id="m-1", pad="x" * 20000)],
            "header_too_large",
            None,
        ),
        "unknown_version": (_replace(ok, v=7), "bad_version", "m-1"),
        "unknown_type": (_replace(ok, type="teleport"), "bad_type", "m-1"),
        "reply_type_sent_to_server": (_replace(ok, type="encoded"), "bad_type", "m-1"),
        "bad_id": (_replace(ok, id="x" * 100), "bad_id", None),
        "truncated_pixels": ([ok[0], px[:-1]], "bad_length", "m-1"),
        "missing_pixels_frame": ([ok[0]], "frame_count", "m-1"),
        "extra_frame": ([ok[0], px, b"surprise"], "frame_count", "m-1"),
        "far_too_many_frames": ([ok[0]] + [b"x"] * 40, "frame_count", "m-1"),
        "huge_declared_shape": (
            _replace(ok, tensors=[{"name": "pixels", "dtype": "uint8", "shape": [1 << 20, 1 << 20, 3]}]),
            "bad_length",
            "m-1",
        ),
        "shape_too_big": (
            _replace(ok, tensors=[{"name": "pixels", "dtype": "uint8", "shape": [wire.MAX_DIM + 1, 1, 3]}]),
            "bad_shape",
            "m-1",
        ),
        "shape_byte_mismatch": (
            _replace(ok, tensors=[{"name": "pixels", "dtype": "uint8", "shape": [32, 16, 3]}]),
            "bad_length",
            "m-1",
        ),
        "wrong_dtype_name": (
            _replace(ok, tensors=[{"name": "pixels", "dtype": "float64", "shape": [32, 32, 3]}]),
            "bad_dtype",
            "m-1",
        ),
        "unhashable_dtype": (
            _replace(ok, tensors=[{"name": "pixels", "dtype": ["uint8"], "shape": [32, 32, 3]}]),
            "bad_dtype",
            "m-1",
        ),
        "float_pixels": (
            _replace(ok, tensors=[{"name": "pixels", "dtype": "float32", "shape": [32, 32, 3]}])[:1]
            + [np.zeros((32, 32, 3), np.float32).tobytes()],
            "bad_dtype",
            "m-1",
        ),
        "wrong_model": (encode_frames("m-1", model="vit_h"), "wrong_model", "m-1"),
        "unknown_mode": (encode_frames("m-1", mode="turbo"), "bad_mode", "m-1"),
        "window_out_of_grid": (_replace(ok, tile={"rows": [60, 70], "cols": [0, 2]}), "bad_tile", "m-1"),
        "pixels_bigger_than_window": (encode_frames("m-1", pixels=np.zeros((48, 32, 3), np.uint8)), "bad_shape", "m-1"),
        "zero_budget": (_replace(ok, budget_ms=0), "bad_deadline", "m-1"),
        "string_budget": (_replace(ok, budget_ms="soon"), "bad_deadline", "m-1"),
        "bad_reply_dtype": (_replace(ok, reply_dtype="float64"), "bad_dtype", "m-1"),
        "info_with_tensor": (
            [
                header_frame(
                    v=wire.PROTOCOL_VERSION,
                    type="info",
                    id="m-1",
                    tensors=[{"name": "x", "dtype": "uint8", "shape": [1]}],
                ),
                b"\0",
            ],
            "bad_header",
            "m-1",
        ),
    }
    assert h["id"] == "m-1"
    return cases


MALFORMED = sorted(_malformed())


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_request_gets_error_and_server_keeps_serving(client, server, stage, case):
    frames, code, rid = _malformed()[case]
    reply = client.request(frames, REPLY_TIMEOUT_S)
    assert reply is not None, f"no error reply for {case}"
    header, arrays = reply
    assert header["type"] == "error", header
    assert header["code"] == code, header
    assert header["id"] == rid
    assert header["message"] and arrays == {}
    assert server.alive
    assert_serves(client, stage, rid=f"ok-after-{case}"[:64])


def test_many_requests_in_flight_are_matched_by_id(client, stage):
    """Mixed good and bad requests sent back to back: one reply per request, ids intact."""
    sent = {}
    for i in range(6):
        rid = f"batch-{i}"
        frames = encode_frames(rid) if i % 2 == 0 else _replace(encode_frames(rid), mode="warp")
        assert client.send(frames)
        sent[rid] = "encoded" if i % 2 == 0 else "error"
    got = {}
    end = time.monotonic() + REPLY_TIMEOUT_S
    while len(got) < len(sent) and time.monotonic() < end:
        r = client.recv(max(0.01, end - time.monotonic()))
        if r is not None:
            got[r[0]["id"]] = r[0]["type"]
    assert got == sent


def test_oversized_message_is_dropped_and_server_keeps_serving(ctx, client, server, stage):
    """A frame over MAXMSGSIZE: libzmq closes that connection, no reply, nothing else happens."""
    big = b"\0" * (wire.MAX_REQUEST_BYTES + 1)
    assert client.send([header_frame(v=wire.PROTOCOL_VERSION, type="info", id="too-big"), big])
    assert client.recv(1.5) is None, "an oversized message must not be answered"
    assert server.alive
    fresh = RawClient(ctx, server.endpoint)
    try:
        assert_serves(fresh, stage, rid="fresh-after-big")
    finally:
        fresh.close()
    # the dropped client's DEALER reconnects by itself and is served again
    assert_serves(client, stage, rid="same-after-big")
    # a message just under the limit is read (and refused by the codec, not dropped)
    near = [
        header_frame(v=wire.PROTOCOL_VERSION, type="info", id="near-limit"),
        b"\0" * (wire.MAX_REQUEST_BYTES - 1000),
    ]
    reply = client.request(near, REPLY_TIMEOUT_S)
    assert reply is not None and (reply[0]["id"], reply[0]["code"]) == ("near-limit", "frame_count")


def test_info(client, server, stage, tiny_b_checkpoint):
    reply = client.request([header_frame(v=wire.PROTOCOL_VERSION, type="info", id="i-1")], REPLY_TIMEOUT_S)
    assert reply is not None
    info, arrays = reply
    assert info["type"] == "info" and info["id"] == "i-1" and arrays == {}
    assert info["model"] == TINY_B
    assert info["modes"] == ["exact", "k2", "k3", "paper"]
    assert info["embed_dim"] == 32
    assert info["protocol"] == wire.PROTOCOL_VERSION
    assert info["name"] == "srv-main"
    assert info["checkpoint"] == tiny_b_checkpoint.name
    assert info["curve"] is False
    assert info["remote_blocks"] == {
        "exact": [0, 1],
        "k2": [0, 1, 3, 4],
        "k3": [0, 1, 3, 4, 6, 7],
        "paper": [0, 1, 3, 4, 6, 7, 9, 10],
    }
    before = info["requests_served"]
    assert_serves(client, stage, rid="count-me")
    after = client.request([header_frame(v=wire.PROTOCOL_VERSION, type="info")], REPLY_TIMEOUT_S)[0]
    assert after["requests_served"] == before + 1
    assert after["id"] is None  # an info request without id gets a reply without id


def test_expired_budget_is_not_computed(client, stage):
    # 1 microsecond (the wire allows fractional ms; make_encode_request would round it to 0)
    header, _ = client.request(_replace(encode_frames("late-1"), budget_ms=0.001), REPLY_TIMEOUT_S)
    assert (header["type"], header["code"], header["id"]) == ("error", "deadline_expired", "late-1")
    assert_serves(client, stage, rid="on-time")


def test_budget_counts_from_arrival_while_queued(client):
    """A request waiting behind a long compute expires; info is answered at once meanwhile.

    (test_net_hardening has a twin that holds the compute deterministically.)"""
    full = Tile(0, 0, 0, 0, 64, 0, 64)  # the whole 64x64 grid in paper mode: hundreds of ms
    assert client.send(encode_frames("long", full, mode="paper"))
    # 1 ms: far less than "long" computes, far more than "short" needs to reach the compute thread
    # when nothing is queued; counted from compute start it would be served
    assert client.send(encode_frames("short", budget_ms=1))
    assert client.send([header_frame(v=wire.PROTOCOL_VERSION, type="info", id="info-now")])
    order = []
    end = time.monotonic() + 60
    while len(order) < 3 and time.monotonic() < end:
        r = client.recv(max(0.01, end - time.monotonic()))
        if r is not None:
            order.append((r[0]["id"], r[0]["type"], r[0].get("code")))
    assert order == [("info-now", "info", None), ("long", "encoded", None), ("short", "error", "deadline_expired")], (
        order
    )


def test_in_process_server_in_a_thread(tiny_b_checkpoint, stage):
    """EncoderServer used as a library: serve_forever in a thread, stopped by its event."""
    from ped_sam_ros.core.transport import ServerAddress, TileJob
    from ped_sam_ros.net.zmq_client import ZmqTransport
    from remote_node.server import EncoderServer, ServerOptions

    srv = EncoderServer("tcp://127.0.0.1:*", TINY_B, tiny_b_checkpoint, ServerOptions(name="in-thread"))
    stop = threading.Event()
    th = threading.Thread(target=srv.serve_forever, args=(stop,), daemon=True)
    th.start()
    t = ZmqTransport([ServerAddress("lib", srv.endpoint)], TINY_B, token_dtype="int8")
    try:
        assert t.wait_connected(REPLY_TIMEOUT_S)
        job = TileJob(SMALL, 0, pixels_for(SMALL, 3))
        (res,) = t.encode([job], "paper", REPLY_TIMEOUT_S)
        want = stage.encode_tile(job.pixels, SMALL, "paper").numpy()
        step = np.abs(want).max(axis=-1, keepdims=True) / 127
        assert np.all(np.abs(res.tokens - want) <= 0.5 * step + 1e-6)  # int8: half a step per token
        assert res.bytes_down > wire.token_bytes(4, 32, "int8") and res.bytes_up > 32 * 32 * 3
        assert res.compute_s > 0 and res.round_trip_s >= res.compute_s
        (reply,) = t.info(REPLY_TIMEOUT_S)
        assert (reply.name, reply.error) == ("lib", "")
        assert (reply.info.name, reply.info.requests_served, reply.info.checkpoint) == (
            "in-thread",
            1,
            tiny_b_checkpoint.name,
        )
        # the edge's record is the server's own, field for field (the clock moved on in between)
        assert reply.info == dataclasses.replace(srv.info(), uptime_s=reply.info.uptime_s)
        h = t.health()[0]
        assert (h.name, h.state, h.requests, h.replies) == ("lib", "ok", 1, 1)
        assert h.last_latency_s > 0 and h.last_compute_s > 0 and h.last_queue_s >= 0
    finally:
        t.close()
        stop.set()
        th.join(5.0)
        srv.close()
    assert not th.is_alive()


def test_library_config_errors(tiny_b_checkpoint, tmp_path):
    from ped_sam_ros.core.transport import ServerAddress
    from ped_sam_ros.net.zmq_client import ZmqTransport
    from remote_node.policy import ServerConfigError
    from remote_node.server import EncoderServer, ServerOptions

    with pytest.raises(ServerConfigError, match="refusing to bind"):
        EncoderServer("tcp://0.0.0.0:*", TINY_B, tiny_b_checkpoint)
    with pytest.raises(ServerConfigError, match="both"):
        EncoderServer(
            "tcp://127.0.0.1:*", TINY_B, tiny_b_checkpoint, ServerOptions(server_secret_key=tmp_path / "x.key_secret")
        )
    with pytest.raises(ServerConfigError, match="checkpoint path"):
        EncoderServer("tcp://127.0.0.1:*", TINY_B)
    with pytest.raises(ValueError, match="client secret"):
        ZmqTransport([ServerAddress("s", "tcp://127.0.0.1:1", str(tmp_path / "server.key"))], TINY_B)
    with pytest.raises(ValueError, match="unique"):
        ZmqTransport([ServerAddress("a", "tcp://127.0.0.1:1"), ServerAddress("a", "tcp://127.0.0.1:2")], TINY_B)


def test_non_loopback_bind_without_keys_is_refused(tmp_path, tiny_b_checkpoint):
    ready = tmp_path / "ready"
    for bind in ("tcp://0.0.0.0:*", "tcp://*:*"):
        p = run_server_to_exit(
            [
                "--bind",
                bind,
                "--model",
                TINY_B,
                "--checkpoint",
                str(tiny_b_checkpoint),
                "--ready-file",
                str(ready),
            ],
            timeout_s=60,
        )
        assert p.returncode != 0
        assert "refusing to bind" in p.stderr and "--allow-insecure-remote" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        assert not ready.exists()


def test_endpoint_policy():
    from ped_sam_ros.net.curve import is_local_endpoint
    from remote_node.policy import ServerConfigError, check_bind_policy

    for ep in (
        "tcp://127.0.0.1:5555",
        "tcp://127.3.2.1:*",
        "tcp://localhost:1",
        "tcp://[::1]:5555",
        "ipc:///tmp/x",
        "inproc://x",
    ):
        assert is_local_endpoint(ep), ep
        check_bind_policy(ep, curve=False)
    for ep in (
        "tcp://0.0.0.0:5555",
        "tcp://*:5555",
        "tcp://eth0:5555",
        "tcp://192.168.1.4:5555",
        "tcp://[::]:5555",
        "tcp://example.com:5555",
        "ws://127.0.0.1:5555",
        "pgm://eth0;239.1.1.1:5555",
    ):
        assert not is_local_endpoint(ep), ep
        with pytest.raises(ServerConfigError, match="refusing to bind"):
            check_bind_policy(ep, curve=False)
        check_bind_policy(ep, curve=True)
        check_bind_policy(ep, curve=False, allow_insecure_remote=True)


# ---------------------------------------------------------------------------
# CurveZMQ and keys


def test_keys_cli_refuses_overwrite(tmp_path):
    from remote_node.keys import main

    d = tmp_path / "keys"
    assert main(["--dir", str(d), "--name", "edge"]) == 0
    pub, sec = d / "edge.key", d / "edge.key_secret"
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600
    before = (pub.read_bytes(), sec.read_bytes())
    assert main(["--dir", str(d), "--name", "edge"]) == 1
    assert (pub.read_bytes(), sec.read_bytes()) == before
    sec.unlink()  # half a pair still counts as existing
    assert main(["--dir", str(d), "--name", "edge"]) == 1
    assert main(["--dir", str(d), "--name", "edge", "--force"]) == 0
    assert pub.read_bytes() != before[0]
    assert main(["--dir", str(d), "--name", "../escape"]) == 1
    # the CLI entry point (console script ped-sam-keys = remote_node.keys:main)
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from remote_node.keys import main; sys.exit(main())",
            "--dir",
            str(d),
            "--name",
            "edge",
        ],
        cwd=str(REPO),
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "refusing to overwrite" in p.stderr and "--force" in p.stderr


def test_curve_authorized_client_served_unknown_client_refused(ctx, tmp_path):
    from ped_sam_ros.core.transport import RemoteEncodeError, ServerAddress, TileJob
    from ped_sam_ros.net.curve import load_public_key, load_secret_pair
    from ped_sam_ros.net.zmq_client import ZmqTransport
    from remote_node.keys import create_keypair

    keys, authorized, strangers = tmp_path / "server", tmp_path / "authorized", tmp_path / "strangers"
    server_pub, server_sec = create_keypair(keys, "server")
    edge_pub, edge_sec = create_keypair(authorized, "edge")
    _, bad_sec = create_keypair(strangers, "intruder")

    srv = ServerProcess(
        tmp_path / "run",
        "srv-curve",
        [
            "--model",
            TINY_B,
            "--random-weights",
            "--seed",
            "3",
            "--server-key",
            str(server_sec),
            "--authorized-keys",
            str(authorized),
        ],
    )
    srv.start()
    good = bad = plain = None
    try:
        srv.wait_ready()
        log = srv.log_text()
        assert "Curve on" in log and "MEANINGLESS" in log
        spub = load_public_key(server_pub)
        good = RawClient(ctx, srv.endpoint, curve=load_secret_pair(edge_sec) + (spub,))
        bad = RawClient(ctx, srv.endpoint, curve=load_secret_pair(bad_sec) + (spub,), monitor=True)
        plain = RawClient(ctx, srv.endpoint, monitor=True)

        # the random-weights server computes what random_sam(spec, seed) computes
        sam = random_sam(TINY_B, seed=3)
        stage = RemoteStage(TINY_B)
        sd = sam.state_dict()
        stage.load_state_dict({k: sd[stage.checkpoint_key(k)] for k in stage.state_dict()})
        assert_serves(good, stage, rid="curve-good")
        info = good.request([header_frame(v=wire.PROTOCOL_VERSION, type="info", id="ci")], REPLY_TIMEOUT_S)[0]
        assert info["curve"] is True and info["checkpoint"] == "random(seed=3)"

        # refused at the handshake: the server's ZAP handler says no (status 400) to the unknown key,
        # and the plaintext client fails the handshake (mechanism mismatch); neither ever connects
        outcome = (
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        ev = bad.wait_event(outcome, REPLY_TIMEOUT_S)
        assert ev is not None and (ev["event"], ev["value"]) == (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400), ev
        ev = plain.wait_event(outcome, REPLY_TIMEOUT_S)
        assert ev is not None and ev["event"] in (
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        ), ev
        bad.send(encode_frames("intruder"), timeout_s=0.5)  # queued or refused; never delivered
        plain.send(encode_frames("plaintext"), timeout_s=0.5)
        assert_serves(good, stage, rid="curve-good-again")
        assert bad.recv(0.2) is None and plain.recv(0.2) is None

        # the edge transport: unknown key -> handshake refused, clear error, fails fast
        address = ServerAddress("curve-srv", srv.endpoint, str(server_pub))
        t_bad = ZmqTransport([address], TINY_B, token_dtype="float32", client_secret_key=str(bad_sec))
        t_good = ZmqTransport([address], TINY_B, token_dtype="float32", client_secret_key=str(edge_sec))
        try:
            assert t_good.wait_connected(REPLY_TIMEOUT_S)
            assert not t_bad.wait_connected(1.5)
            assert "not in its authorized keys" in t_bad.health()[0].last_error
            job = TileJob(SMALL, 0, pixels_for(SMALL))
            t0 = time.monotonic()
            with pytest.raises(RemoteEncodeError) as ei:
                t_bad.encode([job], "exact", timeout_s=5.0)
            assert time.monotonic() - t0 < 1.0
            assert ei.value.servers == ["curve-srv"] and srv.endpoint in str(ei.value)
            assert "authorized keys" in str(ei.value)
            res = t_good.encode([job], "exact", timeout_s=REPLY_TIMEOUT_S)
            want = stage.encode_tile(job.pixels, SMALL, "exact").numpy()
            np.testing.assert_allclose(res[0].tokens, want, rtol=0, atol=1e-5)
        finally:
            t_bad.close()
            t_good.close()
    finally:
        for c in (good, bad, plain):
            if c is not None:
                c.close()
        code = srv.stop()
    assert code == 0, srv.log_text()  # SIGTERM: clean shutdown
    full_log = srv.log_path.read_text(errors="replace")
    denied = [line for line in full_log.splitlines() if "Curve handshake refused: DENIED" in line]
    intruder_key = load_secret_pair(bad_sec)[0].decode()
    # the operator sees the intruder's key, and only the intruder's
    assert denied and all(intruder_key in line for line in denied), full_log
    assert load_public_key(edge_pub).decode() not in full_log
    assert "Curve on, 1 authorized client key(s)" in full_log
    assert "stopped after" in full_log
