"""The ROS tests' DDS domain allocator (no ROS graph): each domain goes to one process at a
time, within this process and across processes, and running out says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import PKG_DIR
from helpers.ros import DomainAllocator

_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from helpers.ros import DomainAllocator
alloc = DomainAllocator(range(40, 43), Path(sys.argv[2]))
print(alloc.allocate(), alloc.allocate())
"""


def test_each_domain_is_held_by_one_allocation_at_a_time(tmp_path):
    mine = DomainAllocator(range(40, 43), tmp_path)
    first = mine.allocate()
    # another process (another pytest run) gets the other two, never the one held here
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(PKG_DIR / "test"), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    theirs = [int(v) for v in out.stdout.split()]
    assert first not in theirs and sorted(theirs + [first]) == [40, 41, 42]
    # the child has exited, so its two are free again; this process gets them, then none is left
    assert sorted([mine.allocate(), mine.allocate()]) == sorted(theirs)
    with pytest.raises(RuntimeError, match="40..42 is taken"):
        mine.allocate()
    mine.release(first)
    assert mine.allocate() == first
