"""Hardening of the ZeroMQ client, server and codec against bad keys, odd replies and overload.

The server runs in this process (``InProcessServer``) where a test needs a seam:
a :class:`BlockingStage` holds the compute thread until the test releases it, so
the queue and budget tests depend on no timing.  Every wait is bounded.
"""

import logging
import re
import threading
import time

import pytest
import torch

from helpers import TINY_B
from helpers.net import (
    BlockingStage,
    FailingStage,
    FakeRouter,
    InProcessServer,
    RawClient,
    header_frame,
    pixels_for,
    run_server_to_exit,
)
from ped_sam_ros.core import wire
from ped_sam_ros.core.geometry import Tile
from ped_sam_ros.core.model import RemoteStage, get_geometry
from ped_sam_ros.core.service import ServerInfo
from ped_sam_ros.core.transport import RemoteEncodeError, ServerAddress, TileJob
from ped_sam_ros.core.wire import EncodeRequest, make_encode_request

SMALL = Tile(0, 0, 0, 0, 2, 0, 2)  # 2x2 tokens (32x32 px)
WAIT_S = 60.0  # bounds for waits that normally end in milliseconds (a loaded 2-core machine)
HUGE_INT_HEADER = b'{"v": 2, "type": "info", "id": "h-1", "n": ' + b"7" * 5000 + b"}"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stage():
    torch.manual_seed(0)
    return RemoteStage(TINY_B)  # random weights: these tests check the protocol, not the numbers


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from remote_node.keys import create_keypair

    d = tmp_path_factory.mktemp("keys")
    server_pub, server_sec = create_keypair(d / "server", "server")
    edge_pub, edge_sec = create_keypair(d / "edge", "edge")
    return dict(server_pub=server_pub, server_sec=server_sec, edge_pub=edge_pub, edge_sec=edge_sec)


def request(rid, tile=SMALL, seed=0, budget_ms=60000):
    return make_encode_request(EncodeRequest(rid, TINY_B, "exact", tile, pixels_for(tile, seed), budget_ms, "float32"))


