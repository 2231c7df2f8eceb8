"""The locator service: ZeroMQ in, stored events and alerts out.

*Ingest* (the caller of :meth:`LocatorService.run`): read every waiting message from the
ROUTER; validate each (malformed ones are counted and answered with nothing); write the
valid ones to the SQLite store in one transaction; *then* acknowledge them to their
nodes, and hand new ones to the association. *Association*: feed the
:class:`~shotnet.locator.associate.Associator`, run it every ``step_s``, and publish;
each event (or improved version) is written to the store *before* it is published. So a
busy association (a fireworks night) delays alerts but never acknowledgements: nodes do
not back up. The association runs on a second thread, or (``association_process``, what
``shotnet locator run`` does unless ``association_process = false``) in a process of its
own, which then has an interpreter to itself: sharing one at 1,600 detections/s, the
ingest thread ran 21% of a core and the association thread 65% with 0.4 of two cores
idle. That process replays the store when it starts,
sends its PUB frames and metrics back to the ingest process (one PUB socket, one
metrics endpoint), dies with the locator, and is started again if it dies
(:class:`_AssociationLink`).

- PUB topic ``b"evt"``: the event JSON (every located impulse, alerts and notices);
- PUB topic ``b"inc"``: the incident summary (rounds, automatic fire, shooters);
- PUB topic ``b"cap"``: CAP 1.2 XML, for gunshot events only, never in test-fire mode;
- PUB topic ``b"geo"``: a GeoJSON Feature (point and 95% ellipse);
- PUB topic ``b"hlt"``: a node's health, whenever its status changes (ok, degraded with
  reasons, silent);
- an optional webhook (gunshot alerts, with retries), and ``events.jsonl`` if asked.

Nodes send heartbeats (noise floor, clipping, clock state, spool depth, CPU, model); the
service stores them and flags a node *silent* when no heartbeat came for
``silent_after_s`` and *degraded* when its clock is unlocked or worse than the
association's ``max_clock_sigma_ms``, it clips, its input is broken (NaN blocks,
overflows), its spool is backing up or dropping, or its noise floor is too high to hear.

With CURVE (``curve_secret_key_file`` and ``authorized_keys_dir``) only registered node
keys get through: the handshake of an unknown key fails (counted from the socket
monitor: ``auth_failures``), and a registered key may only speak for its own sensor id
(``impostors``).

On start it replays the last ``replay_s`` of stored detections through the associator,
so a locator killed mid-stream resumes where it was: events it already stored are
recognised by their deterministic ids and not published again.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import faulthandler
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgpack
import zmq

from shotnet.sensor.contract import (KIND_ACK, KIND_DETECTION, KIND_EVENT, KIND_HEARTBEAT, MAX_PAYLOAD_BYTES, NS_PER_S,
                                     ContractError, Detection, Event, Heartbeat, decode, detection_from_dict,
                                     detection_to_dict, encode, heartbeat_from_dict)
from shotnet.sensor.config import check_table, toml_value
from shotnet.sensor.layout import SensorLayout, load_layout

from .alerts import Webhook, cap_alert, geojson_feature
from .associate import STEP_PARTS, Associator, AssocConfig
from .store import Store

log = logging.getLogger(__name__)

TOPIC_INCIDENT = b"inc"
TOPIC_CAP = b"cap"
TOPIC_GEOJSON = b"geo"
TOPIC_HEALTH = b"hlt"


@dataclass
class ServiceStats:
    received: int = 0
    malformed: int = 0
    rejected: int = 0
    duplicates: int = 0
    acked: int = 0
    heartbeats: int = 0
    unsynchronised: int = 0
    auth_failures: int = 0
    impostors: int = 0
    published: int = 0
    alerts: int = 0
    errors: dict = field(default_factory=dict)

    def count_error(self, msg: str) -> None:
        k = msg.split(":")[0][:60]
        self.errors[k] = self.errors.get(k, 0) + 1


@dataclass(frozen=True)
class ServiceConfig:
    """``[locator]`` table of locator.toml; units in the names."""

    sensors: str = "sensors.geojson"
    bind: str = "tcp://127.0.0.1:5560"
    pub: str = "tcp://127.0.0.1:5561"
    store: str = "locator.sqlite"
    events_jsonl: str = ""
    metrics_port: int = 0            # Prometheus metrics on 127.0.0.1:port; 0 = off
    webhook_url: str = ""
    step_s: float = 0.1
    replay_s: float = 120.0
    sender: str = "shotnet@localhost"
    curve_secret_key_file: str = ""   # the locator's key pair (shotnet keys create locator)
    authorized_keys_dir: str = ""     # registered node public keys, <sensor_id>.key
    silent_after_s: float = 35.0      # no heartbeat for this long: the node is silent
    max_noise_floor_dbfs: float = -25.0  # a floor above this hides distant shots
    association_process: bool = True  # associate in a process of its own (else a thread)


@dataclass(frozen=True)
class HealthPolicy:
    silent_after_s: float = 35.0
    max_clock_sigma_ns: int = 5_000_000
    max_noise_floor_dbfs: float = -25.0
    max_spool_depth: int = 100


def assess(hb: Heartbeat | None, prev: Heartbeat | None, age_s: float, policy: HealthPolicy) -> tuple[str, list[str]]:
    """A node's status from its latest heartbeat: ("ok" | "degraded" | "silent", reasons)."""
    if hb is None or age_s > policy.silent_after_s:
        return "silent", [f"no heartbeat for {age_s:.0f} s" if hb is not None else "never heard"]
    why = []
    if not hb.clock_locked:
        why.append(f"clock {hb.clock_source} not locked")
    if hb.clock_sigma_ns > policy.max_clock_sigma_ns:
        why.append(f"clock sigma {hb.clock_sigma_ns / 1e6:.1f} ms")
    if hb.noise_floor_dbfs is not None and hb.noise_floor_dbfs < -120.0:
        why.append(f"input is digital silence ({hb.noise_floor_dbfs:.0f} dBFS): microphone or cable")
    if hb.noise_floor_dbfs is not None and hb.noise_floor_dbfs > policy.max_noise_floor_dbfs:
        why.append(f"noise floor {hb.noise_floor_dbfs:.0f} dBFS")
    if hb.spool_depth > policy.max_spool_depth:
        why.append(f"spool depth {hb.spool_depth}")
    if prev is not None:
        for k in ("clipped_samples", "nonfinite_blocks", "overflows", "spool_dropped"):
            if getattr(hb, k) > getattr(prev, k):
                why.append(f"{k.replace('_', ' ')} +{getattr(hb, k) - getattr(prev, k)}")
    return ("degraded" if why else "ok"), why


