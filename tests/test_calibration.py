"""Calibration: plan's accuracy map against simulated location errors, the survey
against known perturbations (and a miswired sensor), self-calibration, and the HTML
report opened in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from shotnet.calibration.plan import NoiseModel, accuracy_map, layout_bounds, suggest_sites, write_plan
from shotnet.calibration.survey import TestShot as Shot
from shotnet.calibration.survey import calibrated_layout, survey, write_calibration
from shotnet.locator.locate import locate
from shotnet.sensor.acoustics import speed_of_sound_m_per_s
from shotnet.sensor.contract import NS_PER_S, Detection
from shotnet.sensor.layout import load_layout
from shotnet.sensor.scene import default_layout

T0 = 1_800_000_000 * NS_PER_S


# ---------------------------------------------------------------------- plan
def test_plan_accuracy_map_matches_simulated_errors():
    """At sampled points, the predicted RMS (CRB under the noise model) is within 20% of
    the RMS error of 400 simulated shots located by the locator's solver."""
    lay = default_layout()
    model = NoiseModel(survey_sigma_m=0.0)
    c = speed_of_sound_m_per_s(model.temperature_c)
    z = lay.ground_enu_up_m + model.source_height_m
    rng = np.random.default_rng(1)
    pts = [(0.0, 0.0), (600.0, -300.0), (-900.0, 800.0), (1100.0, 1100.0), (-300.0, -1150.0)]
    for e, n in pts:
        m = accuracy_map(lay.enu_m, (e, n, e, n), 10.0, model, z)
        predicted = float(m.rms_m[0, 0])
        src = np.array([e, n, z])
        d = np.linalg.norm(lay.enu_m - src, axis=1)
        heard = d <= model.hearing_m
        sig = model.sigma_s(d[heard])
        errs = []
        for _ in range(400):
            t = d[heard] / c + rng.normal(0, sig)
            sol = locate(lay.enu_m[heard], t, sig, c_m_per_s=c, z_src_m=z, x0=[e + 5, n - 5, -0.01],
                         outlier_sigma=1e9)
            errs.append(np.hypot(sol.x_m - e, sol.y_m - n))
        simulated = float(np.sqrt(np.mean(np.square(errs))))
        assert abs(predicted / simulated - 1) < 0.2, (e, n, predicted, simulated)


def test_plan_outputs_and_greedy_suggestion(tmp_path):
    """The heat map and GeoJSON are written; removing four sensors from one corner leaves
    that corner uncovered, and the greedy pick puts the first new sensor there."""
    lay = default_layout()
    corner = [i for i in range(len(lay)) if lay.enu_m[i, 0] > 300 and lay.enu_m[i, 1] > 300]
    keep = [i for i in range(len(lay)) if i not in corner]
    sens = lay.enu_m[keep]
    b = layout_bounds(lay, 0.0)
    cand = np.array([[x, y, 8.0] for x in (-700.0, 0.0, 700.0) for y in (-700.0, 0.0, 700.0)])
    picks = suggest_sites(sens, cand, b, k=1, cell_m=100.0, model=NoiseModel(hearing_m=900.0), progress=False)
    assert (picks[0]["e_m"], picks[0]["n_m"]) == (700.0, 700.0)
    assert picks[0]["objective_after_m"] < picks[0]["objective_before_m"]
    summary = write_plan(lay, tmp_path, cell_m=50.0, target_rms_m=0.2, progress=False)
    assert (tmp_path / "accuracy.png").stat().st_size > 20_000
    g = json.loads((tmp_path / "accuracy.geojson").read_text())
    assert len(g["features"]) == summary["map"]["points"]
    assert summary["map"]["covered_fraction"] > 0.95
    assert any(r["meets_target"] for r in summary["density"])


