"""Camera cueing: the cameras that can see a shot, as far as their owners allow.

**Registry** (TOML ``[[camera]]`` tables, or a GeoJSON FeatureCollection of Points with the
same keys as properties): ``camera_id``, ``lat_deg``, ``lon_deg``, ``mount_height_m``,
``kind`` (``fixed`` | ``ptz``), ``heading_deg`` (fixed: view centre; PTZ: pan zero),
``hfov_deg`` (fixed: field of view; PTZ: widest), ``range_m`` (useful range),
``pan_min_deg``/``pan_max_deg`` (PTZ, relative to the heading), ``tilt_min_deg``/
``tilt_max_deg``, ``zoom_max`` (optical zoom factor), ``stream_uri`` (RTSP), ``owner``,
``consent`` (``live`` | ``live_on_alarm`` | ``recorded_on_request`` | ``none``),
``opt_out``, optional ``onvif`` (``http://host:port``). Validated on load; every problem
is named with the camera and key.

**Selection** (:meth:`CameraRegistry.select`): candidates within range from a k-d tree
(scipy), then for each the points of the shot's 95% ellipse (centre and 12 points on its
edge) that it can see: within range, inside the field of view (fixed) or reachable by
pan and tilt (PTZ), and, when building footprints are given (GeoJSON polygons with
``height_m``), with a clear line of sight (shapely, STR-tree). Cameras that see any point
are ranked by the fraction of points seen, then distance.

**Cues** (:class:`CueEngine`): for each incident, the selected cameras as far as consent
allows; test fire is never cued. ``none`` and opted-out cameras never appear. ``live``
and ``live_on_alarm`` cameras get a cue (PTZ: pan, tilt and zoom in degrees and in ONVIF's
generic normalised space) and an access grant for a window around the incident time
only. ``recorded_on_request`` cameras
yield a footage request to their owner for the window, never a feed. An opt-out takes
effect at once: the camera leaves every selection and its open grants are revoked.
Every cue, grant, footage request, access (granted or denied), opt-out and revocation
goes into the hash-chained audit log (:mod:`shotnet.locator.audit`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shotnet.sensor.geodesy import LocalFrame

from .audit import AuditLog

log = logging.getLogger(__name__)

CONSENT = ("live", "live_on_alarm", "recorded_on_request", "none")
TARGET_HEIGHT_M = 1.5


@dataclass(frozen=True)
class Camera:
    camera_id: str
    lat_deg: float
    lon_deg: float
    mount_height_m: float = 4.0
    kind: str = "fixed"
    heading_deg: float = 0.0
    hfov_deg: float = 90.0
    range_m: float = 100.0
    pan_min_deg: float = -180.0
    pan_max_deg: float = 180.0
    tilt_min_deg: float = -90.0
    tilt_max_deg: float = 20.0
    zoom_max: float = 1.0
    stream_uri: str = ""
    owner: str = ""
    consent: str = "none"
    opt_out: bool = False
    onvif: str = ""


_FIELDS = {f.name: f for f in dataclasses.fields(Camera)}
_REQUIRED = ("camera_id", "lat_deg", "lon_deg", "kind", "range_m", "owner", "consent")


def camera_from_dict(d: dict, where: str) -> Camera:
    """Validate one camera; raises ValueError naming the camera and every bad key."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: a camera must be a table")
    cid = d.get("camera_id", "?")
    errs = []
    unknown = sorted(set(d) - set(_FIELDS))
    if unknown:
        errs.append(f"unknown key(s) {', '.join(unknown)}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        errs.append(f"missing key(s) {', '.join(missing)}")
    out = {}
    for k, v in d.items():
        if k not in _FIELDS:
            continue
        typ = _FIELDS[k].type          # a string: annotations are postponed
        if typ == "bool":
            ok = isinstance(v, bool)
        elif typ == "float":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            v = float(v) if ok else v
        else:
            ok = isinstance(v, str)
        if not ok:
            errs.append(f"{k} has the wrong type ({v!r})")
        out[k] = v
    if not errs:
        c = Camera(**out)
        if not -90 <= c.lat_deg <= 90 or not -180 <= c.lon_deg <= 180:
            errs.append("lat_deg/lon_deg out of range")
        if c.kind not in ("fixed", "ptz"):
            errs.append(f"kind must be fixed or ptz, got {c.kind!r}")
        if c.consent not in CONSENT:
            errs.append(f"consent must be one of {', '.join(CONSENT)}, got {c.consent!r}")
        if not 0 < c.range_m <= 5000:
            errs.append(f"range_m must be in (0, 5000], got {c.range_m}")
        if not 0 < c.hfov_deg <= 360:
            errs.append(f"hfov_deg must be in (0, 360], got {c.hfov_deg}")
        if c.pan_min_deg > c.pan_max_deg or c.tilt_min_deg > c.tilt_max_deg:
            errs.append("pan/tilt limits: min above max")
        if c.zoom_max < 1:
            errs.append("zoom_max must be >= 1")
        if c.consent in ("live", "live_on_alarm") and not c.stream_uri:
            errs.append(f"consent {c.consent} needs a stream_uri")
        if not errs:
            return c
    raise ValueError(f"{where}: camera {cid!r}: " + "; ".join(errs))


def load_cameras(path: str | Path) -> list[Camera]:
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".geojson", ".json"):
        doc = json.loads(text)
        rows = []
        for i, f in enumerate(doc.get("features", [])):
            lon, lat = f["geometry"]["coordinates"][:2]
            rows.append((dict(f.get("properties", {}), lat_deg=lat, lon_deg=lon), f"{path}: feature {i}"))
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
        extra = sorted(set(doc) - {"camera"})
        if extra:
            raise ValueError(f"{path}: unknown table(s) {', '.join(extra)}; expected [[camera]]")
        rows = [(c, f"{path}: camera {i}") for i, c in enumerate(doc.get("camera", []))]
    cams, errs = [], []
    for d, where in rows:
        try:
            cams.append(camera_from_dict(d, where))
        except ValueError as exc:
            errs.append(str(exc))
    ids = [c.camera_id for c in cams]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        errs.append(f"{path}: duplicate camera_id {', '.join(dup)}")
    if errs:
        raise ValueError("\n".join(errs))
    return cams


