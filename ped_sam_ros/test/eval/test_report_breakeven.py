"""The evaluation report's headline answers "when does PED-SAM pay off?": per cost model and edge
profile of the run, the bandwidth above which PED-SAM (the node's defaults) beats edge-only SAM and
its latency against cloud SAM, exactly as eval.breakeven computes them for the run's profiles.

Published profiles only (agx-orin edge, a100 server): no encoder op is timed here, only the codecs
and Curve (cached in a calibration file of the test's own, so the recomputation below reads the same
timings the run used)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ped_sam_ros.core.wire import DEFAULT_PIXEL_CODEC, DEFAULT_TOKEN_FORMAT
from ped_sam_ros.eval import breakeven
from ped_sam_ros.eval.calibrate import Calibration
from ped_sam_ros.eval.markdown import _headline_section
from ped_sam_ros.eval.runner import EvalSettings, Evaluation, Progress

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def run_breakeven(tmp_path_factory):
    """What an evaluation run with cost model vit_h stores for its headline, and its settings."""
    cal = str(tmp_path_factory.mktemp("cal") / "calibration.json")
    settings = EvalSettings(model="vit_b/w32h2", cost_models=("vit_h",), calibration=cal, device="cpu")
    hb = Evaluation(settings, progress=False)._breakeven(Progress(1, enabled=False))
    return settings, hb


def _headline(hb, wire_dtype="float16", pixel_codec="raw") -> str:
    """The headline section of a run with no configuration rows (only the break-even is looked at)."""
    meta = SimpleNamespace(
        server_assumption="servers as fast as this CPU; x", wire_dtype=wire_dtype, pixel_codec=pixel_codec
    )
    res = SimpleNamespace(summary=[], meta=meta, cost=SimpleNamespace(geometries={}), breakeven=hb)
    return "\n".join(_headline_section(res))


def test_the_run_computes_the_break_even_for_its_profiles(run_breakeven):
    settings, hb = run_breakeven
    assert (hb.edge_profiles, hb.server_profile) == (list(settings.edge_profiles), settings.server_profile)
    assert (hb.edge_profiles, hb.server_profile) == (["agx-orin"], "a100")
    node = f"{DEFAULT_TOKEN_FORMAT} / {DEFAULT_PIXEL_CODEC} / curve"
    assert {(r.model, r.edge_profile, r.wire, r.mode) for r in hb.rows} == {
        ("vit_h", "agx-orin", node, "paper"),
        ("vit_h", "agx-orin", f"e8 / {DEFAULT_PIXEL_CODEC} / curve", "paper"),
        ("vit_h", "agx-orin", "float16 / raw / curve", "paper"),
    }
    assert {r.end for r in hb.rows} == {"fast", "slow"}  # a published range: both ends
    # the same figures as eval.breakeven computes for these profiles with the same timings
    again = breakeven.headline_breakeven(["vit_h"], ["agx-orin"], "a100", Calibration(settings.calibration))
    assert [(r.wire, r.end, r.break_even_mbit, r.ped_over_cloud) for r in again.rows] == [
        (r.wire, r.end, r.break_even_mbit, r.ped_over_cloud) for r in hb.rows
    ]


def test_the_headline_carries_the_break_even_and_the_cloud_ratio(run_breakeven):
    _, hb = run_breakeven
    text = _headline(hb)
    assert "## Headline" in text and "When does PED-SAM pay off?" in text
    node = f"{DEFAULT_TOKEN_FORMAT} / {DEFAULT_PIXEL_CODEC} / curve"
    for wire in (node, f"e8 / {DEFAULT_PIXEL_CODEC} / curve", "float16 / raw / curve"):
        rows = [r for r in hb.rows if r.wire == wire]
        be, oc = breakeven.break_even_text(rows), breakeven.over_cloud_text(rows)
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| vit_h | agx-orin | {wire}"))
        assert f"**{be}**" in line and oc in line, line
    # vit_h on an Orin-class edge: float16 / raw breaks even at some bandwidth (the 135-387 Mbit/s)
    assert all(r.break_even_mbit is not None for r in hb.rows if r.wire == "float16 / raw / curve")
    assert "a100" in text and "source" not in text.split("When does PED-SAM pay off?")[0]


def test_no_break_even_no_section(run_breakeven):
    assert "When does PED-SAM pay off?" not in _headline(None)
    settings = EvalSettings(model="vit_b/w32h2", cost_models=("vit_h",), breakeven=False, device="cpu")
    assert Evaluation(settings, progress=False)._breakeven(Progress(1, enabled=False)) is None
