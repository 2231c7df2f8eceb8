"""A tamper-evident audit log: append-only JSON Lines, each entry chained to the last.

Every entry is one line::

    {"seq": 17, "t_ns": ..., "kind": "cue" | "grant" | "access" | "denied" | "footage_request"
     | "optout" | "export" | ..., "actor": "hub" | "user:<name>" | "locator", "data": {...},
     "prev": "<hash of entry 16>", "hash": "<sha256 of this entry without 'hash'>"}

``hash`` is the SHA-256 of the entry's canonical JSON (sorted keys, no spaces) without
the ``hash`` field, and ``prev`` is the previous entry's hash (64 zeros for the first).
So editing any entry breaks its own hash, deleting or reordering entries breaks the
chain (``seq`` and ``prev``), and :func:`verify` says where. Deleting the *last* entries
leaves a shorter valid chain: publish the head (``shotnet audit head``) to an outside
party from time to time and verify against it (``--expect-head``) to catch truncation.

Writes are appended and fsync'd under a lock; the file is never rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64


def _digest(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.seq, self.head = -1, GENESIS
        if self.path.exists() and self.path.stat().st_size:
            problems, last = verify(self.path)
            if problems:
                raise ValueError(f"{self.path}: audit log fails verification: {problems[0]}")
            if last is not None:
                self.seq, self.head = last["seq"], last["hash"]

    def append(self, kind: str, actor: str, data: dict, t_ns: int | None = None) -> dict:
        with self._lock:
            entry = {"seq": self.seq + 1, "t_ns": int(t_ns if t_ns is not None else time.time_ns()), "kind": kind,
                     "actor": actor, "data": data, "prev": self.head}
            entry["hash"] = _digest(entry)
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
            with open(self.path, "a") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.seq, self.head = entry["seq"], entry["hash"]
            return entry

    def entries(self) -> list[dict]:
        return read(self.path)


def read(path: str | Path) -> list[dict]:
    out = []
    with open(path) as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
    return out


@dataclass(frozen=True)
class Problem:
    line: int          # 1-based line of the file
    seq: int | None
    what: str

    def __str__(self) -> str:
        return f"line {self.line} (seq {self.seq}): {self.what}"


def verify(path: str | Path, expect_head: str | None = None) -> tuple[list[Problem], dict | None]:
    """Check the whole chain. Returns (problems, last good entry); no problems means no
    entry was edited, removed (except possibly at the end; see ``expect_head``), inserted
    or reordered."""
    problems: list[Problem] = []
    prev, want_seq, last = GENESIS, 0, None
    with open(path) as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            seq, h, p = e["seq"], e["hash"], e["prev"]
        except (ValueError, KeyError, TypeError):
            problems.append(Problem(i, None, "not an audit entry (unreadable or fields missing)"))
            break
        if _digest(e) != h:
            problems.append(Problem(i, seq, "entry was edited: its hash does not match its content"))
            break
        if seq != want_seq:
            what = (f"entries missing before this one (expected seq {want_seq})" if seq > want_seq
                    else f"entry out of order or repeated (expected seq {want_seq})")
            problems.append(Problem(i, seq, what))
            break
        if p != prev:
            problems.append(Problem(i, seq, "chain broken: 'prev' is not the previous entry's hash"))
            break
        prev, want_seq, last = h, seq + 1, e
    if not problems and expect_head is not None and (last is None or last["hash"] != expect_head):
        problems.append(Problem(len(lines), last["seq"] if last else None,
                                "the log ends before the expected head: entries were removed from its end"))
    return problems, last


def export(path: str | Path, out: str | Path, since_ns: int = 0, until_ns: int = 1 << 63,
           kinds: tuple[str, ...] = (), log: AuditLog | None = None, actor: str = "oversight") -> int:
    """Write the entries in a time range (optionally of some kinds) to ``out`` as JSON
    Lines, after verifying the chain; each exported entry keeps its hash and prev so the
    recipient can check them against the published head. The export itself is logged."""
    problems, _ = verify(path)
    if problems:
        raise ValueError(f"{path}: refusing to export an audit log that fails verification: {problems[0]}")
    rows = [e for e in read(path) if since_ns <= e["t_ns"] < until_ns and (not kinds or e["kind"] in kinds)]
    with open(out, "w") as fh:
        for e in rows:
            fh.write(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n")
    if log is not None:
        log.append("export", actor, {"file": str(out), "entries": len(rows), "since_ns": since_ns,
                                     "until_ns": until_ns, "kinds": list(kinds)})
    return len(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet audit", description="Verify, export and anchor the audit log.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check every entry and the chain; exit 1 and say where if tampered")
    v.add_argument("log")
    v.add_argument("--expect-head", help="the head hash published earlier (catches truncation)")
    h = sub.add_parser("head", help="print the last entry's seq and hash, to publish elsewhere")
    h.add_argument("log")
    x = sub.add_parser("export", help="export a verified time range for oversight")
    x.add_argument("log")
    x.add_argument("--out", required=True)
    x.add_argument("--since-ns", type=int, default=0)
    x.add_argument("--until-ns", type=int, default=1 << 63)
    x.add_argument("--kind", action="append", default=[], help="only entries of this kind (repeatable)")
    x.add_argument("--actor", default="oversight", help="who exports (logged)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "verify":
            problems, last = verify(args.log, args.expect_head)
            if problems:
                for p in problems:
                    print(f"{args.log}: TAMPERED: {p}")
                return 1
            n = last["seq"] + 1 if last else 0
            print(f"{args.log}: OK, {n} entries, head {last['hash'] if last else GENESIS}")
            return 0
        if args.cmd == "head":
            problems, last = verify(args.log)
            if problems:
                print(f"{args.log}: TAMPERED: {problems[0]}", file=sys.stderr)
                return 1
            print(json.dumps({"seq": last["seq"] if last else -1, "head": last["hash"] if last else GENESIS}))
            return 0
        n = export(args.log, args.out, args.since_ns, args.until_ns, tuple(args.kind), AuditLog(args.log), args.actor)
        print(f"exported {n} entries to {args.out}")
        return 0
    except (OSError, ValueError) as exc:
        print(f"shotnet audit: {exc}", file=sys.stderr)
        return 2
