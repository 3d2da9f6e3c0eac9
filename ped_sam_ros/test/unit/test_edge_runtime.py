"""The ROS-free edge runtime: configuration, parameter validation, the pipeline
builder, and the latest-frame-wins worker (plain pytest, no ROS, no network).

The worker's scheduling is tested with a fast stand-in segmenter whose encode
can be held and made to fail.  The real pipeline under the worker (SAM's geometry, random
weights, the in-process transport through the real wire codec), a prompted and an automatic
frame end to end: test/integration/test_runtime_pipeline.py.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import PKG_DIR as REPO
from helpers import TINY_B1
from helpers.edge import two_server_config
from ped_sam_ros.core.pipeline import EncodeStats, Instance, ObjectPrompt
from ped_sam_ros.core.transport import (
    RemoteEncodeError,
    ServerAddress,
    ServerFrameStats,
    ServerHealth,
    ServerInfoReply,
    Transport,
)
from ped_sam_ros.edge import (
    AmgOptions,
    ConfigError,
    EdgeRuntime,
    Frame,
    build_pipeline,
    local_transport,
    parse_assignment,
    parse_servers,
    validate_prompts,
)
from ped_sam_ros.edge.builder import EdgePipeline
from ped_sam_ros.edge.params import (
    PARAMS,
    RUNTIME_PARAMS,
    SPECS,
    config_from_params,
    defaults,
    markdown_table,
    validate_changes,
    validate_parameter,
)
from ped_sam_ros.edge.remotes import apply_overrides, load_remotes_file, remote_commands

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- configuration


def test_parameter_defaults_make_a_valid_config_with_weights():
    cfg = config_from_params({"random_weights": True})
    assert cfg.problems() == []
    assert [s.name for s in cfg.servers] == ["remote-a", "remote-b", "remote-c", "remote-d"]
    assert cfg.partition.shape == (2, 2) and cfg.assignment is None
    # without weights the node must refuse to start, saying what to set
    errs = config_from_params({}).problems()
    assert any("checkpoint" in e and "random_weights" in e for e in errs)


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("deadline", -1.0, ">= 0.05"),
        ("deadline", "fast", "type float"),
        ("mode", "fast", "k1..k4"),
        ("mode", "k5", "k1..k4"),
        ("mode", "k0", "k1..k4"),
        ("device", "tpu", "auto, cpu, cuda"),
        ("device", "cuda:x", "auto, cpu, cuda"),
        ("precision", "float64", "one of float32, float16, bfloat16"),
        ("pipelined", "yes", "type bool"),
        ("grid", "6x6", "impossible"),
        ("grid", "two", "ROWSxCOLS"),
        ("model", "vit_x", "unknown model"),
        ("wire_precision", "bfloat16", "one of"),
        ("amg.pred_iou_thresh", 1.5, "<= 1.0"),
        ("image_qos.reliability", "sometimes", "best_effort"),
        ("remotes.servers", ["a=http://x"], "tcp://HOST:PORT"),
        ("remotes.servers", ["a=tcp://h:1", "a=tcp://h:2"], "unique"),
        ("remotes.servers", [], "at least one"),
        ("remotes.assignment", "0,1,9", "only 4 servers"),
        ("remotes.assignment", "0,x", "neither a server index"),
        ("max_prompts", 0, ">= 1"),
        ("nonsense", 1, "unknown parameter"),
    ],
)
def test_validate_parameter_gives_reasons(name, value, needle):
    reason = validate_parameter(name, value)
    assert reason and needle in reason, reason


def test_k_modes_device_and_precision_reach_the_config():
    for mode in ("exact", "k2", "k3", "paper", "k1", "k4"):
        assert validate_parameter("mode", mode) is None, mode
    cfg = config_from_params(
        {"mode": "k2", "random_weights": True, "device": "cpu", "precision": "bfloat16", "pipelined": False}
    )
    assert (cfg.mode, cfg.device, cfg.precision, cfg.pipelined) == ("k2", "cpu", "bfloat16", False)
    assert cfg.stage_options() == dict(device="cpu", precision="bfloat16", compile=False, allow_fallback=False)
    assert "k1..k4" in " ".join(two_server_config(mode="k9").problems())


def test_impossible_device_or_precision_is_a_clear_config_problem(monkeypatch):
    import torch

    # float16 on the CPU: refused with the reason, accepted (as float32) only when told
    problems = two_server_config(device="cpu", precision="float16").problems()
    assert any("float16 on the CPU" in p and "fallback" in p for p in problems), problems
    assert two_server_config(device="cpu", precision="float16", precision_fallback=True).problems() == []
    # CUDA asked where none is present (also on a GPU machine: pretend there is none)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    problems = two_server_config(device="cuda").problems()
    assert any("no usable CUDA device" in p for p in problems), problems
    assert two_server_config(device="auto").problems() == []  # auto takes the CPU then


def test_grid_validation_follows_aligned_cuts():
    # 6 parts per axis exist only with free (even) cuts
    assert "impossible" in validate_parameter("grid", "6x1")
    assert "impossible" in validate_parameter("grid", "6x1", {"aligned_cuts": True})
    assert validate_parameter("grid", "6x1", {"aligned_cuts": False}) is None
    six = [f"s{i}=tcp://127.0.0.1:{5600 + i}" for i in range(6)]
    cfg = config_from_params({"grid": "6x1", "aligned_cuts": False, "random_weights": True, "remotes.servers": six})
    assert cfg.partition.shape == (6, 1) and cfg.problems() == []
    with pytest.raises(ConfigError, match="impossible"):
        config_from_params({"grid": "6x1", "random_weights": True, "remotes.servers": six})
    cur = dict(defaults(), grid="6x1", aligned_cuts=False, **{"remotes.servers": six})
    assert validate_changes({"grid": "6x1", "deadline": 5.0}, cur) is None  # the node's own values stay valid


def test_validate_parameter_accepts_good_values():
    for spec in PARAMS:
        assert validate_parameter(spec.name, spec.default) is None, spec.name
    assert validate_parameter("deadline", 2) is None  # ints are fine where a float is expected
    assert validate_parameter("remotes.assignment", "remote-b remote-a remote-a remote-b") is None
    assert validate_parameter("model", "vit_h/w32h2") is None


def test_on_set_validation_refuses_read_only_and_bad_values():
    cur = defaults()
    assert "read-only" in validate_changes({"model": "vit_h"}, cur)
    assert "read-only" in validate_changes({"remotes.servers": ["x=tcp://h:1"]}, cur)
    assert validate_changes({"model": cur["model"]}, cur) is None  # unchanged is fine
    assert "overlay_alpha" in validate_changes({"overlay_alpha": 2.0}, cur)
    assert validate_changes({"deadline": 5.0, "amg.box_nms_thresh": 0.5, "automatic": True}, cur) is None
    assert set(RUNTIME_PARAMS) >= {
        "deadline",
        "overlay_alpha",
        "automatic",
        "max_prompts",
        "amg.pred_iou_thresh",
        "amg.stability_score_thresh",
        "multimask",
    }
    assert all(
        SPECS[n].read_only
        for n in ("model", "checkpoint", "mode", "grid", "remotes.servers", "keys.client_secret", "wire_precision")
    )


def test_servers_and_assignment_parsing():
    s = parse_servers(["a=tcp://127.0.0.1:5601", "tcp://10.0.0.2:5602", "c=ipc:///tmp/c.sock"])
    assert s == [
        ServerAddress("a", "tcp://127.0.0.1:5601"),
        ServerAddress("remote1", "tcp://10.0.0.2:5602"),
        ServerAddress("c", "ipc:///tmp/c.sock"),
    ]
    assert parse_assignment("auto", ["a", "b"]) is None
    assert parse_assignment("0, 1;b a", ["a", "b"]) == [0, 1, 1, 0]
    with pytest.raises(ConfigError):
        parse_servers(["bad name=tcp://h:1"])


def test_config_problems_name_each_issue(tmp_path):
    assert "not both" in " ".join(two_server_config(checkpoint=str(tmp_path / "x.pth")).problems())
    assert "does not exist" in " ".join(
        two_server_config(random_weights=False, checkpoint=str(tmp_path / "x.pth")).problems()
    )
    four = [ServerAddress(n, f"tcp://127.0.0.1:{i + 1}") for i, n in enumerate("abcd")]
    # 2x2 grid, servers 0 0 1 1: windows 0 and 1 are adjacent and both go to server 0
    errs = two_server_config(grid="2x2", servers=four[:2], assignment=[0, 0, 1, 1]).problems()
    assert any("adjacent" in e for e in errs)
    assert two_server_config(grid="2x2", servers=four[:2], assignment=[0, 1, 1, 0]).problems() == []
    errs = two_server_config(grid="2x2", servers=four, max_share=0.2).problems()
    assert any("above the limit" in e for e in errs)
    errs = two_server_config(grid="1x2", servers=four).problems()
    assert any("serve no tile" in e for e in errs)
    errs = two_server_config(server_public_keys_dir=str(tmp_path)).problems()
    assert any("keys.client_secret" in e for e in errs)
    errs = two_server_config(
        server_public_keys_dir=str(tmp_path), client_secret_key=str(tmp_path / "edge.key_secret")
    ).problems()
    assert any("edge.key_secret does not exist" in e for e in errs) and any("left.key" in e for e in errs)
    with pytest.raises(ConfigError, match="invalid edge configuration"):
        two_server_config(mode="fast").validate()


def test_docs_parameter_table_is_in_sync():
    text = (REPO.parent / "docs" / "ros.md").read_text()
    assert markdown_table() in text, "regenerate the table in docs/ros.md from ped_sam_ros.edge.params.markdown_table()"


def test_edge_yaml_sets_only_declared_parameters_with_their_types():
    import yaml

    data = yaml.safe_load((REPO / "config" / "edge.yaml").read_text())
    ((key, body),) = data.items()
    assert key == "/**/edge_node", "matches the node in any namespace (-r __ns:=/x)"
    params = body["ros__parameters"]

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    values = dict(flat(params))
    for name, value in values.items():
        assert name in SPECS, name
        kind = SPECS[name].kind
        # ROS refuses an integer for a double parameter: floats must be written as floats
        assert kind != "float" or isinstance(value, float), f"{name}: write {value} as a float"
        assert validate_parameter(name, value, values) is None, name
    config_from_params(values)


def test_remotes_yaml_gives_server_commands_matching_the_edge_config():
    import yaml

    cfg = load_remotes_file(REPO / "config" / "remotes.yaml")
    cmds = remote_commands(cfg)
    assert [n for n, _ in cmds] == ["remote-a", "remote-b", "remote-c", "remote-d"]
    name, argv = cmds[0]
    assert argv[0] == "ped-sam-remote" and "--bind" in argv and "--model" in argv
    edge = yaml.safe_load((REPO / "config" / "edge.yaml").read_text())["/**/edge_node"]["ros__parameters"]
    # the edge connects to exactly the servers the file starts, by the same names
    assert [f"{n}={a[a.index('--bind') + 1]}" for n, a in cmds] == edge["remotes"]["servers"]
    assert edge["model"] == cfg["model"] and edge["seed"] == cfg["seed"]
    # overrides (launch arguments): count + base port, a checkpoint, keys
    over = apply_overrides(cfg, {"count": "2", "base_port": "7000", "checkpoint": "/w/sam.pth", "model": ""})
    cmds = remote_commands(dict(over, server_keys_dir="/k", authorized_keys="/k/auth"))
    assert [a[a.index("--bind") + 1] for _, a in cmds] == ["tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001"]
    a = cmds[1][1]
    assert a[a.index("--checkpoint") + 1] == "/w/sam.pth" and "--random-weights" not in a
    assert a[a.index("--server-key") + 1] == "/k/remote-b.key_secret" and "--authorized-keys" in a
    with pytest.raises(ConfigError):
        remote_commands({"servers": [{"name": "x", "bind": "tcp://127.0.0.1:1"}]})  # no weights


# ---------------------------------------------------------------- builder


def test_builder_loads_the_servers_random_weights_and_names(tmp_path):
    from ped_sam_ros.core.model import random_sam

    p = build_pipeline(two_server_config(), transport_factory=local_transport)
    try:
        assert p.transport.server_names == ["left", "right"]
        ref = random_sam(TINY_B1, seed=3).state_dict()
        assert torch.equal(p.edge.neck[0].weight, ref["image_encoder.neck.0.weight"])
        assert p.encoder.assignment == [0, 1] and p.encoder.timeout_s == 30.0
        assert p.segmenter.amg_options["points_per_side"] == 32
    finally:
        p.close()


def test_builder_loads_an_official_format_checkpoint(tiny_b_checkpoint):
    from helpers import TINY_B
    from ped_sam_ros.core.model import load_state_dict

    cfg = two_server_config(model=TINY_B, random_weights=False, checkpoint=str(tiny_b_checkpoint))
    p = build_pipeline(cfg, transport_factory=local_transport)
    state = load_state_dict(tiny_b_checkpoint)
    assert torch.equal(p.edge.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
    p.close()
    with pytest.raises(Exception, match="shape|lacks"):
        build_pipeline(
            two_server_config(model="vit_b/w64h2", random_weights=False, checkpoint=str(tiny_b_checkpoint)),
            transport_factory=local_transport,
        )


# ---------------------------------------------------------------- the worker, with a stand-in segmenter


class FakeTransport(Transport):
    """The transport interface without servers (the fake segmenter never encodes through it)."""

    def __init__(self, names):
        self._names = list(names)
        self.closed_by = None

    @property
    def server_names(self):
        return list(self._names)

    def encode(self, jobs, mode, timeout_s):
        raise AssertionError("the fake segmenter does not encode through the transport")

    def health(self):
        return [ServerHealth(n, f"fake://{n}", "ok") for n in self._names]

    def info(self, timeout_s=2.0):
        return [ServerInfoReply(n, f"fake://{n}", error="fake") for n in self._names]

    def close(self):
        self.closed_by = threading.current_thread().name


class FakeSegmenter:
    """Segmenter's interface; ``gate`` holds set_image, ``failures`` make it raise."""

    def __init__(self, names):
        self.names = names
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.failures = []
        self.encoded = []
        self.multimask_output = True
        self.amg_options = {}
        self.stats = None

    def _encode(self, rgb):
        self.started.set()
        assert self.gate.wait(30)
        self.encoded.append(rgb)
        if self.failures:
            raise self.failures.pop(0)
        self.stats = EncodeStats(
            timings={"partition": 0.001, "remote": 0.01, "merge": 0.001, "edge_encoder": 0.002},
            bytes_up=300,
            bytes_down=100,
            per_server=[ServerFrameStats(n, [i], 0.5, 150, 50, 0.01, 0.005) for i, n in enumerate(self.names)],
        )
        self._size = rgb.shape[:2]
        return self.stats

    def set_image(self, rgb):
        return self._encode(rgb)

    def segment(self, prompts):
        out = []
        for k, p in enumerate(prompts, start=1):
            m = np.zeros(self._size, bool)
            x, y, _ = p.points[0]
            m[int(y) : int(y) + 3, int(x) : int(x) + 4] = True
            out.append(Instance(k, m, 0.9, 0.95, (int(x), int(y), 4, 3), int(m.sum())))
        return out

    def segment_everything(self, rgb):
        self._encode(rgb)
        return [
            Instance(
                1,
                np.ones(rgb.shape[:2], bool),
                0.5,
                0.5,
                (0, 0, rgb.shape[1], rgb.shape[0]),
                rgb.shape[0] * rgb.shape[1],
            )
        ]


