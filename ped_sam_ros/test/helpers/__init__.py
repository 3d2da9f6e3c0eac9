"""Shared test helpers (importable as ``helpers``: pytest.ini puts this test folder on sys.path).

* ``helpers.net``: real ``python -m remote_node`` processes and raw ZeroMQ clients;
* ``helpers.ros``: DDS domains of our own, the edge node as a process, a test node.

The constants below are the only model specs and paths the tests use.
"""

from pathlib import Path

#: the ament_python package folder (setup.py, package.xml, launch/, config/)
PKG_DIR = Path(__file__).resolve().parents[2]
#: the workspace root (README.md, docs/, scripts/, ped_sam_msgs/)
WORKSPACE = PKG_DIR.parent

# Narrow variants of the official layouts: SAM's real geometry (1024 input, 64x64 tokens,
# window 14, official depth and global-block positions) at widths a 2-core CPU runs fast.
TINY_B = "vit_b/w32h2"
TINY_H = "vit_h/w16h1"
#: vit_b's layout at width 16 with one head: the cheapest encoder (about half TINY_B's compute),
#: for tests of scheduling, fallbacks and plumbing, where no number is compared with SAM's
TINY_B1 = "vit_b/w16h1"