def alert_line(ev: Event) -> str:
    e = ev.ellipse95_m
    when = time.strftime("%H:%M:%S", time.gmtime(ev.t_ns // NS_PER_S)) + f".{(ev.t_ns % NS_PER_S) // 1_000_000:03d}Z"
    if ev.label == "gunshot" and not ev.test:
        tag = "UPDATE" if ev.version > 1 else "ALERT "
    else:
        tag = "test  " if ev.test else "notice"
    return (f"{tag} {ev.label.upper():8s} {when} at {ev.lat:.6f},{ev.lon:.6f} "
            f"+/-{e.major:.1f}x{e.minor:.1f} m @{e.azimuth_deg:.0f}deg  {len(ev.sensor_ids)} sensors  "
            f"rms {ev.residual_rms_ms:.2f} ms  conf {ev.confidence:.2f}  {ev.event_id[:12]} v{ev.version}")


class Metrics:
    """Prometheus metrics on their own registry (several services may share a process)."""

    def __init__(self, port: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("shotnet_locator_messages_total", "Messages received, by outcome", ["outcome"],
                                registry=r)
        self.events = Counter("shotnet_locator_events_total", "Events published, by label and kind",
                              ["label", "kind"], registry=r)
        self.pending = Gauge("shotnet_locator_pending_detections", "Detections waiting for association", registry=r)
        self.search_lag = Gauge("shotnet_locator_search_lag_seconds",
                                "How long past its planned search the oldest unsearched detection is (0: keeping up)",
                                registry=r)
        self.medium = Gauge("shotnet_locator_medium",
                            "The regional medium the locator assumes, learned from well-heard shots: speed of sound "
                            "and its 1-sigma, wind east and north (m/s)", ["quantity"], registry=r)
        self.latency = Histogram("shotnet_locator_alert_latency_seconds",
                                 "Wall time from the estimated shot to the first publication",
                                 buckets=(0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 20), registry=r)
        self.step = Histogram("shotnet_locator_step_seconds", "Association step duration",
                              buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1), registry=r)
        self.step_part = Counter("shotnet_locator_step_part_seconds",
                                 "Association compute time by part of the step: search kernel, fits, search "
                                 "checks, attach, housekeeping (which one an overloaded locator spends it on)",
                                 ["part"], registry=r)
        self.node_status = Gauge("shotnet_node_status", "Node status (1 for the current one)",
                                 ["sensor_id", "status"], registry=r)
        self.node_clock_sigma = Gauge("shotnet_node_clock_sigma_seconds", "Node clock 1-sigma", ["sensor_id"],
                                      registry=r)
        self.node_spool = Gauge("shotnet_node_spool_depth", "Node detections not yet acknowledged",
                                ["sensor_id"], registry=r)
        self.auth_failures = Counter("shotnet_locator_auth_failures_total",
                                     "Connections refused at the CURVE handshake", registry=r)
        self.port = port
        if port:
            self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=r)


class LocatorService:
    def __init__(self, layout: SensorLayout, cfg: AssocConfig, bind: str, pub: str | None = None,
                 events_path: str | Path | None = None, ctx: zmq.Context | None = None,
                 on_event: Callable[[Event], None] | None = None, clock_ns: Callable[[], int] = time.time_ns,
                 step_s: float = 0.1, store: Store | str | Path | None = None, replay_s: float = 120.0,
                 webhook_url: str = "", metrics_port: int = 0, sender: str = "shotnet@localhost",
                 curve_secret_key_file: str = "", authorized_keys_dir: str = "",
                 health: HealthPolicy | None = None, association_process: bool = False, quiet: bool = True):
        self.ctx = ctx or zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # An oversized message drops its connection at the transport, before any memory
        # is spent on it (payloads are capped at 1 MiB by the contract).
        self.router.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_PAYLOAD_BYTES)
        self.auth = None
        self._keys_dir = authorized_keys_dir
        self.key_owner: dict[bytes, str] | None = None
        if curve_secret_key_file or authorized_keys_dir:
            self._setup_curve(curve_secret_key_file, authorized_keys_dir)
        self.monitor = self.router.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.router.bind(bind)
        self.endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.pub = None
        self.pub_endpoint = None
        if pub:
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.bind(pub)
            self.pub_endpoint = self.pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.assoc = Associator(layout, cfg)
        self.store = store if isinstance(store, Store) or store is None else Store(store)
        self.events_fh = open(events_path, "a") if events_path else None
        self.on_event = on_event
        self.clock_ns = clock_ns
        self.step_s = step_s
        self.sender = sender
        self.webhook = Webhook(webhook_url) if webhook_url else None
        self.metrics = Metrics(metrics_port)
        self._parts_reported = dict.fromkeys(STEP_PARTS, 0.0)     # assoc.time_s as last reported
        self.stats = ServiceStats()
        self.health_policy = health or HealthPolicy(max_clock_sigma_ns=int(cfg.max_clock_sigma_ms * 1e6))
        self.node_hb: dict[str, tuple[float, Heartbeat, Heartbeat | None]] = {}  # sid -> (mono, hb, prev)
        self.node_state: dict[str, tuple[str, list[str]]] = {}
        self._next_health = 0.0
        self._stop = False
        self._inbox: collections.deque | None = None    # ingest -> association, when threaded
        self._outbox: collections.deque = collections.deque()  # PUB frames from the ingest thread
        self._assoc_thread: threading.Thread | None = None
        self._stop_assoc = False
        self.step_budget_s = 1.0        # an association step gives up searching after this long
        # With association_process the association runs in a process of its own
        # (_AssociationLink): it replays the store there, and self.assoc only checks
        # sensor ids. Its alert lines are printed there unless ``quiet`` (on_event,
        # a callable, stays in this process and is not called).
        self._link: _AssociationLink | None = None
        if association_process:
            self._link = _AssociationLink(self, layout, cfg, replay_s, events_path, webhook_url, quiet)
        elif self.store is not None and replay_s > 0:
            self._replay(replay_s)

    def _setup_curve(self, secret_file: str, keys_dir: str) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        from shotnet.sensor.keys import authorized

        if not (secret_file and keys_dir):
            raise ValueError("CURVE needs both curve_secret_key_file and authorized_keys_dir")
        pub, sec = zmq.auth.load_certificate(secret_file)
        if sec is None:
            raise ValueError(f"{secret_file} holds no secret key")
        self.key_owner = authorized(keys_dir)
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(keys_dir))
        self.router.curve_secretkey = sec
        self.router.curve_publickey = pub
        self.router.curve_server = True

    def reload_keys(self) -> int:
        """Re-read the authorised node keys (SIGHUP): a removed key is revoked at once —
        new connections with it fail the handshake, and messages on a connection it
        already had are refused. Returns the number of keys now authorised."""
        if self.auth is None:
            return 0
        from shotnet.sensor.keys import authorized

        self.key_owner = authorized(self._keys_dir)
        self.auth.configure_curve(domain="*", location=str(self._keys_dir))
        log.warning("authorised node keys reloaded: %d", len(self.key_owner))
        return len(self.key_owner)

    def _read_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                msg = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg["event"] & (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.stats.auth_failures += 1
                self.metrics.auth_failures.inc()
                log.warning("refused a connection at the handshake (%s)", msg.get("endpoint"))

    # ------------------------------------------------------------------ recovery
    def _replay(self, replay_s: float) -> None:
        since = self.clock_ns() - int(replay_s * NS_PER_S)
        dets = self.store.detections_since(since)
        self.assoc.restore(self.store.events(since), dets)
        if dets:
            log.info("replaying %d stored detections from the last %.0f s", len(dets), replay_s)
            self.publish_all(self.assoc.step(self.clock_ns()))

    def stop(self, *_):
        self._stop = True

    # ------------------------------------------------------------------ input
    def handle_batch(self, batch: list[list[bytes]], key_ids: list[bytes | None] | None = None) -> None:
        """Validate, store, acknowledge and feed a batch of ROUTER messages.
        ``key_ids``: per message, the sender's CURVE public key (z85), when CURVE is on."""
        ok = []
        for n, frames in enumerate(batch):
            self.stats.received += 1
            ident, body = frames[0], frames[1:]
            try:
                kind, payload = decode(body)
                if kind == KIND_HEARTBEAT:
                    hb = heartbeat_from_dict(payload)
                    self._check_claim(hb.sensor_id, key_ids[n] if key_ids else None)
                    self._heartbeat(hb)
                    continue
                if kind != KIND_DETECTION:
                    raise ContractError(f"unexpected message kind {kind!r}")
                det = detection_from_dict(payload)
                if det.sensor_id not in self.assoc.idx:
                    raise ContractError(f"unknown sensor {det.sensor_id!r}")
                self._check_claim(det.sensor_id, key_ids[n] if key_ids else None)
            except ContractError as exc:
                bucket = ("rejected" if str(exc).startswith("unknown sensor") else
                          "impostors" if str(exc).startswith("key of") else "malformed")
                setattr(self.stats, bucket, getattr(self.stats, bucket) + 1)
                self.stats.count_error(str(exc))
                self.metrics.messages.labels(bucket).inc()
                # The text, not the exception: a log record that holds the exception holds its
                # traceback and through it the message (up to 1 MB) for as long as the
                # record lives (pytest keeps every record of a test: 20 GB over 100k cases).
                log.warning("%s message from %r: %s", bucket, ident[:32], str(exc))
                continue
            ok.append((ident, det))
        if not ok:
            return
        new = self.store.add_detections([d for _, d in ok]) if self.store else [True] * len(ok)
        # Acknowledge after the store has it (and again for a duplicate: the node may have
        # missed the first ack): one ack per node per batch, with every seq of that node.
        acks: dict[bytes, list[int]] = {}
        for ident, det in ok:
            acks.setdefault(ident, []).append(det.seq)
        for ident, seqs in acks.items():
            self.router.send_multipart([ident] + encode(KIND_ACK, {"seqs": seqs}))
        self.stats.acked += len(ok)
        for (ident, det), is_new in zip(ok, new):
            if not is_new:
                self.stats.duplicates += 1
                self.metrics.messages.labels("duplicate").inc()
            elif det.clock_sigma_ns > self.assoc.cfg.max_clock_sigma_ms * 1e6:
                # Stored, acknowledged, but its time is too poor to locate with.
                self.stats.unsynchronised += 1
                self.metrics.messages.labels("unsynchronised").inc()
            elif self._inbox is not None:
                self._inbox.append(det)           # the association thread feeds it
                self.metrics.messages.labels("accepted").inc()
            elif self.assoc.feed(det):
                self.metrics.messages.labels("accepted").inc()
            else:
                self.stats.duplicates += 1
                self.metrics.messages.labels("duplicate").inc()

    def _check_claim(self, sensor_id: str, key: bytes | None) -> None:
        if self.key_owner is None:
            return
        owner = self.key_owner.get(key) if key else None
        if owner != sensor_id:
            raise ContractError(f"key of {owner or 'an unknown node'} cannot speak for {sensor_id}")

    # ------------------------------------------------------------------ node health
    def _heartbeat(self, hb: Heartbeat) -> None:
        self.stats.heartbeats += 1
        prev = self.node_hb.get(hb.sensor_id)
        self.node_hb[hb.sensor_id] = (time.monotonic(), hb, prev[1] if prev else None)
        if self.store:
            self.store.put_health(hb.sensor_id, hb.t_ns, hb.to_dict())
        self.metrics.node_clock_sigma.labels(hb.sensor_id).set(hb.clock_sigma_ns / 1e9)
        self.metrics.node_spool.labels(hb.sensor_id).set(hb.spool_depth)
        self._assess(hb.sensor_id)

    def _assess(self, sid: str) -> tuple[str, list[str]]:
        got = self.node_hb.get(sid)
        if got is None:
            state = assess(None, None, float("inf"), self.health_policy)
        else:
            state = assess(got[1], got[2], time.monotonic() - got[0], self.health_policy)
        if self.node_state.get(sid) != state:
            first = sid not in self.node_state
            self.node_state[sid] = state
            for st in ("ok", "degraded", "silent"):
                self.metrics.node_status.labels(sid, st).set(1 if st == state[0] else 0)
            if state[0] != "ok" and not (first and got is None):
                log.warning("node %s %s: %s", sid, state[0], "; ".join(state[1]))
            if self.pub is not None:
                self._pub_send([TOPIC_HEALTH, json.dumps(
                    {"sensor_id": sid, "status": state[0], "reasons": state[1],
                     "heartbeat": got[1].to_dict() if got else None}).encode()])
        return state

    def _pub_send(self, frames: list[bytes]) -> None:
        """PUB sockets are not thread-safe: while the association thread runs, frames from
        the ingest thread go through it."""
        if self._assoc_thread is not None and threading.current_thread() is not self._assoc_thread:
            self._outbox.append(frames)
        else:
            self.pub.send_multipart(frames)

    def node_health(self) -> dict[str, tuple[str, list[str]]]:
        """Every sensor in the layout: (status, reasons)."""
        return {sid: self._assess(sid) for sid in self.assoc.layout.ids}

    def handle(self, frames: list[bytes]) -> None:
        self.handle_batch([frames])

    # ------------------------------------------------------------------ output
    def publish_all(self, evs: list[Event]) -> None:
        """Store a step's events (and their incidents) in one transaction, then publish
        each: nothing goes out before the store has it, and a crowded night's hundred
        versions a second cost one commit per step, not two per version (with
        ``synchronous=FULL`` each commit waits for the disk)."""
        if not evs:
            return
        todo = []
        with self.store.transaction() if self.store else contextlib.nullcontext():
            for ev in evs:
                inc = self.assoc.incidents.update(ev)
                line = ev.to_json()
                status = self.store.put_event(ev, line) if self.store else "new"
                if status == "same":
                    continue
                if inc is not None and self.store:
                    self.store.put_incident(inc)
                todo.append((ev, inc, status, line))
        for ev, inc, status, line in todo:
            self._emit(ev, inc, status, line)

    def _emit(self, ev: Event, inc: dict | None, status: str, line: str) -> None:
        """Publish a stored event version (``line``: its JSON) on every output."""
        if self.events_fh:
            self.events_fh.write(line + "\n")
            self.events_fh.flush()
        kind = "update" if status == "updated" else "new"
        self.metrics.events.labels(ev.label, kind).inc()
        if kind == "new":
            self.metrics.latency.observe(max(0.0, (self.clock_ns() - ev.t_ns) / NS_PER_S))
        dispatch = ev.label == "gunshot" and not ev.test
        if self.pub is not None:
            self.pub.send_multipart([KIND_EVENT, line.encode()])
            if inc is not None:
                self.pub.send_multipart([TOPIC_INCIDENT, json.dumps(inc).encode()])
            self.pub.send_multipart([TOPIC_GEOJSON, json.dumps(geojson_feature(ev, inc)).encode()])
            if dispatch:
                self.pub.send_multipart([TOPIC_CAP, cap_alert(ev, inc, sender=self.sender).encode()])
        if dispatch:
            self.stats.alerts += 1
            if self.webhook:
                self.webhook.post({"event": ev.to_dict(), "incident": inc,
                                   "cap": cap_alert(ev, inc, sender=self.sender)})
        self.stats.published += 1
        if self.on_event:
            self.on_event(ev)

    # ------------------------------------------------------------------ loop
    def run(self, duration_s: float | None = None) -> ServiceStats:
        """Ingest on this thread, associate on another (or in a process of its own, whose
        PUB frames and metrics come back here: one PUB socket, one metrics endpoint),
        until stopped or ``duration_s``."""
        end = time.monotonic() + duration_s if duration_s else None
        self._inbox = collections.deque()
        link = self._link
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        if link is not None:
            link.start()
            poller.register(link.sock, zmq.POLLIN)
        else:
            self._assoc_thread = threading.Thread(target=self._associate, args=(end,), name="association",
                                                  daemon=True)
            self._assoc_thread.start()
        try:
            while not self._stop and (end is None or time.monotonic() < end):
                ready = dict(poller.poll(20 if link is not None else 50))
                if ready.get(self.monitor):
                    self._read_monitor()
                if ready.get(self.router):
                    batch, keys = [], []
                    while len(batch) < 1000:
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        batch.append([f.bytes for f in frames])
                        keys.append(frames[-1].get("User-Id").encode() if self.key_owner is not None else None)
                    self.handle_batch(batch, keys if self.key_owner is not None else None)
                if link is not None:
                    link.pump(self._inbox)
                if time.monotonic() >= self._next_health:
                    self.node_health()
                    if link is not None:
                        link.check()
                    self._next_health = time.monotonic() + 1.0
        finally:
            if link is not None:
                link.stop(self._inbox)
            else:
                self._stop_assoc = True
                self._assoc_thread.join()
                self._assoc_thread = None
                # Whatever arrived after the association thread's last look is fed now.
                while self._inbox:
                    self.assoc.feed(self._inbox.popleft())
                while self._outbox and self.pub is not None:
                    self.pub.send_multipart(self._outbox.popleft())
            self._inbox = None
        return self.stats

    def _associate(self, end: float | None) -> None:
        self._stop_assoc = False
        next_step = time.monotonic()
        while not (self._stop or self._stop_assoc) and (end is None or time.monotonic() < end):
            while self._inbox:
                self.assoc.feed(self._inbox.popleft())
            while self._outbox and self.pub is not None:
                self.pub.send_multipart(self._outbox.popleft())
            now = time.monotonic()
            if now >= next_step:
                next_step = time.monotonic() + self._step_and_publish()
            else:
                time.sleep(min(0.005, next_step - now))

    def assoc_stats(self) -> dict:
        """The association's counters (those of the association process now running, if
        the association has a process, and how many times it was started again)."""
        if self._link is not None:
            return dict(self._link.assoc_stats, process_restarts=self._link.restarts)
        return dataclasses.asdict(self.assoc.stats)

    def _step_and_publish(self) -> float:
        """One association step (its search stops after ``step_budget_s``), its events
        published, its metrics set. Returns the wait (s) before the next: ``step_s``, or
        none when this one ran out of its budget and left ripe seeds unsearched (waiting
        a step after each budget lost a tenth of the search on an overloaded night)."""
        t0 = time.perf_counter()
        try:
            self.publish_all(self.assoc.step(self.clock_ns(), budget_s=self.step_budget_s))
        except Exception:                       # never let one bad step stop alerts
            log.exception("association step failed")
        self.metrics.step.observe(time.perf_counter() - t0)
        self.metrics.pending.set(len(self.assoc.pending))
        self.metrics.search_lag.set(self.assoc.search_lag_s)
        a = self.assoc
        for part, v in a.time_s.items():
            d = v - self._parts_reported.get(part, 0.0)
            if d > 0:
                self.metrics.step_part.labels(part).inc(d)
                self._parts_reported[part] = v
        for quantity, v in (("speed_of_sound", a.c), ("speed_of_sound_sigma", a.c_sd), ("wind_east", a.wind[0]),
                            ("wind_north", a.wind[1])):
            self.metrics.medium.labels(quantity).set(float(v))
        return 0.0 if self.assoc.search_lag_s > 0 else self.step_s

    def _final_flush(self, max_flush: int, flush_budget_s: float) -> None:
        """Search what is pending (for at most ``flush_budget_s``) and publish, unless more
        than ``max_flush`` detections are waiting (an overloaded night): they are all in
        the store, and the next start replays them, so shutting down stays quick."""
        if len(self.assoc.pending) <= max_flush:
            t0 = time.monotonic()
            self.publish_all(self.assoc.flush(budget_s=flush_budget_s))
            if time.monotonic() - t0 > flush_budget_s + 1.0:
                log.warning("the final association step took %.1f s", time.monotonic() - t0)
        else:
            log.warning("stopping with %d detections not yet associated: stored, replayed at the next start",
                        len(self.assoc.pending))

    def close(self, max_flush: int = 500, flush_budget_s: float = 5.0) -> None:
        """Stop: the final search (:meth:`_final_flush`; with an association process, that
        process did it), then every socket and file closed."""
        self._final_flush(max_flush, flush_budget_s)
        if self._link is not None:
            self._link.close()                  # (after run(), already closed)
        if self.metrics.port:
            self.metrics.server.shutdown()
        self.router.disable_monitor()
        self.monitor.close(0)
        self.router.close(0)
        if self.auth is not None:
            self.auth.stop()
        if self.pub is not None:
            self.pub.close(0)
        self._close_outputs()

    def _close_outputs(self) -> None:
        """The webhook (given up to 5 s to deliver what it holds), events.jsonl and the store."""
        if self.webhook:
            self.webhook.close()
        if self.events_fh:
            self.events_fh.close()
        if self.store:
            self.store.close()


# ---------------------------------------------------------------------- association process
class _MetricRelay:
    """In the association process: one of the service's Prometheus metrics, recording
    what is done to it (``labels``, then ``inc``, ``observe`` or ``set``) for the
    ingest process to apply to the real one."""

    def __init__(self, name: str, ops: list, label_values: tuple = ()):
        self.name, self.ops, self.label_values = name, ops, label_values

    def labels(self, *values: str) -> "_MetricRelay":
        return _MetricRelay(self.name, self.ops, values)

    def inc(self, v: float = 1.0) -> None:
        self.ops.append((self.name, list(self.label_values), "inc", v))

    def observe(self, v: float) -> None:
        self.ops.append((self.name, list(self.label_values), "observe", v))

    def set(self, v: float) -> None:
        self.ops.append((self.name, list(self.label_values), "set", v))


class _MetricsRelay:
    """The metrics the association side touches (:class:`Metrics`' names)."""

    def __init__(self):
        self.ops: list = []
        for name in ("events", "latency", "step", "step_part", "pending", "search_lag", "medium"):
            setattr(self, name, _MetricRelay(name, self.ops))

    def take(self) -> list:
        ops, self.ops[:] = list(self.ops), []
        return ops


class _PubRelay:
    """In the association process: PUB frames go to the ingest process, which owns the
    PUB socket (one endpoint for events and node health)."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock

    def send_multipart(self, frames: list[bytes]) -> None:
        self.sock.send_multipart([b"pub"] + list(frames))


def _die_with_parent(parent_pid: int) -> None:
    """The association process must not outlive the locator (a kill -9 of the locator
    would leave it associating and writing events beside the restarted one)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)                       # the locator died before prctl took effect