# ---------------------------------------------------------------------- survey
def _survey_scene(seed, bad=None, n_ring=12, unknown=False, n_random=0, pick_s=4e-5):
    """Sensors off by N(0, 3 m), clocks off by N(0, 2 ms), test shots on a ring outside the
    array and inside it, heard within 1.5 km, picks 40 us (1 + d/km) as a node reports
    for a loud test shot. ``bad``: that sensor is wired to its neighbour's microphone."""
    lay = default_layout()
    rng = np.random.default_rng(seed)
    n = len(lay)
    true_d = rng.normal(0, 3.0, (n, 2))
    true_b = rng.normal(0, 2e-3, n)
    c = speed_of_sound_m_per_s(18.0)
    z = lay.ground_enu_up_m + 1.5
    pos = lay.enu_m.copy()
    pos[:, :2] += true_d
    pts = [(1250 * np.cos(a), 1250 * np.sin(a)) for a in np.radians(np.arange(0, 360, 360 / n_ring))]
    pts += [(450 * np.cos(a), 450 * np.sin(a)) for a in np.radians(np.arange(45, 360, 90))]
    pts += [tuple(rng.uniform(-900, 900, 2)) for _ in range(n_random)]
    shots, dets, seq = [], [], {s: 0 for s in lay.ids}
    for k, (e, nn) in enumerate(pts):
        tk = T0 + k * 30 * NS_PER_S
        shots.append(Shot(f"T{k}", tk + int(rng.uniform(-0.3, 0.3) * NS_PER_S),
                              None if unknown else float(e), None if unknown else float(nn)))
        for i, sid in enumerate(lay.ids):
            src = pos[bad + 1] if i == bad else pos[i]
            d = float(np.sqrt((e - src[0]) ** 2 + (nn - src[1]) ** 2 + (z - src[2]) ** 2))
            if d > 1500:
                continue
            sg = pick_s * (1 + d / 1000)
            t = d / c + rng.normal(0, sg) + true_b[i]
            dets.append(Detection(sid, seq[sid], tk + int(t * NS_PER_S), int(sg * NS_PER_S), "gunshot", 0.9, 0.9))
            seq[sid] += 1
    return lay, shots, dets, true_d, true_b


def _errors(res, true_d, true_b, skip=()):
    good = [i for i in range(len(true_b)) if i not in skip]
    pe = np.array([np.hypot(res.sensors[i].de_m - true_d[i, 0], res.sensors[i].dn_m - true_d[i, 1]) for i in good])
    be = np.array([res.sensors[i].clock_offset_ns / 1e9 for i in good])
    bt = true_b[good]
    ce = np.abs((be - be.mean()) - (bt - bt.mean()))       # offsets are relative to the array
    sc = np.array([res.sensors[i].sigma_clock_ns / 1e9 for i in good])
    return pe, ce, sc


def test_survey_recovers_positions_and_clocks_and_names_the_miswired_sensor(tmp_path):
    lay, shots, dets, true_d, true_b = _survey_scene(3, bad=6)
    res = survey(lay, shots, dets)
    suspects = [s.sensor_id for s in res.sensors if any(f.startswith("SUSPECT") for f in s.flags)]
    assert suspects == ["S07"], [(s.sensor_id, s.flags) for s in res.sensors if s.flags]
    pe, ce, sc = _errors(res, true_d, true_b, skip=(6,))
    assert pe.max() < 0.5, pe.max()
    assert np.percentile(ce, 90) < 100e-6 and ce.max() < 150e-6, (np.percentile(ce, 90), ce.max())
    assert np.mean(ce <= 2 * sc) >= 0.9, "the stated clock sigmas are honest"
    # Files for the locator and the nodes.
    doc = write_calibration(lay, res, tmp_path)
    cal = load_layout(tmp_path / "sensors.calibrated.geojson")
    i = lay.index()["S03"]
    assert cal.clock_offset_ns[i] == res.sensors[i].clock_offset_ns
    assert cal.clock_offset_ns[6] == 0, "the suspect sensor is not 'corrected'"
    e, n, _ = lay.frame.to_enu(cal.lat_deg[i], cal.lon_deg[i], cal.alt_m[i])
    moved = np.hypot(e - lay.enu_m[i, 0], n - lay.enu_m[i, 1])
    assert moved == pytest.approx(np.hypot(res.sensors[i].de_m, res.sensors[i].dn_m), abs=0.01)
    assert "[position]" in (tmp_path / "calib-S03.toml").read_text()
    assert "SUSPECT" in (tmp_path / "calib-S07.toml").read_text() and len(doc["sensors"]) == len(lay)


