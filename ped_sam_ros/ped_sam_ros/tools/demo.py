"""PED-SAM end to end on this machine: remote servers, the ROS edge node, a bag of real frames.

    scripts/demo.sh                                   # random weights, vit_b/w64h2, 2x2 grid, out/demo/
    scripts/demo.sh --checkpoint sam_vit_b_01ec64.pth --model vit_b

What it does: writes a short rosbag2 of real photos (scikit-image) with point
prompts; makes fresh CurveZMQ keys (ped-sam-keys) in a temporary directory;
starts one remote server per window of the grid on loopback (Curve on); starts
the edge node; replays the bag (each frame once the previous one has its
result); records the node's outputs to a bag; writes one overlay PNG per frame
and summary.md / summary.json (per-stage latency, bytes each way, each server's
share of the frame, frames in/out/dropped).  Every process runs with
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a ROS_DOMAIN_ID the demo picks, and
is stopped at the end, on errors, on Ctrl-C and on SIGTERM; the whole run is
bounded by --timeout.

Without --checkpoint the model is RANDOMLY INITIALISED (no SAM checkpoint can
be downloaded here): the masks are then meaningless and the demo shows the
system, not segmentation quality.  The default model for that case is a
reduced-width vit_b (vit_b/w64h2: SAM's real geometry, 64 channels) so that it
runs in a couple of minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from ped_sam_ros.core.geometry import Partition
from ped_sam_ros.processes import stop_process

from .demo_summary import (
    DemoSummary,
    FrameTally,
    WallTimes,
    read_results,
    server_summaries,
    stage_latency,
    summary_markdown,
    write_overlays,
)
from .make_bag import BagInfo, make_bag

REPO = Path(__file__).resolve().parents[2]
NS = "/demo"
PREFIX = f"{NS}/edge_node"
CAMERA = f"{NS}/camera/image_raw"
RANDOM_MODEL = "vit_b/w64h2"
BANNER = (
    "RANDOM WEIGHTS: no checkpoint was given, the model is randomly initialised and the MASKS ARE "
    "MEANINGLESS. This run shows the distributed system (split, transport, ROS interfaces, timings), not "
    "segmentation quality. Run with --checkpoint sam_vit_b_01ec64.pth --model vit_b for real masks."
)


class DemoError(RuntimeError):
    pass


class Clock:
    def __init__(self, timeout_s: float):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout_s

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self, at_most: Optional[float] = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DemoError("the demo ran past --timeout")
        return min(left, at_most) if at_most is not None else left


def _die_with_parent():
    """Children get SIGTERM if the demo itself dies (Linux); also ignore the terminal's Ctrl-C
    (the demo stops them in order)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


