"""The locator service: ZeroMQ in, events out.

A ROUTER socket receives detections from nodes and acknowledges each one after it is
recorded; the :class:`~shotnet.locator.associate.Associator` turns them into events; each
event (and each improved version of it) is appended to ``events.jsonl``, published on a
PUB socket (topic ``b"evt"``) and printed as an alert line.

Malformed messages, unknown keys and unknown sensors are counted and answered with
nothing; the service never crashes on input.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import zmq

from shotnet.sensor.contract import (KIND_ACK, KIND_DETECTION, KIND_EVENT, NS_PER_S, ContractError, Event,
                                     decode, detection_from_dict, encode)
from shotnet.sensor.layout import SensorLayout

from .associate import Associator, AssocConfig

log = logging.getLogger(__name__)


@dataclass
class ServiceStats:
    received: int = 0
    malformed: int = 0
    rejected: int = 0
    acked: int = 0
    published: int = 0
    errors: dict = field(default_factory=dict)

    def count_error(self, msg: str) -> None:
        k = msg.split(":")[0][:60]
        self.errors[k] = self.errors.get(k, 0) + 1


def alert_line(ev: Event) -> str:
    e = ev.ellipse95_m
    when = time.strftime("%H:%M:%S", time.gmtime(ev.t_ns // NS_PER_S)) + f".{(ev.t_ns % NS_PER_S) // 1_000_000:03d}Z"
    tag = "UPDATE" if ev.version > 1 else "ALERT "
    return (f"{tag} {ev.label.upper():8s} {when} at {ev.lat:.6f},{ev.lon:.6f} "
            f"+/-{e.major:.1f}x{e.minor:.1f} m @{e.azimuth_deg:.0f}deg  {len(ev.sensor_ids)} sensors  "
            f"rms {ev.residual_rms_ms:.2f} ms  conf {ev.confidence:.2f}  {ev.event_id[:12]} v{ev.version}")


class LocatorService:
    def __init__(self, layout: SensorLayout, cfg: AssocConfig, bind: str, pub: str | None = None,
                 events_path: str | Path | None = None, ctx: zmq.Context | None = None,
                 on_event: Callable[[Event], None] | None = None, clock_ns: Callable[[], int] = time.time_ns,
                 step_s: float = 0.1, alerts_only_gunshots: bool = False):
        self.ctx = ctx or zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
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
        self.events_fh = open(events_path, "a") if events_path else None
        self.on_event = on_event
        self.clock_ns = clock_ns
        self.step_s = step_s
        self.stats = ServiceStats()
        self._stop = False

    def stop(self, *_):
        self._stop = True

    def handle(self, frames: list[bytes]) -> None:
        """One ROUTER message: ``[identity, PROTOCOL, kind, payload]``."""
        self.stats.received += 1
        ident, body = frames[0], frames[1:]
        try:
            kind, payload = decode(body)
            if kind != KIND_DETECTION:
                raise ContractError(f"unexpected message kind {kind!r}")
            det = detection_from_dict(payload)
        except ContractError as exc:
            self.stats.malformed += 1
            self.stats.count_error(str(exc))
            log.warning("rejected message from %r: %s", ident[:32], exc)
            return
        if not self.assoc.feed(det) and det.sensor_id not in self.assoc.idx:
            self.stats.rejected += 1
            log.warning("detection from unknown sensor %r rejected", det.sensor_id)
            return
        # Acknowledge after recording (duplicates are acked again: the node may have
        # missed the first ack).
        self.router.send_multipart([ident] + encode(KIND_ACK, {"seqs": [det.seq]}))
        self.stats.acked += 1

    def publish(self, ev: Event) -> None:
        line = ev.to_json()
        if self.events_fh:
            self.events_fh.write(line + "\n")
            self.events_fh.flush()
        if self.pub is not None:
            self.pub.send_multipart([KIND_EVENT, line.encode()])
        self.stats.published += 1
        if self.on_event:
            self.on_event(ev)

    def run(self, duration_s: float | None = None) -> ServiceStats:
        end = time.monotonic() + duration_s if duration_s else None
        next_step = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self._stop and (end is None or time.monotonic() < end):
            timeout = max(0.0, next_step - time.monotonic())
            if dict(poller.poll(int(timeout * 1000) + 1)).get(self.router):
                while True:
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.handle(frames)
            if time.monotonic() >= next_step:
                for ev in self.assoc.step(self.clock_ns()):
                    self.publish(ev)
                next_step = time.monotonic() + self.step_s
        return self.stats

    def close(self) -> None:
        for ev in self.assoc.flush():
            self.publish(ev)
        if self.events_fh:
            self.events_fh.close()
        self.router.close(0)
        if self.pub is not None:
            self.pub.close(0)


def main(argv=None) -> int:
    import argparse

    from shotnet.sensor.layout import load_layout

    ap = argparse.ArgumentParser(prog="shotnet locator run", description="Run the locator service.")
    ap.add_argument("--sensors", required=True, help="sensor layout (GeoJSON)")
    ap.add_argument("--bind", default="tcp://127.0.0.1:5560", help="ROUTER endpoint for nodes")
    ap.add_argument("--pub", default="tcp://127.0.0.1:5561", help="PUB endpoint for alerts")
    ap.add_argument("--events", default=None, help="append events as JSON Lines to this file")
    ap.add_argument("--temperature-c", type=float, default=20.0)
    ap.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    ap.add_argument("--quiet", action="store_true", help="do not print alert lines")
    args = ap.parse_args(argv)
    layout = load_layout(args.sensors)
    cfg = AssocConfig(temperature_c=args.temperature_c)
    svc = LocatorService(layout, cfg, args.bind, args.pub, args.events,
                         on_event=None if args.quiet else (lambda ev: print(alert_line(ev), flush=True)))
    signal.signal(signal.SIGTERM, svc.stop)
    signal.signal(signal.SIGINT, svc.stop)
    print(json.dumps({"ready": True, "bind": svc.endpoint, "pub": svc.pub_endpoint}), flush=True)
    try:
        svc.run(args.duration_s)
    finally:
        svc.close()
        print(json.dumps({"stats": svc.stats.__dict__, "assoc": svc.assoc.stats.__dict__}), file=sys.stderr, flush=True)
    return 0
