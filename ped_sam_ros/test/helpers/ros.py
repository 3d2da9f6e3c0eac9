"""Helpers for the ROS tests: a DDS domain of our own, the edge node as a real
process, and an rclpy test node spun in a background thread.

Every rclpy process here runs with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a
ROS_DOMAIN_ID from :func:`new_domain` (1..100, or the range in PED_SAM_TEST_DOMAINS,
e.g. 60-99), claimed with a lock file so that no two test processes on this machine
share one: DDS stays on this machine and parallel runs do not meet. Every wait is bounded and every process
is stopped (SIGINT, SIGTERM, then SIGKILL), whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from helpers import PKG_DIR as REPO
from helpers import TINY_B as TEST_MODEL
from ped_sam_ros.processes import stop_process

TEST_SEED = 5
NODE_STARTUP_S = 120.0
#: remote_node arguments for a server of the test model with random weights
RANDOM_SERVER_ARGS = ("--model", TEST_MODEL, "--random-weights", "--seed", str(TEST_SEED))
#: shared memory big enough for whole images, UDP on loopback only (see the file's comment)
FASTDDS_PROFILE = REPO / "config" / "fastdds_large_images_loopback.xml"


def domain_range() -> range:
    """The DDS domains the tests may use: 1..100, or PED_SAM_TEST_DOMAINS=LO-HI (e.g. 60-99,
    so that runs sharing a machine keep apart)."""
    text = os.environ.get("PED_SAM_TEST_DOMAINS", "").strip()
    if not text:
        return range(1, 101)
    lo, sep, hi = text.partition("-")
    try:
        r = range(int(lo), int(hi) + 1)
    except ValueError:
        r = range(0)
    if not sep or not r or r.start < 0 or r.stop > 233:
        raise ValueError(f"PED_SAM_TEST_DOMAINS={text!r} must look like LO-HI within 0-232")
    return r


class DomainAllocator:
    """Hands out DDS domains of :func:`domain_range` that no other test process on this machine
    holds: each one is claimed with an exclusive lock on ``DIR/<domain>.lock``, kept until this
    process exits (or :meth:`release`), so parallel pytest runs and the modules of one run never
    meet, without anybody picking numbers by hand.  The search starts at a place derived from
    the process id, so concurrent runs rarely contend for the same locks."""

    def __init__(self, domains: range, lock_dir: Path):
        self.domains = domains
        self.lock_dir = lock_dir
        self._held: Dict[int, int] = {}  # domain -> open lock file descriptor

    def allocate(self) -> int:
        import fcntl

        self.lock_dir.mkdir(parents=True, exist_ok=True)
        start = os.getpid() % len(self.domains)
        for k in range(len(self.domains)):
            domain = self.domains[(start + k) % len(self.domains)]
            if domain in self._held:
                continue
            fd = os.open(self.lock_dir / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._held[domain] = fd
            return domain
        raise RuntimeError(
            f"every DDS domain in {self.domains.start}..{self.domains.stop - 1} is taken by other "
            f"test processes (locks in {self.lock_dir}); set PED_SAM_TEST_DOMAINS=LO-HI"
        )

    def release(self, domain: int) -> None:
        fd = self._held.pop(domain, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


_ALLOCATOR: Optional[DomainAllocator] = None


def new_domain() -> int:
    """A DDS domain for one test module (or test) of its own: see :class:`DomainAllocator`."""
    import tempfile

    global _ALLOCATOR
    if _ALLOCATOR is None:
        _ALLOCATOR = DomainAllocator(domain_range(), Path(tempfile.gettempdir()) / "ped_sam_test_domains")
    return _ALLOCATOR.allocate()


def ros_env(domain: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_DOMAIN_ID": str(domain),
            "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
            "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
            "PYTHONPATH": str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def use_domain(domain: int) -> None:
    """Make this (test) process's own rclpy use ``domain``, on this machine only."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_PROFILE)


