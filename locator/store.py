"""The locator's store: SQLite in WAL mode, the single source of truth.

The service writes a detection before acknowledging it and an event before publishing
it. Keys make every write idempotent: a detection is ``sensor_id:seq``, an event its
deterministic ``event_id``; a replay or a resend changes nothing, and a locator killed
mid-stream restarts from here without losing or doubling anything.

Tables: ``detections``, ``events`` (latest version of each event), ``event_versions``
(every published version), ``incidents``, ``health`` (node heartbeats).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
from pathlib import Path

from shotnet.sensor.contract import Detection, Event, detection_from_dict, detection_to_dict, event_from_dict

SCHEMA = """
CREATE TABLE IF NOT EXISTS detections (
    key TEXT PRIMARY KEY, sensor_id TEXT NOT NULL, seq INTEGER NOT NULL, t_ns INTEGER NOT NULL,
    label TEXT NOT NULL, body TEXT NOT NULL, clip BLOB, received_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS detections_t ON detections(t_ns);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, version INTEGER NOT NULL, t_ns INTEGER NOT NULL, incident_id TEXT,
    label TEXT NOT NULL, n_sensors INTEGER NOT NULL, test INTEGER NOT NULL, body TEXT NOT NULL,
    stored_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_t ON events(t_ns);
CREATE TABLE IF NOT EXISTS event_versions (
    event_id TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL, stored_ns INTEGER NOT NULL,
    PRIMARY KEY (event_id, version));
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY, first_t_ns INTEGER NOT NULL, last_t_ns INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS health (
    sensor_id TEXT NOT NULL, t_ns INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (sensor_id, t_ns));
"""


def _locked(fn):
    """One statement or transaction at a time: the service ingests on one thread and
    associates on another, over one connection."""
    @functools.wraps(fn)
    def wrapper(self, *a, **kw):
        with self.lock:
            return fn(self, *a, **kw)
    return wrapper


class Store:
    def __init__(self, path: str | Path):
        self.lock = threading.RLock()
        self._tx = 0                    # depth of transaction() blocks open (on the lock's thread)
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed detection survives power loss, not only a killed process.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self):
        """One transaction for several writes (``put_event``, ``put_incident``): they
        commit together at the end of the block, or not at all. Holds the lock."""
        with self.lock:
            if self._tx:
                self._tx += 1
                try:
                    yield self
                finally:
                    self._tx -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._tx = 1
            try:
                yield self
            except BaseException:
                self._tx = 0
                self.db.execute("ROLLBACK")
                raise
            self._tx = 0
            self.db.execute("COMMIT")

    # ------------------------------------------------------------ detections
    @_locked
    def add_detections(self, dets: list[Detection]) -> list[bool]:
        """Insert in one transaction; returns, per detection, whether it was new."""
        now = time.time_ns()
        out = []
        self.db.execute("BEGIN")
        try:
            for d in dets:
                doc = detection_to_dict(d, with_clip=False)
                if d.clip is not None and d.clip_fs_hz:
                    doc["clip_fs_hz"] = d.clip_fs_hz   # the clip itself is in its own column
                body = json.dumps(doc, separators=(",", ":"))
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO detections (key, sensor_id, seq, t_ns, label, body, clip, received_ns) "
                    "VALUES (?,?,?,?,?,?,?,?)", (d.key, d.sensor_id, d.seq, d.t_ns, d.label, body, d.clip, now))
                out.append(cur.rowcount == 1)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return out

    @_locked
    def detections_since(self, t_ns: int) -> list[Detection]:
        rows = self.db.execute("SELECT body FROM detections WHERE t_ns >= ? ORDER BY t_ns", (t_ns,))
        return [detection_from_dict(json.loads(body)) for (body,) in rows]

    @_locked
    def count_detections(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM detections").fetchone()[0]

    @_locked
    def keys_with_clip(self, keys: list[str]) -> set[str]:
        """Which of these detection keys carry a clip."""
        if not keys:
            return set()
        q = ",".join("?" * len(keys))
        return {k for (k,) in self.db.execute(f"SELECT key FROM detections WHERE clip IS NOT NULL AND key IN ({q})",
                                               list(keys))}

    @_locked
    def clip(self, key: str) -> tuple[bytes, int] | None:
        row = self.db.execute("SELECT clip, body FROM detections WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] is None:
            return None
        return row[0], json.loads(row[1]).get("clip_fs_hz", 0)

    # ------------------------------------------------------------ events
    @_locked
    def put_event(self, ev: Event, body: str | None = None) -> str:
        """Store an event (``body``: its JSON, if the caller has it). Returns ``"new"``,
        ``"updated"`` (more detections than the stored version) or ``"same"`` (nothing
        to publish)."""
        now = time.time_ns()
        body = ev.to_json() if body is None else body
        with self.transaction():
            row = self.db.execute("SELECT n_sensors, version FROM events WHERE event_id = ?", (ev.event_id,)).fetchone()
            if row is None:
                status = "new"
            elif len(ev.sensor_ids) > row[0]:
                status = "updated"
            else:
                status = "same"
            if status != "same":
                self.db.execute(
                    "INSERT OR REPLACE INTO events (event_id, version, t_ns, incident_id, label, n_sensors, test, body, "
                    "stored_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                    (ev.event_id, ev.version, ev.t_ns, ev.incident_id, ev.label, len(ev.sensor_ids), int(ev.test),
                     body, now))
                self.db.execute("INSERT OR REPLACE INTO event_versions VALUES (?,?,?,?)",
                                (ev.event_id, ev.version, body, now))
        return status

    @_locked
    def events(self, since_ns: int = 0) -> list[Event]:
        rows = self.db.execute("SELECT body FROM events WHERE t_ns >= ? ORDER BY t_ns", (since_ns,))
        return [event_from_dict(json.loads(b)) for (b,) in rows]

    @_locked
    def event(self, event_id: str) -> Event | None:
        row = self.db.execute("SELECT body FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return event_from_dict(json.loads(row[0])) if row else None

    # ------------------------------------------------------------ incidents, health
    @_locked
    def put_incident(self, incident: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO incidents VALUES (?,?,?,?)",
                        (incident["incident_id"], incident["first_t_ns"], incident["last_t_ns"],
                         json.dumps(incident, separators=(",", ":"))))

    @_locked
    def incidents(self, since_ns: int = 0) -> list[dict]:
        rows = self.db.execute("SELECT body FROM incidents WHERE last_t_ns >= ? ORDER BY first_t_ns", (since_ns,))
        return [json.loads(b) for (b,) in rows]

    @_locked
    def put_health(self, sensor_id: str, t_ns: int, body: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO health VALUES (?,?,?)",
                        (sensor_id, t_ns, json.dumps(body, separators=(",", ":"))))

    @_locked
    def health(self, since_ns: int = 0) -> list[tuple[str, int, dict]]:
        rows = self.db.execute("SELECT sensor_id, t_ns, body FROM health WHERE t_ns >= ? ORDER BY t_ns", (since_ns,))
        return [(s, t, json.loads(b)) for s, t, b in rows]