def load_buildings(path: str | Path, frame: LocalFrame):
    """GeoJSON Polygons with ``height_m`` (above ground) -> [(shapely polygon in ENU, h)]."""
    from shapely.geometry import Polygon

    doc = json.loads(Path(path).read_text())
    out = []
    for i, f in enumerate(doc.get("features", [])):
        g = f.get("geometry", {})
        h = f.get("properties", {}).get("height_m")
        if g.get("type") != "Polygon" or not isinstance(h, (int, float)):
            raise ValueError(f"{path}: feature {i}: need a Polygon with properties.height_m")
        ring = np.asarray(g["coordinates"][0], dtype=np.float64)
        e, n, _ = frame.to_enu(ring[:, 1], ring[:, 0], np.zeros(len(ring)))
        out.append((Polygon(np.column_stack([e, n])), float(h)))
    return out


def _wrap(deg):
    return (np.asarray(deg) + 180.0) % 360.0 - 180.0


@dataclass(frozen=True)
class View:
    """What one camera can do for one shot."""

    camera_id: str
    distance_m: float
    coverage: float                 # fraction of the ellipse's points it can see
    bearing_deg: float              # from the camera to the shot, clockwise from north
    pan_deg: float | None = None    # PTZ: relative to the camera's heading
    tilt_deg: float | None = None
    zoom: float | None = None
    onvif: dict | None = None       # PTZ: {"pan", "tilt", "zoom"} in ONVIF generic space