def test_survey_calibration_improves_location(tmp_path):
    """Locating fresh shots with the calibrated layout (positions and clock offsets) beats
    the nominal one."""
    from shotnet.locator.associate import AssocConfig, locate_stream

    lay, shots, dets, true_d, true_b = _survey_scene(4)
    res = survey(lay, shots, dets)
    cal = calibrated_layout(lay, res)
    rng = np.random.default_rng(9)
    c = speed_of_sound_m_per_s(18.0)
    z = lay.ground_enu_up_m + 1.5
    pos = lay.enu_m.copy()
    pos[:, :2] += true_d
    fresh, truth = [], []
    for k in range(15):
        e, n = rng.uniform(-800, 800, 2)
        tk = T0 + (1000 + 20 * k) * NS_PER_S
        truth.append((e, n))
        for i, sid in enumerate(lay.ids):
            d = float(np.linalg.norm(pos[i] - [e, n, z]))
            if d <= 1500:
                fresh.append(Detection(sid, 1000 + k, tk + int((d / c + true_b[i] + rng.normal(0, 5e-5)) * NS_PER_S),
                                       50_000, "gunshot", 0.9, 0.9))
    cfg = AssocConfig(temperature_c=18.0, estimate_wind=False)

    def med_err(layout):
        evs = locate_stream(layout, fresh, cfg)
        out = []
        for e, n in truth:
            best = min((np.hypot(*(np.array(layout.frame.to_enu(ev.lat, ev.lon, 0.0)[:2]) - [e, n]))
                        for ev in evs), default=np.inf)
            out.append(best)
        return float(np.median(out))

    nominal, calibrated = med_err(lay), med_err(cal)
    assert calibrated < 0.3 * nominal and calibrated < 0.5, (nominal, calibrated)


def test_self_calibration_from_shots_at_unknown_positions():
    """Bundle adjustment: 30 shots whose positions nobody surveyed. Relative clock
    offsets and positions come out much better than the nominal survey."""
    lay, shots, dets, true_d, true_b = _survey_scene(5, n_ring=8, unknown=True, n_random=22)
    res = survey(lay, shots, dets)
    pe, ce, _ = _errors(res, true_d, true_b)
    before = np.hypot(true_d[:, 0], true_d[:, 1])
    assert np.median(pe) < 0.5 * np.median(before), (np.median(pe), np.median(before))
    assert np.median(ce) < 300e-6, np.median(ce)


# ---------------------------------------------------------------------- report
def _report_store(tmp_path):
    """A locator store after an hour of a realistic stream: sensor S05's clock is 2 ms
    fast, S09 stopped reporting ten minutes ago, S12's clock is unlocked."""
    import dataclasses

    from shotnet.locator.associate import AssocConfig, locate_stream
    from shotnet.locator.store import Store
    from shotnet.locator.synthetic import StreamConfig, make_stream

    lay = default_layout()
    dets, truth, loc = make_stream(lay, 60, 3600.0, StreamConfig(false_per_sensor_per_s=0.0), seed=21)
    dets = [dataclasses.replace(d, t_ns=d.t_ns + 2_000_000) if d.sensor_id == "S05" else d for d in dets]
    events = locate_stream(lay, dets, AssocConfig(temperature_c=18.0))
    st = Store(tmp_path / "loc.sqlite")
    st.add_detections(dets)
    for ev in events:
        st.put_event(ev)
    t_end = max(d.t_ns for d in dets)
    for sid in lay.ids:
        for k in range(181):                                  # every 20 s over the last hour
            t = t_end - (3600 - 20 * k) * NS_PER_S
            if sid == "S09" and k > 150:                      # S09 went quiet 10 minutes ago
                break
            st.put_health(sid, t, {
                "sensor_id": sid, "t_ns": t, "uptime_s": 60.0 * k, "noise_floor_dbfs": -62.0 + 3 * np.sin(k / 9),
                "clipped_samples": 0, "nonfinite_blocks": 0, "overflows": 0, "detections": k,
                "clock_source": "gps", "clock_locked": sid != "S12",
                "clock_sigma_ns": 20_000_000 if sid == "S12" else 800, "clock_ppm": 11.0, "spool_depth": 0,
                "spool_dropped": 0, "cpu_percent": 12.0, "model": "m", "model_sha256": "x"})
    st.close()
    return lay, tmp_path / "loc.sqlite", t_end