@pytest.fixture
def fake():
    names = ["left", "right"]
    seg = FakeSegmenter(names)
    pipe = EdgePipeline(
        two_server_config(),
        edge=None,
        transport=FakeTransport(names),
        encoder=SimpleNamespace(timeout_s=30.0),
        segmenter=seg,
    )
    results, errors = [], []
    done = threading.Condition()

    def on_result(r):
        with done:
            results.append(r)
            done.notify_all()

    def on_error(e):
        with done:
            errors.append(e)
            done.notify_all()

    rt = EdgeRuntime(pipe, on_result=on_result, on_error=on_error, idle_poll_s=0.05)

    def wait(pred, timeout=10.0):
        end = time.monotonic() + timeout
        with done:
            while not pred():
                assert done.wait(max(0.0, end - time.monotonic())) or pred(), "timed out"

    rt.start()
    yield SimpleNamespace(rt=rt, seg=seg, pipe=pipe, results=results, errors=errors, wait=wait)
    rt.stop()


def _frame(k, h=20, w=30):
    return Frame(np.full((h, w, 3), k, np.uint8), meta={"stamp": k})


def _until(pred, timeout_s=10.0, what="condition"):
    """Poll ``pred`` (counters are updated after the callbacks return), bounded."""
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_results_carry_meta_timings_and_instances(fake):
    fake.rt.set_prompts([ObjectPrompt(points=[(5.0, 4.0, 1)]), ObjectPrompt(points=[(10.0, 2.0, 1)])])
    fake.rt.submit(_frame(1))
    fake.wait(lambda: fake.results)
    r = fake.results[0]
    assert r.meta == {"stamp": 1} and r.encoded and [i.id for i in r.instances] == [1, 2]
    assert {"queue", "preprocess", "remote", "edge_encoder", "decoder", "total"} <= set(r.timings)
    assert r.frames_dropped == 0
    _until(lambda: fake.rt.snapshot().counts.frames_out == 1, what="frames_out")
    d = fake.rt.snapshot()
    assert d.counts.frames_in == d.counts.frames_out == 1 and d.state == "running" and d.counts.callback_errors == 0
    assert [x.name for x in d.remotes] == ["left", "right"]
    left = d.remotes[0].activity
    assert left.bytes_up == 150 and left.share == 0.5 and left.tiles == (0,) and left.frames == 1
    assert left.mean_round_trip_s == pytest.approx(0.01) and left.mean_compute_s == pytest.approx(0.005)
    assert d.remotes[0].health.state == "ok" and d.remotes[0].health.endpoint == "fake://left"
    assert d.stages["remote"].count == 1 and d.bytes_up == 300 and d.bytes_down == 100
    assert list(d.stages)[:3] == ["queue", "preprocess", "partition"], "stages in pipeline order"


