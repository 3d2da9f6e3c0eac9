"""CurveZMQ key files and endpoint locality: what the edge client and the server both need.

A key pair is two files written by ``zmq.auth.create_certificates``: ``NAME.key``
(public key only, safe to hand out) and ``NAME.key_secret`` (public and secret
key; keep it private, chmod 600).  Keys live outside the repository and are
passed by path.  This module reads them (one copy of the checks, used by the
edge's ``zmq_client`` and by ``remote_node``, which imports it: imports point
from the server to ``ped_sam_ros``, never back), and :func:`is_local_endpoint`
says when Curve is needed at all.  Making key pairs and reading a server's
authorized-keys directory belong to the server (``remote_node.keys``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from pathlib import Path
from typing import Optional, Tuple, Union

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


#: a server or key-pair name: the edge finds server NAME's public key as ``NAME.key``, so one
#: rule serves both (no path separators)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CurveKeyError(ValueError):
    """A key file that is missing or not a CurveZMQ certificate."""


def _check_z85_key(p: Path, which: str, key: bytes) -> None:
    """A Curve key in a certificate is 40 Z85 characters (32 bytes)."""
    from zmq.utils import z85

    ok = len(key) == 40
    if ok:
        try:
            ok = len(z85.decode(key)) == 32
        except Exception:  # characters outside the Z85 alphabet
            ok = False
    if not ok:
        raise CurveKeyError(f"{p}: the {which} key is not a 40-character Z85 Curve key")


def load_certificate(path: PathLike) -> Tuple[Path, bytes, Optional[bytes]]:
    """(path, public, secret) Z85 keys of a certificate file, checked; ``secret`` is None (or
    empty) for a public ``NAME.key``.  Raises :class:`CurveKeyError` naming the file."""
    import zmq.auth

    p = Path(path)
    if not p.exists():
        raise CurveKeyError(f"Curve key file {p} does not exist")
    if not p.is_file():
        raise CurveKeyError(f"Curve key file {p} is not a regular file")
    try:
        public, secret = zmq.auth.load_certificate(str(p))
    except Exception as e:  # malformed file: zmq.auth raises ValueError / IOError variants
        raise CurveKeyError(f"{p} is not a CurveZMQ certificate ({e})") from None
    if not public:
        raise CurveKeyError(f"{p} holds no public key")
    _check_z85_key(p, "public", public)
    if secret:
        _check_z85_key(p, "secret", secret)
    return p, public, secret


def load_public_key(path: PathLike) -> bytes:
    """The Z85 public key from a ``.key`` (or ``.key_secret``) file."""
    return load_certificate(path)[1]


def load_secret_pair(path: PathLike) -> Tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file.

    Warns when the file is readable by group or others.
    """
    p, public, secret = load_certificate(path)
    if not secret:
        raise CurveKeyError(f"{p} holds no secret key: pass the NAME.key_secret file, not NAME.key")
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "Curve secret key %s is accessible by group/others (mode %o); chmod 600 it", p, stat.S_IMODE(mode)
            )
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
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
