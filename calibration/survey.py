"""Survey an installed array with test shots: sensor positions and clock offsets.

Each test shot ``k`` is fired at a surveyed point ``S_k`` (known mode) or somewhere the
locator can place it (self-calibration); sensor ``i`` reports its arrival ``t_ik``. The
model, in the array's local ENU frame::

    t_ik = t0_k + |S_k - (P_i + d_i)| / c + b_i

with ``P_i`` the nominal sensor position, ``d_i`` its horizontal correction, ``b_i`` its
clock (or latency) offset and ``t0_k`` the unknown emission time; optionally ``c`` too.
All unknowns are fitted jointly by robust least squares (scipy ``least_squares``,
soft-L1 loss so one bad sensor cannot pull the rest), with weak priors on the
corrections (``prior_position_sigma_m``). The clock offsets are only defined up to a
common constant (it trades against every ``t0_k``): they are reported relative to the
array's mean, which is what location needs. With unknown shot positions the whole array
may also shift and turn; the priors on the nominal positions pin that down
(bundle adjustment).

Uncertainties (1 sigma) come from the Jacobian at the solution, scaled by the residuals.
A sensor is flagged when its position is off by more than ``flag_position_m``, its
clock by more than ``flag_clock_ms``, or its residuals are inconsistent with the rest
(RMS over ``flag_residual_x`` times the array's): a miswired or swapped channel shows as
a large position error or as residuals no position explains.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shotnet.sensor.acoustics import speed_of_sound_m_per_s
from shotnet.sensor.contract import NS_PER_S, Detection
from shotnet.sensor.layout import SensorLayout


@dataclass(frozen=True)
class TestShot:
    shot_id: str
    t_ns: int                         # when it was fired, roughly (+-1 s)
    e_m: float | None = None          # surveyed position in the array's frame, or None
    n_m: float | None = None


@dataclass(frozen=True)
class SurveyConfig:
    temperature_c: float = 18.0
    estimate_c: bool = False
    source_height_m: float = 1.5
    pick_sigma_s: float = 1e-4
    prior_position_sigma_m: float = 10.0
    window_s: float = 1.0             # a detection belongs to a shot if within this of its predicted arrival
    flag_position_m: float = 2.0
    flag_clock_ms: float = 1.0
    flag_residual_x: float = 4.0      # normalised residual RMS (in units of the stated sigmas)
    suspect_position_m: float = 25.0  # this far off is not a survey error: wrong wiring or site


@dataclass
class SensorCalibration:
    sensor_id: str
    de_m: float
    dn_m: float
    clock_offset_ns: int
    sigma_position_m: float
    sigma_clock_ns: int
    residual_rms_ms: float
    n_shots: int
    flags: list[str] = field(default_factory=list)


@dataclass
class SurveyResult:
    sensors: list[SensorCalibration]
    c_m_per_s: float
    shots: list[dict]
    residual_rms_ms: float

    def flagged(self) -> list[SensorCalibration]:
        return [s for s in self.sensors if s.flags]


def assign(layout: SensorLayout, shots: list[TestShot], dets: list[Detection], cfg: SurveyConfig):
    """(n_shots, n_sensors) arrival times in s relative to each shot's nominal time, NaN
    where the sensor has none: the earliest detection within ``window_s`` of the
    predicted arrival (or, for an unplaced shot, within the array crossing time); and
    the matching 1-sigma the nodes stated (s)."""
    c = speed_of_sound_m_per_s(cfg.temperature_c)
    idx = layout.index()
    z = layout.ground_enu_up_m + cfg.source_height_m
    span = float(np.ptp(layout.enu_m[:, 0]) + np.ptp(layout.enu_m[:, 1])) / c
    t = np.full((len(shots), len(layout)), np.nan)
    sg = np.full((len(shots), len(layout)), cfg.pick_sigma_s)
    for k, s in enumerate(shots):
        for d in dets:
            i = idx.get(d.sensor_id)
            if i is None:
                continue
            dt = (d.t_ns - s.t_ns) / NS_PER_S
            if s.e_m is not None:
                pred = math.dist((s.e_m, s.n_m, z), layout.enu_m[i]) / c
                ok = abs(dt - pred) <= cfg.window_s
            else:
                ok = -cfg.window_s <= dt <= span + cfg.window_s
            if ok and not dt >= t[k, i]:
                t[k, i] = dt
                sg[k, i] = max(d.t_sigma_ns / NS_PER_S, 1e-6)
    return t, sg


def survey(layout: SensorLayout, shots: list[TestShot], dets: list[Detection],
           cfg: SurveyConfig = SurveyConfig()) -> SurveyResult:
    t, sg = assign(layout, shots, dets, cfg)
    first = _fit(layout, shots, t, sg, cfg)
    suspects = [i for i, sc in enumerate(first.sensors) if any(f.startswith("SUSPECT") for f in sc.flags)]
    if not suspects:
        return first
    # Refit without the suspects, so that they cannot bend the others; report them as
    # the first pass saw them.
    t2 = t.copy()
    t2[:, suspects] = np.nan
    second = _fit(layout, shots, t2, sg, cfg)
    for i in suspects:
        second.sensors[i] = first.sensors[i]
    return second


def _fit(layout: SensorLayout, shots: list[TestShot], t: np.ndarray, sg: np.ndarray,
         cfg: SurveyConfig) -> SurveyResult:
    from scipy.optimize import least_squares

    n_k, n_s = t.shape
    c0 = speed_of_sound_m_per_s(cfg.temperature_c)
    z = layout.ground_enu_up_m + cfg.source_height_m
    P = layout.enu_m
    known = np.array([s.e_m is not None for s in shots])
    obs = np.argwhere(np.isfinite(t))
    sig = sg[obs[:, 0], obs[:, 1]]
    # Unknowns: d (n_s x 2), b (n_s), t0 (n_k), unknown shot positions (2 each), [c].
    n_unk = int((~known).sum())
    unk_idx = {k: j for j, k in enumerate(np.flatnonzero(~known))}
    S0 = np.zeros((n_k, 2))
    for k, s in enumerate(shots):
        if s.e_m is not None:
            S0[k] = (s.e_m, s.n_m)
        else:
            # Start an unplaced shot at the sensor that heard it first, nudged inward.
            i0 = int(np.nanargmin(t[k]))
            S0[k] = P[i0, :2] * 0.9
    t0_init = np.array([np.nanmin(t[k] - np.hypot(*(P[:, :2] - S0[k]).T) / c0) if np.isfinite(t[k]).any() else 0.0
                        for k in range(n_k)])

    def unpack(x):
        d = x[:2 * n_s].reshape(n_s, 2)
        b = x[2 * n_s:3 * n_s]
        t0 = x[3 * n_s:3 * n_s + n_k]
        S = S0.copy()
        if n_unk:
            S[~known] = x[3 * n_s + n_k:3 * n_s + n_k + 2 * n_unk].reshape(n_unk, 2)
        c = x[-1] if cfg.estimate_c else c0
        return d, b, t0, S, c

    def resid(x):
        d, b, t0, S, c = unpack(x)
        k, i = obs[:, 0], obs[:, 1]
        dx = S[k, 0] - (P[i, 0] + d[i, 0])
        dy = S[k, 1] - (P[i, 1] + d[i, 1])
        dz = z - P[i, 2]
        pred = t0[k] + np.sqrt(dx * dx + dy * dy + dz * dz) / c + b[i]
        r = (t[k, i] - pred) / sig
        prior = d.ravel() / cfg.prior_position_sigma_m
        heard = np.isfinite(t).any(axis=0)
        gauge = [np.sum(b[heard]) / cfg.pick_sigma_s]  # offsets relative to the array's mean
        return np.concatenate([r, prior, gauge])

    x0 = np.concatenate([np.zeros(2 * n_s), np.zeros(n_s), t0_init, S0[~known].ravel(),
                         [c0] if cfg.estimate_c else []])
    sol = least_squares(resid, x0, loss="soft_l1", f_scale=3.0, x_scale="jac", max_nfev=2000)
    d, b, t0, S, c = unpack(sol.x)
    r_all = resid(sol.x)[:len(obs)] * sig
    # Uncertainties from the Jacobian, scaled by the (robust) residual spread.
    J = sol.jac
    s2 = max(1.0, (1.4826 * np.median(np.abs(r_all / sig))) ** 2)
    if not len(obs):
        raise ValueError("no detection matches any test shot")
    try:
        cov = np.linalg.pinv(J.T @ J) * s2
    except np.linalg.LinAlgError:
        cov = np.full((len(sol.x), len(sol.x)), np.nan)
    var = np.diag(cov)
    rms_all = float(np.sqrt(np.median(r_all ** 2)))
    z_all = r_all / sig
    out = []
    for i, sid in enumerate(layout.ids):
        sel = obs[:, 1] == i
        mine = r_all[sel]
        rr = float(np.sqrt(np.mean(mine ** 2))) if len(mine) else float("nan")
        zr = float(np.sqrt(np.mean(z_all[sel] ** 2))) if len(mine) else float("nan")
        sp = float(np.sqrt(max(var[2 * i], 0) + max(var[2 * i + 1], 0)))
        sb = float(np.sqrt(max(var[2 * n_s + i], 0)))
        flags = []
        off = float(np.hypot(*d[i]))
        if off > cfg.suspect_position_m:
            flags.append(f"SUSPECT: position off by {off:.0f} m: miswired, swapped or at the wrong site")
        elif off > cfg.flag_position_m:
            flags.append(f"position off by {off:.1f} m")
        if len(mine) and zr > cfg.flag_residual_x:
            flags.append(f"SUSPECT: inconsistent timing, residual RMS {rr * 1e3:.2f} ms = {zr:.1f} sigma "
                         f"(miswired or wrong channel?)")
        if abs(b[i]) * 1e3 > cfg.flag_clock_ms:
            flags.append(f"clock or latency off by {b[i] * 1e3:+.2f} ms")
        if 0 < len(mine) < 3:
            flags.append(f"heard only {len(mine)} test shot(s): not calibrated")
        out.append(SensorCalibration(sid, round(float(d[i, 0]), 3), round(float(d[i, 1]), 3),
                                     int(round(b[i] * NS_PER_S)), round(sp, 3), int(round(sb * NS_PER_S)),
                                     round(rr * 1e3, 4), int(len(mine)), flags))
    shots_out = [{"shot_id": s.shot_id, "e_m": round(float(S[k, 0]), 3), "n_m": round(float(S[k, 1]), 3),
                  "t0_ns": int(s.t_ns + round(t0[k] * NS_PER_S)), "n_sensors": int(np.isfinite(t[k]).sum())}
                 for k, s in enumerate(shots)]
    return SurveyResult(out, float(c), shots_out, round(rms_all * 1e3, 4))


def calibrated_layout(layout: SensorLayout, res: SurveyResult, skip_flagged: bool = True) -> SensorLayout:
    """The layout with the corrections applied (flagged sensors left as they were and
    given no offset, unless ``skip_flagged`` is False): what the locator should load."""
    e = layout.enu_m[:, 0].copy()
    n = layout.enu_m[:, 1].copy()
    off = np.zeros(len(layout), dtype=np.int64)
    for i, s in enumerate(res.sensors):
        if skip_flagged and any(f.startswith(("SUSPECT", "heard only")) for f in s.flags):
            continue
        e[i] += s.de_m
        n[i] += s.dn_m
        off[i] = s.clock_offset_ns
    lat, lon, alt = layout.frame.to_geodetic(e, n, layout.enu_m[:, 2])
    return SensorLayout.from_arrays(layout.ids, lat, lon, alt, layout.ground_alt_m, frame=layout.frame,
                                    clock_offset_ns=off)


def write_calibration(layout: SensorLayout, res: SurveyResult, out_dir) -> dict:
    """``sensors.calibrated.geojson`` (the locator's layout: corrected positions,
    ``clock_offset_ns``), ``survey.json`` (every estimate, sigma and flag), and one
    ``calib-<sensor_id>.toml`` per sensor with its surveyed position in node.toml form."""
    from shotnet.sensor.layout import save_layout

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cal = calibrated_layout(layout, res)
    save_layout(cal, out / "sensors.calibrated.geojson")
    doc = {"c_m_per_s": round(res.c_m_per_s, 3), "residual_rms_ms": res.residual_rms_ms, "shots": res.shots,
           "sensors": [s.__dict__ for s in res.sensors]}
    (out / "survey.json").write_text(json.dumps(doc, indent=1))
    for i, s in enumerate(res.sensors):
        (out / f"calib-{s.sensor_id}.toml").write_text(
            f"# shotnet calibrate survey: merge into the node's node.toml\n"
            f"# position correction {s.de_m:+.2f} m E, {s.dn_m:+.2f} m N (1-sigma {s.sigma_position_m:.2f} m); "
            f"clock offset {s.clock_offset_ns} ns (1-sigma {s.sigma_clock_ns} ns), applied by the locator\n"
            + (f"# FLAGS: {'; '.join(s.flags)}\n" if s.flags else "")
            + f"[position]\nsurveyed = true\nlat_deg = {cal.lat_deg[i]:.8f}\nlon_deg = {cal.lon_deg[i]:.8f}\n"
              f"alt_m = {cal.alt_m[i]:.2f}\n")
    return doc
