"""The real launch test (``launch_tests/launch_segment_one_image.py``) through ``launch_test``.

launch_testing is not on PyPI, so this skips here and in CI, saying so; on a ROS 2 install (or
with the ROS launch sources installed beside the project, see docs/install.md) it runs both
launch files for real: one image in, a ``~/masks`` result with the input header out, every
process's exit code 0 after launch's SIGINT.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from helpers import TINY_B
from helpers.ros import new_domain

LAUNCH_TEST = Path(__file__).parent / "launch_tests" / "launch_segment_one_image.py"
TIMEOUT_S = 600


def _two_free_ports() -> int:
    """A loopback port p with p and p + 1 free now (remotes.launch.py count:=2 binds both)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free loopback ports")


def test_both_launch_files_under_launch_testing(tmp_path):
    if find_spec("launch_testing") is None or find_spec("launch_ros") is None:
        pytest.skip(
            "launch_testing/launch_ros are not installed here (not on PyPI): the real launch test "
            f"{LAUNCH_TEST.name} did NOT run; test_launch_files.py and test_install_layouts.py checked "
            "the launch files without them"
        )
    port = _two_free_ports()
    params = tmp_path / "edge.yaml"
    servers = f'["remote-a=tcp://127.0.0.1:{port}", "remote-b=tcp://127.0.0.1:{port + 1}"]'
    params.write_text(f"""/**/edge_node:
  ros__parameters:
    model: {TINY_B}
    random_weights: true
    checkpoint: ""
    seed: 5
    grid: 1x2
    torch_threads: 1
    remotes:
      servers: {servers}
""")
    env = dict(
        os.environ,
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_DOMAIN_ID=str(new_domain()),
        PED_SAM_LT_PARAMS=str(params),
        PED_SAM_LT_BASE_PORT=str(port),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    launch_test = shutil.which("launch_test")
    cmd = [launch_test] if launch_test else [sys.executable, "-m", "launch_testing.launch_test"]
    p = subprocess.run(cmd + [str(LAUNCH_TEST)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    out = p.stdout[-6000:] + p.stderr[-6000:]
    assert p.returncode == 0, out
    assert "FAILED" not in p.stdout and "OK" in out
