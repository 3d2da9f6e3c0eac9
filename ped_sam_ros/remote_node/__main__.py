"""``python -m remote_node`` / ``ped-sam-remote``: run one remote encoder server.

    python -m remote_node --bind tcp://127.0.0.1:5555 --model vit_b --checkpoint sam_vit_b_01ec64.pth
    python -m remote_node --bind tcp://0.0.0.0:5555 --model vit_b --checkpoint sam_vit_b_01ec64.pth \\
        --server-key keys/server.key_secret --authorized-keys keys/authorized/
    python -m remote_node --bind 'tcp://127.0.0.1:*' --model vit_b/w32h2 --random-weights --seed 1 \\
        --ready-file /tmp/server.endpoint
    python -m remote_node --bind tcp://127.0.0.1:5555 --model vit_h --checkpoint sam_vit_h_4b8939.pth \\
        --device cuda --precision bfloat16 --compile

Logs go to stderr.  SIGINT/SIGTERM stop the server cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from ped_sam_ros.processes import write_ready_file

log = logging.getLogger("remote_node")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ped-sam-remote",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--bind",
        required=True,
        help="ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:5555 (tcp://127.0.0.1:* picks a free port)",
    )
    ap.add_argument("--model", required=True, help="model geometry: vit_b, vit_l, vit_h, or e.g. vit_b/w32h2")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="full SAM checkpoint (.pth); only the remote stage is loaded")
    src.add_argument(
        "--random-weights",
        action="store_true",
        help="serve a randomly initialised model (demos/tests only: results are meaningless)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed for --random-weights (the edge must use the same)")
    ap.add_argument("--server-key", help="this server's NAME.key_secret (enables CurveZMQ)")
    ap.add_argument("--authorized-keys", help="directory of client public keys (*.key) allowed to connect")
    ap.add_argument(
        "--allow-insecure-remote",
        action="store_true",
        help="allow binding a non-loopback address without CurveZMQ (plaintext, anyone can connect)",
    )
    ap.add_argument("--name", help="server name shown in info replies and edge diagnostics")
    ap.add_argument("--ready-file", help="write the bound endpoint to this file once the socket is bound")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--device",
        default="auto",
        help="where the stage runs: auto (the first CUDA device when present, else the CPU), cpu, "
        "cuda or cuda:N (default auto)",
    )
    ap.add_argument(
        "--precision",
        default="float32",
        help="float precision of the encoder blocks: float32, float16 or bfloat16 (default float32); "
        "float16 on the CPU is refused unless --precision-fallback",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the encoder blocks (the first request of each shape pays the compilation)",
    )
    ap.add_argument(
        "--precision-fallback",
        action="store_true",
        help="run float32 / uncompiled with a warning instead of refusing an impossible precision or --compile",
    )
    ap.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="most requests computed together as one batch (compatible ones: same mode, tile token "
        "shape and reply dtype; default 32, 1: no batching)",
    )
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return ap


def _random_stage(model: str, seed: int, stage_options: Optional[dict] = None):
    """The remote stage with random weights, announced loudly (its outputs mean nothing)."""
    from ped_sam_ros.core.model import RemoteStage

    bar = "!" * 78
    log.warning("%s", bar)
    log.warning("RANDOM WEIGHTS (seed %d): this server's outputs are MEANINGLESS. For demos and tests only;", seed)
    log.warning("the edge must build its model with random_sam(%r, seed=%d) to match.", model, seed)
    log.warning("%s", bar)
    return RemoteStage(model, seed=seed, **(stage_options or {}))


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown: flush the logs, then ``os._exit``.

    The teardown (a garbage collection over every torch/numpy object) took 4-6 s on a loaded
    2-core machine, past launch's SIGINT timeout; what needs closing (the socket, the
    authenticator, the ZeroMQ context) is closed before this is called.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(server, ready_file: Optional[str], exit_budget_s: Optional[float] = None) -> None:
    """Serve until SIGINT or SIGTERM, then release the server.

    ``exit_budget_s`` (the process's own main only): after the first signal, the process ends
    within that time even if the compute thread is inside a long encode (the server waits up to
    10 s for it), so that launch's SIGINT never has to escalate.
    """
    stop = threading.Event()

    def _deadline() -> None:
        log.warning(
            "still busy %.1f s after the stop signal: exiting without waiting for the compute thread", exit_budget_s
        )
        _exit_now(0)

    def _stop(signum, _frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        if exit_budget_s is not None and not stop.is_set():
            timer = threading.Timer(exit_budget_s, _deadline)
            timer.daemon = True
            timer.start()
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if ready_file:
            write_ready_file(ready_file, server.endpoint)
        server.serve_forever(stop)
    finally:
        server.close()
        log.info("stopped after %d requests served (%d refused)", server.requests_served, server.errors)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if argv is None:
        # A stop signal while starting (importing torch, loading weights: seconds) ends the
        # process at once with 0, as launch expects; _serve installs the serving handlers.
        def _stop_while_starting(signum, _frame):
            log.info("signal %s while starting: exiting", signal.Signals(signum).name)
            _exit_now(0)

        signal.signal(signal.SIGINT, _stop_while_starting)
        signal.signal(signal.SIGTERM, _stop_while_starting)

    from .policy import ServerConfigError, check_bind_policy

    # Refuse an unsafe bind before spending seconds on loading the model.
    try:
        check_bind_policy(args.bind, bool(args.server_key), args.allow_insecure_remote)
    except ServerConfigError as e:
        print(f"ped-sam-remote: error: {e}", file=sys.stderr)
        return 2

    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)

    from .server import EncoderServer, ServerOptions

    try:
        from ped_sam_ros.core.device import resolve_placement
        from ped_sam_ros.core.model import get_geometry

        get_geometry(args.model)  # a bad model name fails here, before anything is loaded
        # as does an impossible device or precision (DeviceError says why)
        resolve_placement(args.device, args.precision, allow_fallback=args.precision_fallback)
        extra = {} if args.max_batch is None else {"max_batch": args.max_batch}
        options = ServerOptions(
            name=args.name,
            server_secret_key=args.server_key,
            authorized_keys_dir=args.authorized_keys,
            allow_insecure_remote=args.allow_insecure_remote,
            checkpoint_label=f"random(seed={args.seed})" if args.random_weights else None,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
            precision_fallback=args.precision_fallback,
            **extra,
        )
        stage = _random_stage(args.model, args.seed, options.stage_options()) if args.random_weights else None
        server = EncoderServer(args.bind, args.model, args.checkpoint, options, stage=stage)
    except Exception as e:  # config, keys, checkpoint, bind errors: one clear line, non-zero exit
        log.debug("startup failed", exc_info=True)
        print(f"ped-sam-remote: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    # started as a program: bounded stop, and no interpreter teardown after it (see _exit_now)
    _serve(server, args.ready_file, exit_budget_s=1.0 if argv is None else None)
    if argv is None:
        _exit_now(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