def test_latest_frame_wins_and_submit_never_blocks(fake):
    fake.rt.set_prompts([ObjectPrompt(points=[(1.0, 1.0, 1)])])
    fake.seg.gate.clear()  # hold the worker inside the first frame's encode
    fake.rt.submit(_frame(1))
    assert fake.seg.started.wait(5)
    t0 = time.perf_counter()
    dropped = [fake.rt.submit(_frame(k)) for k in range(2, 7)]
    assert time.perf_counter() - t0 < 0.5, "submit must not wait for the busy worker"
    assert dropped == [False, True, True, True, True]  # each new frame replaces the pending one
    assert fake.rt.latest_frame().meta == {"stamp": 6}
    fake.seg.gate.set()
    fake.wait(lambda: len(fake.results) == 2)
    time.sleep(0.1)
    assert [r.meta["stamp"] for r in fake.results] == [1, 6]
    c = fake.rt.snapshot().counts
    assert c.frames_in == 6 and c.frames_dropped == 4
    assert len(fake.results) + c.frames_dropped == 6
    assert fake.results[-1].frames_dropped == 4


def test_remote_errors_are_reported_with_server_names_and_the_worker_goes_on(fake):
    fake.rt.set_prompts([ObjectPrompt(points=[(1.0, 1.0, 1)])])
    fake.seg.failures.append(RemoteEncodeError("right (tcp://127.0.0.1:2): not connected", ["right"]))
    fake.rt.submit(_frame(1))
    fake.wait(lambda: fake.errors)
    e = fake.errors[0]
    assert e.servers == ["right"] and e.meta == {"stamp": 1} and "not connected" in e.message
    fake.rt.submit(_frame(2))
    fake.wait(lambda: fake.results)
    assert fake.results[0].meta == {"stamp": 2}
    _until(lambda: fake.rt.snapshot().counts.frames_out == 1, what="frames_out")
    d = fake.rt.snapshot()
    assert d.counts.frames_failed == 1 and d.counts.frames_out == 1 and d.last_error.servers == ["right"]
    right = next(r for r in d.remotes if r.name == "right")
    assert right.activity.failed_frames == 1
    # an unexpected error is reported too (no server to blame), and the worker survives it
    fake.seg.failures.append(ValueError("bad frame"))
    fake.rt.submit(_frame(3))
    fake.wait(lambda: len(fake.errors) == 2)
    assert fake.errors[1].servers == [] and fake.rt.snapshot().state == "running"


