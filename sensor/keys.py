"""CURVE key pairs for nodes and the locator: ``shotnet keys create|list``.

Each key pair is two files in a key directory, as pyzmq's ``zmq.auth`` writes them:
``<name>.key`` (public, safe to copy) and ``<name>.key_secret`` (secret, mode 0600).
A node's key is named after its ``sensor_id``; the locator's is named ``locator``.
Register a node with the locator by copying its ``<sensor_id>.key`` into the locator's
``authorized_keys_dir``; the locator then accepts that key, and only for that sensor id.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def create(key_dir: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    import zmq.auth

    d = Path(key_dir)
    d.mkdir(parents=True, exist_ok=True)
    pub, sec = d / f"{name}.key", d / f"{name}.key_secret"
    if (pub.exists() or sec.exists()) and not force:
        raise FileExistsError(f"{pub} or {sec} exists (use --force to replace)")
    zmq.auth.create_certificates(str(d), name)
    os.chmod(sec, 0o600)
    return pub, sec


def list_keys(key_dir: str | Path) -> list[tuple[str, str, bool]]:
    """(name, public key z85, has secret) for every ``*.key`` in the directory."""
    import zmq.auth

    out = []
    for pub in sorted(Path(key_dir).glob("*.key")):
        public, _ = zmq.auth.load_certificate(str(pub))
        out.append((pub.stem, public.decode(), pub.with_suffix(".key_secret").exists()))
    return out


def authorized(key_dir: str | Path) -> dict[bytes, str]:
    """Public key (z85) -> name, for the locator's authorised node keys."""
    return {pub.encode(): name for name, pub, _ in list_keys(key_dir)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet keys", description="Create and list CURVE key pairs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create key pairs (one per name)")
    c.add_argument("names", nargs="+", help="sensor ids, or 'locator'")
    c.add_argument("--dir", default="keys", help="key directory (default ./keys)")
    c.add_argument("--force", action="store_true", help="replace existing keys")
    ls = sub.add_parser("list", help="list the key pairs in a directory")
    ls.add_argument("--dir", default="keys")
    args = ap.parse_args(argv)
    if args.cmd == "create":
        for name in args.names:
            try:
                pub, sec = create(args.dir, name, args.force)
            except (FileExistsError, OSError) as exc:
                print(f"shotnet keys: {exc}", file=sys.stderr)
                return 2
            print(f"{name}: public {pub}, secret {sec}")
        return 0
    keys = list_keys(args.dir)
    if not keys:
        print(f"no keys in {args.dir}", file=sys.stderr)
        return 1
    for name, public, has_secret in keys:
        print(f"{name:20s} {public}  {'secret' if has_secret else 'public only'}")
    return 0