def run_bounded(fn, timeout_s=WAIT_S):
    """Run fn in a thread: (finished, result or exception). A hang fails the test, not the run."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: B036 - handed back to the test
            out["value"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout_s)
    return not th.is_alive(), out.get("value")


def collect(client, n, timeout_s=WAIT_S):
    """The next n replies as {id: (type, code)}."""
    got = {}
    for _ in range(n):
        r = client.recv(timeout_s)
        assert r is not None, f"only {len(got)} of {n} replies: {got}"
        got[r[0]["id"]] = (r[0]["type"], r[0].get("code"))
    return got


# ---------------------------------------------------------------------------
# Finding: a bad key file made ZmqTransport() hang in context.term()


@pytest.mark.parametrize(
    "case",
    [
        "missing_client_secret",
        "public_key_as_client_secret",
        "missing_server_key",
        "garbage_server_key",
        "secret_with_bad_z85",
    ],
)
def test_transport_with_bad_key_file_raises_promptly(case, keys, tmp_path):
    from ped_sam_ros.net.curve import CurveKeyError
    from ped_sam_ros.net.zmq_client import ZmqTransport

    client_secret, server_public = str(keys["edge_sec"]), str(keys["server_pub"])
    if case == "missing_client_secret":
        client_secret, expect = str(tmp_path / "nope.key_secret"), "does not exist"
    elif case == "public_key_as_client_secret":
        client_secret, expect = str(keys["edge_pub"]), "holds no secret key"
    elif case == "missing_server_key":
        server_public, expect = str(tmp_path / "nope.key"), "does not exist"
    elif case == "garbage_server_key":
        (tmp_path / "garbage.key").write_text("this is not a certificate\n")
        server_public, expect = str(tmp_path / "garbage.key"), "not a CurveZMQ certificate"
    else:  # 40 characters, but not Z85
        text = re.sub(r'secret-key = ".*"', 'secret-key = "' + "~" * 40 + '"', keys["edge_sec"].read_text())
        assert "~" * 40 in text
        (tmp_path / "bad.key_secret").write_text(text)
        client_secret, expect = str(tmp_path / "bad.key_secret"), "not a 40-character Z85"

    # a plaintext server first, so a socket already exists when the second one fails
    finished, value = run_bounded(
        lambda: ZmqTransport(
            [ServerAddress("plain", "tcp://127.0.0.1:1"), ServerAddress("curvy", "tcp://127.0.0.1:2", server_public)],
            TINY_B,
            client_secret_key=client_secret,
        )
    )
    assert finished, f"ZmqTransport() hung with a bad key file ({case})"
    assert isinstance(value, CurveKeyError), value
    assert expect in str(value) and "curvy" in str(value), str(value)


# ---------------------------------------------------------------------------
# Finding: one bad *.key file made the authenticator trust no key at all


def _server_with_keys(stage, keys, authorized_dir):
    from remote_node.server import EncoderServer, ServerOptions

    options = ServerOptions(server_secret_key=keys["server_sec"], authorized_keys_dir=authorized_dir)
    return EncoderServer("tcp://127.0.0.1:*", TINY_B, options=options, stage=stage)


@pytest.mark.parametrize("bad", ["garbage", "no_public_key", "short_key", "directory", "empty_dir", "only_secrets"])
def test_server_refuses_bad_authorized_keys_dir(bad, stage, keys, tmp_path):
    from remote_node.policy import ServerConfigError

    d = tmp_path / "authorized"
    d.mkdir()
    if bad not in ("empty_dir", "only_secrets"):
        (d / "edge.key").write_bytes(keys["edge_pub"].read_bytes())  # one good key beside the bad file
    name = "zz-bad.key"
    if bad == "garbage":
        (d / name).write_bytes(b"\x00\xff garbage")
    elif bad == "no_public_key":
        (d / name).write_text("metadata\ncurve\n")
    elif bad == "short_key":
        (d / name).write_text('curve\n    public-key = "tooshort"\n')
    elif bad == "directory":
        (d / name).mkdir()
    elif bad == "only_secrets":
        (d / "edge.key_secret").write_bytes(keys["edge_sec"].read_bytes())
    with pytest.raises(ServerConfigError) as ei:
        _server_with_keys(stage, keys, d)
    msg = str(ei.value)
    if bad in ("empty_dir", "only_secrets"):
        assert "holds no client public keys" in msg, msg
    else:
        assert name in msg, msg


def test_server_with_good_authorized_keys_dir_trusts_every_key(stage, keys, tmp_path):
    from ped_sam_ros.net.curve import load_public_key
    from remote_node.keys import create_keypair

    d = tmp_path / "authorized"
    d.mkdir()
    (d / "edge.key").write_bytes(keys["edge_pub"].read_bytes())
    other_pub, _ = create_keypair(tmp_path / "other", "other")
    (d / "other.key").write_bytes(other_pub.read_bytes())
    (d / "README.txt").write_text("not a key: ignored\n")
    srv = _server_with_keys(stage, keys, d)
    try:
        want = {load_public_key(keys["edge_pub"]), load_public_key(other_pub)}
        assert {k for _, k in srv.authorized_keys} == want
        assert set(srv._auth.certs["*"]) == want  # what the authenticator really trusts
    finally:
        srv.close()


def test_cli_bad_authorized_key_exits_with_one_clear_line(keys, tmp_path):
    d = tmp_path / "authorized"
    d.mkdir()
    (d / "edge.key").write_bytes(keys["edge_pub"].read_bytes())
    (d / "broken.key").write_text("garbage\n")
    ready = tmp_path / "ready"
    p = run_server_to_exit(
        [
            "--bind",
            "tcp://127.0.0.1:*",
            "--model",
            TINY_B,
            "--random-weights",
            "--server-key",
            str(keys["server_sec"]),
            "--authorized-keys",
            str(d),
            "--ready-file",
            str(ready),
        ]
    )
    assert p.returncode == 2, p.stderr
    assert "ServerConfigError" in p.stderr and "broken.key" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not ready.exists()


# ---------------------------------------------------------------------------
# Finding: a header json cannot convert escaped as a plain ValueError


def test_server_answers_unconvertible_header_and_logs_no_traceback(stage, ctx, caplog):
    with caplog.at_level(logging.DEBUG, logger="remote_node"), InProcessServer(TINY_B, stage) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            reply = c.request([HUGE_INT_HEADER], WAIT_S)
            assert reply is not None
            assert (reply[0]["type"], reply[0]["code"]) == ("error", "bad_header"), reply[0]
            r = c.request(request("after"), WAIT_S)
            assert r is not None and r[0]["type"] == "encoded"
        finally:
            c.close()
    assert not [r for r in caplog.records if r.exc_info], "a malformed header must not log a traceback"


def test_internal_errors_log_one_traceback_not_one_per_request(stage, ctx, caplog):
    failing = FailingStage(stage)
    with caplog.at_level(logging.DEBUG, logger="remote_node"), InProcessServer(TINY_B, failing) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            for i in range(3):
                reply = c.request(request(f"f-{i}"), WAIT_S)
                assert reply is not None
                assert (reply[0]["id"], reply[0]["code"]) == (f"f-{i}", "internal")
                assert "stage failure" in reply[0]["message"]
        finally:
            c.close()
    assert failing.calls == 3
    internal = [r for r in caplog.records if r.name == "remote_node" and r.getMessage().startswith("internal error")]
    assert [(r.levelno, bool(r.exc_info)) for r in internal] == [(logging.ERROR, True)] + [(logging.DEBUG, False)] * 2


# ---------------------------------------------------------------------------
# Finding: max_message_bytes set MAXMSGSIZE but the codec kept the default limit


def test_raised_max_message_bytes_reaches_the_codec(stage, ctx):
    limit = 2 * wire.MAX_REQUEST_BYTES
    with InProcessServer(TINY_B, stage, max_message_bytes=limit) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            big = [header_frame(v=wire.PROTOCOL_VERSION, type="info", id="big"), b"\0" * (wire.MAX_REQUEST_BYTES + 1)]
            reply = c.request(big, WAIT_S)
            assert reply is not None
            # read by the codec under the raised limit, refused for its stray frame, not its size
            assert (reply[0]["id"], reply[0]["code"]) == ("big", "frame_count"), reply[0]
        finally:
            c.close()


def test_lowered_max_message_bytes_bounds_the_whole_message(stage, ctx):
    limit = 8192
    with InProcessServer(TINY_B, stage, max_message_bytes=limit) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            # each frame is under MAXMSGSIZE; together they are over the limit
            frames = [header_frame(v=wire.PROTOCOL_VERSION, type="info", id="split"), b"\0" * 5000, b"\0" * 5000]
            reply = c.request(frames, WAIT_S)
            assert reply is not None
            assert (reply[0]["id"], reply[0]["code"]) == ("split", "too_large"), reply[0]
            assert str(limit) in reply[0]["message"]
        finally:
            c.close()


def test_server_limits_are_validated(stage):
    from remote_node.policy import ServerConfigError
    from remote_node.server import EncoderServer, ServerOptions

    for kwargs, match in (
        ({"max_message_bytes": 0}, "max_message_bytes"),
        ({"max_queued": 0}, "max_queued"),
        ({"max_queued_bytes": 1000, "max_message_bytes": 2000}, "at least"),
        ({"max_queued": True}, "max_queued"),
    ):
        with pytest.raises(ServerConfigError, match=match):
            EncoderServer("tcp://127.0.0.1:*", TINY_B, options=ServerOptions(**kwargs), stage=stage)


# ---------------------------------------------------------------------------
# Finding: the queue of waiting jobs was bounded by count only; 'busy' was untested


def test_busy_when_too_many_requests_wait(stage, ctx):
    blocking = BlockingStage(stage)
    with InProcessServer(TINY_B, blocking, max_queued=1) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            assert c.send(request("computing"))
            assert blocking.started.wait(WAIT_S), "the compute thread never started"
            assert c.send(request("waiting"))
            assert c.send(request("one-too-many"))
            # only the refusal can come back while the compute is held
            assert collect(c, 1) == {"one-too-many": ("error", "busy")}
            blocking.release()
            assert collect(c, 2) == {"computing": ("encoded", None), "waiting": ("encoded", None)}
            assert c.request(request("later"), WAIT_S)[0]["type"] == "encoded"  # the queue drained
        finally:
            c.close()


def test_busy_when_waiting_requests_hold_too_many_bytes(stage, ctx):
    ids = ("computing", "waiting", "too-many-bytes", "again")
    n = max(sum(len(bytes(f)) for f in request(rid)) for rid in ids)  # every request is n bytes, give or take 10
    limit = n + n // 2  # room for one waiting request, not two
    blocking = BlockingStage(stage)
    with InProcessServer(TINY_B, blocking, max_message_bytes=limit, max_queued_bytes=limit) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            assert c.send(request("computing", seed=1))
            assert blocking.started.wait(WAIT_S), "the compute thread never started"
            assert c.send(request("waiting", seed=2))
            assert c.send(request("too-many-bytes", seed=3))
            got = c.recv(WAIT_S)
            assert got is not None and (got[0]["id"], got[0]["code"]) == ("too-many-bytes", "busy"), got
            assert "bytes" in got[0]["message"]
            info = c.request(
                [header_frame(v=wire.PROTOCOL_VERSION, type="info", id="i")], WAIT_S
            )  # still answered at once
            assert info is not None and info[0]["type"] == "info"
            blocking.release()
            assert collect(c, 2) == {"computing": ("encoded", None), "waiting": ("encoded", None)}
            # both were taken by the compute thread: their bytes were given back
            assert srv.server._queued_bytes == 0
            assert c.request(request("again"), WAIT_S)[0]["type"] == "encoded"
        finally:
            c.close()
    assert srv.server._queued_bytes == 0


def test_budget_counts_from_arrival_while_held_behind_a_compute(stage, ctx):
    """Deterministic twin of the process test: the request expires while queued; info is answered meanwhile."""
    blocking = BlockingStage(stage)
    with InProcessServer(TINY_B, blocking) as srv:
        c = RawClient(ctx, srv.endpoint)
        try:
            assert c.send(request("long"))
            assert blocking.started.wait(WAIT_S)
            assert c.send(request("short", budget_ms=20))
            info = c.request([header_frame(v=wire.PROTOCOL_VERSION, type="info", id="info-now")], WAIT_S)
            assert info is not None and info[0]["id"] == "info-now"  # answered while the compute is held
            time.sleep(0.1)  # a lower bound, not a measurement: "short" has waited > its 20 ms budget
            blocking.release()
            assert collect(c, 2) == {"long": ("encoded", None), "short": ("error", "deadline_expired")}
            assert blocking.calls == 1  # the expired request was never computed
        finally:
            c.close()


# ---------------------------------------------------------------------------
# Finding: info() let a reply overwrite the client's own fields; unreadable replies escaped


def _info_from(ctx, reply):
    """The one ServerInfoReply a client gets from a fake server answering with ``reply(header)``."""
    from ped_sam_ros.net.zmq_client import ZmqTransport

    with FakeRouter(ctx, reply) as fake:
        t = ZmqTransport([ServerAddress("mine", fake.endpoint)], TINY_B)
        try:
            assert t.wait_connected(WAIT_S)
            (got,) = t.info(WAIT_S)
        finally:
            t.close()
    return fake, got


def test_info_keeps_the_clients_own_fields(ctx):
    real = ServerInfo.describe(get_geometry(TINY_B), "fake-srv", "x.pth").to_header()

    def reply(h):
        return wire.encode_message(
            dict(
                real,
                id=h.get("id"),
                endpoint="tcp://spoofed:1",
                error="spoofed",
                server_name="spoofed",
                future_field=[1, 2],
            )
        )

    fake, got = _info_from(ctx, reply)
    assert (got.name, got.endpoint, got.error) == ("mine", fake.endpoint, "")
    assert got.info is not None and (got.info.name, got.info.model) == ("fake-srv", TINY_B)
    assert got.info == ServerInfo.from_header(real)


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", None),
        ("embed_dim", "32"),
        ("curve", 1),
        ("modes", "paper"),
        ("remote_blocks", {"paper": ["0"]}),
        ("requests_served", True),
    ],
)
def test_info_reply_with_a_missing_or_mistyped_field_is_an_error(ctx, field, value):
    real = ServerInfo.describe(get_geometry(TINY_B), "fake-srv", "x.pth").to_header()
    odd = {k: v for k, v in real.items() if k != field}
    if value is not None:
        odd[field] = value

    _, got = _info_from(ctx, lambda h: wire.encode_message(dict(odd, id=h.get("id"))))
    assert got.info is None and "bad info reply" in got.error and repr(field) in got.error, got


def test_client_reports_unreadable_reply_headers(ctx):
    from ped_sam_ros.net.zmq_client import ZmqTransport

    with FakeRouter(ctx, lambda h: [HUGE_INT_HEADER]) as fake:
        t = ZmqTransport([ServerAddress("odd", fake.endpoint)], TINY_B, token_dtype="float32")
        try:
            assert t.wait_connected(WAIT_S)
            (info,) = t.info(WAIT_S)
            assert info.info is None and "unreadable reply" in info.error, info
            job = TileJob(SMALL, 0, pixels_for(SMALL))
            with pytest.raises(RemoteEncodeError, match="unreadable reply") as ei:
                t.encode([job], "exact", WAIT_S)
            assert ei.value.servers == ["odd"] and "bad_header" in str(ei.value)
        finally:
            t.close()
    assert [h["type"] for h in fake.requests] == ["info", "encode"]
