"""Child-process helpers shared by the demo and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Optional, Union


def stop_process(proc: Optional[subprocess.Popen], timeout_s: float = 10.0) -> Optional[int]:
    """SIGINT, then SIGTERM, then SIGKILL, waiting ``timeout_s`` after each;
    always reaps the process. Returns its exit code (None if there was none)."""
    if proc is None:
        return None
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            proc.send_signal(sig)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    return proc.returncode


def write_ready_file(path: Union[str, Path], text: str) -> None:
    """Tell a parent process we are ready: write ``text`` to a temporary file and rename it
    to ``path``, so that a reader polling for ``path`` never sees it half-written."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, p)
