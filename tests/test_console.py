"""The dispatcher console end to end in a real browser (Debian's chromium via
Playwright): sign in, a live incident from a running locator, its detail, its clip,
confirm it, the audit entry; and what happens without a session or with a forged post."""

from __future__ import annotations

import dataclasses
import http.cookiejar
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import zmq

from shotnet.locator.associate import AssocConfig, locate_stream
from shotnet.locator.audit import AuditLog, verify
from shotnet.locator.console import ConsoleServer, ConsoleState, feed_thread, hash_password, make_app
from shotnet.locator.service import LocatorService
from shotnet.sensor.contract import NS_PER_S
from shotnet.sensor.transport import DetectionSender

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def _port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stack(tmp_path, city_scene, city_detections):
    """A running locator (real sockets, real store) and the console fed by it."""
    ctx = zmq.Context()
    pub = f"tcp://127.0.0.1:{_port()}"
    published: dict[str, float] = {}
    svc = LocatorService(city_scene.layout, AssocConfig(temperature_c=18.0), "tcp://127.0.0.1:0", pub=pub, ctx=ctx,
                         step_s=0.05, store=tmp_path / "loc.sqlite",
                         on_event=lambda ev: published.setdefault(ev.incident_id, time.monotonic()))
    th = threading.Thread(target=svc.run, kwargs={"duration_s": 60.0}, daemon=True)
    th.start()
    audit = AuditLog(tmp_path / "audit.jsonl")
    state = ConsoleState(city_scene.layout, str(tmp_path / "loc.sqlite"), audit,
                         layers={"streets": {"type": "FeatureCollection", "features": [
                             {"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": [
                                 [float(city_scene.layout.lon_deg.min()), float(city_scene.layout.lat_deg.mean())],
                                 [float(city_scene.layout.lon_deg.max()), float(city_scene.layout.lat_deg.mean())]]}}]}})
    stop = threading.Event()
    feed_thread(state, [pub], stop, ctx)
    users = {"ana": {"name": "ana", "role": "dispatcher", "password_hash": hash_password("correct horse")},
             "sam": {"name": "sam", "role": "supervisor", "password_hash": hash_password("battery staple")}}
    server = ConsoleServer(make_app(state, users, "test-secret", session_ttl_s=600), port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    # One round of the simulated city, replayed as if it had just happened.
    ref = [e for e in locate_stream(city_scene.layout, city_detections, AssocConfig(temperature_c=18.0))
           if e.label == "gunshot" and len(e.sensor_ids) >= 8]
    keys = set(ref[0].detections)
    by_key = {d.key: d for d in city_detections}
    round_dets = [by_key[k] for k in sorted(keys)]
    yield {"svc": svc, "state": state, "base": base, "dets": round_dets, "published": published, "ctx": ctx,
           "audit": audit, "tmp": tmp_path}
    stop.set()
    server.stop()
    svc.stop()
    th.join(timeout=10)
    svc.close()
    ctx.destroy(linger=0)


def _diagnosis(stack) -> str:
    """What the locator saw, for a failed wait (a once-seen flake: no incident in 20 s)."""
    svc = stack["svc"]
    return (f"round of {len(stack['dets'])} detections; service {svc.stats}; association {svc.assoc.stats}; "
            f"pending {len(svc.assoc.pending)}, open {len(svc.assoc.open)}; published incidents "
            f"{list(stack['published'])} (none: the association; some: the feed to the console)")


def _heartbeats(stack, layout):
    """Every node says it is healthy (one, S03, with an unlocked clock)."""
    senders = {}
    for sid in layout.ids:
        s = DetectionSender(stack["svc"].endpoint, sid, ctx=stack["ctx"])
        s.send_heartbeat({"sensor_id": sid, "t_ns": time.time_ns(), "uptime_s": 100.0, "noise_floor_dbfs": -60.0,
                          "clipped_samples": 0, "nonfinite_blocks": 0, "overflows": 0, "detections": 0,
                          "clock_source": "gps", "clock_locked": sid != "S03", "clock_sigma_ns": 900,
                          "clock_ppm": 10.0, "spool_depth": 0, "spool_dropped": 0, "cpu_percent": 9.0,
                          "model": "m", "model_sha256": "x"})
        senders[sid] = s
    return senders


def _send_round(stack, senders=None):
    """One node connection per sensor id (a ROUTER refuses a second one with the same id),
    each polled until its detection is acknowledged, resending as a node does: a new
    connection made just after the previous test closed one with the same id can be
    refused until the locator has seen that one go (a CI run once lost 4 of 24)."""
    dets = stack["dets"]
    shift = time.time_ns() - NS_PER_S - min(d.t_ns for d in dets)
    senders = senders if senders is not None else {}
    for d in dets:
        s = senders.get(d.sensor_id) or DetectionSender(stack["svc"].endpoint, d.sensor_id, ctx=stack["ctx"],
                                                        resend_s=0.5)
        senders[d.sensor_id] = s
        s.send(dataclasses.replace(d, t_ns=d.t_ns + shift))
    for s in senders.values():
        assert s.drain(10.0), f"{s.spool.depth()} detection(s) never acknowledged"
    return senders


def test_console_end_to_end_in_a_browser(stack):
    from playwright.sync_api import sync_playwright

    base = stack["base"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(base + "/")
        assert page.url.endswith("/login"), "only signed-in users see anything"
        page.fill("#user", "ana")
        page.fill("#password", "wrong")
        page.click("#signin")
        assert "Wrong name or password" in page.content()
        page.fill("#user", "ana")
        page.fill("#password", "correct horse")
        page.click("#signin")
        page.wait_for_selector("#status:has-text('live')", timeout=10_000)
        assert page.locator("circle.sensor").count() == 24
        hb = _heartbeats(stack, stack["state"].layout)
        page.wait_for_selector("circle.sensor[fill='#ff9800']", timeout=10_000)   # S03 degraded
        # The heartbeats reach the health view over a second or so (a CI run once saw 18 of
        # the 23 still grey at the moment S03 turned orange): wait for all of them.
        page.wait_for_function("() => document.querySelectorAll(\"circle.sensor[fill='#4caf50']\").length >= 23",
                               timeout=10_000)
        assert page.locator("circle.sensor[fill='#4caf50']").count() == 23
        assert page.locator("circle.sensor[fill='#ff9800']").count() == 1
        senders = _send_round(stack, hb)
        page.wait_for_selector("#list .inc .gun", timeout=20_000)
        seen = time.monotonic()
        iid = next(iter(stack["published"]))
        assert seen - stack["published"][iid] < 1.0, "a new incident appears within one second"
        assert page.evaluate("window.shotnetBeeps") >= 1, "with an audible cue"
        assert page.locator("ellipse.ellipse").count() >= 1
        page.click(f"#inc-{iid}")
        page.wait_for_selector("#detail-title")
        assert "GUNSHOT" in page.inner_text("#detail-title")
        assert int(page.inner_text("#d-rounds").split()[0]) >= 1
        assert "m, azimuth" in page.inner_text("#d-ellipse")
        assert int(page.inner_text("#d-sensors").split(":")[0]) >= 8
        page.wait_for_function("() => { const i = document.querySelector('img.clip-fig');"
                               " return i && i.complete && i.naturalWidth > 300; }", timeout=15_000)
        played = page.evaluate("""async () => {
            const a = document.querySelector('audio.clip-audio');
            await a.play(); await new Promise(r => setTimeout(r, 400));
            return {t: a.currentTime, d: a.duration, ready: a.readyState}; }""")
        assert played["t"] > 0 and 1.0 < played["d"] < 2.5 and played["ready"] >= 2, played
        page.click("#confirm")
        page.wait_for_selector("#review-state:has-text('confirm')")
        page.wait_for_selector("#history li:has-text('review')")
        assert "user:ana" in page.inner_text("#history")
        page.evaluate("document.getElementById('detail').scrollTop = 0")
        shot = stack["tmp"] / "console.png"
        page.screenshot(path=str(shot))
        if os.environ.get("SHOTNET_README_SCREENSHOT"):
            page.screenshot(path=os.environ["SHOTNET_README_SCREENSHOT"])
        browser.close()
    for s in senders.values():
        s.close()
    entries = stack["audit"].entries()
    rv = [e for e in entries if e["kind"] == "review"]
    assert rv and rv[-1]["actor"] == "user:ana" and rv[-1]["data"]["action"] == "confirm"
    assert any(e["kind"] == "play" for e in entries) and any(e["kind"] == "signin" for e in entries)
    assert verify(stack["audit"].path)[0] == []
    assert shot.stat().st_size > 30_000


def _session(base, user, pw):
    """Sign in with urllib; returns an opener holding the session cookie, and the CSRF token."""
    jar = http.cookiejar.CookieJar()
    op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    html = op.open(base + "/login").read().decode()
    tok = html.split('name="csrf" value="')[1].split('"')[0]
    op.open(base + "/login", data=urllib.parse.urlencode({"csrf": tok, "user": user, "password": pw}).encode())
    page = op.open(base + "/").read().decode()
    return op, page.split('const CSRF = "')[1].split('"')[0]


def test_no_session_no_data_and_forged_posts_refused(stack):
    base = stack["base"]
    for path in ("/api/state", "/api/incident/x", "/api/clip/S01:0.wav", "/api/export/labels.jsonl", "/api/stream"):
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(base + path)
        assert ei.value.code == 401, path
    r = urllib.request.urlopen(base + "/")
    assert r.url.endswith("/login")
    # A login form posted from elsewhere (no token) is refused.
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(base + "/login", data=b"user=ana&password=correct+horse")
    assert ei.value.code == 403
    _send_round(stack)
    assert _wait(lambda: stack["state"].incidents, 20), _diagnosis(stack)
    iid = next(iter(stack["state"].incidents))
    op, csrf = _session(base, "ana", "correct horse")
    assert json.loads(op.open(base + "/api/state").read())["incidents"]
    url = f"{base}/api/incident/{iid}/review"
    body = json.dumps({"action": "confirm"}).encode()
    # Signed in, but the post carries no token (a cross-site form would not have it).
    with pytest.raises(urllib.error.HTTPError) as ei:
        op.open(urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}))
    assert ei.value.code == 403
    # The right token from a foreign origin.
    with pytest.raises(urllib.error.HTTPError) as ei:
        op.open(urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", "X-CSRF-Token": csrf,
                                                              "Origin": "http://evil.example"}))
    assert ei.value.code == 403
    assert stack["state"].reviews == {}, "nothing was recorded"
    ok = op.open(urllib.request.Request(url, data=json.dumps({"action": "relabel", "label": "firework"}).encode(),
                                        headers={"Content-Type": "application/json", "X-CSRF-Token": csrf}))
    assert json.loads(ok.read())["label"] == "firework"
    # Only supervisors export labelled data.
    with pytest.raises(urllib.error.HTTPError) as ei:
        op.open(base + "/api/export/labels.jsonl")
    assert ei.value.code == 403
    sup, _ = _session(base, "sam", "battery staple")
    rows = [json.loads(x) for x in sup.open(base + "/api/export/labels.jsonl").read().decode().splitlines()]
    assert rows and rows[0]["label"] == "firework" and rows[0]["reviewed_by"] == "ana" and rows[0]["detections"]
    denied = [e for e in stack["audit"].entries() if e["kind"] == "denied"]
    assert len(denied) >= 3


def test_sessions_expire(tmp_path, city_scene):
    audit = AuditLog(tmp_path / "a.jsonl")
    state = ConsoleState(city_scene.layout, None, audit)
    users = {"ana": {"name": "ana", "role": "dispatcher", "password_hash": hash_password("pw")}}
    server = ConsoleServer(make_app(state, users, "s", session_ttl_s=1.0), port=0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        op, _ = _session(base, "ana", "pw")
        assert op.open(base + "/api/state").status == 200
        time.sleep(1.5)
        with pytest.raises(urllib.error.HTTPError) as ei:
            op.open(base + "/api/state")
        assert ei.value.code == 401
    finally:
        server.stop()


def _wait(pred, timeout_s):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())