class Procs:
    """Every child process the demo starts; :meth:`stop_all` ends each of them by its pid."""

    def __init__(self, log_dir: Path, env: Dict[str, str], say):
        self.log_dir, self.env, self.say = log_dir, env, say
        self.items: List[tuple] = []  # (name, Popen, log file)

    def start(self, name: str, argv: Sequence[str], relay: Optional[str] = None) -> subprocess.Popen:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "wb")
        stdout = subprocess.PIPE if relay else log
        proc = subprocess.Popen(
            list(argv),
            cwd=str(REPO),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.items.append((name, proc, log))
        if relay:
            threading.Thread(target=self._relay, args=(proc, log, relay), daemon=True).start()
        return proc

    def _relay(self, proc, log, prefix):
        for raw in iter(proc.stdout.readline, b""):
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(prefix):
                self.say(line)

    def stop(self, proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
        stop_process(proc, timeout_s)

    def stop_all(self) -> None:
        for _name, proc, log in reversed(self.items):
            self.stop(proc)
            try:
                log.close()
            except Exception:  # noqa: BLE001
                pass

    def log_tail(self, name: str, n: int = 3000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _wait(pred, timeout_s: float, what: str, proc: Optional[subprocess.Popen] = None, procs=None, name=None):
    end = time.monotonic() + timeout_s
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise DemoError(
                f"{name or what} exited with {proc.returncode} while waiting for {what}:\n"
                f"{procs.log_tail(name) if procs else ''}"
            )
        if time.monotonic() > end:
            raise DemoError(f"timed out waiting for {what}" + (f":\n{procs.log_tail(name)}" if procs else ""))
        time.sleep(0.1)


# ------------------------------------------------------------------------ records


@dataclass
class Demo:
    """What one run decided up front, and the means to run it."""

    args: argparse.Namespace
    out: Path
    tmp: Path  # keys and ready files (deleted at the end)
    model: str
    random_weights: bool
    grid: Partition
    domain: int
    env: Dict[str, str]
    clock: Clock
    say: Callable[[str], None]
    procs: Procs
    py: str = sys.executable

    @property
    def server_names(self) -> List[str]:
        return [f"remote-{chr(ord('a') + i)}" for i in range(len(self.grid))]


@dataclass
class Keys:
    """The run's CurveZMQ key files."""

    edge_secret: Path
    server_secrets: Path  # SERVER_NAME.key_secret
    server_publics: Path  # SERVER_NAME.key
    authorized: Path  # the edge's public key, the only one the servers accept


@dataclass
class Timeline:
    """Seconds since the demo started."""

    ready: float = 0.0  # the edge node said it is running
    replay_start: float = 0.0
    replay_end: float = 0.0


# -------------------------------------------------------------------------- steps


def prepare_output(out: Path) -> None:
    for sub in ("input_bag", "results_bag", "overlays", "logs", "summary.md", "summary.json"):
        p = out / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / "overlays").mkdir(parents=True)
    (out / "logs").mkdir()


def ros_environment(domain: int) -> Dict[str, str]:
    """The variables every process of the run gets (and the demo's own rclpy)."""
    return {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(domain),
        "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
        "PYTHONUNBUFFERED": "1",
        # whole frames through shared memory (best effort loses large images otherwise; see the file)
        "FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "config" / "fastdds_large_images_loopback.xml"),
    }


def make_keys(demo: Demo) -> Keys:
    """Fresh CurveZMQ key pairs (ped-sam-keys) for the edge and each server, outside the repository."""
    root = demo.tmp / "keys"
    for sub, name in [("edge", "edge")] + [("servers", n) for n in demo.server_names]:
        r = subprocess.run(
            [demo.py, "-m", "remote_node.keys", "--dir", str(root / sub), "--name", name],
            cwd=str(REPO),
            env=demo.env,
            capture_output=True,
            text=True,
            timeout=demo.clock.left(60),
        )
        if r.returncode:
            raise DemoError(f"ped-sam-keys failed: {r.stderr}")
    keys = Keys(root / "edge" / "edge.key_secret", root / "servers", root / "server_public", root / "authorized")
    keys.authorized.mkdir()
    shutil.copy(root / "edge" / "edge.key", keys.authorized / "edge.key")
    keys.server_publics.mkdir()
    for n in demo.server_names:
        shutil.copy(keys.server_secrets / f"{n}.key", keys.server_publics / f"{n}.key")
    demo.say(f"made CurveZMQ key pairs for the edge and {len(demo.server_names)} servers in {root} (temporary)")
    return keys


def start_servers(demo: Demo, keys: Keys) -> Dict[str, str]:
    """One remote server per tile on loopback, Curve on, each accepting only the edge's key;
    returns each one's endpoint once it is ready."""
    from ped_sam_ros.edge.remotes import remote_commands

    cfg = {
        "model": demo.model,
        "seed": demo.args.seed,
        "server_keys_dir": str(keys.server_secrets),
        "authorized_keys": str(keys.authorized),
        "torch_threads": 1,
        "device": demo.args.device,
        "precision": demo.args.precision,
        "servers": [{"name": n, "bind": "tcp://127.0.0.1:*"} for n in demo.server_names],
    }
    if demo.random_weights:
        cfg["random_weights"] = True
    else:
        cfg["checkpoint"] = str(Path(demo.args.checkpoint).resolve())
    ready = {}
    for name, argv in remote_commands(cfg, executable=[demo.py, "-m", "remote_node"]):
        ready[name] = (
            demo.tmp / f"{name}.endpoint",
            demo.procs.start(name, argv + ["--ready-file", str(demo.tmp / f"{name}.endpoint")]),
        )
    demo.say(f"starting {len(ready)} remote servers ({', '.join(ready)}) ...")
    for name, (path, proc) in ready.items():
        _wait(
            lambda path=path: path.exists() and path.read_text().strip(),
            demo.clock.left(180),
            f"server {name}",
            proc,
            demo.procs,
            name,
        )
    endpoints = {n: path.read_text().strip() for n, (path, _) in ready.items()}
    demo.say("servers ready: " + ", ".join(f"{n} {e}" for n, e in endpoints.items()))
    return endpoints


@contextlib.contextmanager
def diagnostics_subscription(domain: int) -> Iterator[List]:
    """The demo's own rclpy node on ``domain`` (this machine only), collecting /diagnostics."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from ped_sam_ros.ros.util import BackgroundSpinner

    os.environ.update(ros_environment(domain))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = spinner = None
    try:
        node = rclpy.create_node("ped_sam_demo", context=context)
        received: List = []
        node.create_subscription(DiagnosticArray, "/diagnostics", received.append, 10)
        spinner = BackgroundSpinner(node)
        yield received
    finally:
        if spinner is not None:
            spinner.stop()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


def start_edge_node(demo: Demo, keys: Keys, endpoints: Dict[str, str]) -> subprocess.Popen:
    """The edge node (``python -m`` form, config/edge.yaml plus overrides); returns once it says
    on /diagnostics that its pipeline is running."""
    from ped_sam_ros.ros.diagnostics import wait_for_pipeline

    checkpoint = "" if demo.random_weights else str(Path(demo.args.checkpoint).resolve())
    servers_yaml = "[" + ", ".join(f"'{n}={e}'" for n, e in endpoints.items()) + "]"
    node_params = [
        f"model:={demo.model}",
        f"random_weights:={'true' if demo.random_weights else 'false'}",
        f"checkpoint:='{checkpoint}'",
        f"seed:={demo.args.seed}",
        f"grid:={demo.args.grid}",
        f"remotes.servers:={servers_yaml}",
        f"keys.client_secret:={keys.edge_secret}",
        f"keys.server_public_dir:={keys.server_publics}",
        f"deadline:={demo.args.deadline:.1f}",
        "torch_threads:=2",
        f"device:={demo.args.device}",
        f"precision:={demo.args.precision}",
        "diagnostics_period:=1.0",
    ]
    argv = [
        demo.py,
        "-m",
        "ped_sam_ros.ros.edge_node",
        "--ros-args",
        "--params-file",
        str(REPO / "config" / "edge.yaml"),
    ]
    for p in node_params:
        argv += ["-p", p]
    argv += ["-r", f"__ns:={NS}", "-r", f"~/image:={CAMERA}"]
    demo.say(
        "starting the edge node: python -m ped_sam_ros.ros.edge_node --ros-args --params-file "
        f"config/edge.yaml -r __ns:={NS} -r ~/image:={CAMERA} (+ -p overrides)"
    )
    node = demo.procs.start("edge_node", argv)
    with diagnostics_subscription(demo.domain) as diags:
        try:
            wait_for_pipeline(diags, PREFIX, demo.clock.left(180), alive=lambda: node.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            raise DemoError(f"the edge node did not start: {e}\n{demo.procs.log_tail('edge_node')}") from None
    demo.say("edge node ready (its /diagnostics say the pipeline is running)")
    return node


def record_and_replay(demo: Demo, bag: BagInfo) -> Timeline:
    """Record the node's outputs while the bag is replayed, each frame once the previous one
    has its result; the recorder stops once it has every overlay and a /diagnostics message
    that accounts for every frame (published after the last result), so the per-server counts
    in the summary are final."""
    timeline = Timeline(ready=demo.clock.elapsed)
    n = len(bag.frames)
    topics = [f"{PREFIX}/masks", f"{PREFIX}/label_mask", f"{PREFIX}/overlay", "/diagnostics"]
    rec_ready = demo.tmp / "record.ready"
    rec = demo.procs.start(
        "bag_record",
        [
            demo.py,
            "-m",
            "ped_sam_ros.tools.bag_record",
            str(demo.out / "results_bag"),
            "--topics",
            *topics,
            "--count",
            str(n),
            "--count-topic",
            f"{PREFIX}/overlay",
            "--until-diagnostic",
            f"frames_out+frames_dropped+frames_failed>={n}",
            "--duration",
            f"{demo.clock.left():.0f}",
            "--ready-file",
            str(rec_ready),
        ],
        relay="[bag_record]",
    )
    _wait(rec_ready.exists, demo.clock.left(60), "the recorder", rec, demo.procs, "bag_record")
    demo.say(f"recording {', '.join(topics)}")
    demo.say(f"replaying {n} frames, each after the previous one's result ...")
    timeline.replay_start = demo.clock.elapsed
    play = demo.procs.start(
        "bag_play",
        [
            demo.py,
            "-m",
            "ped_sam_ros.tools.bag_play",
            str(demo.out / "input_bag"),
            "--topic-remap",
            f"/camera/image_raw:={CAMERA}",
            "--topic-remap",
            f"/edge_node/prompts:={PREFIX}/prompts",
            "--as-fast-as-consumed",
            "--consumed-topic",
            f"{PREFIX}/masks",
            "--consume-timeout",
            f"{min(120.0, demo.args.deadline + 30):.0f}",
        ],
        relay="[bag_play]",
    )
    _wait(lambda: play.poll() is not None, demo.clock.left(), "the replay", None)
    if play.returncode:
        raise DemoError(f"bag_play failed ({play.returncode}):\n{demo.procs.log_tail('bag_play')}")
    timeline.replay_end = demo.clock.elapsed
    try:
        _wait(lambda: rec.poll() is not None, demo.clock.left(30), "the recorder's last messages", None)
    except DemoError:
        demo.say(
            "warning: the recorder did not see every result and the final diagnostics within 30 s; "
            "the summary uses what it recorded"
        )
    demo.procs.stop(rec)
    return timeline


def run(args) -> int:
    clock = Clock(args.timeout)

    def say(msg: str) -> None:
        print(f"[demo {clock.elapsed:6.1f}s] {msg}", flush=True)

    out = Path(args.out).resolve()
    prepare_output(out)
    random_weights = not args.checkpoint
    # 215..232: a range ROS documents as safe on Linux (no clash with ephemeral ports),
    # and apart from the tests' 1..100 (docs/ros.md says the same)
    domain = args.domain_id or (215 + os.getpid() % 18)
    env = dict(os.environ, **ros_environment(domain))
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    demo = Demo(
        args,
        out,
        Path(tempfile.mkdtemp(prefix="ped_sam_demo_")),
        args.model or (RANDOM_MODEL if random_weights else "vit_b"),
        random_weights,
        Partition.parse(args.grid),
        domain,
        env,
        clock,
        say,
        Procs(out / "logs", env, say),
    )
    if random_weights:
        for line in ("!" * 100, BANNER, "!" * 100):
            say(line)
    else:
        say(f"model {demo.model} from checkpoint {args.checkpoint}")
    try:
        say(
            f"ROS_DOMAIN_ID={domain}, discovery LOCALHOST only; grid {demo.grid.name} -> "
            f"{len(demo.server_names)} remote servers"
        )
        bag = make_bag(out / "input_bag", n_frames=args.frames, rate_hz=2.0, scale=args.scale)
        say(f"wrote {len(bag.frames)} real frames to {out / 'input_bag'}: {', '.join(bag.frames)}")
        keys = make_keys(demo)
        endpoints = start_servers(demo, keys)
        node = start_edge_node(demo, keys, endpoints)
        timeline = record_and_replay(demo, bag)
        demo.procs.stop(node)
        say("stopped the recorder and the edge node")
        summary = summarize(demo, bag, endpoints, timeline)
        return 0 if summary.frames.results == len(bag.frames) else 1
    finally:
        demo.procs.stop_all()
        shutil.rmtree(demo.tmp, ignore_errors=True)


# ------------------------------------------------------------------------ summary


def summarize(demo: Demo, bag: BagInfo, endpoints: Dict[str, str], timeline: Timeline) -> DemoSummary:
    """Overlays, summary.json and summary.md from the recorded results and diagnostics."""
    from ped_sam_ros.ros.diagnostics import read_pipeline

    rec = read_results(demo.out / "results_bag")
    pngs = write_overlays(demo.out, bag, demo.args.scale, rec)
    pipeline = read_pipeline(rec.diagnostics, PREFIX)
    remotes = server_summaries(PREFIX, demo.grid, bag, endpoints, rec.diagnostics)
    stages = stage_latency(rec.results)
    stale = {n: r.frames for n, r in remotes.items() if r.frames != len(rec.results)}
    if stale:
        counts = ", ".join(f"{n} {k}" for n, k in sorted(stale.items()))
        demo.say(f"warning: the last recorded diagnostics count {counts} frame(s) for {len(rec.results)} results")
    summary = DemoSummary(
        warning=BANNER if demo.random_weights else None,
        random_weights=demo.random_weights,
        model=demo.model,
        checkpoint=demo.args.checkpoint,
        seed=demo.args.seed if demo.random_weights else None,
        mode=rec.results[0].mode if rec.results else "paper",
        grid=demo.grid.name,
        curve=True,
        ros_domain_id=demo.domain,
        frames=FrameTally(
            len(bag.frames),
            len(rec.results),
            pipeline.frames_dropped if pipeline else 0,
            pipeline.frames_failed if pipeline else 0,
            list(bag.frames),
        ),
        stage_latency_ms=stages,
        remotes=remotes,
        overlays=pngs,
        wall_s=WallTimes(
            round(demo.clock.elapsed, 1),
            round(timeline.ready, 1),
            round(timeline.replay_end - timeline.replay_start, 1),
        ),
    )
    (demo.out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    (demo.out / "summary.md").write_text(summary_markdown(summary))
    tell_summary(demo, summary)
    return summary


def tell_summary(demo: Demo, summary: DemoSummary) -> None:
    """The summary's headline figures on the console."""
    f, stages = summary.frames, summary.stage_latency_ms
    demo.say(f"frames in {f.received}, results {f.results}, dropped {f.dropped}, failed {f.failed}")
    for k in ("remote", "edge_encoder", "decoder", "total"):
        if k in stages:
            s = stages[k]
            demo.say(f"  {k:13s} mean {s.mean_ms:8.1f} ms  p50 {s.p50_ms:8.1f}  max {s.max_ms:8.1f}")
    demo.say(
        f"wrote {len(summary.overlays)} overlays to {demo.out / 'overlays'}, summary in "
        f"{demo.out / 'summary.md'} and summary.json"
    )
    if demo.random_weights:
        demo.say("!!! " + BANNER)
    demo.say(f"done in {demo.clock.elapsed:.1f} s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ped-sam-demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    ap.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    ap.add_argument("--checkpoint", help="official SAM checkpoint (.pth); without it: random weights")
    ap.add_argument("--model", help=f"vit_b | vit_l | vit_h (default: vit_b with a checkpoint, {RANDOM_MODEL} without)")
    ap.add_argument("--seed", type=int, default=0, help="random-weights seed")
    ap.add_argument("--grid", default="2x2", help="partition grid; one server per window (default 2x2: 4 servers)")
    ap.add_argument("--frames", type=int, default=6, help="frames in the bag (default 6)")
    ap.add_argument("--scale", type=int, default=1, help="downscale the photos by this factor (default 1: full size)")
    ap.add_argument("--deadline", type=float, default=None, help="per-frame remote deadline in s")
    ap.add_argument("--timeout", type=float, default=420.0, help="bound on the whole run in s (default 420)")
    ap.add_argument("--domain-id", type=int, default=0, help="ROS_DOMAIN_ID (default: picked from the pid, 215..232)")
    ap.add_argument(
        "--device",
        default="auto",
        help="device of the edge node and the servers: auto (CUDA when present), cpu, cuda, cuda:N",
    )
    ap.add_argument(
        "--precision",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="precision of the encoder blocks at the edge and on the servers (default float32)",
    )
    args = ap.parse_args(argv)
    if args.deadline is None:
        args.deadline = 120.0 if not args.checkpoint else 600.0
    if args.checkpoint and not Path(args.checkpoint).is_file():
        ap.error(f"checkpoint {args.checkpoint} does not exist")
    from ped_sam_ros.core.device import DeviceError, resolve_placement

    try:  # an impossible device or precision: one line now, not a failed node later
        resolve_placement(args.device, args.precision)
    except DeviceError as e:
        ap.error(str(e))

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("[demo] interrupted: stopped every process it started", flush=True)
        return 130
    except DemoError as e:
        print(f"[demo] FAILED: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
