"""The emulated link (ped_sam_ros.bench.link): real remote_node servers in a network
namespace, the edge in another, joined by a tbf-shaped veth pair with a delay proxy.

Skips where namespaces cannot be made (no root, no iproute2, refused). Bounded: one
server, one link setting, one measured frame per wire format; everything created is
removed at the end, which the tests check, also after a failure.
"""

import subprocess
import time

import pytest

from helpers import TINY_B
from ped_sam_ros.bench import link as L

pytestmark = pytest.mark.timeout(480)

REASON = L.unavailable_reason()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"emulated link unavailable: {REASON}")


def _gone(prefix: str) -> bool:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return prefix not in names and prefix not in links


@needs_netns
def test_cleanup_after_a_failure_removes_namespaces_and_processes(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with L.EmulatedLink() as link:
            prefix = link.prefix
            assert sorted(link.exists()) == sorted([link.edge_ns, link.server_ns])
            proc = link.spawn(link.server_ns, ["sleep", "60"], tmp_path / "sleep.log")
            # the /30 is on the veth ends inside the namespaces, not in the root namespace
            root = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
            assert link.server_ip not in root and link.edge_ip not in root
            inside = subprocess.run(["ip", "-n", link.server_ns, "-o", "addr"], capture_output=True, text=True).stdout
            assert f"{link.server_ip}/30" in inside
            raise RuntimeError("boom")
    assert proc.poll() is not None  # the process inside was ended
    assert _gone(prefix)


@needs_netns
def test_frames_over_a_shaped_delayed_link(tmp_path):
    spec = L.LinkSpec(50.0, 50.0, 15.0)
    run = L.LinkRun(
        [spec],
        model=TINY_B,
        servers=1,
        grid=2,
        frames=1,
        combos=[("float16", "raw"), ("e8", "jpeg:90")],
        frame_timeout_s=120.0,
    )
    t0 = time.monotonic()
    link = L.EmulatedLink()
    out = L.run_link_benchmark(run, tmp_path / "run", echo=lambda *a: None, link=link)
    assert _gone(link.prefix)
    assert all(p.poll() is not None for p in link.processes) and not link.processes
    assert "tbf" in out["qdiscs"] and "50Mbit" in out["qdiscs"]
    rows = {(r["token_format"], r["pixel_codec"]): r for r in out["results"]}
    assert set(rows) == {("float16", "raw"), ("e8", "jpeg:90")}
    raw, small = rows[("float16", "raw")], rows[("e8", "jpeg:90")]
    for r in (raw, small):
        parts = [r[k] for k in ("upload_s", "server_s", "download_s", "edge_s")]
        assert all(p is not None and p >= 0 for p in parts), r
        assert abs(sum(parts) - r["total_s"]) < 1e-6 + 0.01 * r["total_s"]
    # the shaper and the proxy really act: 3 MB of raw pixels cannot go up faster than
    # 50 Mbit/s allow (less the tbf bucket) plus the one-way delay, nor a reply come back
    # sooner than the delay
    burst = 64 * 1024
    floor = (raw["bytes_up"] - burst) * 8 / 50e6 + spec.delay_ms / 1000
    assert raw["bytes_up"] > 3_000_000
    assert floor * 0.95 <= raw["upload_s"] < floor * 4 + 1.0, (raw["upload_s"], floor)
    assert raw["download_s"] >= spec.delay_ms / 1000 * 0.9
    # compressed pixels and tokens cross the same servers, and are smaller
    assert small["bytes_up"] < raw["bytes_up"] / 4 and small["bytes_down"] < raw["bytes_down"] / 2
    assert small["upload_s"] < raw["upload_s"]
    assert time.monotonic() - t0 < 470


def test_split_follows_the_reply_that_completes_last():
    """The latency split from a synthetic proxy log (no namespaces needed): two servers,
    the second one's reply completes last; the four parts add up to the frame."""
    frame = {
        "t_start": 9.0,
        "t_end": 12.0,
        "t_remote0": 10.0,
        "t_remote1": 11.0,
        "tiles": [{"server": 0, "bytes_down": 1000}, {"server": 1, "bytes_down": 3000}],
    }
    ev = [  # (connection, port, direction, in/out, time, bytes)
        (1, 6600, "up", "out", 10.20, 5000),
        (2, 6601, "up", "out", 10.30, 4000),
        (2, 6601, "up", "out", 10.40, 4000),
        (2, 6601, "up", "out", 10.60, 20),  # a heartbeat after the request: not part of the upload
        (1, 6600, "down", "in", 10.50, 1000),
        (1, 6600, "down", "out", 10.55, 1000),
        (2, 6601, "down", "in", 10.80, 3000),
        (2, 6601, "down", "out", 10.95, 3000),
    ]
    got = L.split_frame(frame, ev, [6600, 6601])
    assert got["upload_s"] == pytest.approx(0.40) and got["download_s"] == pytest.approx(0.20)
    assert got["server_s"] == pytest.approx(0.40) and got["edge_s"] == pytest.approx(2.0)
    assert sum(got[k] for k in ("upload_s", "server_s", "download_s", "edge_s")) == pytest.approx(got["total_s"])
    # no proxy events: only the edge part is known
    assert L.split_frame(frame, [], [6600, 6601])["upload_s"] is None


def test_link_specs():
    assert L.LinkSpec.parse("100:20") == L.LinkSpec(100, 100, 20)
    assert L.LinkSpec.parse("20/100:50") == L.LinkSpec(20, 100, 50)
    for bad in ("0:5", "10:-1", "x:1"):
        with pytest.raises(ValueError):
            L.LinkSpec.parse(bad)
