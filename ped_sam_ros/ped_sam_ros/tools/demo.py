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
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ped_sam_ros.processes import stop_process
from ped_sam_ros.ros.util import latest_status, status_values

REPO = Path(__file__).resolve().parents[2]
NS = "/demo"
PREFIX = f"{NS}/edge_node"
CAMERA = f"{NS}/camera/image_raw"
RANDOM_MODEL = "vit_b/w64h2"
BANNER = ("RANDOM WEIGHTS: no checkpoint was given, the model is randomly initialised and the MASKS ARE "
          "MEANINGLESS. This run shows the distributed system (split, transport, ROS interfaces, timings), not "
          "segmentation quality. Run with --checkpoint sam_vit_b_01ec64.pth --model vit_b for real masks.")


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
        proc = subprocess.Popen(list(argv), cwd=str(REPO), env=self.env, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
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
        for name, proc, log in reversed(self.items):
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
            raise DemoError(f"{name or what} exited with {proc.returncode} while waiting for {what}:\n"
                            f"{procs.log_tail(name) if procs else ''}")
        if time.monotonic() > end:
            raise DemoError(f"timed out waiting for {what}" + (f":\n{procs.log_tail(name)}" if procs else ""))
        time.sleep(0.1)


def _stage_table(results) -> Dict[str, Dict[str, float]]:
    per: Dict[str, List[float]] = {}
    for r in results:
        for t in r.timings:
            per.setdefault(t.stage, []).append(1000.0 * t.seconds)
    return {k: {"mean_ms": statistics.fmean(v), "p50_ms": statistics.median(v), "max_ms": max(v), "n": len(v)}
            for k, v in per.items()}


def _last_status(diags, name) -> Dict[str, str]:
    return status_values(latest_status(diags, name)) or {}


def run(args) -> int:
    clock = Clock(args.timeout)

    def say(msg: str) -> None:
        print(f"[demo {clock.elapsed:6.1f}s] {msg}", flush=True)

    out = Path(args.out).resolve()
    for sub in ("input_bag", "results_bag", "overlays", "logs", "summary.md", "summary.json"):
        p = out / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / "overlays").mkdir(parents=True)
    (out / "logs").mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="ped_sam_demo_"))
    random_weights = not args.checkpoint
    model = args.model or (RANDOM_MODEL if random_weights else "vit_b")
    if random_weights:
        bar = "!" * 100
        for line in (bar, BANNER, bar):
            say(line)
    else:
        say(f"model {model} from checkpoint {args.checkpoint}")
    # 215..232: a range ROS documents as safe on Linux (no clash with ephemeral ports),
    # and apart from the tests' 1..100 (docs/ros.md says the same)
    domain = args.domain_id or (215 + os.getpid() % 18)
    env = dict(os.environ)
    env.update({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(domain),
                "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "PYTHONUNBUFFERED": "1",
                # whole frames through shared memory (best effort loses large images otherwise; see the file)
                "FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "config" / "fastdds_large_images.xml"),
                "PYTHONPATH": str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")})
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    procs = Procs(out / "logs", env, say)
    py = sys.executable
    summary: Dict = {}
    try:
        from ped_sam_ros.core.geometry import Partition
        from ped_sam_ros.edge.remotes import remote_commands
        from ped_sam_ros.tools.make_bag import make_bag

        part = Partition.parse(args.grid)
        n_servers = len(part)
        say(f"ROS_DOMAIN_ID={domain}, discovery LOCALHOST only; grid {part.name} -> {n_servers} remote servers")

        # 1. the input bag
        info = make_bag(out / "input_bag", n_frames=args.frames, rate_hz=2.0, scale=args.scale)
        say(f"wrote {len(info['frames'])} real frames to {out / 'input_bag'}: {', '.join(info['frames'])}")

        # 2. fresh CurveZMQ keys (ped-sam-keys), outside the repository
        keys = tmp / "keys"
        names = [f"remote-{chr(ord('a') + i)}" for i in range(n_servers)]
        for sub, name in [("edge", "edge")] + [("servers", n) for n in names]:
            r = subprocess.run([py, "-m", "remote_node.keys", "--dir", str(keys / sub), "--name", name], cwd=str(REPO),
                               env=env, capture_output=True, text=True, timeout=clock.left(60))
            if r.returncode:
                raise DemoError(f"ped-sam-keys failed: {r.stderr}")
        (keys / "authorized").mkdir()
        shutil.copy(keys / "edge" / "edge.key", keys / "authorized" / "edge.key")
        (keys / "server_public").mkdir()
        for n in names:
            shutil.copy(keys / "servers" / f"{n}.key", keys / "server_public" / f"{n}.key")
        say(f"made CurveZMQ key pairs for the edge and {n_servers} servers in {keys} (temporary)")

        # 3. remote servers on loopback, Curve on, each only accepting the edge's key
        cfg = {"model": model, "seed": args.seed, "server_keys_dir": str(keys / "servers"),
               "authorized_keys": str(keys / "authorized"), "torch_threads": 1,
               "servers": [{"name": n, "bind": "tcp://127.0.0.1:*"} for n in names]}
        if random_weights:
            cfg["random_weights"] = True
        else:
            cfg["checkpoint"] = str(Path(args.checkpoint).resolve())
        ready = {}
        for name, argv in remote_commands(cfg, executable=[py, "-m", "remote_node"]):
            ready[name] = tmp / f"{name}.endpoint"
            procs.start(name, argv + ["--ready-file", str(ready[name])])
        say(f"starting {n_servers} remote servers ({', '.join(names)}) ...")
        for name, path in ready.items():
            proc = next(p for n, p, _ in procs.items if n == name)
            _wait(lambda: path.exists() and path.read_text().strip(), clock.left(180), f"server {name}", proc, procs,
                  name)
        endpoints = {n: p.read_text().strip() for n, p in ready.items()}
        say("servers ready: " + ", ".join(f"{n} {e}" for n, e in endpoints.items()))

        # 4. the edge node (python -m form; the standard params file plus overrides)
        servers_yaml = "[" + ", ".join(f"'{n}={e}'" for n, e in endpoints.items()) + "]"
        node_params = [f"model:={model}", f"random_weights:={'true' if random_weights else 'false'}",
                       f"checkpoint:='{'' if random_weights else cfg['checkpoint']}'", f"seed:={args.seed}",
                       f"grid:={args.grid}", f"remotes.servers:={servers_yaml}",
                       f"keys.client_secret:={keys / 'edge' / 'edge.key_secret'}",
                       f"keys.server_public_dir:={keys / 'server_public'}", f"deadline:={args.deadline:.1f}",
                       "torch_threads:=2", "diagnostics_period:=1.0"]
        argv = [py, "-m", "ped_sam_ros.ros.edge_node", "--ros-args", "--params-file", str(REPO / "config" / "edge.yaml")]
        for p in node_params:
            argv += ["-p", p]
        argv += ["-r", f"__ns:={NS}", "-r", f"~/image:={CAMERA}"]
        say("starting the edge node: python -m ped_sam_ros.ros.edge_node --ros-args --params-file config/edge.yaml "
            f"-r __ns:={NS} -r ~/image:={CAMERA} (+ -p overrides)")
        node = procs.start("edge_node", argv)
        _wait(lambda: "]: ready: " in procs.log_tail("edge_node", 200_000), clock.left(180), "the edge node", node,
              procs, "edge_node")
        t_ready = clock.elapsed
        say("edge node ready")

        # 5. record its outputs, 6. replay the bag paced by its results
        topics = [f"{PREFIX}/masks", f"{PREFIX}/label_mask", f"{PREFIX}/overlay", "/diagnostics"]
        rec_ready = tmp / "record.ready"
        # It stops once it has every overlay and a /diagnostics message that accounts for every
        # frame (published after the last result), so the summary's per-server counts are final.
        rec = procs.start("bag_record", [py, "-m", "ped_sam_ros.tools.bag_record", str(out / "results_bag"),
                                         "--topics", *topics, "--count", str(args.frames), "--count-topic",
                                         f"{PREFIX}/overlay", "--until-diagnostic",
                                         f"frames_out+frames_dropped+frames_failed>={args.frames}",
                                         "--duration", f"{clock.left():.0f}", "--ready-file",
                                         str(rec_ready)], relay="[bag_record]")
        _wait(rec_ready.exists, clock.left(60), "the recorder", rec, procs, "bag_record")
        say(f"recording {', '.join(topics)}")
        say(f"replaying {len(info['frames'])} frames, each after the previous one's result ...")
        t_play = clock.elapsed
        play = procs.start("bag_play", [py, "-m", "ped_sam_ros.tools.bag_play", str(out / "input_bag"),
                                        "--topic-remap", f"/camera/image_raw:={CAMERA}",
                                        "--topic-remap", f"/edge_node/prompts:={PREFIX}/prompts",
                                        "--as-fast-as-consumed", "--consumed-topic", f"{PREFIX}/masks",
                                        "--consume-timeout", f"{min(120.0, args.deadline + 30):.0f}"],
                           relay="[bag_play]")
        _wait(lambda: play.poll() is not None, clock.left(), "the replay", None)
        if play.returncode:
            raise DemoError(f"bag_play failed ({play.returncode}):\n{procs.log_tail('bag_play')}")
        t_played = clock.elapsed
        try:
            _wait(lambda: rec.poll() is not None, clock.left(30), "the recorder's last messages", None)
        except DemoError:
            say("warning: the recorder did not see every result and the final diagnostics within 30 s; "
                "the summary uses what it recorded")
        procs.stop(rec)
        procs.stop(node)
        say("stopped the recorder and the edge node")

        # 7. overlays and summary
        summary = summarize(args, out, info, model, random_weights, part, endpoints, domain, clock, t_ready,
                            t_play, t_played, say)
        return 0 if summary["frames"]["results"] == len(info["frames"]) else 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(args, out, info, model, random_weights, part, endpoints, domain, clock, t_ready, t_play, t_played,
              say) -> Dict:
    import numpy as np

    from ped_sam_ros.core.geometry import content_shape, server_shares
    from ped_sam_ros.viz import overlay as draw_overlay
    from ped_sam_ros.ros.bags import read_messages
    from ped_sam_ros.ros.convert import image_to_rgb, masks_from_result, stamp_key
    from ped_sam_ros.tools.make_bag import frames as make_frames

    results, overlays, diags = [], {}, []
    for topic, _, _, m in read_messages(out / "results_bag"):
        if topic.endswith("/masks"):
            results.append(m)
        elif topic.endswith("/overlay"):
            overlays[stamp_key(m.header)] = m
        elif topic == "/diagnostics":
            diags.append(m)
    in_keys = [(s, ns, info["frame_id"]) for s, ns in info["stamps"]]
    photos = None  # loaded only if an overlay is missing
    pngs = []
    import cv2

    for k, key in enumerate(in_keys):
        res = next((r for r in results if stamp_key(r.header) == key), None)
        if res is None:
            continue
        if key in overlays:
            rgb = image_to_rgb(overlays[key])
        else:  # not recorded (should not happen): draw it the same way from the masks
            photos = photos or make_frames(len(info["frames"]), args.scale)
            rgb = draw_overlay(photos[k][1], [m for _, m in masks_from_result(res)])
        path = out / "overlays" / f"frame_{k:02d}_{info['frames'][k]}.png"
        cv2.imwrite(str(path), rgb[:, :, ::-1])
        pngs.append(str(path.relative_to(out)))

    pipeline = _last_status(diags, f"{PREFIX}: pipeline")
    remotes = {}
    for name, endpoint in endpoints.items():
        v = _last_status(diags, f"{PREFIX}: remote {name}")
        windows = [int(w) for w in v.get("windows", "[]").strip("[]").split(",") if w.strip()]
        remotes[name] = {
            "endpoint": endpoint, "windows": windows,
            "bytes_up": int(v.get("bytes_up", 0)), "bytes_down": int(v.get("bytes_down", 0)),
            "mean_latency_ms": float(v.get("mean_latency_ms", "nan")),
            "mean_compute_ms": float(v.get("mean_compute_ms", "nan")),
            "frames": int(v.get("frames", 0)), "state": v.get("state", "?"),
        }
        # bytes per frame this server encoded, from the same diagnostics message as its byte counts
        frames = remotes[name]["frames"]
        remotes[name]["bytes_up_per_frame"] = remotes[name]["bytes_up"] / frames if frames else 0.0
        remotes[name]["bytes_down_per_frame"] = remotes[name]["bytes_down"] / frames if frames else 0.0
    # share of each frame's content every server saw (its windows over the frame's valid tokens)
    assignment = [0] * len(part)
    names = list(endpoints)
    for i, name in enumerate(names):
        for w in remotes[name]["windows"]:
            assignment[w] = i
    for name in names:
        remotes[name]["share_per_frame"] = []
    for h, w in info["sizes"]:
        for name, share in zip(names, server_shares(part, assignment, content_shape((h, w)))):
            remotes[name]["share_per_frame"].append(round(share, 4))
    for name in names:
        remotes[name]["mean_share"] = round(float(np.mean(remotes[name]["share_per_frame"])), 4)

    stages = _stage_table(results)
    n_in = len(info["frames"])
    stale = {n: r["frames"] for n, r in remotes.items() if r["frames"] != len(results)}
    if stale:
        counts = ", ".join(f"{n} {k}" for n, k in sorted(stale.items()))
        say(f"warning: the last recorded diagnostics count {counts} frame(s) for {len(results)} results")
    summary = {
        "warning": BANNER if random_weights else None,
        "random_weights": random_weights,
        "model": model, "checkpoint": args.checkpoint, "seed": args.seed if random_weights else None,
        "mode": results[0].mode if results else "paper", "grid": part.name, "curve": True,
        "ros_domain_id": domain,
        "frames": {"in": n_in, "results": len(results), "dropped": int(pipeline.get("frames_dropped", 0)),
                   "failed": int(pipeline.get("frames_failed", 0)), "names": info["frames"]},
        "stage_latency_ms": stages,
        "remotes": remotes,
        "bytes": {"up_total": sum(r["bytes_up"] for r in remotes.values()),
                  "down_total": sum(r["bytes_down"] for r in remotes.values()),
                  "up_per_frame": sum(r["bytes_up_per_frame"] for r in remotes.values()),
                  "down_per_frame": sum(r["bytes_down_per_frame"] for r in remotes.values())},
        "overlays": pngs,
        "wall_s": {"total": round(clock.elapsed, 1), "startup": round(t_ready, 1),
                   "replay": round(t_played - t_play, 1)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(summary))
    say(f"frames in {n_in}, results {len(results)}, dropped {summary['frames']['dropped']}, "
        f"failed {summary['frames']['failed']}")
    for k in ("remote", "edge_encoder", "decoder", "total"):
        if k in stages:
            say(f"  {k:13s} mean {stages[k]['mean_ms']:8.1f} ms  p50 {stages[k]['p50_ms']:8.1f}  max "
                f"{stages[k]['max_ms']:8.1f}")
    say(f"wrote {len(pngs)} overlays to {out / 'overlays'}, summary in {out / 'summary.md'} and summary.json")
    if random_weights:
        say("!!! " + BANNER)
    say(f"done in {clock.elapsed:.1f} s")
    return summary


def summary_markdown(s: Dict) -> str:
    lines = ["# PED-SAM demo", ""]
    if s["random_weights"]:
        lines += [f"> **WARNING: {s['warning']}**", ""]
    lines += [f"- model: `{s['model']}`" + (f" (random weights, seed {s['seed']})" if s["random_weights"]
                                            else f" from `{s['checkpoint']}`"),
              f"- mode: {s['mode']}, grid {s['grid']} ({len(s['remotes'])} remote servers on loopback, CurveZMQ on)",
              f"- frames in: {s['frames']['in']}, results out: {s['frames']['results']}, dropped: "
              f"{s['frames']['dropped']}, failed: {s['frames']['failed']} (replay paced by the node's results)",
              f"- wall time: {s['wall_s']['total']} s (start-up {s['wall_s']['startup']} s, replay "
              f"{s['wall_s']['replay']} s)", "",
              "## Per-stage latency (ms per frame, from each result's StageTiming)", "",
              "| stage | mean | p50 | max |", "|---|---:|---:|---:|"]
    for k, v in s["stage_latency_ms"].items():
        lines.append(f"| {k} | {v['mean_ms']:.1f} | {v['p50_ms']:.1f} | {v['max_ms']:.1f} |")
    lines += ["", "`remote` is the wall time of the parallel round trip to all servers; `total` runs from the "
              "image's arrival to the result (including waiting while busy).", "",
              "## Remote servers (from the last /diagnostics)", "",
              "| server | windows | mean share of frame | frames | bytes up | bytes down | mean latency ms | "
              "mean compute ms |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in s["remotes"].items():
        lines.append(f"| {name} | {r['windows']} | {100 * r['mean_share']:.1f} % | {r['frames']} | {r['bytes_up']:,} | "
                     f"{r['bytes_down']:,} | {r['mean_latency_ms']:.1f} | {r['mean_compute_ms']:.1f} |")
    b = s["bytes"]
    lines += ["", f"Bytes per frame: {b['up_per_frame']:,.0f} up (uint8 window pixels), {b['down_per_frame']:,.0f} "
              "down (tokens in the wire precision): each server's bytes over the frames it encoded, summed.", "",
              "## Overlays", ""]
    lines += [f"- [{p}]({p})" for p in s["overlays"]]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="ped-sam-demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
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
    args = ap.parse_args(argv)
    if args.deadline is None:
        args.deadline = 120.0 if not args.checkpoint else 600.0
    if args.checkpoint and not Path(args.checkpoint).is_file():
        ap.error(f"checkpoint {args.checkpoint} does not exist")

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
