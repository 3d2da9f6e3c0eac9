"""Which addresses a server may bind without CurveZMQ (no torch import: checked before loading a model)."""

from __future__ import annotations

from ped_sam_ros.net.curve import is_local_endpoint


class ServerConfigError(ValueError):
    """A server configuration that is refused (unsafe bind, missing keys...)."""


def check_bind_policy(bind: str, curve: bool, allow_insecure_remote: bool = False) -> None:
    """Refuse a non-loopback bind without CurveZMQ unless explicitly allowed."""
    if curve or allow_insecure_remote or is_local_endpoint(bind):
        return
    raise ServerConfigError(
        f"refusing to bind {bind} without CurveZMQ: tile pixels and tokens would cross the network "
        f"unencrypted and any host could use this server. Pass --server-key and --authorized-keys "
        f"(make keys with ped-sam-keys), bind a loopback address (tcp://127.0.0.1:PORT), or pass "
        f"--allow-insecure-remote if the network is otherwise protected."
    )