class CameraRegistry:
    def __init__(self, cameras: list[Camera], frame: LocalFrame | None = None, buildings=None):
        from scipy.spatial import cKDTree

        self.cameras = list(cameras)
        self.by_id = {c.camera_id: i for i, c in enumerate(self.cameras)}
        if frame is None:
            lat = float(np.mean([c.lat_deg for c in cameras])) if cameras else 0.0
            lon = float(np.mean([c.lon_deg for c in cameras])) if cameras else 0.0
            frame = LocalFrame(lat, lon, 0.0)
        self.frame = frame
        lat = np.array([c.lat_deg for c in cameras])
        lon = np.array([c.lon_deg for c in cameras])
        e, n, _ = frame.to_enu(lat, lon, np.zeros(len(cameras)))
        self.xy = np.column_stack([e, n]) if len(cameras) else np.zeros((0, 2))
        self.tree = cKDTree(self.xy) if len(cameras) else None
        self.max_range = max((c.range_m for c in cameras), default=0.0)
        self.opted_out: set[str] = {c.camera_id for c in cameras if c.opt_out}
        self._lock = threading.Lock()
        self.buildings = buildings or []
        self._btree = None
        if self.buildings:
            from shapely import STRtree

            self._btree = STRtree([p for p, _ in self.buildings])

    def opt_out(self, camera_id: str) -> None:
        if camera_id not in self.by_id:
            raise KeyError(f"unknown camera {camera_id!r}")
        with self._lock:
            self.opted_out.add(camera_id)

    def eligible(self, c: Camera) -> bool:
        return c.consent != "none" and c.camera_id not in self.opted_out

    def _blocked(self, ci: int, pts: np.ndarray, mount_h: float) -> np.ndarray:
        """Line of sight from camera ``ci`` to each point: True where a building is in the way."""
        if self._btree is None:
            return np.zeros(len(pts), dtype=bool)
        from shapely.geometry import LineString, Point

        cam = self.xy[ci]
        cam_pt = Point(cam)
        out = np.zeros(len(pts), dtype=bool)
        for k, p in enumerate(pts):
            seg = LineString([cam, p])
            d = float(np.hypot(*(p - cam))) or 1e-9
            for j in self._btree.query(seg):
                poly, h = self.buildings[int(j)]
                if poly.contains(cam_pt) or not poly.intersects(seg):
                    continue               # the building the camera is mounted on
                inter = poly.intersection(seg)
                s = cam_pt.distance(inter)  # distance along the sight line to where it enters
                z = mount_h + (TARGET_HEIGHT_M - mount_h) * s / d
                if h >= z:
                    out[k] = True
                    break
        return out

    def select(self, x_m: float, y_m: float, ellipse=(0.0, 0.0, 0.0), max_cameras: int = 10) -> list[View]:
        """Cameras that can see the shot at ``(x_m, y_m)`` (ENU in this registry's frame)
        or part of its 95% ellipse ``(major, minor, azimuth_deg)`` (semi-axes, m)."""
        if self.tree is None:
            return []
        major, minor, az = ellipse
        ang = np.radians(np.arange(12) * 30.0)
        a, b = np.cos(ang) * major, np.sin(ang) * minor
        azr = math.radians(az)
        pts = np.vstack([[x_m, y_m], np.column_stack([x_m + a * math.sin(azr) + b * math.cos(azr),
                                                      y_m + a * math.cos(azr) - b * math.sin(azr)])])
        cand = self.tree.query_ball_point([x_m, y_m], self.max_range + max(major, minor))
        views = []
        for ci in cand:
            c = self.cameras[ci]
            if not self.eligible(c):
                continue
            d = pts - self.xy[ci]
            dist = np.hypot(d[:, 0], d[:, 1])
            bearing = np.degrees(np.arctan2(d[:, 0], d[:, 1])) % 360.0
            rel = _wrap(bearing - c.heading_deg)
            ok = dist <= c.range_m
            if c.kind == "fixed":
                ok &= np.abs(rel) <= c.hfov_deg / 2
            else:
                tilt = np.degrees(np.arctan2(TARGET_HEIGHT_M - c.mount_height_m, np.maximum(dist, 1e-6)))
                ok &= (rel >= c.pan_min_deg) & (rel <= c.pan_max_deg)
                ok &= (tilt >= c.tilt_min_deg) & (tilt <= c.tilt_max_deg)
            if not ok.any():
                continue
            if self._btree is not None:
                idx = np.flatnonzero(ok)
                ok[idx[self._blocked(ci, pts[idx], c.mount_height_m)]] = False
                if not ok.any():
                    continue
            v = View(c.camera_id, round(float(dist[0]), 2), round(float(ok.mean()), 3), round(float(bearing[0]), 2))
            if c.kind == "ptz":
                v = dataclasses.replace(v, **self._aim(c, float(dist[0]), float(rel[0]), max(major, minor)))
            views.append(v)
        views.sort(key=lambda v: (-v.coverage, v.distance_m))
        return views[:max_cameras]

    @staticmethod
    def _aim(c: Camera, dist: float, rel_deg: float, half_extent_m: float) -> dict:
        pan = float(np.clip(rel_deg, c.pan_min_deg, c.pan_max_deg))
        tilt = float(np.clip(math.degrees(math.atan2(TARGET_HEIGHT_M - c.mount_height_m, max(dist, 1e-6))),
                             c.tilt_min_deg, c.tilt_max_deg))
        # Zoom so that the ellipse (plus 10 m either side) fills the widest view.
        need = 2 * math.degrees(math.atan2(half_extent_m + 10.0, max(dist, 1e-6)))
        zoom = float(np.clip(c.hfov_deg / max(need, 1e-6), 1.0, c.zoom_max))
        onvif = {"pan": round(pan / 180.0, 4), "tilt": round(tilt / 90.0, 4),
                 "zoom": round((zoom - 1.0) / (c.zoom_max - 1.0), 4) if c.zoom_max > 1 else 0.0}
        return {"pan_deg": round(pan, 2), "tilt_deg": round(tilt, 2), "zoom": round(zoom, 2), "onvif": onvif}


