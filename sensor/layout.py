"""Sensor layouts: a GeoJSON FeatureCollection of Points ``[lon, lat, alt_m]``.

Each feature's ``properties.id`` is the sensor id. Optional properties:
``ground_alt_m`` (ground elevation under the sensor, m; mount height = alt_m - ground_alt_m)
and ``clock_offset_ns`` (a known clock correction from calibration, ns).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import ContractError
from .geodesy import LocalFrame


@dataclass(frozen=True)
class SensorLayout:
    """Sensor positions. Arrays are aligned with ``ids``; ENU metres are in ``frame``."""

    ids: tuple[str, ...]
    lat_deg: np.ndarray
    lon_deg: np.ndarray
    alt_m: np.ndarray
    ground_alt_m: np.ndarray
    frame: LocalFrame
    enu_m: np.ndarray  # shape (n, 3)
    clock_offset_ns: np.ndarray | None = None  # per sensor, from calibration: subtract from t_ns

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.ids)}

    @property
    def ground_enu_up_m(self) -> float:
        """Median ground height in the local frame (m): where sources stand."""
        _, _, u = self.frame.to_enu(self.lat_deg, self.lon_deg, self.ground_alt_m)
        return float(np.median(u))

    @classmethod
    def from_arrays(cls, ids, lat_deg, lon_deg, alt_m, ground_alt_m=None, frame=None, clock_offset_ns=None):
        lat = np.asarray(lat_deg, dtype=np.float64)
        lon = np.asarray(lon_deg, dtype=np.float64)
        alt = np.asarray(alt_m, dtype=np.float64)
        gnd = alt.copy() if ground_alt_m is None else np.asarray(ground_alt_m, dtype=np.float64)
        if frame is None:
            frame = LocalFrame(float(lat.mean()), float(lon.mean()), float(np.median(gnd)))
        e, n, u = frame.to_enu(lat, lon, alt)
        enu = np.stack([np.atleast_1d(e), np.atleast_1d(n), np.atleast_1d(u)], axis=1)
        off = None if clock_offset_ns is None else np.asarray(clock_offset_ns, dtype=np.int64)
        return cls(tuple(ids), lat, lon, alt, gnd, frame, enu, off)

    def to_geojson(self) -> dict:
        feats = []
        for i, sid in enumerate(self.ids):
            feats.append({
                "type": "Feature",
                "geometry": {"type": "Point",
                             "coordinates": [round(float(self.lon_deg[i]), 9),
                                             round(float(self.lat_deg[i]), 9),
                                             round(float(self.alt_m[i]), 3)]},
                "properties": {"id": sid, "ground_alt_m": round(float(self.ground_alt_m[i]), 3),
                               **({"clock_offset_ns": int(self.clock_offset_ns[i])}
                                  if self.clock_offset_ns is not None else {})},
            })
        return {"type": "FeatureCollection", "features": feats}


def parse_layout(doc: dict) -> SensorLayout:
    """Validate a GeoJSON FeatureCollection of sensor Points; raises ContractError."""
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise ContractError("sensor layout must be a GeoJSON FeatureCollection")
    feats = doc.get("features")
    if not isinstance(feats, list) or not feats:
        raise ContractError("sensor layout has no features")
    ids, lat, lon, alt, gnd, offs = [], [], [], [], [], []
    for k, f in enumerate(feats):
        where = f"feature {k}"
        try:
            geom = f["geometry"]
            props = f.get("properties") or {}
        except (TypeError, KeyError):
            raise ContractError(f"{where}: not a GeoJSON Feature") from None
        if not isinstance(geom, dict) or geom.get("type") != "Point":
            raise ContractError(f"{where}: geometry must be a Point")
        c = geom.get("coordinates")
        if not isinstance(c, list) or len(c) not in (2, 3) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in c):
            raise ContractError(f"{where}: coordinates must be [lon, lat] or [lon, lat, alt_m]")
        if not (-180 <= c[0] <= 180 and -90 <= c[1] <= 90):
            raise ContractError(f"{where}: coordinates {c[:2]} are not [lon, lat] in degrees")
        sid = props.get("id")
        if not isinstance(sid, str) or not sid:
            raise ContractError(f"{where}: properties.id (the sensor id) is required")
        if sid in ids:
            raise ContractError(f"{where}: duplicate sensor id {sid!r}")
        a = float(c[2]) if len(c) == 3 else 0.0
        ids.append(sid)
        lon.append(float(c[0]))
        lat.append(float(c[1]))
        alt.append(a)
        g = props.get("ground_alt_m", a)
        if not isinstance(g, (int, float)) or not math.isfinite(g):
            raise ContractError(f"{where}: ground_alt_m must be a number")
        gnd.append(float(g))
        o = props.get("clock_offset_ns", 0)
        if isinstance(o, bool) or not isinstance(o, int) or abs(o) > 10**10:
            raise ContractError(f"{where}: clock_offset_ns must be an integer number of ns (|x| <= 10 s)")
        offs.append(o)
    return SensorLayout.from_arrays(ids, lat, lon, alt, gnd,
                                    clock_offset_ns=offs if any(offs) else None)


def load_layout(path: str | Path) -> SensorLayout:
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    return parse_layout(doc)


def save_layout(layout: SensorLayout, path: str | Path) -> None:
    Path(path).write_text(json.dumps(layout.to_geojson(), indent=1) + "\n")
