"""Remote server sets (``config/remotes.yaml``) -> ``ped-sam-remote`` command lines.

Shared by ``launch/remotes.launch.py`` and the demo, so both start servers the
same way; no ROS here.  File format::

    model: vit_b              # every key may also be set per server
    checkpoint: ""            # SAM checkpoint on the server machine, or
    random_weights: true      # a random model (seed below): meaningless masks
    seed: 0
    server_keys_dir: ""       # holds SERVER_NAME.key_secret (CurveZMQ); "" = plaintext (loopback only)
    authorized_keys: ""       # directory of the edges' public keys (*.key)
    torch_threads: 0
    device: auto              # auto (CUDA when present), cpu, cuda, cuda:N
    precision: float32        # float32, float16, bfloat16
    compile: false            # torch.compile the encoder blocks
    precision_fallback: false # float32 / uncompiled instead of refusing an impossible choice
    max_batch: 32             # requests computed together at most
    servers:
      - {name: remote-a, bind: "tcp://127.0.0.1:5601"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from .config import SERVER_NAME_RE, ConfigError

SERVER_KEYS = (
    "model",
    "checkpoint",
    "random_weights",
    "seed",
    "server_keys_dir",
    "authorized_keys",
    "torch_threads",
    "device",
    "precision",
    "compile",
    "precision_fallback",
    "max_batch",
    "name",
    "bind",
    "log_level",
)


def load_remotes_file(path: Union[str, Path]) -> Dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def generated_servers(count: int, base_port: int, host: str = "127.0.0.1", prefix: str = "remote-") -> List[Dict]:
    """``count`` servers on consecutive ports, named remote-a, remote-b, ..."""
    if not 1 <= count <= 25:
        raise ConfigError(f"server count must be 1..25 (a 5x5 grid), got {count}")
    return [{"name": f"{prefix}{chr(ord('a') + i)}", "bind": f"tcp://{host}:{base_port + i}"} for i in range(count)]


def apply_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """Top-level overrides (launch arguments); empty strings mean "keep the file's value".
    ``count``/``base_port`` replace the server list with generated loopback servers."""
    out = dict(cfg)
    for k, v in overrides.items():
        if v in ("", None) or k in ("count", "base_port"):
            continue
        out[k] = v
    if overrides.get("checkpoint"):
        out["random_weights"] = False
    count = overrides.get("count")
    if count not in ("", None, 0, "0"):
        out["servers"] = generated_servers(int(count), int(overrides.get("base_port") or 5601))
    return out


def _truthy(v) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")


def remote_commands(
    cfg: Mapping[str, Any], executable: Sequence[str] = ("ped-sam-remote",)
) -> List[Tuple[str, List[str]]]:
    """(name, argv) for each server of a remotes config."""
    servers = cfg.get("servers") or []
    if not isinstance(servers, list) or not servers:
        raise ConfigError("the remotes config lists no servers")
    out = []
    for i, srv in enumerate(servers):
        if not isinstance(srv, dict):
            raise ConfigError(f"server {i}: expected a mapping with name and bind, got {srv!r}")
        unknown = sorted(set(srv) - set(SERVER_KEYS))
        if unknown:
            raise ConfigError(f"server {i}: unknown keys {unknown}")
        s = {k: cfg[k] for k in SERVER_KEYS if k in cfg and k not in ("servers",)}
        s.update(srv)
        name = str(s.get("name") or f"remote{i}")
        if not SERVER_NAME_RE.fullmatch(name):
            raise ConfigError(f"server {i}: bad name {name!r}")
        bind = s.get("bind")
        if not bind:
            raise ConfigError(f"server {name}: no bind endpoint")
        argv = list(executable) + ["--bind", str(bind), "--name", name, "--model", str(s.get("model", "vit_b"))]
        if _truthy(s.get("random_weights", False)) and not s.get("checkpoint"):
            argv += ["--random-weights", "--seed", str(int(s.get("seed", 0)))]
        elif s.get("checkpoint"):
            argv += ["--checkpoint", str(s["checkpoint"])]
        else:
            raise ConfigError(f"server {name}: set checkpoint, or random_weights: true")
        if s.get("server_keys_dir"):
            argv += ["--server-key", str(Path(str(s["server_keys_dir"])).expanduser() / f"{name}.key_secret")]
            if not s.get("authorized_keys"):
                raise ConfigError(f"server {name}: server_keys_dir needs authorized_keys (the edges' public keys)")
            argv += ["--authorized-keys", str(Path(str(s["authorized_keys"])).expanduser())]
        if int(s.get("torch_threads", 0) or 0) > 0:
            argv += ["--torch-threads", str(int(s["torch_threads"]))]
        if s.get("device") not in (None, "", "auto"):
            argv += ["--device", str(s["device"])]
        if s.get("precision") not in (None, "", "float32"):
            argv += ["--precision", str(s["precision"])]
        if _truthy(s.get("compile", False)):
            argv += ["--compile"]
        if _truthy(s.get("precision_fallback", False)):
            argv += ["--precision-fallback"]
        if s.get("max_batch") not in (None, ""):
            argv += ["--max-batch", str(int(s["max_batch"]))]
        if s.get("log_level"):
            argv += ["--log-level", str(s["log_level"])]
        out.append((name, argv))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"server names repeat: {names}")
    return out