class EdgeProcess:
    """``python -m ped_sam_ros.ros.edge_node`` as a child process."""

    def __init__(
        self,
        workdir: Path,
        domain: int,
        servers: Sequence[str],
        grid: str,
        namespace: str = "/t",
        extra_params: Sequence[str] = (),
        remaps: Sequence[str] = (),
        model: str = TEST_MODEL,
        seed: int = TEST_SEED,
        params_file: Optional[Path] = None,
    ):
        self.workdir = Path(workdir)
        self.domain = domain
        self.namespace = namespace
        servers_yaml = "[" + ", ".join(f"'{s}'" for s in servers) + "]"
        self.argv = [sys.executable, "-m", "ped_sam_ros.ros.edge_node", "--ros-args"]
        if params_file is not None:
            self.argv += ["--params-file", str(params_file)]
        for p in (
            f"model:={model}",
            "random_weights:=true",
            "checkpoint:=''",
            f"seed:={seed}",
            f"grid:={grid}",
            f"remotes.servers:={servers_yaml}",
            "torch_threads:=2",
            "diagnostics_period:=0.5",
            *extra_params,
        ):
            self.argv += ["-p", p]
        self.argv += ["-r", f"__ns:={namespace}"]
        for r in remaps:
            self.argv += ["-r", r]
        self.log_path = self.workdir / "edge_node.log"
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def prefix(self) -> str:
        return f"{self.namespace.rstrip('/')}/edge_node"

    def start(self) -> EdgeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=str(REPO),
            env=ros_env(self.domain),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def log_text(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, node: TestNode, timeout_s: float = NODE_STARTUP_S):
        """Wait until the node says on ``/diagnostics`` (seen by ``node``, on the same domain)
        that its pipeline is running, as any ROS client would; returns that PipelineStatus."""
        from diagnostic_msgs.msg import DiagnosticArray

        from ped_sam_ros.ros.diagnostics import wait_for_pipeline

        diags = node.collect(DiagnosticArray, "/diagnostics")
        try:
            return wait_for_pipeline(diags, self.prefix, timeout_s, alive=lambda: self.alive)
        except (RuntimeError, TimeoutError) as e:
            code = "" if self.alive else f" (exit code {self.proc.returncode})"
            raise RuntimeError(f"edge node not ready{code}: {e}\n{self.log_text()}") from None

    def stop(self) -> Optional[int]:
        code = stop_process(self.proc)
        if self._log:
            self._log.close()
            self._log = None
        return code


class TestNode:
    """An rclpy node in its own context (domain), spun in a background thread."""

    __test__ = False  # not a pytest class

    def __init__(self, domain: int, name: str = "ped_sam_test"):
        import rclpy
        from rclpy.node import Node

        from ped_sam_ros.ros.util import BackgroundSpinner

        use_domain(domain)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = Node(name, context=self.context)
        self._cond = threading.Condition()
        self.received: Dict[str, List] = {}
        self._subscriptions: Dict[str, object] = {}
        self.spinner = BackgroundSpinner(self.node)

    def collect(self, msg_type, topic: str, qos=10) -> List:
        """Subscribe and keep every message (in arrival order) under ``topic``; the same list
        for a topic already collected."""
        box = self.received.setdefault(topic, [])
        if topic in self._subscriptions:
            return box

        def cb(msg):
            with self._cond:
                box.append(msg)
                self._cond.notify_all()

        self._subscriptions[topic] = self.node.create_subscription(msg_type, topic, cb, qos)
        return box

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str = "condition") -> None:
        end = time.monotonic() + timeout_s
        with self._cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
                self._cond.wait(min(left, 0.1))

    def wait_for_subscribers(self, publisher, timeout_s: float = 30.0, count: int = 1) -> None:
        end = time.monotonic() + timeout_s
        while publisher.get_subscription_count() < count:
            if time.monotonic() > end:
                raise TimeoutError(f"no subscriber on {publisher.topic_name} after {timeout_s} s")
            time.sleep(0.05)

    def call(self, client, request, timeout_s: float):
        if not client.wait_for_service(timeout_sec=min(timeout_s, 30.0)):
            raise TimeoutError(f"service {client.srv_name} not available")
        fut = client.call_async(request)
        end = time.monotonic() + timeout_s
        while not fut.done():
            if time.monotonic() > end:
                client.remove_pending_request(fut)
                raise TimeoutError(f"no response from {client.srv_name} within {timeout_s} s")
            time.sleep(0.02)
        return fut.result()

    def close(self) -> None:
        import rclpy

        try:
            self.spinner.stop()
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.context)


