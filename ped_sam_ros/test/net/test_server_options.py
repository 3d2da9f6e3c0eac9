"""The server's device / precision / compile / batch options: command line, remotes file, clear errors."""

import pytest
import torch

from helpers import TINY_B

pytestmark = pytest.mark.timeout(120)


def _main(argv, capsys):
    from remote_node.__main__ import main

    rc = main(["--bind", "tcp://127.0.0.1:*", "--model", TINY_B, "--random-weights"] + argv)
    return rc, capsys.readouterr().err


def test_cuda_asked_where_none_is_present_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, err = _main(["--device", "cuda"], capsys)
    assert rc == 2 and "no usable CUDA device" in err and "Traceback" not in err


def test_float16_on_the_cpu_is_refused_unless_the_fallback_is_asked(capsys):
    rc, err = _main(["--device", "cpu", "--precision", "float16"], capsys)
    assert rc == 2 and "float16 on the CPU" in err
    rc, err = _main(["--device", "cpu", "--precision", "fp64"], capsys)
    assert rc == 2 and "precision must be one of" in err


def test_fallback_builds_a_float32_stage_and_options_reach_the_stage():
    from remote_node.server import EncoderServer, ServerOptions

    opts = ServerOptions(device="cpu", precision="float16", precision_fallback=True, max_batch=3)
    assert opts.stage_options() == dict(device="cpu", precision="float16", compile=False, allow_fallback=True)
    from remote_node.__main__ import _random_stage

    stage = _random_stage(TINY_B, 0, opts.stage_options())
    assert stage.dtype == torch.float32 and stage.placement.fallback
    with EncoderServer("tcp://127.0.0.1:*", TINY_B, options=opts, stage=stage) as srv:
        assert srv.options.max_batch == 3
    with pytest.raises(Exception, match="max_batch"):
        ServerOptions(max_batch=0)


def test_remotes_file_keys_become_server_arguments():
    from ped_sam_ros.edge.remotes import remote_commands

    cfg = {
        "model": TINY_B,
        "random_weights": True,
        "device": "cuda:1",
        "precision": "bfloat16",
        "compile": True,
        "precision_fallback": "true",
        "max_batch": 8,
        "servers": [{"name": "a", "bind": "tcp://127.0.0.1:1"}],
    }
    ((_, argv),) = remote_commands(cfg)
    assert argv[argv.index("--device") + 1] == "cuda:1" and argv[argv.index("--precision") + 1] == "bfloat16"
    assert "--compile" in argv and "--precision-fallback" in argv and argv[argv.index("--max-batch") + 1] == "8"
    ((_, plain),) = remote_commands(
        dict(cfg, device="auto", precision="float32", compile=False, precision_fallback=False, max_batch="")
    )
    assert not {"--device", "--precision", "--compile", "--precision-fallback", "--max-batch"} & set(plain)
