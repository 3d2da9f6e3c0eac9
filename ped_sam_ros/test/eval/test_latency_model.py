"""The latency model's arithmetic on known cases, profile loading and validation, break-even bisection."""

from __future__ import annotations

import json
import math

import pytest

from ped_sam_ros.eval import latency as L
from ped_sam_ros.eval.profiles import (
    BUILTIN_PROFILES,
    DeviceProfile,
    LinkProfile,
    ProfileError,
    get_profile,
    load_profiles,
)


def _req(server=0, up=0.0, down=0.0, send=0.0, srv=0.0, recv=0.0):
    return L.Request(server, up, down, send, srv, recv)


# ---------------------------------------------------------------------------
# playout arithmetic


def test_single_request_is_the_sum_of_its_terms():
    # 1 MB up at 8 Mbit/s (1 s), 10 ms each way, 0.2 s server, 0.5 MB down at 4 Mbit/s (1 s)
    link = LinkProfile("x", 8.0, 4.0, 10.0, 10.0)
    plan = L.LatencyPlan((_req(up=1e6, down=5e5, send=0.05, srv=0.2, recv=0.03),), 0.4, 0.1)
    p = L.play(plan, link)
    assert p.total_s == pytest.approx(0.05 + 1.0 + 0.01 + 0.2 + 1.0 + 0.01 + 0.03 + 0.4 + 0.1)
    assert p.upload_s == pytest.approx(0.05 + 1.0 + 0.01)
    assert p.download_s == pytest.approx(1.0 + 0.01 + 0.03)
    assert p.server_s == pytest.approx(0.2)
    assert p.edge_s == pytest.approx(0.5)


def test_servers_share_the_uplink_fairly():
    # two servers, 1 MB each over 8 Mbit/s: both finish at 2 s; a lone request would take 1 s
    link = LinkProfile("x", 8.0, 8.0)
    two = L.play(L.LatencyPlan((_req(0, up=1e6), _req(1, up=1e6)), 0.0, 0.0), link)
    assert two.upload_s == pytest.approx(2.0)
    # unequal sizes: 0.5 MB and 1.5 MB: the small one ends at 1 s (half rate), the big one at 2 s
    done = L._fair_share([0.0, 0.0], [5e5, 1.5e6], [0, 1], 1e6)
    assert done == pytest.approx([1.0, 2.0])


def test_a_server_computes_one_tile_while_the_next_uploads():
    # one server, two 1 MB tiles at 8 Mbit/s (1 s each), 0.5 s compute each: tile 1 computes
    # during tile 2's upload, so the server adds only 0.5 s after the upload, not 1 s
    link = LinkProfile("x", 8.0, 8000.0)
    p = L.play(L.LatencyPlan((_req(0, up=1e6, srv=0.5), _req(0, up=1e6, srv=0.5)), 0.0, 0.0), link)
    assert p.total_s == pytest.approx(2.5, abs=1e-3)
    # compute longer than a tile's upload queues up: 2 s each -> 1 + 2 + 2
    p = L.play(L.LatencyPlan((_req(0, up=1e6, srv=2.0), _req(0, up=1e6, srv=2.0)), 0.0, 0.0), link)
    assert p.total_s == pytest.approx(5.0, abs=1e-3)


def test_asymmetric_link_uses_each_direction_rate():
    plan = L.LatencyPlan((_req(up=1e6, down=1e6),), 0.0, 0.0)
    fast_up = L.play(plan, LinkProfile("a", 80.0, 8.0)).total_s
    fast_down = L.play(plan, LinkProfile("b", 8.0, 80.0)).total_s
    assert fast_up == pytest.approx(0.1 + 1.0) and fast_down == pytest.approx(1.0 + 0.1)
    assert L.play(plan, LinkProfile("c", 8.0, 8.0, 30.0, 70.0)).total_s == pytest.approx(2.1)


def test_edge_only_has_no_network_and_needs_no_link():
    p = L.play(L.LatencyPlan((), 1.5, 0.25), None)
    assert p.total_s == 1.75 and p.up_bytes == 0
    with pytest.raises(ValueError):
        L.play(L.LatencyPlan((_req(up=1.0),), 0.0, 0.0), None)


# ---------------------------------------------------------------------------
# break-even bisection


def test_break_even_finds_the_crossing():
    # latency = 0.3 + 8 / B  (8 Mbit at B Mbit/s); target 0.5 -> B = 40
    be = L.break_even(lambda b: 0.3 + 8.0 / b, 0.5)
    assert be == pytest.approx(40.0, rel=1e-3)
    assert 0.3 + 8.0 / be <= 0.5


