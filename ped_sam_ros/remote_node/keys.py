"""``ped-sam-keys``: make a CurveZMQ key pair for an edge or a remote server.

    ped-sam-keys --dir ~/.ped_sam/keys --name edge1
    -> ~/.ped_sam/keys/edge1.key         public key: copy it to each server's authorized-keys dir
       ~/.ped_sam/keys/edge1.key_secret  secret key (mode 600): stays on this machine

For a server the same: hand ``server.key`` to the edges (their server public
key), keep ``server.key_secret``.  Keys live outside the repository.
The loaders live in :mod:`ped_sam_ros.net.curve` (one copy, shared with the edge).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

from ped_sam_ros.net.curve import NAME_RE, CurveKeyError, load_public_key, load_secret_pair  # noqa: F401  (re-exported)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="ped-sam-keys", description="Create a CurveZMQ key pair (NAME.key, NAME.key_secret).")
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