def test_a_frame_whose_result_callback_raises_is_not_counted_as_output():
    names = ["left", "right"]
    pipe = EdgePipeline(
        two_server_config(),
        edge=None,
        transport=FakeTransport(names),
        encoder=SimpleNamespace(timeout_s=30.0),
        segmenter=FakeSegmenter(names),
    )
    calls = []

    def on_result(r):  # publishing the first frame fails
        calls.append(r.meta["stamp"])
        if r.meta["stamp"] == 1:
            raise RuntimeError("publisher gone")

    rt = EdgeRuntime(pipe, on_result=on_result, idle_poll_s=0.05).start()
    try:
        rt.set_prompts([ObjectPrompt(points=[(1.0, 1.0, 1)])])
        rt.submit(_frame(1))
        _until(lambda: rt.snapshot().counts.frames_failed == 1, what="the failed publish to be counted")
        d = rt.snapshot()
        assert d.counts.frames_out == 0 and d.counts.callback_errors == 1 and d.state == "running"
        rt.submit(_frame(2))
        _until(lambda: rt.snapshot().counts.frames_out == 1, what="the second frame")
        c = rt.snapshot().counts
        assert calls == [1, 2] and c.frames_failed == 1 and c.callback_errors == 1
        assert c.frames_in == c.frames_out + c.frames_dropped + c.frames_failed and c.settled
    finally:
        rt.stop()


