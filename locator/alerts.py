"""Alert formats and delivery: CAP 1.2, GeoJSON, and a webhook with retries.

Pure functions turn an incident (and its latest round) into a CAP 1.2 ``alert`` document
or a GeoJSON Feature; :class:`Webhook` posts JSON with retries and exponential backoff in
a background thread (a slow dispatcher endpoint never blocks location).

CAP notes (OASIS CAP 1.2): ``sent`` is ``YYYY-MM-DDThh:mm:ss+00:00`` (no ``Z``, no
fraction); ``category`` from a fixed list (``Security``); an ``area`` circle is
``"lat,lon radius_km"`` (latitude first, unlike GeoJSON).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import urllib.request
from datetime import datetime, timezone
from xml.sax.saxutils import escape

from shotnet.sensor.contract import NS_PER_S, Event

log = logging.getLogger(__name__)

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"


def cap_time(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns // NS_PER_S, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def cap_alert(ev: Event, incident: dict | None = None, *, sender: str = "shotnet@localhost",
              sent_ns: int | None = None, status: str | None = None) -> str:
    """A CAP 1.2 alert for one located round (with its incident's summary)."""
    inc = incident or {}
    sent_ns = sent_ns if sent_ns is not None else time.time_ns()
    status = status or ("Test" if ev.test else "Actual")
    msg_type = "Alert" if ev.version == 1 else "Update"
    rounds = inc.get("rounds", 1)
    flags = []
    if inc.get("automatic"):
        flags.append("automatic fire")
    if inc.get("multiple_shooters"):
        flags.append(f"{inc.get('shooters')} shooters")
    e = ev.ellipse95_m
    radius_km = max(e.major, 1.0) / 1000.0
    headline = f"Gunfire detected: {rounds} round{'s' if rounds != 1 else ''}" + (f" ({', '.join(flags)})" if flags else "")
    desc = (f"{ev.label} at {ev.lat:.6f},{ev.lon:.6f} (95% ellipse {e.major:.1f} x {e.minor:.1f} m, azimuth "
            f"{e.azimuth_deg:.0f} deg), emitted {cap_time(ev.t_ns)}, heard by {len(ev.sensor_ids)} sensors, "
            f"timing residual {ev.residual_rms_ms:.2f} ms, classifier confidence {ev.confidence:.2f}.")
    certainty = "Likely" if ev.confidence >= 0.8 else "Possible"
    ident = f"shotnet-{ev.event_id}-v{ev.version}"
    refs = f"\n  <references>{escape(sender)},shotnet-{ev.event_id}-v1,{cap_time(ev.t_ns)}</references>" \
        if ev.version > 1 else ""
    params = "".join(
        f"\n    <parameter><valueName>{escape(k)}</valueName><value>{escape(str(v))}</value></parameter>"
        for k, v in (("event_id", ev.event_id), ("incident_id", ev.incident_id), ("t_ns", ev.t_ns),
                     ("ellipse95_major_m", e.major), ("ellipse95_minor_m", e.minor),
                     ("ellipse95_azimuth_deg", e.azimuth_deg), ("rounds", rounds),
                     ("automatic", str(bool(inc.get("automatic"))).lower()),
                     ("multiple_shooters", str(bool(inc.get("multiple_shooters"))).lower())))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="{CAP_NS}">
  <identifier>{escape(ident)}</identifier>
  <sender>{escape(sender)}</sender>
  <sent>{cap_time(sent_ns)}</sent>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Restricted</scope>
  <restriction>Public-safety dispatch only</restriction>{refs}
  <info>
    <language>en-US</language>
    <category>Security</category>
    <event>Gunfire</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>{certainty}</certainty>
    <senderName>shotnet acoustic gunshot detection</senderName>
    <headline>{escape(headline)}</headline>
    <description>{escape(desc)}</description>{params}
    <area>
      <areaDesc>95% location ellipse of the round</areaDesc>
      <circle>{ev.lat:.6f},{ev.lon:.6f} {radius_km:.4f}</circle>
    </area>
  </info>
</alert>
"""


def ellipse_polygon(ev: Event, n: int = 36) -> list[list[float]]:
    """The 95% ellipse as a closed GeoJSON ring ``[[lon, lat], ...]`` (small-area
    approximation: metres to degrees at the event's latitude)."""
    e = ev.ellipse95_m
    az = math.radians(e.azimuth_deg)
    m_per_deg_lat = 111_132.92 - 559.82 * math.cos(2 * math.radians(ev.lat))
    m_per_deg_lon = 111_412.84 * math.cos(math.radians(ev.lat))
    ring = []
    for k in range(n + 1):
        th = 2 * math.pi * k / n
        a, b = e.major * math.cos(th), e.minor * math.sin(th)
        east = a * math.sin(az) + b * math.cos(az)
        north = a * math.cos(az) - b * math.sin(az)
        ring.append([round(ev.lon + east / m_per_deg_lon, 8), round(ev.lat + north / m_per_deg_lat, 8)])
    return ring


def geojson_feature(ev: Event, incident: dict | None = None) -> dict:
    props = {k: v for k, v in ev.to_dict().items() if k not in ("lat", "lon", "alt_m")}
    if incident:
        props["incident"] = {k: incident[k] for k in ("rounds", "automatic", "multiple_shooters", "shooters")
                             if k in incident}
    return {"type": "Feature", "id": ev.event_id,
            "geometry": {"type": "GeometryCollection", "geometries": [
                {"type": "Point", "coordinates": [ev.lon, ev.lat, ev.alt_m]},
                {"type": "Polygon", "coordinates": [ellipse_polygon(ev)]}]},
            "properties": props}


class Webhook:
    """POST JSON to a URL from a background thread, retrying with exponential backoff.

    Delivery is at-least-once while the process lives; ``stats`` counts sent, retried and
    given-up posts."""

    def __init__(self, url: str, retries: int = 5, backoff_s: float = 0.5, timeout_s: float = 5.0):
        self.url, self.retries, self.backoff_s, self.timeout_s = url, retries, backoff_s, timeout_s
        self.q: queue.Queue = queue.Queue(maxsize=10_000)
        self.stats = {"sent": 0, "retried": 0, "failed": 0, "dropped": 0}
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._th.start()

    def post(self, payload: dict) -> None:
        try:
            self.q.put_nowait(payload)
        except queue.Full:
            self.stats["dropped"] += 1

    def _run(self) -> None:
        while not self._stop.is_set() or not self.q.empty():
            try:
                payload = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            body = json.dumps(payload).encode()
            for attempt in range(self.retries + 1):
                try:
                    req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                        if 200 <= resp.status < 300:
                            self.stats["sent"] += 1
                            break
                        raise OSError(f"HTTP {resp.status}")
                except OSError as exc:
                    if attempt == self.retries:
                        self.stats["failed"] += 1
                        log.warning("webhook %s gave up after %d attempts: %s", self.url, attempt + 1, exc)
                        break
                    self.stats["retried"] += 1
                    time.sleep(self.backoff_s * 2**attempt)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._th.join(timeout_s)