def _association_main(endpoint: str, layout: SensorLayout, cfg: AssocConfig, store: str | None, replay_s: float,
                      events_path: str | None, webhook_url: str, sender: str, step_s: float, step_budget_s: float,
                      quiet: bool, parent_pid: int, max_flush: int = 500, flush_budget_s: float = 5.0) -> None:
    """The association process: a :class:`LocatorService` without sockets of its own
    (its ``publish_all`` writes the store, the incidents, the webhook and events.jsonl as in
    the threaded service; PUB frames and metrics go back over ``endpoint``). Replays the
    store at start, steps every ``step_s``, and on ``stop`` searches what is pending
    (:meth:`LocatorService._final_flush`) before it says ``done``."""
    _die_with_parent(parent_pid)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # The locator stops it, and it searches what is pending first: a Ctrl-C, or a SIGTERM
    # to the whole group (systemd's stop), reaches both.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(endpoint)
    svc = LocatorService.__new__(LocatorService)
    svc.assoc = Associator(layout, cfg)
    svc.store = Store(store) if store else None
    svc.events_fh = open(events_path, "a") if events_path else None
    svc.on_event = None if quiet else (lambda ev: print(alert_line(ev), flush=True))
    svc.clock_ns = time.time_ns
    svc.step_s, svc.step_budget_s, svc.sender = step_s, step_budget_s, sender
    svc.webhook = Webhook(webhook_url) if webhook_url else None
    svc.metrics = _MetricsRelay()
    svc._parts_reported = dict.fromkeys(STEP_PARTS, 0.0)
    svc.stats = ServiceStats()
    svc.pub = _PubRelay(sock)
    svc._assoc_thread = None

    def report() -> None:
        sock.send_multipart([b"m", msgpack.packb({"ops": svc.metrics.take(), "published": svc.stats.published,
                                                  "alerts": svc.stats.alerts,
                                                  "assoc": dataclasses.asdict(svc.assoc.stats)})])

    if svc.store is not None and replay_s > 0:
        svc._replay(replay_s)
    sock.send_multipart([b"ready"])
    stopping = False
    next_step = time.monotonic()
    while not stopping:
        if sock.poll(max(0, int(1000 * (next_step - time.monotonic())))):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frames[0] == b"det":
                    for d in msgpack.unpackb(frames[1]):
                        svc.assoc.feed(Detection(**d))
                elif frames[0] == b"stop":
                    stopping = True
        if stopping or time.monotonic() < next_step:
            continue
        next_step = time.monotonic() + svc._step_and_publish()
        report()
    svc._final_flush(max_flush, flush_budget_s)
    report()
    svc._close_outputs()
    sock.send_multipart([b"done"])
    sock.close()
    ctx.term()


