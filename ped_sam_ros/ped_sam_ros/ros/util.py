"""Small rclpy helpers shared by the tools and tests (command lines, background spinning,
reading received diagnostics)."""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Sequence, Tuple


def split_ros_args(argv: List[str]) -> Tuple[List[str], List[str]]:
    """(tool arguments, argv for rclpy.init). Only ``--ros-args ... [--]`` goes to rclpy:
    rclpy's own filter would also eat the tools' ``FROM:=TO`` values (legacy remap syntax)."""
    argv = list(argv)
    if "--ros-args" not in argv:
        return argv[1:], argv[:1]
    i = argv.index("--ros-args")
    j = argv.index("--", i) if "--" in argv[i:] else len(argv)
    return argv[1:i] + argv[j + 1 :], argv[:1] + argv[i : j + 1]


def latest_status(diag_arrays: Sequence, name: str):
    """The newest ``DiagnosticStatus`` called ``name`` in received ``DiagnosticArray`` messages
    (oldest first), or None."""
    for arr in reversed(diag_arrays):
        for st in arr.status:
            if st.name == name:
                return st
    return None


def status_values(status) -> Optional[Dict[str, str]]:
    """A ``DiagnosticStatus``'s key/value pairs as a dict (None for no status)."""
    return None if status is None else {kv.key: kv.value for kv in status.values}


class BackgroundSpinner:
    """Spin one node in a thread with short ``spin_once`` calls; :meth:`stop` joins
    the thread before anything is destroyed (no executor torn down under a waiting thread)."""

    def __init__(self, node, period_s: float = 0.05):
        from rclpy.executors import SingleThreadedExecutor

        self.node = node
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self._period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ros-spin", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.node.context.ok():
            try:
                self.executor.spin_once(timeout_sec=self._period)
            except Exception:  # noqa: BLE001 - context shut down under us
                if not self.node.context.ok():
                    break
                raise

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self.executor.remove_node(self.node)
        self.executor.shutdown(timeout_sec=1.0)
