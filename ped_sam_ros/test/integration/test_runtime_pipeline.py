"""The edge runtime's worker thread over a real pipeline (random-weight TINY_B1 stages, two
in-process servers): a prompted request and an automatic one, with their statistics.  The
runtime's scheduling is unit-tested with a fake pipeline in test/unit/test_edge_runtime.py."""

import numpy as np
import pytest

from helpers.edge import two_server_config
from ped_sam_ros.core.pipeline import ObjectPrompt
from ped_sam_ros.edge import AmgOptions, EdgeRuntime, Frame, build_pipeline, local_transport

pytestmark = pytest.mark.timeout(120)


def test_real_pipeline_prompted_and_automatic(astronaut):
    cfg = two_server_config(amg=AmgOptions(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0))
    results, errors = [], []
    rt = EdgeRuntime(
        lambda: build_pipeline(cfg, transport_factory=local_transport), on_result=results.append, on_error=errors.append
    ).start()
    try:
        rgb = np.ascontiguousarray(astronaut[::4, ::4])
        fut = rt.request(
            Frame(rgb, meta="a"), [ObjectPrompt(points=[(60.0, 40.0, 1)]), ObjectPrompt(box=(10.0, 10.0, 100.0, 120.0))]
        )
        r = fut.result(timeout=90)
        assert [i.id for i in r.instances] == [1, 2] and r.instances[0].mask.shape == rgb.shape[:2]
        assert r.stats.bytes_up > 0 and [s.name for s in r.stats.per_server] == ["left", "right"]
        # the two servers saw disjoint halves of the frame
        assert [s.tiles for s in r.stats.per_server] == [[0], [1]]
        assert sum(s.share for s in r.stats.per_server) == pytest.approx(1.0)
        remotes = rt.snapshot().remotes
        assert [(x.name, x.activity.frames, x.activity.tiles) for x in remotes] == [
            ("left", 1, (0,)),
            ("right", 1, (1,)),
        ]
        auto = rt.request(Frame(rgb, meta="b"), automatic=True).result(timeout=90)
        assert auto.automatic and auto.meta == "b"
        assert all(i.mask.shape == rgb.shape[:2] for i in auto.instances)
        assert not errors
    finally:
        rt.stop()
