"""CurveZMQ key files: loading what ``zmq.auth.create_certificates`` wrote.

One copy of these loaders, used by the edge client (``zmq_client``) and the
remote server (``remote_node``).  A key pair is two files: ``NAME.key`` (public
key only, safe to hand out) and ``NAME.key_secret`` (public and secret key;
keep it private, chmod 600).  Keys live outside the repository and are passed
by path.  :func:`is_local_endpoint` says when Curve is needed at all.
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import os
import re
import stat
from pathlib import Path
from typing import List, Tuple, Union

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


def _load(path: PathLike):
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


def load_authorized_keys(directory: PathLike) -> List[Tuple[Path, bytes]]:
    """Check every ``*.key`` file of an authorized-keys directory: (path, public key) each.

    The files are the ones pyzmq's authenticator reads (``glob(DIR/*.key)``).  That
    authenticator trusts *no* key at all when one file in the directory is unreadable
    (it only logs), so each file is checked here first: a bad file raises
    :class:`CurveKeyError` naming it, and so does a directory without any ``*.key``.
    """
    d = Path(directory)
    if not d.is_dir():
        raise CurveKeyError(f"authorized keys directory {d} does not exist or is not a directory")
    # exactly pyzmq's pattern (unescaped), so both see the same files
    files = sorted(glob.glob(os.path.join(str(d), "*.key")))
    if not files:
        raise CurveKeyError(f"authorized keys directory {d} holds no client public keys (*.key files): "
                            f"no client could connect")
    keys = []
    for f in files:
        p, public, secret = _load(f)
        if secret:
            log.warning("authorized key file %s also holds a secret key: only the public NAME.key file "
                        "belongs there", p)
        keys.append((p, public))
    return keys


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
