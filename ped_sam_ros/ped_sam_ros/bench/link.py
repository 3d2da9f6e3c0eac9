"""Per-frame latency over an emulated link, with real processes: upload, server, download, edge.

Topology (everything is created here and removed at the end, also when the run fails)::

  netns <prefix>-edge                          netns <prefix>-srv
  edge process (ZmqTransport,                  delay proxy  ---loopback--->  python -m remote_node
  DistributedEncoder, random weights)          (one port per server)         (one per server, 127.0.0.1)
        |  10.a.b.c+1/30                              | 10.a.b.c+2/30
        +--- veth <prefix>e ===================== veth <prefix>s ---+
             tc tbf rate <up>                     tc tbf rate <down>

* **Rate**: ``tc qdisc ... tbf`` on each veth end's egress: the edge's end shapes the
  uplink, the server's end the downlink (asymmetric links are allowed).
* **Delay**: this kernel has no ``netem``, so a small TCP forwarding proxy in the server
  namespace adds it: it reads each chunk as it arrives and writes it on after the one-way
  delay (in both directions), keeping the byte order.  This adds propagation delay to
  every byte, but TCP between the edge and the proxy sees the veth's sub-millisecond
  round trip, so a real long path's slow-start and window limits are *not* reproduced
  (optimistic for big transfers on long links).  The proxy also logs every chunk with its
  time (``time.monotonic``, one clock for all namespaces of this machine), which is
  where the upload / server / download split comes from.
* **Addresses**: one /30 inside 10.0.0.0/8, picked at random, exists only on the two veth
  ends inside the two namespaces; the servers bind loopback inside theirs.  Nothing is
  added to the root namespace.

Per frame (the remote part follows the server whose reply arrived last)::

  upload   = first request byte sent by the edge -> last request byte handed to that server
  server   = that hand-over -> its first reply byte (decode, queue, compute, reply encoding)
  download = that first reply byte -> the edge has the last reply
  edge     = everything else of the frame (cutting, token decoding, merge, global blocks,
             neck); the edge's pixel encoding and token decoding are timed separately and
             moved from upload / download to edge

Needs root (``ip netns``, ``tc``); without it, says so and exits 0 (the test skips).

    sudo python -m ped_sam_ros.bench.link --links 20:50 100:20 1000:2 --frames 3 \\
        --token-formats float16 e8 --pixel-codecs raw jpeg:90 --json /tmp/link.json
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

#: per-server ports inside the server namespace (its own loopback and veth address: no clash
#: with anything on the host)
SERVER_PORT = 5600
PROXY_PORT = 6600
#: the proxy's throughput probe (a sink and a source of bytes, behind the same delay)
PROBE_PORT = 6599
STARTUP_TIMEOUT_S = 180.0
#: at most this long for one calibration in the edge process (a narrow model takes seconds)
CALIBRATION_TIMEOUT_S = 300.0
#: the delay proxy's chunk size
CHUNK = 1 << 20
#: default link settings: Mbit/s (both ways) and one-way delay in ms, as in the issue
DEFAULT_LINKS = ("20:50", "100:20", "1000:2")


class LinkUnavailable(RuntimeError):
    """Network namespaces cannot be made here (no root, no ``ip``/``tc``, or refused)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _run(cmd: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def unavailable_reason() -> Optional[str]:
    """Why namespaces cannot be used here, or None when they can (checked by making one)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and tc need root (run as root, or with CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} tool (iproute2) is not installed"
    probe = f"pslprobe{os.getpid() % 100000}"
    r = _run(["ip", "netns", "add", probe], check=False)
    if r.returncode != 0:
        return f"'ip netns add' is refused here: {r.stderr.strip()}"
    try:
        r = _run(["ip", "-n", probe, "link", "add", "pslp0", "type", "veth", "peer", "name", "pslp1"], check=False)
        if r.returncode != 0:
            return f"veth pairs cannot be created here: {r.stderr.strip()}"
        r = _run(
            [
                "tc",
                "-n",
                probe,
                "qdisc",
                "add",
                "dev",
                "pslp0",
                "root",
                "tbf",
                "rate",
                "100mbit",
                "burst",
                "64kb",
                "limit",
                "1mb",
            ],
            check=False,
        )
        if r.returncode != 0:
            return f"tc tbf is not available: {r.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None


# ---------------------------------------------------------------------------
# The namespaces and the veth pair


@dataclass(frozen=True)
class LinkSpec:
    """A link setting: rates in Mbit/s each way and the one-way delay in ms."""

    up_mbit: float
    down_mbit: float
    delay_ms: float

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """``"100:20"`` (100 Mbit/s both ways, 20 ms) or ``"20/100:50"`` (20 up, 100 down)."""
        rates, _, delay = text.partition(":")
        up, _, down = rates.partition("/")
        spec = cls(float(up), float(down or up), float(delay or 0))
        if spec.up_mbit <= 0 or spec.down_mbit <= 0 or spec.delay_ms < 0:
            raise ValueError(f"bad link {text!r}: rates must be > 0 and the delay >= 0")
        return spec

    @property
    def label(self) -> str:
        rate = f"{self.up_mbit:g}" if self.up_mbit == self.down_mbit else f"{self.up_mbit:g}/{self.down_mbit:g}"
        return f"{rate} Mbit/s, {self.delay_ms:g} ms"


def _tbf_args(mbit: float) -> List[str]:
    """tbf for ``mbit``: a bucket of 4 ms of traffic (at least 64 KiB, so GSO packets pass) and
    a queue of 1 s of traffic (at least 4 MiB), so TCP meets no drops on these short runs."""
    rate = mbit * 1e6 / 8
    burst = max(64 * 1024, int(rate * 0.004))
    limit = max(4 << 20, int(rate))
    return ["tbf", "rate", f"{mbit:g}mbit", "burst", str(burst), "limit", str(limit)]


class EmulatedLink:
    """Two network namespaces joined by a shaped veth pair; removed by :meth:`close`
    (called on exit, on SIGTERM, and by the context manager, also after an error)."""

    def __init__(self, prefix: Optional[str] = None):
        reason = unavailable_reason()
        if reason:
            raise LinkUnavailable(reason)
        self.prefix = prefix or f"psl{os.getpid() % 100000:05d}{random.randrange(16**3):03x}"
        if len(self.prefix) > 13:
            raise ValueError("prefix too long for interface names (at most 13 characters)")
        self.edge_ns, self.server_ns = f"{self.prefix}-edge", f"{self.prefix}-srv"
        self.edge_if, self.server_if = f"{self.prefix}e", f"{self.prefix}s"
        base = (
            (10 << 24) | (random.randrange(200, 255) << 16) | (random.randrange(256) << 8) | (random.randrange(64) << 2)
        )
        self.edge_ip = _ip(base + 1)
        self.server_ip = _ip(base + 2)
        self.processes: List[subprocess.Popen] = []
        self._closed = False
        self._made: List[str] = []
        atexit.register(self.close)
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        for ns in (self.edge_ns, self.server_ns):
            _run(["ip", "netns", "add", ns])
            self._made.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # created inside the edge namespace, one end moved: the root namespace never holds it
        _run(["ip", "-n", self.edge_ns, "link", "add", self.edge_if, "type", "veth", "peer", "name", self.server_if])
        _run(["ip", "-n", self.edge_ns, "link", "set", self.server_if, "netns", self.server_ns])
        _run(["ip", "-n", self.edge_ns, "addr", "add", f"{self.edge_ip}/30", "dev", self.edge_if])
        _run(["ip", "-n", self.server_ns, "addr", "add", f"{self.server_ip}/30", "dev", self.server_if])
        _run(["ip", "-n", self.edge_ns, "link", "set", self.edge_if, "up"])
        _run(["ip", "-n", self.server_ns, "link", "set", self.server_if, "up"])

    def shape(self, spec: LinkSpec) -> None:
        """Set (or change) the rates: the edge end's egress is the uplink, the server end's the downlink."""
        _run(["tc", "-n", self.edge_ns, "qdisc", "replace", "dev", self.edge_if, "root", *_tbf_args(spec.up_mbit)])
        _run(
            ["tc", "-n", self.server_ns, "qdisc", "replace", "dev", self.server_if, "root", *_tbf_args(spec.down_mbit)]
        )

    def qdiscs(self) -> str:
        return "\n".join(
            _run(["tc", "-n", ns, "qdisc", "show", "dev", dev]).stdout.strip()
            for ns, dev in ((self.edge_ns, self.edge_if), (self.server_ns, self.server_if))
        )

    def spawn(
        self, ns: str, argv: Sequence[str], log_path: Path, env: Optional[Dict[str, str]] = None
    ) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``ns`` (``ip netns exec``); it is ended by :meth:`close`."""
        log = open(log_path, "ab")
        try:
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self.processes.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout_s: float = 10.0) -> Optional[int]:
        if p.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    p.send_signal(sig)
                    p.wait(timeout_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        if p in self.processes:
            self.processes.remove(p)
        return p.returncode

    def close(self) -> None:
        """End our processes, then delete both namespaces (which removes the veth pair)."""
        if self._closed:
            return
        self._closed = True
        for p in list(self.processes):
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        for p in list(self.processes):
            self.stop(p, timeout_s=5.0)
        for ns in reversed(self._made):
            _run(["ip", "netns", "del", ns], check=False)
        self._made.clear()
        try:
            atexit.unregister(self.close)
        except Exception:
            pass

    def exists(self) -> List[str]:
        """Our namespaces that still exist (empty after :meth:`close`)."""
        names = _run(["ip", "netns", "list"], check=False).stdout.split()
        return [n for n in names if n.startswith(self.prefix + "-")]

    def __enter__(self) -> EmulatedLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ip(n: int) -> str:
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


# ---------------------------------------------------------------------------
# The delay proxy (runs inside the server namespace)


class _Log:
    def __init__(self, path: str):
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def event(self, conn: int, port: int, direction: str, kind: str, t: float, nbytes: int) -> None:
        with self._lock:
            self._f.write(json.dumps([conn, port, direction, kind, t, nbytes]) + "\n")


def _pump(
    src: socket.socket, dst: socket.socket, delay_s: float, log: _Log, conn: int, port: int, direction: str
) -> None:
    """Read chunks from ``src``; write each to ``dst`` ``delay_s`` after it arrived, in order."""
    q: queue.Queue[Tuple[float, Optional[bytes]]] = queue.Queue()

    def writer():
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if data is None:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return
            log.event(conn, port, direction, "out", time.monotonic(), len(data))

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    while True:
        try:
            data = src.recv(CHUNK)
        except OSError:
            data = b""
        t = time.monotonic()
        if not data:
            q.put((t + delay_s, None))
            break
        log.event(conn, port, direction, "in", t, len(data))
        q.put((t + delay_s, data))
    w.join()


def _probe_session(conn: socket.socket, delay_s: float) -> None:
    """One throughput probe: ``U`` + 8-byte size + that many bytes -> ``K`` once all arrived;
    ``D`` + 8-byte size -> that many bytes.  Each answer leaves after the one-way delay (the
    request's own delay is that of the edge -> proxy direction, added here too)."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        head = b""
        while len(head) < 9:
            part = conn.recv(9 - len(head))
            if not part:
                return
            head += part
        size = int.from_bytes(head[1:], "big")
        if head[:1] == b"U":
            left = size
            while left > 0:
                part = conn.recv(min(CHUNK, left))
                if not part:
                    return
                left -= len(part)
            time.sleep(2 * delay_s)  # the last byte's delay on the way here, the ack's on the way back
            conn.sendall(b"K")
        elif head[:1] == b"D":
            time.sleep(2 * delay_s)  # the request's delay here, the first reply byte's back
            block = bytes(min(CHUNK, size))
            left = size
            while left > 0:
                n = min(len(block), left)
                conn.sendall(block[:n])
                left -= n


def probe_throughput(host: str, nbytes: int, timeout_s: float = 60.0) -> Tuple[float, float]:
    """Seconds to push ``nbytes`` up to the proxy and to pull them down (each including the
    delays of one round trip), from the edge namespace."""
    out = []
    for kind in (b"U", b"D"):
        with socket.create_connection((host, PROBE_PORT), timeout=timeout_s) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.monotonic()
            s.sendall(kind + nbytes.to_bytes(8, "big"))
            if kind == b"U":
                block = bytes(min(CHUNK, nbytes))
                left = nbytes
                while left > 0:
                    n = min(len(block), left)
                    s.sendall(block[:n])
                    left -= n
                if s.recv(1) != b"K":
                    raise RuntimeError("throughput probe: no acknowledgement")
            else:
                left = nbytes
                while left > 0:
                    part = s.recv(CHUNK)
                    if not part:
                        raise RuntimeError("throughput probe: short download")
                    left -= len(part)
            out.append(time.monotonic() - t0)
    return out[0], out[1]


def run_proxy(
    listen_host: str, pairs: Sequence[Tuple[int, int]], delay_ms: float, log_path: str, ready_file: str
) -> None:
    """Forward ``listen_host:listen_port`` -> ``127.0.0.1:target_port`` for each pair, adding
    ``delay_ms`` each way; every chunk is logged (connection, port, up/down, in/out, time, bytes)."""
    from ..processes import write_ready_file

    log = _Log(log_path)
    delay_s = delay_ms / 1000.0
    counter = [0]
    lock = threading.Lock()

    def serve(lsock: socket.socket, listen_port: int, target_port: int):
        while True:
            client, _ = lsock.accept()
            with lock:
                counter[0] += 1
                conn = counter[0]
            try:
                server = socket.create_connection(("127.0.0.1", target_port), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=_pump, args=(client, server, delay_s, log, conn, listen_port, "up"), daemon=True
            ).start()
            threading.Thread(
                target=_pump, args=(server, client, delay_s, log, conn, listen_port, "down"), daemon=True
            ).start()

    def probes(lsock: socket.socket):
        while True:
            conn, _ = lsock.accept()
            threading.Thread(target=_probe_session, args=(conn, delay_s), daemon=True).start()

    ps = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ps.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ps.bind((listen_host, PROBE_PORT))
    ps.listen(4)
    threading.Thread(target=probes, args=(ps,), daemon=True).start()
    for listen_port, target_port in pairs:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((listen_host, listen_port))
        ls.listen(16)
        threading.Thread(target=serve, args=(ls, listen_port, target_port), daemon=True).start()
    write_ready_file(ready_file, "ready")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    while not stop.wait(0.5):
        pass


# ---------------------------------------------------------------------------
# The edge process (runs inside the edge namespace)


@dataclass
class EdgeJob:
    """What the edge process runs (written as JSON by the orchestrator)."""

    endpoints: List[str]
    model: str
    seed: int
    image: str
    grid: int
    frames: int
    combos: List[Tuple[str, str]]  # (token format, pixel codec)
    out: str
    threads: int = 1
    timeout_s: float = 120.0
    probe_host: str = ""
    probe_bytes: int = 0
    #: time this machine's profile (eval.calibrate) in this process before every measured frame and
    #: after the last one, with this process's torch threads (= the servers')
    calibrate: bool = False
    calibration_repeats: int = 5


def image_tokens_sampler(model: str, seed: int, image: str):
    """A token sampler (``eval.latency.Costs.tokens``) of the model's real tokens of the benchmark's
    image (paper mode, the whole 64x64 grid; random weights), so the entropy-coded formats are
    sized and timed on the data the servers really send; other widths get N(0, 1) tokens."""
    import numpy as np
    import torch

    from ..core.geometry import TOKEN_GRID, Tile
    from ..core.model import RemoteStage, get_geometry
    from .codecs import load_bench_images, resize_for_sam

    stage = RemoteStage(get_geometry(model), seed=seed)
    full = Tile(0, 0, 0, 0, TOKEN_GRID, 0, TOKEN_GRID)
    with torch.no_grad():
        tokens = stage.encode_tile(resize_for_sam(load_bench_images([image])[0][1]), full, "paper").numpy()
    del stage
    name = f"{model} {image} seed {seed}"

    def sampler(channels: int, shape: Tuple[int, int]):
        if channels != tokens.shape[2]:
            from ..eval.latency import gaussian_tokens

            return gaussian_tokens(channels, shape)
        return np.ascontiguousarray(tokens[: shape[0], : shape[1]]), name

    return sampler


def calibrate_now(
    model: str,
    partition,
    assignment: Sequence[int],
    resized,
    image: str,
    sampler,
    token_format: str,
    pixel_codec: str,
    repeats: int = 5,
    servers: int = 1,
) -> Dict:
    """This machine's profile timed now, in this process, for exactly what one frame of this
    format runs: each tile's patch embedding and window blocks on its own token map (the map
    the servers run), the edge's global blocks and neck on 64x64, the token codec on tile-shaped
    real tokens, the pixel codec on the frame.  Median of ``repeats`` runs after a warm-up (the
    typical time under the current load, as the measured frames see it).  The servers' side is
    timed with as many copies running at once as servers compute at once (``servers``, at most
    one per tile): the emulated servers share this machine's cores, which real ones would not.
    Returns plain JSON: the edge's and the servers' calibration data, when and with how many
    threads they were taken, and the load average."""
    import torch

    from ..core.model import get_geometry
    from ..eval import latency as L
    from ..eval.calibrate import Calibration
    from ..eval.profiles import get_profile

    concurrency = max(1, min(servers, len(partition)))
    cal = Calibration(persist=False, refresh=True, repeats=repeats, statistic="median")
    server_cal = Calibration(persist=False, refresh=True, repeats=repeats, statistic="median", concurrency=concurrency)
    profile = get_profile("this-machine")
    costs = L.Costs(profile, cal, tokens=sampler, image=(resized, image))
    server_costs = L.Costs(profile, server_cal, tokens=sampler, image=(resized, image))
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    L.ped_plan(
        costs,
        server_costs,
        get_geometry(model),
        "paper",
        partition,
        assignment,
        L.Wire(token_format, pixel_codec, curve=False),
        resized.shape[:2],
        decoder=False,
    )
    return {
        "t0": t0,
        "t1": time.monotonic(),
        "threads": torch.get_num_threads(),
        "statistic": cal.statistic,
        "repeats": repeats,
        "machine": cal.machine,
        "load_average": [load, os.getloadavg()[0]],
        "data": cal.data,
        "server_concurrency": concurrency,
        "server_data": server_cal.data,
    }


def _edge_codec_times(jobs, token_format: str, pixel_codec: str, channels: int) -> Tuple[float, float]:
    """Seconds the edge spends encoding the frame's pixels and decoding its tokens (on random
    tokens of the tiles' shapes) in these formats, timed apart from the transport."""
    import numpy as np

    from ..core import codecs, wire

    t0 = time.perf_counter()
    for j in jobs:
        if pixel_codec != "raw" and j.pixels.size:
            codecs.encode_pixels(j.pixels, pixel_codec)
    t1 = time.perf_counter()
    rng = np.random.default_rng(0)
    packed = []
    for j in jobs:
        h, w = j.tile.token_shape
        packed.append(
            (
                dict(codecs.pack_tokens(rng.normal(0, 1, (h, w, channels)).astype(np.float32), token_format)),
                (h, w, channels),
            )
        )
    t2 = time.perf_counter()
    for arrays, shape in packed:
        wire.unpack_tokens(arrays, shape)
    return t1 - t0, time.perf_counter() - t2


