"""Synthetic detection streams with known truth, for accuracy studies and load tests.

Faster than rendering audio: each shot becomes, per sensor that hears it, a detection
whose time is the exact travel time (uniform wind) plus realistic errors:

- pick noise growing with distance (``pick_sigma_s * (1 + d / pick_growth_m)``),
- clock noise per sensor,
- late arrivals (echoes, blocked direct paths: +5..40 ms) at ``late_fraction``,
- misses (sensors beyond ``hearing_m`` never hear; closer ones miss at ``miss_fraction``),
- the locator's sensor positions off by ``survey_sigma_m`` (its layout differs from truth),
- false detections (single-sensor impulses) at ``false_per_sensor_per_s``,
- look-alike sources (fireworks, backfires) heard by many sensors, labelled as such.

Each detection carries a plausible ``t_sigma_ns`` (what a node would report: pick sigma
only; the locator must learn the rest from the residuals).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from shotnet.sensor.acoustics import speed_of_sound_m_per_s, travel_time_s
from shotnet.sensor.contract import NS_PER_S, Detection
from shotnet.sensor.layout import SensorLayout


@dataclass(frozen=True)
class StreamConfig:
    temperature_c: float = 18.0
    wind_m_per_s: tuple[float, float] = (3.0, -2.5)
    pick_sigma_s: float = 1e-4
    pick_growth_m: float = 400.0
    clock_sigma_s: float = 2e-6
    late_fraction: float = 0.12
    late_range_s: tuple[float, float] = (0.005, 0.04)
    miss_fraction: float = 0.05
    hearing_m: float = 1500.0
    survey_sigma_m: float = 1.0
    false_per_sensor_per_s: float = 0.02
    lookalike_fraction: float = 0.3
    source_height_m: float = 1.5


@dataclass(frozen=True)
class TrueShot:
    t_ns: int
    e_m: float
    n_m: float
    u_m: float
    gunshot: bool
    n_heard: int


def grid_layout(n: int, spacing_m: float = 300.0) -> SensorLayout:
    """``n`` sensors on a square grid ``spacing_m`` apart, centred on a Chicago frame, 8 m
    up on 180 m ground: the large city of the load and dense-night studies."""
    from shotnet.sensor.geodesy import LocalFrame

    k = int(np.ceil(np.sqrt(n)))
    xs = (np.arange(k) - (k - 1) / 2) * spacing_m
    gx, gy = np.meshgrid(xs, xs)
    e, nn = gx.ravel()[:n], gy.ravel()[:n]
    frame = LocalFrame(41.85, -87.68, 180.0)
    lat, lon, alt = frame.to_geodetic(e, nn, np.full(n, 8.0))
    return SensorLayout.from_arrays([f"N{i:03d}" for i in range(n)], lat, lon, alt, np.full(n, 180.0))


def perturbed_layout(layout: SensorLayout, sigma_m: float, rng: np.random.Generator) -> SensorLayout:
    """The layout the locator believes: each sensor off by N(0, sigma) m per horizontal axis."""
    if sigma_m <= 0:
        return layout
    e = layout.enu_m[:, 0] + rng.normal(0, sigma_m, len(layout))
    n = layout.enu_m[:, 1] + rng.normal(0, sigma_m, len(layout))
    lat, lon, alt = layout.frame.to_geodetic(e, n, layout.enu_m[:, 2])
    return SensorLayout.from_arrays(layout.ids, lat, lon, alt, layout.ground_alt_m, frame=layout.frame)


def make_stream(layout: SensorLayout, n_shots: int, duration_s: float, cfg: StreamConfig = StreamConfig(),
                seed: int = 0, t0_ns: int = 1_800_000_000 * NS_PER_S, extent_m: float | None = None,
                shots: list[tuple[float, float, float]] | None = None):
    """Returns (detections sorted by time, true shots, the locator's (perturbed) layout).

    ``shots`` optionally gives ``(t_s, e_m, n_m)`` for each shot instead of random ones."""
    rng = np.random.default_rng(seed)
    c = speed_of_sound_m_per_s(cfg.temperature_c)
    ground = layout.ground_enu_up_m
    ext = extent_m if extent_m is not None else float(np.abs(layout.enu_m[:, :2]).max())
    if shots is None:
        ts = np.sort(rng.uniform(0, duration_s, n_shots))
        shots = [(float(t), float(rng.uniform(-ext, ext)), float(rng.uniform(-ext, ext))) for t in ts]
    seq = {s: 0 for s in layout.ids}
    dets: list[Detection] = []
    truth: list[TrueShot] = []
    clock = rng.normal(0, cfg.clock_sigma_s, len(layout))
    for t_s, e, n in shots:
        gun = rng.random() >= cfg.lookalike_fraction
        src = np.array([e, n, ground + cfg.source_height_m])
        tt = travel_time_s(src, layout.enu_m, c, cfg.wind_m_per_s)
        dist = np.linalg.norm(layout.enu_m - src, axis=1)
        t_emit = t0_ns + int(t_s * NS_PER_S)
        heard = 0
        for i, sid in enumerate(layout.ids):
            if dist[i] > cfg.hearing_m or rng.random() < cfg.miss_fraction:
                continue
            sig = cfg.pick_sigma_s * (1 + dist[i] / cfg.pick_growth_m)
            t = tt[i] + rng.normal(0, sig) + clock[i]
            if rng.random() < cfg.late_fraction:
                t += rng.uniform(*cfg.late_range_s)
            p = rng.uniform(0.8, 0.99) if gun else rng.uniform(0.01, 0.3)
            dets.append(Detection(sid, 0, t_emit + int(t * NS_PER_S), int(sig * NS_PER_S),
                                  "gunshot" if p >= 0.5 else "firework", p if p >= 0.5 else 1 - p, p))
            heard += 1
        truth.append(TrueShot(t_emit, e, n, float(src[2]), gun, heard))
    n_false = rng.poisson(cfg.false_per_sensor_per_s * duration_s * len(layout))
    for _ in range(n_false):
        sid = layout.ids[rng.integers(len(layout))]
        dets.append(Detection(sid, 0, t0_ns + int(rng.uniform(0, duration_s) * NS_PER_S), 200_000, "impulse", 0.7,
                              rng.uniform(0, 0.6)))
    dets.sort(key=lambda d: d.t_ns)
    out = []
    for d in dets:
        out.append(replace(d, seq=seq[d.sensor_id]))
        seq[d.sensor_id] += 1
    return out, truth, perturbed_layout(layout, cfg.survey_sigma_m, rng)


def score(events, truth: list[TrueShot], frame_layout: SensorLayout, max_dt_s: float = 0.05, max_dist_m: float = 50.0):
    """Match events to true shots: an event within ``max_dist_m`` of a shot and within
    ``max_dt_s`` of its emission time, or 3 of its own emission-time sigmas (a shot
    outside a line of sensors is placed to metres across the line and poorly along it,
    where range and emission time trade off). Returns (per shot: the shot, its event or
    None, horizontal error m, whether the 95% ellipse covers it), and the unmatched
    (false) events."""
    taken = set()
    rows = []
    for tr in truth:
        best, bd = None, None
        for k, ev in enumerate(events):
            if k in taken or abs(ev.t_ns - tr.t_ns) > max(max_dt_s, 3e-3 * ev.t_sigma_ms) * NS_PER_S:
                continue
            e, n, _ = frame_layout.frame.to_enu(ev.lat, ev.lon, ev.alt_m)
            d = float(np.hypot(e - tr.e_m, n - tr.n_m))
            if d <= max_dist_m and (bd is None or d < bd):
                best, bd = k, d
        if best is not None:
            taken.add(best)
            ev = events[best]
            e, n, _ = frame_layout.frame.to_enu(ev.lat, ev.lon, ev.alt_m)
            inside = _inside_ellipse(float(e) - tr.e_m, float(n) - tr.n_m, ev.ellipse95_m)
            rows.append((tr, ev, bd, inside))
        else:
            rows.append((tr, None, None, None))
    false = [ev for k, ev in enumerate(events) if k not in taken]
    return rows, false


def _inside_ellipse(de: float, dn: float, ell) -> bool:
    az = np.radians(ell.azimuth_deg)
    a = de * np.sin(az) + dn * np.cos(az)     # along the major axis
    b = de * np.cos(az) - dn * np.sin(az)     # along the minor axis
    return (a / max(ell.major, 1e-9)) ** 2 + (b / max(ell.minor, 1e-9)) ** 2 <= 1.0
