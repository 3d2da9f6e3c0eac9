"""The server's CurveZMQ keys: making key pairs (``ped-sam-keys``), loading the server's own
pair and its authorized-keys directory, and the authenticator that enforces it.

    ped-sam-keys --dir ~/.ped_sam/keys --name edge1
    -> ~/.ped_sam/keys/edge1.key         public key: copy it to each server's authorized-keys dir
       ~/.ped_sam/keys/edge1.key_secret  secret key (mode 600): stays on this machine

For a server the same: hand ``server.key`` to the edges (their server public
key), keep ``server.key_secret``.  Keys live outside the repository.  Reading
one key file is :mod:`ped_sam_ros.net.curve` (one copy of the checks, shared
with the edge client).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ped_sam_ros.net.curve import NAME_RE, CurveKeyError, PathLike, load_certificate, load_secret_pair

from .policy import ServerConfigError


def create_keypair(directory, name: str, force: bool = False) -> Tuple[Path, Path]:
    """Create ``NAME.key`` and ``NAME.key_secret`` in ``directory``; returns their paths."""
    import zmq.auth

    if not NAME_RE.fullmatch(name):
        raise ValueError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (no path separators)")
    d = Path(directory).expanduser()
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass --force to replace the key pair)")
    d.mkdir(parents=True, exist_ok=True)
    for p in (public, secret):
        if p.exists():
            p.unlink()
    old = os.umask(0o077)  # the secret file is never world-readable, not even briefly
    try:
        pub, sec = zmq.auth.create_certificates(str(d), name)
    finally:
        os.umask(old)
    os.chmod(sec, 0o600)
    os.chmod(pub, 0o644)
    return Path(pub), Path(sec)


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
        raise CurveKeyError(
            f"authorized keys directory {d} holds no client public keys (*.key files): no client could connect"
        )
    keys = []
    for f in files:
        p, public, secret = load_certificate(f)
        if secret:
            logging.getLogger(__name__).warning(
                "authorized key file %s also holds a secret key: only the public NAME.key file belongs there", p
            )
        keys.append((p, public))
    return keys


@dataclass(frozen=True)
class ServerKeys:
    """A Curve server's own key pair and the client keys it trusts (checked before any socket exists)."""

    public: bytes
    secret: bytes
    authorized_dir: str
    authorized: List[Tuple[Path, bytes]]  # (file, public key) per trusted client

    @classmethod
    def load(cls, server_secret_key: PathLike, authorized_keys_dir: PathLike) -> ServerKeys:
        """Read ``NAME.key_secret`` and every ``*.key`` of the directory; a bad directory is a
        :class:`ServerConfigError`, a bad secret key file a :class:`CurveKeyError`."""
        location = str(Path(authorized_keys_dir))
        try:
            authorized = load_authorized_keys(location)
        except CurveKeyError as e:
            raise ServerConfigError(f"authorized keys: {e}") from None
        public, secret = load_secret_pair(server_secret_key)
        return cls(public, secret, location, authorized)


class _AuthLog(logging.LoggerAdapter):
    """The authenticator's logger, with refused client keys raised to a (rate-limited) warning.

    pyzmq logs ZAP decisions at debug level; an operator wants to see refusals, but not one
    line per attempt: at most one warning per ``every_s`` for all refusals together (a scan
    with many unknown keys would otherwise log one line per key), with the count since the last.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 60.0):
        super().__init__(logger, {})
        self.every_s = every_s
        self._last = -1e18
        self._quiet = 0  # refusals since the last warning

    def debug(self, msg, *args, **kwargs):
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = str(msg)
        if text.startswith("DENIED"):
            now = time.monotonic()
            if now - self._last >= self.every_s:
                self._last = now
                more = f" ({self._quiet} more refusals since the last such line)" if self._quiet else ""
                self._quiet = 0
                self.warning("Curve handshake refused: %s%s", text, more)
            else:
                self._quiet += 1
                super().debug(msg, *args, **kwargs)
            return
        super().debug(msg, *args, **kwargs)


def start_authenticator(context, keys: ServerKeys):
    """A started ZAP authenticator on ``context`` trusting exactly ``keys.authorized``.

    Raises :class:`ServerConfigError` (after stopping it) when it loaded other keys than
    those checked, e.g. because the directory changed in between."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context, log=_AuthLog(logging.getLogger("remote_node.auth")))
    auth.start()
    try:
        auth.configure_curve(domain="*", location=keys.authorized_dir)
        trusted = set(auth.certs.get("*", {}))
        if trusted != {k for _, k in keys.authorized}:
            raise ServerConfigError(
                f"the Curve authenticator loaded {len(trusted)} client key(s) from "
                f"{keys.authorized_dir}, not the {len(keys.authorized)} checked "
                f"(did the directory change during startup?)"
            )
    except BaseException:
        auth.stop()
        raise
    return auth


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ped-sam-keys``: create a key pair."""
    ap = argparse.ArgumentParser(
        prog="ped-sam-keys", description="Create a CurveZMQ key pair (NAME.key, NAME.key_secret)."
    )
    ap.add_argument("--dir", required=True, help="directory to write the key files to (created if missing)")
    ap.add_argument("--name", required=True, help="base name of the key files, e.g. edge1 or server-a")
    ap.add_argument("--force", action="store_true", help="overwrite an existing key pair of that name")
    args = ap.parse_args(argv)
    try:
        pub, sec = create_keypair(args.dir, args.name, args.force)
    except (FileExistsError, ValueError, OSError) as e:
        print(f"ped-sam-keys: error: {e}", file=sys.stderr)
        return 1
    print(f"public key: {pub}  (give this file to the other side)")
    print(f"secret key: {sec}  (mode 600; keep it on this machine, outside the repository)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
