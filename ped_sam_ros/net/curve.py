"""CurveZMQ key files: loading what ``zmq.auth.create_certificates`` wrote.

One copy of these loaders, used by the edge client (``zmq_client``) and the
remote server (``remote_node``).  A key pair is two files: ``NAME.key`` (public
key only, safe to hand out) and ``NAME.key_secret`` (public and secret key;
keep it private, chmod 600).  Keys live outside the repository and are passed
by path.  :func:`is_local_endpoint` says when Curve is needed at all.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from pathlib import Path
from typing import Tuple, Union

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


class CurveKeyError(ValueError):
    """A key file that is missing or not a CurveZMQ certificate."""


def _load(path: PathLike):
    import zmq.auth

    p = Path(path)
    if not p.is_file():
        raise CurveKeyError(f"Curve key file {p} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(str(p))
    except Exception as e:  # malformed file: zmq.auth raises ValueError / IOError variants
        raise CurveKeyError(f"{p} is not a CurveZMQ certificate ({e})") from None
    if not public:
        raise CurveKeyError(f"{p} holds no public key")
    return p, public, secret


def load_public_key(path: PathLike) -> bytes:
    """The Z85 public key from a ``.key`` (or ``.key_secret``) file."""
    return _load(path)[1]


def load_secret_pair(path: PathLike) -> Tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file.

    Warns when the file is readable by group or others.
    """
    p, public, secret = _load(path)
    if not secret:
        raise CurveKeyError(f"{p} holds no secret key: pass the NAME.key_secret file, not NAME.key")
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("Curve secret key %s is accessible by group/others (mode %o); chmod 600 it",
                        p, stat.S_IMODE(mode))
    except OSError:
        pass
    return public, secret


def is_local_endpoint(endpoint: str) -> bool:
    """True for endpoints only this machine can reach.

    ``ipc://``, ``inproc://``, and ``tcp://`` on 127.0.0.0/8, ``::1`` or
    ``localhost``.  Wildcards (``*``, ``0.0.0.0``), interface names and other
    transports count as remote.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