class _AssociationLink:
    """The ingest side of the association process (``association_process``).

    Ingest and association in one interpreter share one lock: at 1,600 detections/s
    the ingest thread ran 21% of a core and the association thread 65%, with 0.4 of two
    cores idle (the association waited for the interpreter). In a process of its own the association has an interpreter
    to itself. Over a ZeroMQ PAIR on an ipc socket: new detections (already stored and
    acknowledged here) go to it; its PUB frames and metrics come back. It replays the
    store when it starts, so if it dies it is started again and loses nothing: every
    detection it had is in the store, and events it published are recognised by their
    deterministic ids."""

    def __init__(self, svc: "LocatorService", layout: SensorLayout, cfg: AssocConfig, replay_s: float,
                 events_path, webhook_url: str, quiet: bool):
        self.svc = svc
        self.dir = tempfile.mkdtemp(prefix="shotnet-assoc-")
        self.sock = svc.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"ipc://{self.dir}/link")
        self.args = dict(endpoint=f"ipc://{self.dir}/link", layout=layout, cfg=cfg,
                         store=svc.store.path if svc.store is not None else None, replay_s=replay_s,
                         events_path=str(events_path) if events_path else None, webhook_url=webhook_url,
                         sender=svc.sender, step_s=svc.step_s, step_budget_s=svc.step_budget_s, quiet=quiet)
        self.proc = None
        self.ready = False
        self.done = False
        self.restarts = 0
        self.target = _association_main
        self._started = 0.0                # monotonic time of the last start
        self._quick_deaths = 0             # deaths in a row within QUICK_DEATH_S of a start
        self._restart_at: float | None = None
        self.assoc_stats: dict = {}
        self._base = {"published": 0, "alerts": 0}     # counted by association processes that ended
        self._last = {"published": 0, "alerts": 0}

    QUICK_DEATH_S = 10.0       # a process that dies sooner after its start waits to be started again
    MAX_RESTART_DELAY_S = 30.0

    def start(self) -> None:
        import multiprocessing

        self.ready = self.done = False
        self.proc = multiprocessing.get_context("spawn").Process(
            target=self.target, kwargs=dict(self.args, parent_pid=os.getpid()), name="shotnet-association",
            daemon=True)
        self._started = time.monotonic()
        self.proc.start()

    def _handle(self, frames: list[bytes]) -> None:
        kind = frames[0]
        if kind == b"ready":
            self.ready = True
        elif kind == b"pub":
            if self.svc.pub is not None:
                self.svc.pub.send_multipart(frames[1:])
        elif kind == b"m":
            m = msgpack.unpackb(frames[1])
            for name, values, op, v in m["ops"]:
                metric = getattr(self.svc.metrics, name)
                getattr(metric.labels(*values) if values else metric, op)(v)
            self._last = {"published": m["published"], "alerts": m["alerts"]}
            self.svc.stats.published = self._base["published"] + m["published"]
            self.svc.stats.alerts = self._base["alerts"] + m["alerts"]
            self.assoc_stats = m["assoc"]
        elif kind == b"done":
            self.done = True

    def pump(self, inbox: collections.deque) -> None:
        """What the association process sent; then the new detections, once it is ready."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle(frames)
        if self.ready and inbox:
            dets = [inbox.popleft() for _ in range(len(inbox))]
            try:
                self.sock.send_multipart([b"det", msgpack.packb([detection_to_dict(d, with_clip=False)
                                                                 for d in dets])], zmq.NOBLOCK)
            except zmq.Again:
                inbox.extendleft(reversed(dets))          # its queue is full: later

    def check(self) -> None:
        """Start the association process again if it died (it replays the store): at
        once, unless it died within ``QUICK_DEATH_S`` of its start, when it waits 2, 4,
        8 ... s (at most ``MAX_RESTART_DELAY_S``) so that a process that cannot start (a
        store it cannot read) does not take a core spawning itself."""
        if self.proc is None or self.proc.is_alive():
            return
        now = time.monotonic()
        if self._restart_at is None:
            self._quick_deaths = self._quick_deaths + 1 if now - self._started < self.QUICK_DEATH_S else 0
            delay = min(self.MAX_RESTART_DELAY_S, 2.0 ** self._quick_deaths) if self._quick_deaths else 0.0
            log.error("the association process exited (code %s): starting it again in %.0f s",
                      self.proc.exitcode, delay)
            self._restart_at = now + delay
            for k in self._base:
                self._base[k] += self._last[k]
            self._last = {"published": 0, "alerts": 0}
        if now >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            self.start()

    def stop(self, inbox: collections.deque, timeout_s: float = 60.0) -> None:
        """Hand over what is left, tell it to stop, forward what it publishes while it
        searches what is pending, and wait for it."""
        end = time.monotonic() + timeout_s
        while not self.ready and self.proc.is_alive() and time.monotonic() < end:
            self.pump(inbox)
            time.sleep(0.01)
        self.pump(inbox)
        while self.proc.is_alive() and time.monotonic() < end:
            try:
                self.sock.send_multipart([b"stop"], zmq.NOBLOCK)
                break
            except zmq.Again:                   # its queue is full: it may be busy, or stuck
                self.pump(collections.deque())
                time.sleep(0.01)
        while not self.done and self.proc.is_alive() and time.monotonic() < end:
            if self.sock.poll(50):
                self.pump(collections.deque())
        self.pump(collections.deque())
        self.proc.join(5.0)
        if self.proc.is_alive():
            log.error("the association process did not stop: killed")
            self.proc.kill()
            self.proc.join()
        self.close()

    def close(self) -> None:
        self.sock.close(0)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------- configuration
def load_config(path: str | Path) -> tuple[ServiceConfig, AssocConfig]:
    """Read and validate locator.toml: ``[locator]`` -> ServiceConfig, ``[association]`` ->
    AssocConfig. Relative paths are relative to the file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    extra = sorted(set(doc) - {"locator", "association"})
    if extra:
        raise ValueError(f"{path}: unknown table(s) {', '.join(extra)}; expected [locator] and [association]")
    svc = ServiceConfig(**check_table(doc.get("locator", {}), ServiceConfig, "locator"))
    assoc = AssocConfig(**check_table(doc.get("association", {}), AssocConfig, "association"))
    base = path.parent
    fix = {k: str((base / getattr(svc, k)).resolve())
           for k in ("sensors", "store", "events_jsonl", "curve_secret_key_file", "authorized_keys_dir")
           if getattr(svc, k) and not Path(getattr(svc, k)).is_absolute()}
    return dataclasses.replace(svc, **fix), assoc