@dataclass
class Grant:
    grant_id: str
    camera_id: str
    incident_id: str
    scope: str                # "live" (the stream) or "recorded" (footage request)
    not_before_ns: int
    not_after_ns: int
    revoked: bool = False


@dataclass
class CueEngine:
    registry: CameraRegistry
    audit: AuditLog
    grant_before_s: float = 60.0      # access window opens this long before the shot...
    grant_after_s: float = 900.0      # ...and closes this long after it
    max_cameras: int = 8
    grants: dict[str, Grant] = field(default_factory=dict)
    cues: dict[str, list[dict]] = field(default_factory=dict)    # incident -> messages
    _aimed: dict[tuple[str, str], tuple] = field(default_factory=dict)

    def on_event(self, ev: dict, now_ns: int | None = None) -> list[dict]:
        """A located event (the locator's event JSON as a dict): cue messages to publish.
        Only gunshots are cued; an update re-cues a camera only if its aim moved."""
        if ev.get("label") != "gunshot" or ev.get("test"):
            # Only real gunshots: test fire (calibration) is never cued to any camera.
            return []
        e, n, _ = self.registry.frame.to_enu(ev["lat"], ev["lon"], 0.0)
        ell = ev.get("ellipse95_m") or {}
        views = self.registry.select(float(e), float(n), (ell.get("major", 0.0), ell.get("minor", 0.0),
                                                          ell.get("azimuth_deg", 0.0)), self.max_cameras)
        inc = ev.get("incident_id") or ev["event_id"]
        t_ns = int(ev["t_ns"])
        test = bool(ev.get("test"))
        out = []
        for v in views:
            c = self.registry.cameras[self.registry.by_id[v.camera_id]]
            if c.consent == "live_on_alarm" and test:
                continue
            aim = (v.pan_deg, v.tilt_deg, v.zoom)
            key = (inc, c.camera_id)
            prev = self._aimed.get(key)
            if prev is not None and (c.kind != "ptz" or (abs((prev[0] or 0) - (aim[0] or 0)) < 2.0
                                                       and abs((prev[1] or 0) - (aim[1] or 0)) < 2.0)):
                continue
            self._aimed[key] = aim
            scope = "recorded" if c.consent == "recorded_on_request" else "live"
            g = self._grant(c, inc, t_ns, scope)
            if scope == "recorded":
                msg = {"type": "footage_request", "incident_id": inc, "camera_id": c.camera_id, "owner": c.owner,
                       "from_ns": g.not_before_ns, "to_ns": g.not_after_ns, "grant_id": g.grant_id,
                       "distance_m": v.distance_m, "test": test}
                self.audit.append("footage_request", "hub", msg, now_ns)
            else:
                msg = {"type": "cue", "incident_id": inc, "event_id": ev["event_id"], "camera_id": c.camera_id,
                       "kind": c.kind, "distance_m": v.distance_m, "coverage": v.coverage,
                       "bearing_deg": v.bearing_deg, "pan_deg": v.pan_deg, "tilt_deg": v.tilt_deg, "zoom": v.zoom,
                       "onvif": v.onvif, "grant_id": g.grant_id, "not_after_ns": g.not_after_ns, "test": test}
                self.audit.append("cue", "hub", msg, now_ns)
            self.cues.setdefault(inc, []).append(msg)
            out.append(msg)
        return out

    def _grant(self, c: Camera, inc: str, t_ns: int, scope: str) -> Grant:
        gid = hashlib.sha256(f"{inc}|{c.camera_id}|{scope}".encode()).hexdigest()[:20]
        if gid not in self.grants:
            g = Grant(gid, c.camera_id, inc, scope, t_ns - int(self.grant_before_s * 1e9),
                      t_ns + int(self.grant_after_s * 1e9))
            self.grants[gid] = g
            self.audit.append("grant", "hub", dataclasses.asdict(g))
        return self.grants[gid]

    def access(self, grant_id: str, actor: str, now_ns: int | None = None) -> tuple[bool, str]:
        """The hub or a console user opens a granted feed. Returns (allowed, stream URI or
        the reason it is refused); every attempt is audited."""
        now = int(now_ns if now_ns is not None else time.time_ns())
        g = self.grants.get(grant_id)
        reason = None
        if g is None:
            reason = "no such grant"
        elif g.revoked or g.camera_id in self.registry.opted_out:
            reason = "revoked: the owner opted out"
        elif g.scope != "live":
            reason = "recorded-on-request camera: no live feed; footage comes from its owner"
        elif not g.not_before_ns <= now <= g.not_after_ns:
            reason = "outside the access window"
        data = {"grant_id": grant_id, "camera_id": g.camera_id if g else None,
                "incident_id": g.incident_id if g else None}
        if reason:
            self.audit.append("denied", actor, dict(data, reason=reason), now)
            return False, reason
        uri = self.registry.cameras[self.registry.by_id[g.camera_id]].stream_uri
        self.audit.append("access", actor, data, now)
        return True, uri

    def opt_out(self, camera_id: str, actor: str) -> int:
        """Effective at once: out of every selection, open grants revoked. Returns how
        many grants were revoked."""
        self.registry.opt_out(camera_id)
        self.audit.append("optout", actor, {"camera_id": camera_id})
        n = 0
        for g in self.grants.values():
            if g.camera_id == camera_id and not g.revoked:
                g.revoked = True
                n += 1
                self.audit.append("revoke", "hub", {"grant_id": g.grant_id, "camera_id": camera_id,
                                                    "reason": "owner opted out"})
        return n


