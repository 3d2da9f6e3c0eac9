"""bench.costcheck: the latency model's profile is timed in the edge process around the very frames
it predicts (calibrate, measure, re-calibrate), with the run's thread count, and the prediction uses
exactly those timings.  Bounded (one server, one link setting, one frame); skips without network
namespaces (no root), as the emulated-link test does."""

import pytest

from helpers import TINY_B
from ped_sam_ros.bench import costcheck
from ped_sam_ros.bench import link as L

pytestmark = pytest.mark.timeout(600)

REASON = L.unavailable_reason()


@pytest.mark.skipif(REASON is not None, reason=f"emulated link unavailable: {REASON}")
def test_prediction_uses_the_calibrations_taken_around_the_frames(tmp_path):
    spec = L.LinkSpec(50.0, 50.0, 10.0)
    run = L.LinkRun(
        [spec],
        model=TINY_B,
        servers=1,
        grid=2,
        frames=1,
        combos=[("float16", "raw")],
        calibrate=True,
        calibration_repeats=2,
    )
    out = L.run_link_benchmark(run, tmp_path / "run", echo=lambda *a: None)
    out["summary"] = L.summarize(out["results"])
    (cal,) = out["calibrations"]
    (frame,) = out["results"]
    assert (cal["link_label"], cal["token_format"], cal["pixel_codec"]) == (spec.label, "float16", "raw")
    # calibrate, measure, re-calibrate: in that order, in the edge process, with the run's threads
    before, after = cal["series"]
    assert frame["calibration"] == [0, 1]
    assert before["t1"] <= frame["t_start"] and frame["t_end"] <= after["t0"]
    assert before["threads"] == after["threads"] == run.threads
    edge_keys, server_keys = " ".join(before["data"]), " ".join(before["server_data"])
    for shape in ("28x28", "28x36", "36x28", "36x36"):  # each tile's own token map (what the servers run)
        assert f"window_block {shape}" in server_keys, server_keys
    assert "global_block 64x64" in edge_keys and "tokens float16" in edge_keys and "tokens float16" in server_keys
    assert before["server_concurrency"] == 1  # one server: nothing else computes beside it
    (row,) = costcheck.predict_rows(out)
    assert row["profile"].startswith("timed in the edge process") and not row["timed_at_analysis"]
    assert len(row["predicted_before_after"]) == 2
    # the transfers are predicted from bytes, rate and delay: 3 MB of raw pixels at 50 Mbit/s
    up_m, up_p = row["measured"]["upload_s"], row["predicted"]["upload_s"]
    assert abs(up_p - up_m) < 0.3 * up_m, (up_p, up_m)
    assert row["predicted"]["up_bytes"] == pytest.approx(row["measured_bytes"][0], rel=0.01)
    assert set(row["term_rel_error"]) == {"upload_s", "server_s", "download_s", "edge_s", "tile_compute_s"}
    assert costcheck.TARGET_REL_ERROR == 0.15 and "rows within 15 %" in costcheck.verdict([row])


def test_the_servers_side_is_timed_with_the_other_servers_computing_at_once():
    """Emulated servers share this machine's cores: their ops are timed with copies running at once
    (forked processes, ended afterwards), under their own cache key."""
    import multiprocessing

    from ped_sam_ros.core.model import get_geometry
    from ped_sam_ros.eval.calibrate import Calibration

    cal = Calibration(persist=False, refresh=True, repeats=2, statistic="median", concurrency=2)
    t = cal.op_seconds(get_geometry(TINY_B), "window_block", 28, 28)
    assert t.seconds > 0 and t.how == "timed"
    assert [k for k in cal.data if k.endswith("| median | x2")], list(cal.data)
    assert not multiprocessing.active_children(), "the concurrent copies are ended"
