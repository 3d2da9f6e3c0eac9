"""What importing the shared code loads, seen from one fresh interpreter (docs/architecture.md).

* ``ped_sam_ros.core`` (every submodule) is what the edge and the servers both run: it loads
  none of OpenCV, SciPy, scikit-image, ZeroMQ, rclpy, Matplotlib, nor the zstd binding (the
  token codecs load it only when a compressed format is used);
* the server package ``remote_node`` (every submodule) loads none of them but ZeroMQ.

The test process itself has all of these loaded, hence the fresh interpreter: one for all the
guards (it spends most of its time importing torch), which imports the core first, then the
server.  Each failure names the module that first brought the offending one in.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import PKG_DIR

#: modules shared code must not load at import; matched by name in sys.modules
WATCHED = ("cv2", "scipy", "skimage", "zmq", "rclpy", "matplotlib", "backports.zstd")
#: package -> the watched modules it may load, in the order the probe imports them
PACKAGES = {"ped_sam_ros.core": (), "remote_node": ("zmq",)}

# Imports each package and all its submodules, one at a time, and says which module first
# brought in each watched module.  The core comes first: its test forbids every watched module,
# so when it passes the server's report misses nothing.
_PROBE = """
import importlib, json, pkgutil, sys
watched = sys.argv[1].split(",")
def loaded():
    return {w for w in watched if w in sys.modules}
reports = {}
for package in sys.argv[2:]:
    root = importlib.import_module(package)
    names = [package] + sorted(m.name for m in pkgutil.walk_packages(root.__path__, package + "."))
    first = {}
    for name in names:
        before = loaded()
        importlib.import_module(name)
        for mod in loaded() - before:
            first[mod] = name
    reports[package] = {"imported": names, "loaded_by": first}
print(json.dumps(reports))
"""


@pytest.fixture(scope="module")
def fresh_imports():
    """package -> the probe's report: the modules it imported, and watched module -> first importer."""
    env = dict(os.environ, PYTHONPATH=str(PKG_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(WATCHED), *PACKAGES],
        capture_output=True,
        text=True,
        env=env,
        cwd=PKG_DIR,
        timeout=300,
    )
    assert r.returncode == 0, f"the import probe failed:\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", PACKAGES)
def test_shared_code_loads_no_heavy_or_ros_modules(fresh_imports, package):
    report = fresh_imports[package]
    assert len(report["imported"]) > 1, f"no submodules of {package} were found"
    offenders = {mod: by for mod, by in report["loaded_by"].items() if mod not in PACKAGES[package]}
    assert not offenders, f"importing {package} loads " + ", ".join(
        f"{mod} (first through {by})" for mod, by in sorted(offenders.items())
    )


def test_the_probe_sees_a_loaded_module(fresh_imports):
    """Not vacuous: the server does load ZeroMQ, and the probe reports it."""
    assert "zmq" in fresh_imports["remote_node"]["loaded_by"]
