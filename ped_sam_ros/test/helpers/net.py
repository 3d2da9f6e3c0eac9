"""Helpers for the ZeroMQ tests: real ``python -m remote_node`` processes and a raw DEALER client.

Servers bind ``tcp://127.0.0.1:*`` (or a given endpoint, for restarts) and report
the bound endpoint through ``--ready-file``; every wait here is bounded, and
:meth:`ServerProcess.stop` always ends the process (SIGCONT, SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from helpers import PKG_DIR as REPO
from ped_sam_ros.core import wire
from ped_sam_ros.core.transport import ServerAddress

STARTUP_TIMEOUT_S = 90.0  # a loaded 2-core machine imports torch slowly


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM the server if the test process dies (no orphans after a killed pytest)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def server_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_server_to_exit(args: Sequence[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """``python -m remote_node ARGS`` run to its exit, output captured: for the start-up
    refusals, which must end the process with one clear line and no traceback."""
    return subprocess.run(
        [sys.executable, "-m", "remote_node", *args],
        cwd=str(REPO),
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


class ServerProcess:
    """One ``python -m remote_node`` child process."""

    def __init__(self, workdir: Path, name: str, args: Sequence[str], bind: str = "tcp://127.0.0.1:*"):
        self.workdir = Path(workdir)
        self.name = name
        self.args = list(args)
        self.bind = bind
        self.proc: Optional[subprocess.Popen] = None
        self.endpoint: Optional[str] = None
        self.ready_file = self.workdir / f"{name}.endpoint"
        self.log_path = self.workdir / f"{name}.log"
        self._log = None

    def command(self) -> List[str]:
        return [
            sys.executable,
            "-m",
            "remote_node",
            "--bind",
            self.bind,
            "--name",
            self.name,
            "--ready-file",
            str(self.ready_file),
            "--torch-threads",
            "1",
            *self.args,
        ]

    def start(self) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.ready_file.exists():
            self.ready_file.unlink()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(REPO),
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        return self

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.ready_file.exists():
                text = self.ready_file.read_text().strip()
                if text:
                    self.endpoint = text
                    return text
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"server {self.name} not ready after {timeout_s} s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def address(self) -> ServerAddress:
        """How the edge reaches this server (once it is ready)."""
        assert self.endpoint, "wait_ready() first"
        return ServerAddress(self.name, self.endpoint)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig) -> None:
        if self.alive:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> Optional[int]:
        """End the process (never leaves it behind); returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # in case a test stopped it
                self.proc.terminate()
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
            except ProcessLookupError:
                pass
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(10)

    def restart_same_endpoint(self) -> str:
        """Kill and start again on the endpoint it had (the DEALERs reconnect)."""
        assert self.endpoint, "start it first"
        self.stop()
        self.bind = self.endpoint
        self.start()
        return self.wait_ready()


def start_servers(workdir: Path, specs: Sequence[Tuple[str, Sequence[str]]]) -> List[ServerProcess]:
    """Start several servers in parallel and wait for all; stops them all on failure."""
    servers = [ServerProcess(workdir, name, args) for name, args in specs]
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: Sequence[ServerProcess]) -> None:
    """SIGTERM all at once (they shut down in parallel), then make sure each has ended."""
    for s in servers:
        if s.alive:
            try:
                os.kill(s.proc.pid, signal.SIGCONT)
                s.proc.terminate()
            except ProcessLookupError:
                pass
    for s in servers:
        s.stop()


def checkpoint_args(model: str, checkpoint) -> List[str]:
    return ["--model", model, "--checkpoint", str(checkpoint)]


# ---------------------------------------------------------------------------
# A raw DEALER client that can send anything