def test_break_even_never_and_always():
    assert L.break_even(lambda b: 0.6 + 1.0 / b, 0.5) is None  # the floor 0.6 is above the target
    assert L.break_even(lambda b: 0.1, 0.5, lo_mbit=0.01) == 0.01


def test_break_even_on_a_played_plan_matches_closed_form():
    # one 1 MB request, 10 ms RTT, 0.1 s edge: total = 0.01 + 8/B + 0.1; edge-only target 0.5 s
    plan = L.LatencyPlan((_req(up=1e6),), 0.1, 0.0)
    base = LinkProfile.symmetric(1.0, 10.0)
    be = L.break_even(lambda b: L.play(plan, base.scaled(b)).total_s, 0.5)
    assert be == pytest.approx(8.0 / (0.5 - 0.11), rel=1e-3)


# ---------------------------------------------------------------------------
# costs from published profiles


class _NoCalibration:
    def curve_s_per_byte(self):
        return 0.0


def test_published_profile_reproduces_its_own_figure():
    from ped_sam_ros.core.model import get_geometry

    orin = get_profile("agx-orin")
    g = get_geometry("vit_h")
    for end in (0, 1):
        c = L.Costs(orin, _NoCalibration(), end=end)
        assert c.ops_s(g, L.full_encoder_ops(g)) == pytest.approx(orin.encoder_s[end], rel=1e-9)
    # vit_b costs its MAC share of vit_h
    gb = get_geometry("vit_b")
    c = L.Costs(orin, _NoCalibration())
    ratio = L.ops_macs(gb, L.full_encoder_ops(gb)) / L.ops_macs(g, L.full_encoder_ops(g))
    assert c.ops_s(gb, L.full_encoder_ops(gb)) == pytest.approx(orin.encoder_s[0] * ratio)


# ---------------------------------------------------------------------------
# profiles


def test_builtin_profiles_cite_sources():
    for p in BUILTIN_PROFILES.values():
        assert p.source.strip()
    assert get_profile("a100").encoder_s[0] < get_profile("a100").encoder_s[1]


def test_load_profiles_yaml_and_json(tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text(
        "profiles:\n  my-edge:\n    kind: published\n    description: d\n    source: my bench, 2026\n"
        "    encoder_s: [0.5, 0.7]\n    cpu_factor: 2\n"
    )
    prof = load_profiles(y)["my-edge"]
    assert prof.encoder_s == (0.5, 0.7) and prof.cpu_factor == (2.0, 2.0) and prof.name == "my-edge"
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"srv": {"kind": "published", "description": "d", "source": "s", "encoder_s": 0.1}}))
    assert get_profile("srv", load_profiles(j)).encoder_s == (0.1, 0.1)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "published", "description": "d", "encoder_s": 1.0}, "missing field 'source'"),
        ({"kind": "published", "description": "d", "source": " ", "encoder_s": 1.0}, "'source' is required"),
        ({"kind": "guessed", "description": "d", "source": "s"}, "kind must be one of"),
        ({"kind": "published", "description": "d", "source": "s"}, "needs 'encoder_s'"),
        ({"kind": "published", "description": "d", "source": "s", "encoder_s": [2.0, 1.0]}, "fast end"),
        ({"kind": "published", "description": "d", "source": "s", "encoder_s": -1}, "must be > 0"),
        ({"kind": "published", "description": "d", "source": "s", "encoder_s": "fast"}, "number or a"),
        ({"kind": "published", "description": "d", "source": "s", "encoder_s": 1, "speed": 3}, "unknown fields"),
    ],
)
def test_profile_validation_errors(tmp_path, fields, message):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"x": fields}))
    with pytest.raises(ProfileError, match=message):
        load_profiles(f)


def test_profile_file_errors(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profiles(bad)
    with pytest.raises(ProfileError, match="unknown profile"):
        get_profile("no-such-device")


def test_link_parse_and_validation():
    link = LinkProfile.parse("20/100:50")
    assert (link.up_mbit, link.down_mbit, link.rtt_ms) == (20.0, 100.0, 50.0)
    assert link.up_bytes_per_s == 2.5e6
    with pytest.raises(ProfileError):
        LinkProfile("x", 0.0, 1.0)
    with pytest.raises(ProfileError):
        LinkProfile("x", 1.0, 1.0, -1.0)
    with pytest.raises(ProfileError):
        LinkProfile.parse("fast:20")
    assert math.isclose(LinkProfile.symmetric(10, 30).up_delay_ms, 15.0)


def test_device_profile_direct_construction_checks():
    with pytest.raises(ProfileError):
        DeviceProfile("x", "published", "d", "s", encoder_s=(0.0, 1.0))