def test_report_renders_in_a_browser_with_the_right_content(tmp_path):
    from shotnet.calibration.report import build_report

    lay, store, t_end = _report_store(tmp_path)
    out = tmp_path / "report"
    rep = build_report(store, lay, out, since_s=2 * 3600, now_ns=t_end + 5 * NS_PER_S)
    by = {r["sensor_id"]: r for r in rep["sensors"]}
    assert 1.0 < by["S05"]["residual_median_ms"] < 2.5 and any("timing offset" in f for f in by["S05"]["flags"])
    others = [abs(r["residual_median_ms"]) for s, r in by.items() if s != "S05" and r["residual_median_ms"] is not None]
    assert max(others) < 1.0
    assert rep["silent"] == ["S09"] and rep["degraded"] == ["S12"]
    assert rep["coverage"]["covered_fraction"] > 0.9
    # Figures have content: the residual dots and median bars, a curve per node, the
    # accuracy colour map with a red marker for each reporting sensor.
    import matplotlib.image as mpimg

    def frac(img, rgb, tol=0.08):
        return float(np.mean(np.all(np.abs(img - np.array(rgb)) < tol, axis=-1)))

    res_img = mpimg.imread(out / "residuals.png")[..., :3]
    assert frac(res_img, (0.12, 0.47, 0.71), 0.15) > 1e-4, "residual dots"
    assert frac(res_img, (1.0, 0.5, 0.05), 0.15) > 2e-4, "median bars"
    health_img = mpimg.imread(out / "health.png")[..., :3]
    assert np.mean(np.any(health_img < 0.9, axis=-1)) > 0.03
    cov_img = mpimg.imread(out / "coverage.png")[..., :3]
    red = np.all((cov_img[..., 0] > 0.8, cov_img[..., 1] < 0.15, cov_img[..., 2] < 0.15), axis=0)
    assert red.sum() > 23 * 2 * 5, "two markers per reporting sensor"
    assert np.mean(np.any(np.abs(cov_img - 1.0) > 0.1, axis=-1)) > 0.4, "the maps fill the figure"
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("no chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"])
        page = browser.new_page()
        page.goto(f"file://{out / 'index.html'}")
        assert page.locator("#sensors tbody tr").count() == len(lay)
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        assert len(widths) == 3 and min(widths) > 300, widths
        assert "S09" in page.inner_text("#silent") and "S12" in page.inner_text("#degraded")
        row = page.locator('tr[data-sensor="S05"]')
        assert float(row.locator("td.median").inner_text()) > 1.0
        assert "timing offset" in row.locator("td.flags").inner_text()
        assert page.locator('tr[data-sensor="S09"]').get_attribute("class") == "bad"
        browser.close()
    r = subprocess.run([sys.executable, "-m", "shotnet", "calibrate", "report", "--store", str(store), "--sensors",
                        str(tmp_path / "s.geojson"), "--out", str(tmp_path / "r2")], capture_output=True, text=True)
    assert r.returncode == 2 and "s.geojson" in r.stderr