def test_requests_run_before_stream_frames_and_are_never_dropped(fake):
    import concurrent.futures

    fake.rt.set_prompts([ObjectPrompt(points=[(1.0, 1.0, 1)])])
    with pytest.raises(LookupError):
        fake.rt.request(None).result(1)  # no frame yet
    fake.seg.gate.clear()
    fake.rt.submit(_frame(1))
    assert fake.seg.started.wait(5)
    fake.rt.submit(_frame(2))  # pending stream frame
    fut = fake.rt.request(_frame(9), [ObjectPrompt(points=[(2.0, 2.0, 1)]), ObjectPrompt(points=[(3.0, 3.0, 1)])])
    late = fake.rt.request(_frame(8))
    assert late.cancel()  # the caller gives up before it starts: it is skipped
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.2)  # still waiting: the worker is busy
    fake.rt.submit(_frame(3))  # replaces stream frame 2, not the request
    fake.seg.gate.set()
    r = fut.result(timeout=10)
    assert r.meta == {"stamp": 9} and len(r.instances) == 2 and r.from_request
    fake.wait(lambda: len(fake.results) == 2)
    assert [x.meta["stamp"] for x in fake.results] == [1, 3]
    order = [int(a[0, 0, 0]) for a in fake.seg.encoded]
    assert order == [1, 9, 3]
    # the latest frame by default, automatic on request
    r = fake.rt.request(None, automatic=True).result(10)
    assert r.meta == {"stamp": 3} and r.automatic and len(r.instances) == 1


