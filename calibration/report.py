"""An array's health report: one HTML page with PNG figures, for the field tech.

From the locator's store (SQLite) and the array's layout:

- **per-sensor timing residuals** over recent events: observed arrival minus the arrival
  predicted from the event's solution; a sensor whose median residual sits away from zero
  has a clock or latency offset, a wide spread means bad picks or a moved sensor;
- **clock state and noise floor over time**, from the nodes' heartbeats;
- **node status** now: ok, degraded (with reasons) or silent, by the locator's rules;
- **coverage map**: the plan's predicted accuracy for the array as it stands (silent
  sensors removed).

``shotnet calibrate report --store locator.sqlite --sensors sensors.geojson --out DIR``
writes ``DIR/index.html`` and its figures; ``report.json`` has the same numbers.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

import numpy as np

from shotnet.sensor.acoustics import speed_of_sound_m_per_s
from shotnet.sensor.contract import NS_PER_S, heartbeat_from_dict
from shotnet.sensor.layout import SensorLayout


def residuals(layout: SensorLayout, events, dets_by_key: dict, temperature_c: float = 18.0,
              source_height_m: float = 1.5, estimate_wind: bool = True) -> dict[str, list[float]]:
    """Per sensor, observed minus predicted arrival (ms) over the events' detections.

    Each event is re-solved from its detections as the locator does (wind as two
    unknowns when enough sensors heard it: 4 m/s of wind moves arrivals by ~30 ms per km)
    and every one of its detections contributes its residual, outliers included, so a
    sensor with a clock offset shows as a box away from zero. So does a sensor the
    locator left out of an event (its arrival too far off): its detection nearest the
    predicted arrival, within 50 ms, counts too."""
    import bisect

    from shotnet.locator.locate import locate

    c = speed_of_sound_m_per_s(temperature_c)
    idx = layout.index()
    z = layout.ground_enu_up_m + source_height_m
    out: dict[str, list[float]] = {s: [] for s in layout.ids}
    times: dict[str, list[int]] = {s: [] for s in layout.ids}
    for d in dets_by_key.values():
        if d.sensor_id in times:
            times[d.sensor_id].append(d.t_ns)
    for v in times.values():
        v.sort()
    for ev in events:
        ds = [dets_by_key[k] for k in ev.detections if k in dets_by_key and dets_by_key[k].sensor_id in idx]
        if len(ds) < 5:
            continue
        e, n, _ = layout.frame.to_enu(ev.lat, ev.lon, ev.alt_m)
        pos = layout.enu_m[[idx[d.sensor_id] for d in ds]]
        t = np.array([(d.t_ns - ev.t_ns) / NS_PER_S for d in ds])
        sig = np.array([max(d.t_sigma_ns, 1000) for d in ds]) / NS_PER_S
        sig = np.sqrt(sig ** 2 + 3e-4 ** 2)
        sol = locate(pos, t, sig, c_m_per_s=c, z_src_m=z, x0=[float(e), float(n), 0.0],
                     estimate_wind=estimate_wind and len(ds) >= 7)
        if sol is None:
            continue
        for d, r in zip(ds, sol.residuals_s):
            out[d.sensor_id].append(float(r) * 1e3)
        # Sensors left out: predicted arrival (first-order wind), nearest detection.
        used = {d.sensor_id for d in ds}
        wx, wy = sol.wind_m_per_s
        for sid, k in idx.items():
            if sid in used:
                continue
            dv = layout.enu_m[k] - [sol.x_m, sol.y_m, sol.z_m]
            pred = ev.t_ns + int((sol.t0_s + np.linalg.norm(dv) / c - (dv[0] * wx + dv[1] * wy) / c**2) * NS_PER_S)
            h = times[sid]
            i = bisect.bisect_left(h, pred)
            near = [h[j] for j in (i - 1, i) if 0 <= j < len(h)]
            if near:
                t_near = min(near, key=lambda x: abs(x - pred))
                if abs(t_near - pred) <= 0.05 * NS_PER_S:
                    out[sid].append((t_near - pred) / 1e6)
    return out


def _fig_residuals(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(res)
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(ids)), 4.2))
    data = [res[s] if res[s] else [np.nan] for s in ids]
    ax.boxplot(data, tick_labels=ids, showfliers=True, whis=(5, 95))
    ax.axhline(0, color="k", lw=0.6)
    for k, s in enumerate(ids, 1):
        if res[s]:
            ax.plot(np.full(len(res[s]), k) + np.random.default_rng(k).uniform(-0.15, 0.15, len(res[s])),
                    res[s], ".", color="tab:blue", alpha=0.35, ms=3)
    ax.set_ylabel("observed - predicted arrival (ms)")
    ax.set_title("timing residuals per sensor over recent events (whiskers 5-95%)")
    ax.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fig_health(health_rows, ids, path: Path, t_end_ns: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    by: dict[str, list] = {s: [] for s in ids}
    for sid, t, body in health_rows:
        if sid in by:
            by[sid].append((t, body))
    for sid, rows in by.items():
        if not rows:
            continue
        t = np.array([(r[0] - t_end_ns) / 3600e9 for r in rows])
        a1.semilogy(t, [max(r[1]["clock_sigma_ns"], 1) / 1e3 for r in rows], "-", lw=1, label=sid)
        a2.plot(t, [r[1]["noise_floor_dbfs"] if r[1]["noise_floor_dbfs"] is not None else np.nan for r in rows],
                "-", lw=1, label=sid)
    a1.set_ylabel("clock 1-sigma (us)")
    a1.set_title("clock state over time (from heartbeats)")
    a2.set_ylabel("noise floor (dBFS)")
    a2.set_xlabel("hours before the report")
    a2.set_title("noise floor over time")
    if any(by.values()):
        a1.legend(fontsize=6, ncol=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_report(store_path, layout: SensorLayout, out_dir, since_s: float = 24 * 3600, now_ns: int | None = None,
                 temperature_c: float = 18.0, silent_after_s: float = 35.0) -> dict:
    from shotnet.locator.service import HealthPolicy, assess
    from shotnet.locator.store import Store

    from .plan import NoiseModel, layout_bounds, accuracy_map, plot_map

    now = int(now_ns if now_ns is not None else time.time_ns())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = Store(store_path)
    since = now - int(since_s * NS_PER_S)
    events = st.events(since)
    dets = {d.key: d for d in st.detections_since(since - 60 * NS_PER_S)}
    health = st.health(since)
    st.close()
    res = residuals(layout, events, dets, temperature_c)
    latest: dict[str, tuple] = {}
    prev: dict[str, dict] = {}
    for sid, t, body in health:
        if sid in latest:
            prev[sid] = latest[sid][1]
        latest[sid] = (t, body)
    policy = HealthPolicy(silent_after_s=silent_after_s)
    rows = []
    for sid in layout.ids:
        r = np.array(res[sid])
        hb = heartbeat_from_dict(latest[sid][1]) if sid in latest else None
        hp = heartbeat_from_dict(prev[sid]) if sid in prev else None
        age = (now - latest[sid][0]) / NS_PER_S if sid in latest else math.inf
        status, why = assess(hb, hp, age, policy)
        med = float(np.median(r)) if len(r) else None
        rms = float(np.sqrt(np.mean(r ** 2))) if len(r) else None
        flags = list(why)
        if med is not None and len(r) >= 3 and abs(med) > 1.0:
            flags.append(f"timing offset {med:+.2f} ms: check clock, latency or survey")
        rows.append({"sensor_id": sid, "status": status, "events": int(len(r)),
                     "residual_median_ms": None if med is None else round(med, 3),
                     "residual_rms_ms": None if rms is None else round(rms, 3),
                     "clock": None if hb is None else f"{hb.clock_source} {'locked' if hb.clock_locked else 'UNLOCKED'} "
                                                      f"{hb.clock_sigma_ns / 1e3:.1f} us",
                     "noise_floor_dbfs": None if hb is None else hb.noise_floor_dbfs,
                     "spool_depth": None if hb is None else hb.spool_depth,
                     "last_heartbeat_s": None if not math.isfinite(age) else round(age, 1), "flags": flags})
    _fig_residuals(res, out / "residuals.png")
    _fig_health(health, layout.ids, out / "health.png", now)
    alive = [i for i, r in enumerate(rows) if r["status"] != "silent"]
    model = NoiseModel(temperature_c=temperature_c)
    m = accuracy_map(layout.enu_m[alive] if alive else layout.enu_m[:0], layout_bounds(layout), 50.0, model,
                     layout.ground_enu_up_m + model.source_height_m)
    summ = m.summary(model.min_sensors)
    plot_map(m, layout.enu_m[alive], out / "coverage.png",
             f"{len(alive)} of {len(layout)} sensors reporting: covered {100 * summ['covered_fraction']:.0f}%, "
             f"median predicted error {summ['rms_median_m']} m", (), model.min_sensors)
    report = {"generated_ns": now, "since_ns": since, "events": len(events), "sensors": rows, "coverage": summ,
              "silent": [r["sensor_id"] for r in rows if r["status"] == "silent"],
              "degraded": [r["sensor_id"] for r in rows if r["status"] == "degraded"]}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "index.html").write_text(_html(report))
    return report


def _html(rep: dict) -> str:
    esc = html.escape
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(rep["generated_ns"] / 1e9))
    trs = []
    def fmt(v, spec=""):
        return "" if v is None else format(v, spec)

    for r in rep["sensors"]:
        cls = {"ok": "ok", "degraded": "warn", "silent": "bad"}[r["status"]]
        cells = [esc(r["sensor_id"]), esc(r["status"]), str(r["events"]), fmt(r["residual_median_ms"], "+.3f"),
                 fmt(r["residual_rms_ms"], ".3f"), esc(r["clock"] or ""), fmt(r["noise_floor_dbfs"]),
                 fmt(r["spool_depth"]), fmt(r["last_heartbeat_s"]), esc("; ".join(r["flags"]))]
        names = ["id", "status", "events", "median", "rms", "clock", "floor", "spool", "age", "flags"]
        tds = "".join(f'<td class="{n}">{c}</td>' for n, c in zip(names, cells))
        trs.append(f'<tr class="{cls}" data-sensor="{esc(r["sensor_id"])}">{tds}</tr>')
    silent = ", ".join(rep["silent"]) or "none"
    degraded = ", ".join(rep["degraded"]) or "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shotnet array report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }}
td.id, td.flags, td.status, td.clock {{ text-align: left; }}
tr.warn {{ background: #fff4d6; }} tr.bad {{ background: #fde0e0; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }}
</style></head><body>
<h1>shotnet array report</h1>
<p>Generated {when}; {rep["events"]} events since {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(rep["since_ns"] / 1e9))}.</p>
<p id="silent"><b>Silent nodes:</b> {esc(silent)}</p>
<p id="degraded"><b>Degraded nodes:</b> {esc(degraded)}</p>
<h2>Sensors</h2>
<table id="sensors"><thead><tr><th>sensor</th><th>status</th><th>events</th><th>median residual (ms)</th>
<th>RMS residual (ms)</th><th>clock</th><th>noise floor (dBFS)</th><th>spool</th><th>last heartbeat (s ago)</th>
<th>flags</th></tr></thead><tbody>
{chr(10).join(trs)}
</tbody></table>
<h2>Timing residuals</h2><img id="fig-residuals" src="residuals.png" alt="timing residuals per sensor">
<h2>Clock and noise floor over time</h2><img id="fig-health" src="health.png" alt="clock state and noise floor">
<h2>Coverage with the sensors reporting now</h2>
<p>Covered {100 * rep["coverage"]["covered_fraction"]:.0f}% of the area; median predicted error
{rep["coverage"]["rms_median_m"]} m, 90th percentile {rep["coverage"]["rms_p90_m"]} m.</p>
<img id="fig-coverage" src="coverage.png" alt="coverage map">
</body></html>
"""