class RawClient:
    """A DEALER that sends arbitrary frames and waits (bounded) for replies."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        curve: Optional[Tuple[bytes, bytes, bytes]] = None,
        immediate: bool = False,
        monitor: bool = False,
    ):
        self.socket = ctx.socket(zmq.DEALER)
        self.monitor = None
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 50)
        if immediate:
            self.socket.setsockopt(zmq.IMMEDIATE, 1)
        if curve is not None:
            public, secret, server_public = curve
            self.socket.curve_publickey = public
            self.socket.curve_secretkey = secret
            self.socket.curve_serverkey = server_public
        if monitor:
            self.monitor = self.socket.get_monitor_socket()
        self.socket.connect(endpoint)

    def wait_event(self, events: int, timeout_s: float = 20.0) -> Optional[dict]:
        """The first monitor event among ``events`` (a bit mask), or None after timeout_s."""
        assert self.monitor is not None, "RawClient(monitor=True) needed"
        end = time.monotonic() + timeout_s
        while True:
            left = end - time.monotonic()
            if left <= 0 or not self.monitor.poll(max(1, int(left * 1000))):
                return None
            ev = recv_monitor_message(self.monitor)
            if ev["event"] & events:
                return ev

    def send(self, frames: Sequence, timeout_s: float = 10.0) -> bool:
        """Send without ever blocking the test: False if the socket would not take it.

        (A DEALER without a usable peer, e.g. after a refused Curve handshake, blocks
        a plain send forever.)
        """
        if not self.socket.poll(int(timeout_s * 1000), zmq.POLLOUT):
            return False
        try:
            self.socket.send_multipart(list(frames), flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return False
        return True

    def recv(self, timeout_s: float = 10.0):
        """(header, arrays) of the next reply, or None after timeout_s."""
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        frames = self.socket.recv_multipart()
        return wire.decode_message(frames, max_total_bytes=1 << 30)

    def request(self, frames: Sequence, timeout_s: float = 10.0):
        if not self.send(frames, timeout_s):
            return None
        return self.recv(timeout_s)

    def close(self) -> None:
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
        self.socket.close(linger=0)


def header_frame(**fields) -> bytes:
    return json.dumps(fields).encode()


def pixels_for(tile, seed: int = 0) -> np.ndarray:
    h, w = tile.pixel_shape
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------
# EncoderServer in this process (for seams a child process does not offer)


class BlockingStage:
    """Wraps a RemoteStage: each ``encode_tile`` waits until the test calls :meth:`release`.

    ``started`` is set when a compute begins, so a test knows the compute thread
    is busy without timing anything.
    """

    def __init__(self, stage, hold_s: float = 120.0):
        self.inner = stage
        self.geometry = stage.geometry
        self.started = threading.Event()
        self._release = threading.Event()
        self.hold_s = hold_s
        self.calls = 0

    def release(self) -> None:
        self._release.set()

    def encode_tile(self, pixels, tile, mode):
        self.calls += 1
        self.started.set()
        if not self._release.wait(self.hold_s):
            raise RuntimeError("BlockingStage: the test never released the compute")
        return self.inner.encode_tile(pixels, tile, mode)


class FailingStage:
    """A stage whose every compute raises (drives the server's ``internal`` path)."""

    def __init__(self, stage):
        self.geometry = stage.geometry
        self.calls = 0

    def encode_tile(self, pixels, tile, mode):
        self.calls += 1
        raise RuntimeError(f"stage failure #{self.calls}")


class InProcessServer:
    """``EncoderServer(...)`` with ``serve_forever`` in a thread; a context manager.

    ``options``: :class:`remote_node.server.ServerOptions` fields.

    Leaving the block releases a :class:`BlockingStage` first, so no test can
    leave the compute thread stuck.
    """

    def __init__(self, model: str, stage, **options):
        from remote_node.server import EncoderServer, ServerOptions

        self.stage = stage
        self.server = EncoderServer("tcp://127.0.0.1:*", model, options=ServerOptions(**options), stage=stage)
        self.endpoint = self.server.endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.server.serve_forever, args=(self._stop,), daemon=True)

    def __enter__(self) -> InProcessServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if isinstance(self.stage, BlockingStage):
            self.stage.release()
        self._stop.set()
        self._thread.join(30.0)
        self.server.close()
        assert not self._thread.is_alive(), "serve_forever did not return after its stop event"


class FakeRouter:
    """A ROUTER in a thread that answers each request with ``reply(header) -> frames``.

    For what a real server never sends (odd info replies, unreadable headers).
    """

    def __init__(self, ctx: zmq.Context, reply):
        self.reply = reply
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.requests: List[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.socket.poll(50):
                continue
            identity, *body = self.socket.recv_multipart()
            header = json.loads(body[0])
            self.requests.append(header)
            self.socket.send_multipart([identity] + list(self.reply(header)))

    def __enter__(self) -> FakeRouter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30.0)
        self.socket.close(linger=0)
