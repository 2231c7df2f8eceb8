"""Association on the simulated city: every gunshot found once, placed to metres."""

import json

import numpy as np

from shotnet.locator.associate import AssocConfig, Associator, locate_stream
from shotnet.sensor.contract import NS_PER_S, detection_to_json
from shotnet.sensor.scene import truth_records


def _match(truth, events):
    out = []
    for tr in truth:
        best = None
        for ev in events:
            d = np.hypot(ev.x_m - tr["e_m"], ev.y_m - tr["n_m"])
            if abs(ev.t_ns - tr["t_ns"]) < 0.05 * NS_PER_S and d < 60 and (best is None or d < best[1]):
                best = (ev, d)
        out.append((tr, best))
    return out


def test_city_gunshots_located(city_scene, city_detections):
    events = locate_stream(city_scene.layout, city_detections, AssocConfig(temperature_c=city_scene.temperature_c))
    truth = [t for t in truth_records(city_scene) if t["gunshot"] and t["kind"] != "suppressed"]
    rows = _match(truth, events)
    found = [d for _, b in rows if b for d in [b[1]]]
    # Two handgun rounds fired during the burst are heard by only ~6 nodes (the burst masks
    # their triggers); the rest must be found.
    assert len(found) >= 0.8 * len(truth), f"{len(found)}/{len(truth)} located"
    assert np.median(found) < 2.0
    # event ids are deterministic: a replay gives the same ids
    again = locate_stream(city_scene.layout, city_detections, AssocConfig(temperature_c=city_scene.temperature_c))
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_no_event_from_scattered_false_detections(city_scene, rng):
    from shotnet.sensor.contract import Detection

    ids = city_scene.layout.ids
    t0 = city_scene.t_start_ns
    dets = [Detection(ids[rng.integers(len(ids))], k, t0 + int(rng.uniform(0, 30) * NS_PER_S), 100_000, "impulse", 0.9)
            for k in range(120)]
    a = Associator(city_scene.layout)
    for d in sorted(dets, key=lambda d: d.t_ns):
        a.feed(d)
    assert a.flush() == []
    assert a.stats.unassociated == 120


def test_duplicates_and_unknown_sensors_are_counted(city_scene, city_detections):
    from dataclasses import replace

    a = Associator(city_scene.layout)
    d = city_detections[0]
    assert a.feed(d) and not a.feed(d)
    assert not a.feed(replace(d, sensor_id="NOPE"))
    assert a.stats.duplicates == 1 and a.stats.unknown_sensor == 1


def test_batch_cli_reports_bad_lines(tmp_path, city_scene, city_detections, capsys):
    from shotnet.locator.batch import main
    from shotnet.sensor.layout import save_layout

    save_layout(city_scene.layout, tmp_path / "s.geojson")
    lines = [detection_to_json(d) for d in city_detections]
    lines.insert(3, "{not json")
    lines.insert(10, json.dumps({"sensor_id": "S01", "seq": 1}))
    lines.insert(20, lines[25].replace('"S', '"X', 1))
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    rc = main(["--sensors", str(tmp_path / "s.geojson"), "--temperature-c", str(city_scene.temperature_c),
               str(tmp_path / "d.jsonl")])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "d.jsonl:4: skipped: not JSON" in err
    assert "d.jsonl:11: skipped: missing key(s)" in err
    assert "d.jsonl:21: skipped: unknown sensor_id" in err
    evs = [json.loads(l) for l in out.splitlines()]
    assert len(evs) >= 10
    for k in ("event_id", "t_ns", "lat", "lon", "alt_m", "ellipse95_m", "sensor_ids", "residual_rms_ms"):
        assert k in evs[0]
    assert set(evs[0]["ellipse95_m"]) == {"major", "minor", "azimuth_deg"}
