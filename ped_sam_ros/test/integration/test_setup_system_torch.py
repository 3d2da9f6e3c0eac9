"""scripts/setup.sh --system-torch (Jetson: keep the system's torch): the checks that run before
anything is installed.  The full install on a Jetson cannot run here; these paths refuse
clearly and leave the default path alone."""

import os
import shutil
import subprocess
import sys

import pytest

from helpers import WORKSPACE

SETUP = WORKSPACE / "scripts" / "setup.sh"
pytestmark = pytest.mark.timeout(120)


def _run(args, tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if k != "PED_SAM_SYSTEM_TORCH"}
    full.update(PED_SAM_VENV=str(tmp_path / "venv"), **env)
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, env=full, timeout=100)


def test_unknown_option_is_refused(tmp_path):
    r = _run(["--bogus"], tmp_path)
    assert r.returncode != 0 and "unknown option --bogus" in r.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(shutil.which("python3.11") is None, reason="needs a system python3.11")
def test_system_torch_without_a_system_torch_is_refused(tmp_path):
    py = shutil.which("python3.11")
    if subprocess.run([py, "-c", "import torch, torchvision"], capture_output=True).returncode == 0:
        pytest.skip("this machine's python3.11 has torch")
    r = _run(["--system-torch"], tmp_path, PED_SAM_PYTHON=py)
    assert r.returncode != 0 and "cannot import torch" in r.stderr
    assert not (tmp_path / "venv").exists()


def test_system_torch_refuses_a_venv_built_without_it(tmp_path):
    # this interpreter imports torch; the venv is marked as built on its own site-packages
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    r = _run([], tmp_path, PED_SAM_PYTHON=sys.executable, PED_SAM_SYSTEM_TORCH="1")
    assert r.returncode != 0 and "built without --system-torch" in r.stderr, r.stderr
    assert "system torch:" in r.stdout  # what it found was said first
    assert sorted(p.name for p in venv.iterdir()) == ["pyvenv.cfg"]  # nothing installed
