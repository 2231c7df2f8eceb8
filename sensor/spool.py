"""The node's on-disk spool: every detection is kept until the locator acknowledges it.

SQLite (WAL, ``synchronous=FULL``): a detection is written before it is sent, so a
locator outage, a network partition or a node reboot loses nothing; on reconnect the
spool drains oldest first. The node's sequence counter lives here too, so ``seq`` (and
with it the detection key ``sensor_id:seq``) never repeats across restarts.

Bounded: at most ``max_rows`` unacknowledged detections (default 100,000: about four
days of a busy street corner). When full, the oldest detection that is *not* labelled a
gunshot is dropped to make room; only if every spooled detection is a gunshot does the
oldest one go. Every drop is counted (``dropped``) and logged, never silent.

If the disk itself fails (full, read-only), the node keeps running: detections it cannot
write wait in memory (at most ``memory_rows``, then the same drop policy), are sent and
resent like the others, and ``disk_errors`` counts every failed write.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path

from .contract import Detection, detection_to_dict, encode, KIND_DETECTION

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY,
    t_ns INTEGER NOT NULL,
    label TEXT NOT NULL,
    frames BLOB NOT NULL,
    sent_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""


def _pack(frames: list[bytes]) -> bytes:
    out = bytearray()
    for f in frames:
        out += len(f).to_bytes(4, "big") + f
    return bytes(out)


def _unpack(blob: bytes) -> list[bytes]:
    frames, i = [], 0
    while i < len(blob):
        n = int.from_bytes(blob[i:i + 4], "big")
        frames.append(bytes(blob[i + 4:i + 4 + n]))
        i += 4 + n
    return frames


class Spool:
    def __init__(self, path: str | Path = ":memory:", max_rows: int = 100_000, memory_rows: int = 10_000):
        self.path = str(path)
        self.max_rows = int(max_rows)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.reset_sent()
        self.dropped = 0
        self.acked = 0
        self.disk_errors = 0
        self.memory_rows = memory_rows
        self._mem: OrderedDict[int, list] = OrderedDict()   # seq -> [sent_at, label, frames]
        self._mem_next_seq = 0

    # ------------------------------------------------------------------ sequence numbers
    def next_seq(self) -> int:
        """The first unused sequence number (survives restarts)."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'next_seq'").fetchone()
        top = self.db.execute("SELECT MAX(seq) FROM spool").fetchone()[0]
        return max(row[0] if row else 0, (top + 1) if top is not None else 0, self._mem_next_seq)

    # ------------------------------------------------------------------ detections
    def add(self, det: Detection) -> list[bytes]:
        """Store a detection (before it is sent); returns its wire frames."""
        frames = encode(KIND_DETECTION, detection_to_dict(det))
        try:
            self._add_db(det, frames)
        except sqlite3.Error as exc:
            # Disk full or failing: keep it in memory rather than lose it.
            self.disk_errors += 1
            log.error("spool write failed (%s): detection %s kept in memory", exc, det.key)
            self._mem[det.seq] = [0.0, det.label, frames]
            self._mem_next_seq = max(self._mem_next_seq, det.seq + 1)
            while len(self._mem) > self.memory_rows:
                victim = next((q for q, v in self._mem.items() if v[1] != "gunshot"), next(iter(self._mem)))
                del self._mem[victim]
                self.dropped += 1
        return frames

    def _add_db(self, det: Detection, frames: list[bytes]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT OR IGNORE INTO spool (seq, t_ns, label, frames) VALUES (?, ?, ?, ?)",
                            (det.seq, det.t_ns, det.label, _pack(frames)))
            self.db.execute("INSERT INTO meta (k, v) VALUES ('next_seq', ?) "
                            "ON CONFLICT(k) DO UPDATE SET v = MAX(v, excluded.v)", (det.seq + 1,))
            over = self.depth() - self.max_rows
            if over > 0:
                self._drop(over)
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def _drop(self, n: int) -> None:
        victims = [r[0] for r in self.db.execute(
            "SELECT seq FROM spool WHERE label != 'gunshot' ORDER BY seq LIMIT ?", (n,))]
        if len(victims) < n:
            victims += [r[0] for r in self.db.execute(
                "SELECT seq FROM spool WHERE label = 'gunshot' ORDER BY seq LIMIT ?", (n - len(victims),))]
        self.db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in victims])
        self.dropped += len(victims)
        log.warning("spool full (%d rows): dropped %d oldest detection(s), seq %s", self.max_rows, len(victims),
                    victims[:5])

    def ack(self, seqs: list[int]) -> int:
        if not seqs:
            return 0
        n = 0
        for q in seqs:
            if self._mem.pop(int(q), None) is not None:
                n += 1
        try:
            cur = self.db.executemany("DELETE FROM spool WHERE seq = ?", [(int(q),) for q in seqs])
            n += max(cur.rowcount, 0)
        except sqlite3.Error as exc:
            self.disk_errors += 1
            log.error("spool delete failed (%s)", exc)
        self.acked += n
        return n

    def due(self, resend_s: float, limit: int) -> list[tuple[int, list[bytes]]]:
        """Up to ``limit`` detections, oldest first, never sent or sent more than
        ``resend_s`` ago; marks them sent now."""
        now = time.monotonic()
        rows = self.db.execute("SELECT seq, frames FROM spool WHERE sent_at <= ? ORDER BY seq LIMIT ?",
                               (now - resend_s, limit)).fetchall()
        if rows:
            try:
                self.db.executemany("UPDATE spool SET sent_at = ? WHERE seq = ?", [(now, s) for s, _ in rows])
            except sqlite3.Error as exc:
                self.disk_errors += 1
                log.error("spool update failed (%s)", exc)
        out = [(s, _unpack(f)) for s, f in rows]
        for q, v in self._mem.items():
            if len(out) >= limit:
                break
            if v[0] <= now - resend_s:
                v[0] = now
                out.append((q, v[2]))
        return sorted(out, key=lambda r: r[0])

    def reset_sent(self) -> None:
        """A new process: whatever was in flight before is due again."""
        self.db.execute("UPDATE spool SET sent_at = 0")

    def depth(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM spool").fetchone()[0] + len(self._mem)

    def in_flight(self, resend_s: float) -> int:
        cut = time.monotonic() - resend_s
        return self.db.execute("SELECT COUNT(*) FROM spool WHERE sent_at > ?", (cut,)).fetchone()[0] + \
            sum(1 for v in self._mem.values() if v[0] > cut)

    def close(self) -> None:
        self.db.close()
