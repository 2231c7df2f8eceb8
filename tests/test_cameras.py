"""Camera selection on hand-checked geometry, consent, opt-out, expiry, the hub's HTTP
API and the tamper-evident audit log."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from shotnet.locator.audit import AuditLog, export, verify
from shotnet.locator.cameras import (CameraHub, CameraRegistry, CueEngine, camera_from_dict, load_buildings,
                                     load_cameras)
from shotnet.sensor.geodesy import LocalFrame

FRAME = LocalFrame(41.85, -87.68, 0.0)
T = 1_800_000_000 * 1_000_000_000


def cam(cid, e, n, **kw):
    lat, lon, _ = FRAME.to_geodetic(e, n, 0.0)
    d = dict(camera_id=cid, lat_deg=float(lat), lon_deg=float(lon), kind="fixed", range_m=100.0, owner="o",
             consent="live", stream_uri=f"rtsp://cams/{cid}")
    d.update(kw)
    return camera_from_dict(d, "test")


def ids(views):
    return [v.camera_id for v in views]


def test_fixed_camera_field_of_view_and_range():
    reg = CameraRegistry([cam("F", 0, 0, heading_deg=0.0, hfov_deg=90.0, range_m=100.0)], FRAME)
    assert ids(reg.select(0, 50)) == ["F"]                    # straight ahead
    assert ids(reg.select(35, 36)) == ["F"]                   # 44.2 deg off axis: inside
    assert ids(reg.select(60, 40)) == []                      # 56 deg off axis
    assert ids(reg.select(0, 150)) == []                      # beyond range
    assert ids(reg.select(0, -50)) == []                      # behind
    v = reg.select(0, 50)[0]
    assert v.distance_m == pytest.approx(50, abs=0.05) and v.bearing_deg == pytest.approx(0, abs=0.1)


def test_ptz_pan_tilt_limits_and_aim():
    c = cam("P", 0, 0, kind="ptz", heading_deg=90.0, pan_min_deg=-90.0, pan_max_deg=90.0, tilt_min_deg=-60.0,
            tilt_max_deg=10.0, mount_height_m=10.0, hfov_deg=60.0, zoom_max=20.0, range_m=200.0)
    reg = CameraRegistry([c], FRAME)
    v = reg.select(0, 50)                                    # due north: pan -90 from its east heading
    assert ids(v) == ["P"]
    assert v[0].pan_deg == pytest.approx(-90.0, abs=0.2)
    assert v[0].tilt_deg == pytest.approx(np.degrees(np.arctan2(1.5 - 10.0, 50.0)), abs=0.05)
    # ellipse of 5 m + 10 m margin either side at 50 m: a 33.4 deg view; 60/33.4 = 1.8x
    v = reg.select(0, 50, (5.0, 3.0, 0.0))
    assert v[0].zoom == pytest.approx(60.0 / (2 * np.degrees(np.arctan2(15.0, 50.0))), rel=0.02)
    assert v[0].onvif["pan"] == pytest.approx(-0.5, abs=0.002) and 0 < v[0].onvif["zoom"] < 1
    assert ids(reg.select(-50, 0)) == []                     # due west: pan 180 is beyond its limits
    assert ids(reg.select(3, 0)) == []                       # right below: tilt -70 deg beyond -60


def test_line_of_sight_through_buildings(tmp_path):
    def square(e0, n0, e1, n1, h):
        ring = [FRAME.to_geodetic(e, n, 0.0)[:2] for e, n in ((e0, n0), (e1, n0), (e1, n1), (e0, n1), (e0, n0))]
        return {"type": "Feature", "properties": {"height_m": h},
                "geometry": {"type": "Polygon", "coordinates": [[[float(lon), float(lat)] for lat, lon in ring]]}}

    p = tmp_path / "b.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": [
        square(-5, 20, 5, 30, 10.0),        # tall block between camera A and the shot
        square(15, 20, 25, 30, 2.0),        # a low wall between camera B and the shot: seen over
        square(-45, -5, -35, 5, 30.0)]}))   # camera C is mounted on this building
    cams = [cam("A", 0, 0, mount_height_m=4.0), cam("B", 20, 0, mount_height_m=4.0, heading_deg=0.0),
            cam("C", -40, 0, mount_height_m=32.0, heading_deg=45.0)]
    reg = CameraRegistry(cams, FRAME, load_buildings(p, FRAME))
    # Sight line from A at 4 m to 1.5 m at 50 m is 2.75 m high where it meets the 10 m block.
    seen = ids(reg.select(0, 50))
    assert "A" not in seen
    assert "C" in seen                                       # from its own roof, nothing in between
    assert "B" in seen                                       # its sight line passes beside both
    assert "B" in ids(reg.select(20, 50))                    # straight over the 2 m wall (sight line 3.0 m there)
    reg_tall = CameraRegistry([cams[1]], FRAME, [(b[0], 3.5) if i == 1 else b
                                                 for i, b in enumerate(load_buildings(p, FRAME))])
    assert ids(reg_tall.select(20, 50)) == [], "a 3.5 m wall does block it"
    no_buildings = CameraRegistry(cams, FRAME)
    assert "A" in ids(no_buildings.select(0, 50))


def test_ellipse_coverage_ranks_cameras():
    reg = CameraRegistry([cam("near", 0, 0, range_m=100.0), cam("far", 0, -60, range_m=200.0)], FRAME)
    views = reg.select(0, 95, (20.0, 5.0, 0.0))             # the ellipse runs 75..115 m north of "near"
    by = {v.camera_id: v for v in views}
    assert 0 < by["near"].coverage < 1 and by["far"].coverage == 1.0
    assert ids(views)[0] == "far", "more of the ellipse first"


def _engine(tmp_path, cams):
    reg = CameraRegistry(cams, FRAME)
    return CueEngine(reg, AuditLog(tmp_path / "audit.jsonl"), grant_before_s=60, grant_after_s=900)


def _event(e=0.0, n=50.0, label="gunshot", test=False, inc="inc1", eid="ev1"):
    lat, lon, _ = FRAME.to_geodetic(e, n, 0.0)
    return {"event_id": eid, "t_ns": T, "lat": float(lat), "lon": float(lon), "label": label, "test": test,
            "incident_id": inc, "ellipse95_m": {"major": 3.0, "minor": 2.0, "azimuth_deg": 0.0}}


def test_every_consent_level(tmp_path):
    cams = [cam("live", 0, 0), cam("alarm", 5, 0, consent="live_on_alarm"),
            cam("rec", -5, 0, consent="recorded_on_request", stream_uri=""),
            cam("none", 2, 0, consent="none", stream_uri=""), cam("out", 3, 0, opt_out=True)]
    eng = _engine(tmp_path, cams)
    msgs = eng.on_event(_event())
    kinds = {m["camera_id"]: m["type"] for m in msgs}
    assert kinds == {"live": "cue", "alarm": "cue", "rec": "footage_request"}
    assert "rtsp" not in json.dumps([m for m in msgs if m["type"] == "footage_request"]), "no feed for recorded"
    assert eng.on_event(_event(label="firework", inc="i2", eid="e2")) == [], "only gunshots are cued"
    assert eng.on_event(_event(test=True, inc="i3", eid="e3")) == [], "test fire is never cued"
    rec_grant = next(m["grant_id"] for m in msgs if m["camera_id"] == "rec")
    ok, why = eng.access(rec_grant, "user:ana", T)
    assert not ok and "no live feed" in why


def test_optout_is_immediate_and_access_expires(tmp_path):
    eng = _engine(tmp_path, [cam("live", 0, 0), cam("other", 5, 0)])
    msgs = eng.on_event(_event())
    g_live = next(m["grant_id"] for m in msgs if m["camera_id"] == "live")
    g_other = next(m["grant_id"] for m in msgs if m["camera_id"] == "other")
    assert eng.access(g_live, "user:ana", T + 10 * 10**9) == (True, "rtsp://cams/live")
    assert eng.access(g_live, "user:ana", T - 120 * 10**9)[1] == "outside the access window"
    assert eng.access(g_live, "user:ana", T + 901 * 10**9)[1] == "outside the access window"
    assert eng.opt_out("live", "owner:bob") == 1
    assert eng.access(g_live, "user:ana", T + 20 * 10**9) == (False, "revoked: the owner opted out")
    assert eng.access(g_other, "user:ana", T + 20 * 10**9)[0]
    assert "live" not in {m["camera_id"] for m in eng.on_event(_event(inc="i2", eid="e2"))}
    kinds = [e["kind"] for e in eng.audit.entries()]
    for k in ("cue", "grant", "access", "denied", "optout", "revoke"):
        assert k in kinds, k
    assert verify(eng.audit.path)[0] == []


def test_registry_validation_names_camera_and_key(tmp_path):
    p = tmp_path / "cams.toml"
    p.write_text('[[camera]]\ncamera_id = "C1"\nlat_deg = 41.85\nlon_deg = -87.68\nkind = "dome"\nrange_m = 80.0\n'
                 'owner = "o"\nconsent = "always"\nzoom = 3\n'
                 '[[camera]]\ncamera_id = "C2"\nlat_deg = 41.85\nlon_deg = -87.68\nkind = "fixed"\nrange_m = 80.0\n'
                 'owner = "o"\nconsent = "live"\n')
    with pytest.raises(ValueError) as ei:
        load_cameras(p)
    msg = str(ei.value)
    assert "'C1'" in msg and "unknown key(s) zoom" in msg
    assert "'C2'" in msg and "needs a stream_uri" in msg
    r = subprocess.run([sys.executable, "-m", "shotnet", "cameras", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "C2" in r.stderr


# ---------------------------------------------------------------------- audit log
@pytest.fixture
def log(tmp_path):
    a = AuditLog(tmp_path / "a.jsonl")
    for k in range(6):
        a.append("cue", "hub", {"k": k}, T + k)
    return a


def _rewrite(path, lines):
    path.write_text("".join(lines))


def test_audit_chain_catches_every_kind_of_tampering(tmp_path, log):
    path = log.path
    good = path.read_text().splitlines(keepends=True)
    assert verify(path)[0] == []
    head = log.head
    edited = list(good)
    edited[2] = edited[2].replace('"k":2', '"k":9')
    _rewrite(path, edited)
    p = verify(path)[0]
    assert p and p[0].line == 3 and "edited" in p[0].what
    _rewrite(path, good[:2] + good[3:])                       # a deleted entry
    p = verify(path)[0]
    assert p and p[0].line == 3 and "missing" in p[0].what
    _rewrite(path, good[:2] + [good[3], good[2]] + good[4:])  # two swapped
    p = verify(path)[0]
    assert p and p[0].line == 3 and ("missing" in p[0].what or "order" in p[0].what)
    forged = json.loads(good[3])                              # an entry rewritten with a fresh hash
    forged["data"] = {"k": 99}
    from shotnet.locator.audit import _digest
    forged["hash"] = _digest(forged)
    _rewrite(path, good[:3] + [json.dumps(forged) + "\n"] + good[4:])
    p = verify(path)[0]
    assert p and p[0].line == 5 and "chain broken" in p[0].what
    _rewrite(path, good[:4])                                  # the tail cut off
    assert verify(path)[0] == [] and verify(path, expect_head=head)[0][0].what.startswith("the log ends")
    _rewrite(path, good)
    r = subprocess.run([sys.executable, "-m", "shotnet", "audit", "verify", str(path), "--expect-head", head],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "OK, 6 entries" in r.stdout
    _rewrite(path, edited)
    r = subprocess.run([sys.executable, "-m", "shotnet", "audit", "verify", str(path)], capture_output=True, text=True)
    assert r.returncode == 1 and "line 3" in r.stdout
    with pytest.raises(ValueError, match="fails verification"):
        AuditLog(path)                                        # never appends to a tampered log


def test_audit_export_is_verified_and_logged(tmp_path, log):
    out = tmp_path / "x.jsonl"
    assert export(log.path, out, since_ns=T + 2, until_ns=T + 5, log=log) == 3
    assert [json.loads(x)["data"]["k"] for x in out.read_text().splitlines()] == [2, 3, 4]
    assert log.entries()[-1]["kind"] == "export" and verify(log.path)[0] == []


def test_hub_http_api(tmp_path):
    eng = _engine(tmp_path, [cam("live", 0, 0)])
    hub = CameraHub(eng, None, "tcp://127.0.0.1:0", http_port=0)
    try:
        msgs = hub.handle_event(dict(_event(), t_ns=__import__("time").time_ns()))
        base = f"http://127.0.0.1:{hub.http_port}"
        cues = json.loads(urllib.request.urlopen(f"{base}/cues?incident=inc1").read())
        assert [c["camera_id"] for c in cues["cues"]] == ["live"]
        got = json.loads(urllib.request.urlopen(f"{base}/access/{msgs[0]['grant_id']}?user=ana").read())
        assert got["stream_uri"] == "rtsp://cams/live"
        req = urllib.request.Request(f"{base}/optout/live?by=bob", method="POST")
        assert json.loads(urllib.request.urlopen(req).read())["revoked"] == 1
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(f"{base}/access/{msgs[0]['grant_id']}?user=ana")
        assert ei.value.code == 403
        actors = [e["actor"] for e in eng.audit.entries() if e["kind"] in ("access", "denied", "optout")]
        assert actors == ["user:ana", "owner:bob", "user:ana"]
    finally:
        hub.close()