def image_msg(rgb: np.ndarray, sec: int, nanosec: int, frame_id: str = "camera", encoding: str = "rgb8"):
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    arr = rgb if encoding == "rgb8" else rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    return Image(
        header=Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=w * ch * arr.itemsize,
        data=arr.tobytes(),
    )


def small_photos(scale: int = 4):
    """A few real photos (scikit-image), downscaled to keep DDS traffic small."""
    import skimage.data

    return [
        np.ascontiguousarray(f()[::scale, ::scale])
        for f in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea, skimage.data.rocket)
    ]


@contextlib.contextmanager
def edge_stack(
    workdir: Path,
    domain: int,
    server_names: Sequence[str],
    node_name: str,
    grid: str = "1x2",
    namespace: str = "/t",
    extra_params: Sequence[str] = (),
) -> Iterator[Tuple[List, EdgeProcess, TestNode]]:
    """Random-weight remote servers (one per name), the edge node as a process connected to
    them in that order, and a :class:`TestNode` on the same domain: ``(servers, edge, node)``.
    Everything is stopped on exit, whatever happened."""
    from helpers.net import start_servers, stop_all

    servers = start_servers(workdir, [(name, RANDOM_SERVER_ARGS) for name in server_names])
    edge = EdgeProcess(
        workdir / "edge",
        domain,
        [f"{s.name}={s.endpoint}" for s in servers],
        grid,
        namespace=namespace,
        extra_params=extra_params,
    )
    node = None
    try:
        edge.start()
        node = TestNode(domain, node_name)
        edge.wait_ready(node)
        yield servers, edge, node
    finally:
        if node is not None:
            node.close()
        edge.stop()
        stop_all(servers)


def in_process_transport(before_encode: Callable[[], None]) -> Callable:
    """A ``transport_factory`` for an in-process :class:`EdgeNode`: the configured model's
    remote stage in this process (``LocalTransport``, the config's server names and wire
    precision), whose ``encode`` first calls ``before_encode()``, which may wait or raise
    (a held or a failing server)."""

    def factory(config):
        from ped_sam_ros.core.transport import LocalTransport
        from ped_sam_ros.edge.builder import build_remote_stage

        class HookedTransport(LocalTransport):
            def encode(self, jobs, mode, timeout_s=60.0):
                before_encode()
                return super().encode(jobs, mode, timeout_s)

        return HookedTransport(build_remote_stage(config), token_dtype=config.wire_precision, names=config.server_names)

    return factory


@contextlib.contextmanager
def edge_node_in_process(transport_factory: Callable, namespace: str, client_name: str, **params) -> Iterator[Tuple]:
    """The real ``EdgeNode`` in this process, spun by the executor ``main()`` uses
    (``make_executor``) in a background thread, on a DDS domain of its own, and a
    :class:`TestNode` on that domain: ``(node, client)``.

    Parameters: the test model with random weights, a 1x2 grid of two placeholder servers
    (the transport is ``transport_factory``'s), one torch thread; ``params`` adds or overrides
    (e.g. ``diagnostics_period=0.2``).  Everything is shut down on exit, whatever happened:
    release anything that holds the node's worker before the block ends."""
    import rclpy
    from rclpy.parameter import Parameter

    from ped_sam_ros.ros.edge_node import EdgeNode, make_executor

    values = {
        "model": TEST_MODEL,
        "random_weights": True,
        "seed": TEST_SEED,
        "grid": "1x2",
        "remotes.servers": ["left=tcp://127.0.0.1:1", "right=tcp://127.0.0.1:2"],
        "torch_threads": 1,
        **params,
    }
    dom = new_domain()
    use_domain(dom)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=dom)
    node = executor = spin = client = None
    try:
        node = EdgeNode(
            transport_factory=transport_factory,
            context=ctx,
            namespace=namespace,
            parameter_overrides=[Parameter(name, value=value) for name, value in values.items()],
        )
        executor = make_executor(node)
        executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        client = TestNode(dom, client_name)
        yield node, client
    finally:
        if client is not None:
            client.close()
        if node is not None:
            node.begin_shutdown()
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        if spin is not None:
            spin.join(10)
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown(context=ctx)