# ---------------------------------------------------------------------- service and HTTP API
class CameraHub:
    """Subscribes to the locator's events, publishes cues (PUB topic ``b"cue"``) and
    serves the hub's HTTP API on 127.0.0.1:

    - ``GET /cues?incident=ID`` -> the cue and footage-request messages of an incident;
    - ``GET /access/<grant_id>?user=NAME`` -> 200 ``{"stream_uri": ...}`` or 403 ``{"reason": ...}``;
    - ``POST /optout/<camera_id>?by=NAME`` -> 200 ``{"revoked": n}``;
    - ``GET /health`` -> counts.
    """

    def __init__(self, engine: CueEngine, locator_pub: str | None, pub: str | None, http_port: int = 0, ctx=None):
        import zmq

        self.engine = engine
        self.ctx = ctx or zmq.Context.instance()
        self.sub = None
        if locator_pub:
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.SUBSCRIBE, b"evt")
            self.sub.connect(locator_pub)
        self.pub = None
        if pub:
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.bind(pub)
            self.pub_endpoint = self.pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.malformed = 0
        self._lock = threading.Lock()
        self._stop = False
        self.http = self._serve(http_port)
        self.http_port = self.http.server_address[1]

    def handle_event(self, ev: dict) -> list[dict]:
        with self._lock:
            msgs = self.engine.on_event(ev)
        if self.pub is not None:
            for m in msgs:
                self.pub.send_multipart([b"cue", json.dumps(m).encode()])
        return msgs

    def run(self, duration_s: float | None = None) -> None:
        end = time.monotonic() + duration_s if duration_s else None
        while not self._stop and (end is None or time.monotonic() < end):
            if self.sub is not None and self.sub.poll(100):
                _topic, body = self.sub.recv_multipart()
                try:
                    ev = json.loads(body)
                    if not isinstance(ev, dict) or "lat" not in ev or "t_ns" not in ev:
                        raise ValueError("not an event")
                except ValueError as exc:
                    self.malformed += 1
                    log.warning("malformed event from the locator: %s", exc)
                    continue
                self.handle_event(ev)
            elif self.sub is None:
                time.sleep(0.1)

    def stop(self, *_):
        self._stop = True

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        for s in (self.sub, self.pub):
            if s is not None:
                s.close(0)

    def _serve(self, port: int):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlparse

        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                u = urlparse(self.path)
                q = parse_qs(u.query)
                parts = [p for p in u.path.split("/") if p]
                with hub._lock:
                    if parts == ["cues"]:
                        inc = (q.get("incident") or [""])[0]
                        return self._send(200, {"incident_id": inc, "cues": hub.engine.cues.get(inc, [])})
                    if len(parts) == 2 and parts[0] == "access":
                        user = (q.get("user") or [""])[0]
                        if not user:
                            return self._send(400, {"reason": "user required"})
                        ok, what = hub.engine.access(parts[1], f"user:{user}")
                        return self._send(200, {"stream_uri": what}) if ok else self._send(403, {"reason": what})
                    if parts == ["health"]:
                        return self._send(200, {"cameras": len(hub.engine.registry.cameras),
                                                "opted_out": len(hub.engine.registry.opted_out),
                                                "grants": len(hub.engine.grants), "malformed": hub.malformed})
                self._send(404, {"reason": "not found"})

            def do_POST(self):  # noqa: N802
                u = urlparse(self.path)
                q = parse_qs(u.query)
                parts = [p for p in u.path.split("/") if p]
                if len(parts) == 2 and parts[0] == "optout":
                    with hub._lock:
                        try:
                            n = hub.engine.opt_out(parts[1], f"owner:{(q.get('by') or ['?'])[0]}")
                        except KeyError as exc:
                            return self._send(404, {"reason": str(exc)})
                    return self._send(200, {"camera_id": parts[1], "revoked": n})
                self._send(404, {"reason": "not found"})

            def log_message(self, *a):
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet cameras", description="Camera registry, selection and the hub.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ck = sub.add_parser("check", help="validate a camera registry")
    ck.add_argument("cameras")
    sel = sub.add_parser("select", help="the cameras that can see a position (and its ellipse)")
    sel.add_argument("cameras")
    sel.add_argument("--lat", type=float, required=True)
    sel.add_argument("--lon", type=float, required=True)
    sel.add_argument("--ellipse", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("MAJOR_M", "MINOR_M", "AZ"))
    sel.add_argument("--buildings", help="GeoJSON footprints with properties.height_m")
    run = sub.add_parser("run", help="the camera hub: locator events in, cues out, HTTP API")
    run.add_argument("cameras")
    run.add_argument("--locator-pub", default="tcp://127.0.0.1:5561")
    run.add_argument("--pub", default="tcp://127.0.0.1:5562")
    run.add_argument("--http-port", type=int, default=8562)
    run.add_argument("--audit", default="audit.jsonl")
    run.add_argument("--buildings")
    run.add_argument("--duration-s", type=float)
    args = ap.parse_args(argv)
    try:
        cams = load_cameras(args.cameras)
    except (OSError, ValueError) as exc:
        print(f"shotnet cameras: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "check":
        print(f"{args.cameras}: {len(cams)} cameras OK "
              f"({sum(c.kind == 'ptz' for c in cams)} PTZ; consent " +
              ", ".join(f"{k} {sum(c.consent == k for c in cams)}" for k in CONSENT) + ")")
        return 0
    reg = CameraRegistry(cams)
    if args.buildings:
        reg = CameraRegistry(cams, reg.frame, load_buildings(args.buildings, reg.frame))
    if args.cmd == "select":
        e, n, _ = reg.frame.to_enu(args.lat, args.lon, 0.0)
        for v in reg.select(float(e), float(n), tuple(args.ellipse)):
            print(json.dumps(dataclasses.asdict(v)))
        return 0
    import signal

    hub = CameraHub(CueEngine(reg, AuditLog(args.audit)), args.locator_pub, args.pub, args.http_port)
    signal.signal(signal.SIGTERM, hub.stop)
    signal.signal(signal.SIGINT, hub.stop)
    print(json.dumps({"ready": True, "pub": hub.pub_endpoint, "http_port": hub.http_port}), flush=True)
    try:
        hub.run(args.duration_s)
    finally:
        hub.close()
    return 0