def test_without_prompts_frames_yield_empty_results_and_nothing_is_encoded(fake):
    fake.rt.submit(_frame(1))
    fake.wait(lambda: fake.results)
    assert not fake.results[0].encoded and fake.results[0].instances == [] and fake.seg.encoded == []
    fake.rt.set_automatic(True)
    fake.rt.submit(_frame(2))
    fake.wait(lambda: len(fake.results) == 2)
    assert fake.results[1].automatic and fake.results[1].encoded and len(fake.seg.encoded) == 1


def test_runtime_options_apply_between_frames(fake):
    fake.rt.update(deadline_s=2.5, multimask=False, amg=AmgOptions(points_per_side=4, pred_iou_thresh=0.1))
    fake.rt.set_prompts([ObjectPrompt(points=[(1.0, 1.0, 1)])])
    fake.rt.submit(_frame(1))
    fake.wait(lambda: fake.results)
    assert fake.pipe.encoder.timeout_s == 2.5
    assert fake.seg.multimask_output is False
    assert fake.seg.amg_options["points_per_side"] == 4 and fake.seg.amg_options["pred_iou_thresh"] == 0.1
    # later changes win per option; the others stay
    fake.rt.update(multimask=True)
    fake.rt.update(deadline_s=4.0)
    fake.rt.submit(_frame(2))
    fake.wait(lambda: len(fake.results) == 2)
    assert fake.pipe.encoder.timeout_s == 4.0 and fake.seg.multimask_output is True
    assert fake.seg.amg_options["points_per_side"] == 4
    with pytest.raises(ValueError):
        fake.rt.update(deadline_s=0)


