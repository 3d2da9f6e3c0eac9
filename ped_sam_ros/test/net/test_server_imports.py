"""Which way the imports point around the server.

``remote_node`` (the server) uses ``ped_sam_ros.core`` (codec, encode service, model),
``ped_sam_ros.net`` (Curve key files) and ``ped_sam_ros.processes``; nothing in
``ped_sam_ros`` imports ``remote_node``, and the core imports no ZeroMQ adapter (read from
the source).  That importing the server loads no ROS, OpenCV, SciPy, scikit-image or Matplotlib
is checked in a fresh interpreter: test/integration/test_fresh_imports.py.
"""

import ast
from pathlib import Path

from helpers import PKG_DIR

SERVER = PKG_DIR / "remote_node"
LIBRARY = PKG_DIR / "ped_sam_ros"
#: the parts of ped_sam_ros the server may use
SERVER_MAY_USE = ("ped_sam_ros.core", "ped_sam_ros.net", "ped_sam_ros.processes")


def _imports(path: Path):
    """Absolute module names imported by one file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _within(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_server_imports_only_core_net_and_processes():
    wrong = {
        f"{p.name}: {m}"
        for p in SERVER.glob("*.py")
        for m in _imports(p)
        if _within(m, ("ped_sam_ros",)) and not _within(m, SERVER_MAY_USE)
    }
    assert not wrong, wrong


def test_nothing_in_the_library_imports_the_server_and_the_core_no_adapter():
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) > 20
    wrong = {f"{p.relative_to(LIBRARY)}: {m}" for p in files for m in _imports(p) if _within(m, ("remote_node",))}
    wrong |= {
        f"{p.relative_to(LIBRARY)}: {m}"
        for p in (LIBRARY / "core").rglob("*.py")
        for m in _imports(p)
        if _within(m, ("ped_sam_ros.net", "ped_sam_ros.edge", "ped_sam_ros.ros", "zmq"))
    }
    assert not wrong, wrong