def run_edge(job: EdgeJob) -> None:
    import torch

    from ..core.geometry import Partition
    from ..core.model import EdgeStage
    from ..core.pipeline import DistributedEncoder
    from ..core.transport import ServerAddress, Transport
    from ..net.zmq_client import ZmqTransport
    from .codecs import load_bench_images, resize_for_sam

    torch.set_num_threads(job.threads)
    edge = EdgeStage(job.model, "paper", seed=job.seed)
    resized = resize_for_sam(load_bench_images([job.image])[0][1])
    partition = Partition.grid(job.grid, job.grid)
    addresses = [ServerAddress(f"srv{i}", ep) for i, ep in enumerate(job.endpoints)]
    results = []

    class Timed(Transport):
        """Delegates to the ZeroMQ transport; stamps the remote phase (time.monotonic)."""

        def __init__(self, inner):
            self.inner, self.geometry, self.token_dtype = inner, inner.geometry, inner.token_dtype
            self.t0 = self.t1 = 0.0
            self.results = []

        @property
        def server_names(self):
            return self.inner.server_names

        def encode(self, jobs, mode, timeout_s):
            self.t0 = time.monotonic()
            try:
                self.results = self.inner.encode(jobs, mode, timeout_s)
                return self.results
            finally:
                self.t1 = time.monotonic()

        def health(self):
            return self.inner.health()

        def info(self, timeout_s=2.0):
            return self.inner.info(timeout_s)

    probe = {}
    if job.probe_host and job.probe_bytes:
        up_s, down_s = probe_throughput(job.probe_host, job.probe_bytes)
        probe = {"probe_bytes": job.probe_bytes, "probe_up_s": up_s, "probe_down_s": down_s}
    assignment = [i % len(addresses) for i in range(len(partition))]
    sampler = image_tokens_sampler(job.model, job.seed, job.image) if job.calibrate else None
    calibrations = []
    for token_format, pixel_codec in job.combos:
        calibration = partial(
            calibrate_now,
            job.model,
            partition,
            assignment,
            resized,
            job.image,
            sampler,
            token_format,
            pixel_codec,
            job.calibration_repeats,
            len(addresses),
        )
        series: List[Dict] = []  # calibrations: before every measured frame and after the last one
        zt = ZmqTransport(addresses, job.model, token_format, pixel_codec=pixel_codec)
        try:
            if not zt.wait_connected(30.0):
                raise RuntimeError(f"servers not reachable: {[h.last_error for h in zt.health()]}")
            tr = Timed(zt)
            enc = DistributedEncoder(
                edge,
                tr,
                partition,
                assignment,
                timeout_s=job.timeout_s,
                allow_adjacent=True,
            )
            for k in range(job.frames + 1):  # frame 0 warms up (connections, caches, imports)
                if job.calibrate and k:  # calibrate, measure, re-calibrate: each frame between two calibrations
                    series.append(calibration())
                t_start = time.monotonic()
                _, stats = enc.encode_resized(resized)
                t_end = time.monotonic()
                if k == 0:
                    times = [
                        _edge_codec_times(enc.jobs_for(resized), token_format, pixel_codec, edge.geometry.embed_dim)
                        for _ in range(3)
                    ]
                    enc_s, dec_s = sorted(t[0] for t in times)[1], sorted(t[1] for t in times)[1]
                    continue
                results.append(
                    {
                        **probe,
                        "token_format": token_format,
                        "pixel_codec": pixel_codec,
                        "frame": k,
                        "t_start": t_start,
                        "t_end": t_end,
                        "t_remote0": tr.t0,
                        "t_remote1": tr.t1,
                        "timings": dict(stats.timings),
                        "edge_pixel_encode_s": enc_s,
                        "edge_token_decode_s": dec_s,
                        # the calibrations right before and right after this frame (indexes into its series)
                        "calibration": [len(series) - 1, len(series)] if job.calibrate else None,
                        "bytes_up": stats.bytes_up,
                        "bytes_down": stats.bytes_down,
                        "tiles": [
                            {
                                "server": r.server,
                                "bytes_up": r.bytes_up,
                                "bytes_down": r.bytes_down,
                                "round_trip_s": r.round_trip_s,
                                "compute_s": r.compute_s,
                            }
                            for r in tr.results
                        ],
                    }
                )
                time.sleep(0.3)  # frames apart in the proxy log
            if job.calibrate:
                calibrations.append(
                    {
                        "token_format": token_format,
                        "pixel_codec": pixel_codec,
                        "series": series + [calibration()],
                    }
                )
        finally:
            zt.close()
    Path(job.out).write_text(json.dumps({"frames": results, "calibrations": calibrations}))