def test_prompt_validation():
    validate_prompts([ObjectPrompt(points=[(1.0, 2.0, 1)]), ObjectPrompt(box=(0.0, 0.0, 5.0, 5.0))], 2)
    with pytest.raises(ValueError, match="max_prompts"):
        validate_prompts([ObjectPrompt(points=[(1.0, 2.0, 1)])] * 3, 2)
    with pytest.raises(ValueError, match="prompt 2"):
        validate_prompts([ObjectPrompt(points=[(1.0, 2.0, 1)]), ObjectPrompt()], 5)
    with pytest.raises(ValueError, match="label"):
        validate_prompts([ObjectPrompt(points=[(1.0, 2.0, 7)])], 5)


def test_worker_owns_the_pipeline_and_build_errors_surface():
    names = ["left", "right"]
    built_in = []

    def build():
        built_in.append(threading.current_thread().name)
        return EdgePipeline(
            two_server_config(), None, FakeTransport(names), SimpleNamespace(timeout_s=1.0), FakeSegmenter(names)
        )

    rt = EdgeRuntime(build).start()
    tr = rt.pipeline.transport
    rt.stop()
    assert built_in == ["ped-sam-edge-worker"] and tr.closed_by == "ped-sam-edge-worker"
    assert rt.snapshot().state == "stopped"

    def broken():
        raise ConfigError("no weights")

    with pytest.raises(ConfigError, match="no weights"):
        EdgeRuntime(broken).start(timeout_s=10)


# ---------------------------------------------------------------- the real pipeline, end to end