def config_toml(svc: ServiceConfig, assoc: AssocConfig) -> str:
    fmt = toml_value

    lines = ["[locator]"] + [f"{f.name} = {fmt(getattr(svc, f.name))}" for f in dataclasses.fields(svc)]
    lines += ["", "[association]"] + [f"{f.name} = {fmt(getattr(assoc, f.name))}" for f in dataclasses.fields(assoc)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    # The search kernel's OpenMP workers sleep between calls instead of spinning: a
    # spinning worker burns most of a core (the association thread calls the kernel
    # every few ms, with Python work between), which on a shared machine the ingest
    # thread and everything else on it need. bench/bench_load.py, 196 nodes on this
    # 2-core machine: search lag max 4.2-5.8 s instead of 7.1-7.3 s at 1,591 detections/s.
    # (A batch replay with cores to spare is a little faster spinning: shotnet locate
    # leaves the default.) Set before the first kernel call, when libgomp reads it; an
    # OMP_WAIT_POLICY already set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(prog="shotnet locator run", description="Run the locator service.")
    ap.add_argument("--config", help="locator.toml ([locator] and [association] tables)")
    ap.add_argument("--sensors", help="sensor layout (GeoJSON); overrides the config")
    ap.add_argument("--bind", help="ROUTER endpoint for nodes")
    ap.add_argument("--pub", help="PUB endpoint for alerts")
    ap.add_argument("--store", help="SQLite store")
    ap.add_argument("--events", help="also append events as JSON Lines to this file")
    ap.add_argument("--temperature-c", type=float, help="air temperature (deg C)")
    ap.add_argument("--metrics-port", type=int, help="Prometheus metrics on 127.0.0.1:PORT")
    ap.add_argument("--webhook", help="POST gunshot alerts (JSON with CAP) to this URL")
    ap.add_argument("--test-mode", action="store_true", help="test-fire mode: store and show, never dispatch")
    ap.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    ap.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    ap.add_argument("--quiet", action="store_true", help="do not print alert lines")
    args = ap.parse_args(argv)
    try:
        svc_cfg, assoc_cfg = load_config(args.config) if args.config else (ServiceConfig(), AssocConfig())
    except (ValueError, OSError) as exc:
        print(f"shotnet locator run: {exc}", file=sys.stderr)
        return 2
    over = {k: v for k, v in (("sensors", args.sensors), ("bind", args.bind), ("pub", args.pub),
                              ("store", args.store), ("events_jsonl", args.events),
                              ("metrics_port", args.metrics_port), ("webhook_url", args.webhook)) if v is not None}
    svc_cfg = dataclasses.replace(svc_cfg, **over)
    a_over = {}
    if args.temperature_c is not None:
        a_over["temperature_c"] = args.temperature_c
    if args.test_mode:
        a_over["test_mode"] = True
    assoc_cfg = dataclasses.replace(assoc_cfg, **a_over)
    if args.print_config:
        print(config_toml(svc_cfg, assoc_cfg), end="")
        return 0
    try:
        layout = load_layout(svc_cfg.sensors)
    except (ContractError, OSError) as exc:
        print(f"shotnet locator run: {svc_cfg.sensors}: {exc}", file=sys.stderr)
        return 2
    svc = LocatorService(layout, assoc_cfg, svc_cfg.bind, svc_cfg.pub, svc_cfg.events_jsonl or None,
                         on_event=None if args.quiet or svc_cfg.association_process else (
                             lambda ev: print(alert_line(ev), flush=True)),
                         association_process=svc_cfg.association_process, quiet=args.quiet,
                         step_s=svc_cfg.step_s, store=svc_cfg.store or None, replay_s=svc_cfg.replay_s,
                         webhook_url=svc_cfg.webhook_url, metrics_port=svc_cfg.metrics_port, sender=svc_cfg.sender,
                         curve_secret_key_file=svc_cfg.curve_secret_key_file,
                         authorized_keys_dir=svc_cfg.authorized_keys_dir,
                         health=HealthPolicy(silent_after_s=svc_cfg.silent_after_s,
                                             max_clock_sigma_ns=int(assoc_cfg.max_clock_sigma_ms * 1e6),
                                             max_noise_floor_dbfs=svc_cfg.max_noise_floor_dbfs))
    signal.signal(signal.SIGTERM, svc.stop)
    signal.signal(signal.SIGINT, svc.stop)
    signal.signal(signal.SIGHUP, lambda *_: svc.reload_keys())
    faulthandler.register(signal.SIGUSR1, all_threads=True)   # kill -USR1: every thread's stack on stderr
    print(json.dumps({"ready": True, "bind": svc.endpoint, "pub": svc.pub_endpoint, "store": svc_cfg.store,
                      "metrics_port": svc_cfg.metrics_port}), flush=True)
    try:
        svc.run(args.duration_s)
    finally:
        svc.close()
        print(json.dumps({"stats": dataclasses.asdict(svc.stats), "assoc": svc.assoc_stats()}),
              file=sys.stderr, flush=True)
    return 0