# ---------------------------------------------------------------------------
# Splitting a frame's latency with the proxy log


def read_proxy_log(path: Path) -> List[Tuple[int, int, str, str, float, int]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(tuple(json.loads(line)))
            except ValueError:
                continue
    return out


def _crossing(events: Sequence[Tuple], threshold: float) -> Optional[float]:
    """Time of the first event at which the running byte count reaches ``threshold``."""
    acc = 0
    for e in sorted(events, key=lambda e: e[4]):
        acc += e[5]
        if acc >= threshold:
            return e[4]
    return None


def split_frame(frame: Dict, events: Sequence[Tuple], ports: Sequence[int]) -> Dict:
    """upload / server / download / edge seconds of one frame, along its critical path:

    * upload: from the start of the remote phase until the last request byte (of any
      server) is handed to its server by the proxy;
    * download: from the first byte of the reply that completes last leaving its server
      (found by byte count: replies of one server come in request order) until the
      edge has every reply;
    * server: the rest of the remote phase (compute not hidden behind transfers);
    * edge: the rest of the frame (everything outside the transport).

    The edge's pixel encoding happens inside the transport, interleaved with the sends,
    so it is part of upload, and the last reply's token decoding part of download; both
    are timed apart and reported beside (``edge_pixel_encode_s``, ``edge_token_decode_s``).

    ZMTP framing and heartbeats add a few bytes to the proxy's counts: the byte-count
    boundaries allow 256 bytes of slack."""
    t0, t1 = frame["t_remote0"], frame["t_remote1"]
    total = frame["t_end"] - frame["t_start"]
    remote = t1 - t0
    win = [e for e in events if t0 - 1e-3 <= e[4] <= t1 + 1e-3]
    up_done, last = None, None  # last: (time the edge got the last byte, that reply's first byte at the proxy)
    for i, port in enumerate(ports):
        mine = [e for e in win if e[1] == port]
        up_out = [e for e in mine if e[2] == "up" and e[3] == "out"]
        down_in = [e for e in mine if e[2] == "down" and e[3] == "in"]
        down_out = [e for e in mine if e[2] == "down" and e[3] == "out"]
        tiles = [t for t in frame["tiles"] if t["server"] == i]
        if not (up_out and down_in and down_out and tiles):
            continue
        done = _crossing(up_out, sum(e[5] for e in up_out) - 256)
        up_done = done if up_done is None else max(up_done, done)
        first = _crossing(down_in, sum(e[5] for e in down_in) - tiles[-1]["bytes_down"] + 256)
        end = max(e[4] for e in down_out)
        if first is not None and (last is None or end > last[0]):
            last = (end, first)
    if up_done is None or last is None:
        return {"total_s": total, "upload_s": None, "server_s": None, "download_s": None, "edge_s": total - remote}
    upload = up_done - t0
    download = t1 - max(last[1], up_done)  # a reply that started during another's upload
    server = remote - upload - download
    return {"total_s": total, "upload_s": upload, "server_s": server, "download_s": download, "edge_s": total - remote}


# ---------------------------------------------------------------------------
# The orchestrator


@dataclass
class LinkRun:
    """Settings of one benchmark run."""

    links: List[LinkSpec]
    model: str = "vit_b/w32h2"
    servers: int = 2
    grid: int = 2
    frames: int = 2
    combos: List[Tuple[str, str]] = field(default_factory=lambda: [("float16", "raw")])
    image: str = "astronaut"
    seed: int = 0
    threads: int = 1
    frame_timeout_s: float = 120.0
    #: the edge process times this machine's profile between the measured frames (EdgeJob.calibrate)
    calibrate: bool = False
    calibration_repeats: int = 5


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    pkg = str(Path(__file__).resolve().parents[2])  # the ament_python package folder (remote_node's parent)
    env["PYTHONPATH"] = pkg + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _wait_file(path: Path, proc: subprocess.Popen, what: str, log: Path, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_link_benchmark(
    run: LinkRun, workdir: Optional[Path] = None, echo=print, link: Optional[EmulatedLink] = None
) -> Dict:
    """Create the link, start the servers, measure every link setting; always cleans up."""
    own_tmp = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="ped_sam_link_"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = _child_env()
    py = sys.executable
    out: Dict = {
        "model": run.model,
        "servers": run.servers,
        "grid": run.grid,
        "image": run.image,
        "frames_per_setting": run.frames,
        "threads": run.threads,
        "results": [],
        "calibrations": [],
    }
    link = link or EmulatedLink()
    try:
        out.update(prefix=link.prefix, edge_ip=link.edge_ip, server_ip=link.server_ip)
        echo(
            f"# namespaces {link.edge_ns} / {link.server_ns}, veth {link.edge_if}={link.edge_ip} <-> "
            f"{link.server_if}={link.server_ip}"
        )
        servers = []
        for i in range(run.servers):
            ready, log = workdir / f"srv{i}.endpoint", workdir / f"srv{i}.log"
            p = link.spawn(
                link.server_ns,
                [
                    py,
                    "-m",
                    "remote_node",
                    "--bind",
                    f"tcp://127.0.0.1:{SERVER_PORT + i}",
                    "--model",
                    run.model,
                    "--random-weights",
                    "--seed",
                    str(run.seed),
                    "--name",
                    f"srv{i}",
                    "--ready-file",
                    str(ready),
                    "--torch-threads",
                    str(run.threads),
                    "--log-level",
                    "warning",
                ],
                log,
                env,
            )
            servers.append((p, ready, log))
        for i, (p, ready, log) in enumerate(servers):
            _wait_file(ready, p, f"server srv{i}", log, STARTUP_TIMEOUT_S)
        pairs = [(PROXY_PORT + i, SERVER_PORT + i) for i in range(run.servers)]
        for n, spec in enumerate(run.links):
            link.shape(spec)
            plog, pready, pout = workdir / f"proxy{n}.events", workdir / f"proxy{n}.ready", workdir / f"proxy{n}.log"
            proxy = link.spawn(
                link.server_ns,
                [
                    py,
                    "-m",
                    "ped_sam_ros.bench.link",
                    "proxy",
                    "--host",
                    link.server_ip,
                    "--pairs",
                    ",".join(f"{a}:{b}" for a, b in pairs),
                    "--delay-ms",
                    str(spec.delay_ms),
                    "--log",
                    str(plog),
                    "--ready-file",
                    str(pready),
                ],
                pout,
                env,
            )
            _wait_file(pready, proxy, "delay proxy", pout, 30.0)
            job = EdgeJob(
                [f"tcp://{link.server_ip}:{a}" for a, _ in pairs],
                run.model,
                run.seed,
                run.image,
                run.grid,
                run.frames,
                [list(c) for c in run.combos],
                str(workdir / f"edge{n}.json"),
                run.threads,
                run.frame_timeout_s,
                link.server_ip,
                max(1 << 20, int(min(spec.up_mbit, spec.down_mbit) * 1e6 / 8 * 0.5)),
                run.calibrate,
                run.calibration_repeats,
            )
            jpath = workdir / f"edge{n}.job.json"
            jpath.write_text(json.dumps(asdict(job)))
            elog = workdir / f"edge{n}.log"
            edge = link.spawn(
                link.edge_ns, [py, "-m", "ped_sam_ros.bench.link", "edge", "--job", str(jpath)], elog, env
            )
            limit = STARTUP_TIMEOUT_S + (run.frames + 1) * len(run.combos) * run.frame_timeout_s
            limit += (run.frames + 1) * len(run.combos) * CALIBRATION_TIMEOUT_S if run.calibrate else 0
            try:
                rc = edge.wait(limit)
            except subprocess.TimeoutExpired:
                link.stop(edge)
                raise RuntimeError(f"edge process did not finish within {limit:.0f} s:\n{_tail(elog)}") from None
            link.stop(edge)
            link.stop(proxy)
            if rc != 0:
                raise RuntimeError(f"edge process failed ({rc}):\n{_tail(elog)}")
            events = read_proxy_log(plog)
            edge_out = json.loads(Path(job.out).read_text())
            frames = edge_out["frames"]
            for f in frames:
                f.update(split_frame(f, events, [a for a, _ in pairs]))
                f.update(link=asdict(spec), link_label=spec.label)
                out["results"].append(f)
            for c in edge_out["calibrations"]:
                out["calibrations"].append(dict(c, link_label=spec.label))
            echo(f"  {spec.label}: {len(frames)} frames")
        out["qdiscs"] = link.qdiscs()
    finally:
        link.close()
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def _mean(rows: Sequence[Dict], k: str) -> Optional[float]:
    vals = [r[k] for r in rows if r.get(k) is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(results: Sequence[Dict]) -> List[Dict]:
    """Mean per (link, token format, pixel codec)."""
    keys = list(dict.fromkeys((r["link_label"], r["token_format"], r["pixel_codec"]) for r in results))
    out = []
    for key in keys:
        rows = [r for r in results if (r["link_label"], r["token_format"], r["pixel_codec"]) == key]
        mean = partial(_mean, rows)
        out.append(
            {
                "link": key[0],
                "token_format": key[1],
                "pixel_codec": key[2],
                "frames": len(rows),
                "bytes_up": mean("bytes_up"),
                "bytes_down": mean("bytes_down"),
                "total_s": mean("total_s"),
                "upload_s": mean("upload_s"),
                "server_s": mean("server_s"),
                "download_s": mean("download_s"),
                "edge_s": mean("edge_s"),
                "edge_codec_s": sum(r["edge_pixel_encode_s"] + r["edge_token_decode_s"] for r in rows) / len(rows),
                "server_compute_s": sum(max(t["compute_s"] for t in r["tiles"]) for r in rows) / len(rows),
                "link_spec": rows[0]["link"],
                **_probe_rates(rows[0]),
            }
        )
    return out


def _probe_rates(row: Dict) -> Dict:
    """Measured Mbit/s each way from the throughput probe (one round trip of delay taken out)."""
    if "probe_bytes" not in row:
        return {}
    rtt = 2 * row["link"]["delay_ms"] / 1000
    bits = 8 * row["probe_bytes"]
    return {
        "measured_up_mbit": bits / max(row["probe_up_s"] - rtt, 1e-6) / 1e6,
        "measured_down_mbit": bits / max(row["probe_down_s"] - rtt, 1e-6) / 1e6,
    }


def table(summary: Sequence[Dict]) -> str:
    def ms(v):
        return "-" if v is None else f"{1e3 * v:.0f}"

    lines = [
        "| link (measured up/down Mbit/s) | tokens | pixels | MB up | MB down | total ms | upload | server "
        "(compute) | download | edge | edge codec |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        rates = f" ({s['measured_up_mbit']:.0f}/{s['measured_down_mbit']:.0f})" if "measured_up_mbit" in s else ""
        lines.append(
            f"| {s['link']}{rates} | {s['token_format']} | {s['pixel_codec']} | {s['bytes_up'] / 1e6:.3f} | "
            f"{s['bytes_down'] / 1e6:.3f} | {ms(s['total_s'])} | {ms(s['upload_s'])} | "
            f"{ms(s['server_s'])} ({ms(s['server_compute_s'])}) | {ms(s['download_s'])} | "
            f"{ms(s['edge_s'])} | {ms(s['edge_codec_s'])} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ped_sam_ros.bench.link",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("run", help="the benchmark (the default)")
    for p in (ap, b):
        p.add_argument(
            "--links",
            nargs="+",
            default=list(DEFAULT_LINKS),
            help="RATE:DELAY_MS or UP/DOWN:DELAY_MS in Mbit/s, e.g. 100:20 20/100:50",
        )
        p.add_argument("--model", default="vit_b/w32h2")
        p.add_argument("--servers", type=int, default=2)
        p.add_argument("--grid", type=int, default=2)
        p.add_argument("--frames", type=int, default=2)
        p.add_argument("--token-formats", nargs="+", default=["float16"])
        p.add_argument("--pixel-codecs", nargs="+", default=["raw"])
        p.add_argument("--image", default="astronaut")
        p.add_argument("--threads", type=int, default=1, help="torch threads of the edge and of each server")
        p.add_argument(
            "--calibrate",
            action="store_true",
            help="time this machine's latency-model profile in the edge process before every measured frame and "
            "after the last (bench.costcheck predicts each frame with the calibrations on either side)",
        )
        p.add_argument("--json")
        p.add_argument("--workdir", help="keep the logs, proxy events and edge results here")
    px = sub.add_parser("proxy", help="(internal) the delay proxy")
    px.add_argument("--host", required=True)
    px.add_argument("--pairs", required=True, help="LISTEN:TARGET,...")
    px.add_argument("--delay-ms", type=float, required=True)
    px.add_argument("--log", required=True)
    px.add_argument("--ready-file", required=True)
    ed = sub.add_parser("edge", help="(internal) the edge process")
    ed.add_argument("--job", required=True)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "proxy":
        pairs = [tuple(int(x) for x in p.split(":")) for p in args.pairs.split(",")]
        run_proxy(args.host, pairs, args.delay_ms, args.log, args.ready_file)
        return 0
    if args.cmd == "edge":
        d = json.loads(Path(args.job).read_text())
        d["combos"] = [tuple(c) for c in d["combos"]]
        run_edge(EdgeJob(**d))
        return 0
    reason = unavailable_reason()
    if reason:
        print(f"ped_sam_ros.bench.link: skipped: {reason}")
        return 0
    run = LinkRun(
        [LinkSpec.parse(s) for s in args.links],
        args.model,
        args.servers,
        args.grid,
        args.frames,
        [(t, p) for t in args.token_formats for p in args.pixel_codecs],
        args.image,
        threads=args.threads,
        calibrate=args.calibrate,
    )
    from .codecs import machine

    print(
        f"# emulated link benchmark, {time.strftime('%Y-%m-%d')}, {machine()}, model {run.model} "
        f"(RANDOM weights), {run.servers} servers, {run.grid}x{run.grid} tiles, image {run.image}"
    )
    out = run_link_benchmark(run, Path(args.workdir) if args.workdir else None)
    out["summary"] = summarize(out["results"])
    out["date"], out["machine"] = time.strftime("%Y-%m-%d"), machine()
    print(table(out["summary"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
