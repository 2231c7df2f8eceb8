"""The field node: audio clock fit, time sources from the real programs, the spool,
CURVE authentication, heartbeats and node health, configuration, and bad input."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from shotnet.locator.associate import AssocConfig
from shotnet.locator.service import HealthPolicy, LocatorService, assess
from shotnet.sensor import config as nodeconf
from shotnet.sensor.clock import ClockQuality, FittedSampleClock, LinearSampleClock
from shotnet.sensor.contract import NS_PER_S, ContractError, Detection, heartbeat_from_dict
from shotnet.sensor.keys import create as create_key
from shotnet.sensor.layout import save_layout
from shotnet.sensor.run import FieldNode, HealthMonitor
from shotnet.sensor.sources import ArraySource
from shotnet.sensor.spool import Spool
from shotnet.sensor.timesources import ChronyTime, GpsdTime, PtpTime, parse_pmc, parse_tracking
from shotnet.sensor.transport import CurveKeys, DetectionSender

T0 = 1_800_000_000 * NS_PER_S


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout_s, step_s=0.2):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


# ---------------------------------------------------------------------- audio clock
def _true_ns(j, fs, ppm):
    """ADC fast by ``ppm``, plus a slow +-1 ppm wander (temperature) over 20 minutes."""
    t = j / fs / (1 + ppm * 1e-6)
    return T0 + t * 1e9 + 1e-6 * 1e9 * 600 / np.pi * (1 - np.cos(2 * np.pi * t / 1200)) / 2


@pytest.mark.parametrize("exact", [True, False], ids=["adc-time", "callback-time"])
def test_one_hour_of_50_ppm_drift_stays_within_100_us(exact):
    """An hour of capture from an ADC 50 ppm fast (180 ms/hour). With PortAudio ADC
    times (jitter +-50 us) or with only callback times (late by 0..1 ms), every
    detection's t_ns stays within 100 us of the truth; a plain t0 + j/fs clock is off by
    ~180 ms by the end."""
    fs, blk, ppm = 48000, 2400, 50.0
    rng = np.random.default_rng(7)
    clk = FittedSampleClock(fs, one_sided=not exact)
    naive = LinearSampleClock(T0, fs)
    errs = []
    for b in range(int(3600 * fs / blk)):
        j = b * blk
        jitter = rng.normal(0, 50e3) if exact else rng.uniform(0, 1e6)
        clk.observe(j, int(_true_ns(j, fs, ppm) + jitter))
        if b % 150 == 0 and b > 200:
            q = j + blk * rng.uniform(0, 1)      # a detection in the newest block
            errs.append(clk.t_ns(q) - _true_ns(q, fs, ppm))
    errs = np.abs(np.array(errs))
    assert errs.max() < 100_000, f"max error {errs.max() / 1e3:.1f} us"
    assert abs(clk.ppm - ppm) < 2.0
    j_end = 3600 * fs
    assert abs(naive.t_ns(j_end) - _true_ns(j_end, fs, ppm)) > 150e6


# ---------------------------------------------------------------------- gpsd
def _nmea(path, start, seconds):
    def cks(s):
        c = 0
        for ch in s:
            c ^= ord(ch)
        return f"{c:02X}"

    lines = []
    for k in range(seconds):
        t = start + datetime.timedelta(seconds=k)
        hms, dmy = t.strftime("%H%M%S") + ".00", t.strftime("%d%m%y")
        for body in (f"GPRMC,{hms},A,4151.3000,N,08740.8000,W,0.0,0.0,{dmy},,,A",
                     f"GPGGA,{hms},4151.3000,N,08740.8000,W,1,09,0.9,180.0,M,-34.0,M,,"):
            lines.append(f"${body}*{cks(body)}")
    path.write_text("\r\n".join(lines) + "\r\n")


@pytest.mark.skipif(not shutil.which("gpsfake"), reason="gpsd-clients not installed")
def test_gpsd_fix_time_and_loss(tmp_path):
    """gpsd fed by gpsfake with an NMEA log stamped from now: the node sees a 3-D fix, its
    position and TOFF time reports, and calls the clock locked; when gpsd goes away the
    clock is unlocked within seconds and its sigma grows (holdover)."""
    log = tmp_path / "now.nmea"
    _nmea(log, datetime.datetime.now(datetime.timezone.utc), 300)
    port = _port()
    fake = subprocess.Popen(["gpsfake", "-P", str(port), "-c", "1.0", "-q", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    src = GpsdTime(port=port, stale_s=2.5, holdover_ppm=1000.0)
    try:
        assert _wait(lambda: src.quality().locked, 20), src.state()
        q = src.quality()
        assert q.source == "gps" and q.locked and 0 < q.sigma_ns < 50_000_000, q
        lat, lon, alt = src.position
        assert abs(lat - 41.855) < 1e-6 and abs(lon + 87.68) < 1e-6 and abs(alt - 146.0) < 1.0
        assert src.reports["TOFF"] >= 1 and src.mode == 3
        sigma_locked = q.sigma_ns
    finally:
        os.killpg(fake.pid, signal.SIGTERM)
        fake.wait(timeout=10)
    subprocess.run(["pkill", "-f", f"gpsd.*{port}"], check=False)
    assert _wait(lambda: not src.quality().locked, 10), "loss of gpsd is noticed"
    time.sleep(1.0)
    lost = src.quality()
    assert lost.source == "gps" and not lost.locked and lost.sigma_ns > sigma_locked
    src.close()


# ---------------------------------------------------------------------- chrony
@pytest.mark.skipif(not shutil.which("chronyd") or os.geteuid() != 0, reason="needs chrony and root")
def test_chrony_with_a_socket_refclock(tmp_path):
    """chronyd -x (never touches the clock) with a SOCK reference clock fed from here:
    chronyc tracking, read by the node, reports it synchronised with a sub-ms bound."""
    d = tmp_path / "chrony"
    d.mkdir(mode=0o700)
    conf = d / "chrony.conf"
    conf.write_text(f"refclock SOCK {d}/ref.sock refid GPS poll 0 precision 1e-6\n"
                    f"bindcmdaddress {d}/cmd.sock\ncmdport 0\nport 0\npidfile {d}/chronyd.pid\n"
                    f"driftfile {d}/drift\n")
    chronyd = subprocess.Popen(["chronyd", "-x", "-d", "-u", "root", "-f", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def feed():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        while not stop.is_set():
            now = time.time()
            try:
                s.sendto(struct.pack("qqdiiii", int(now), int((now % 1) * 1e6), 2.5e-4, 0, 0, 0, 0x534F434B),
                         str(d / "ref.sock"))
            except OSError:
                pass
            stop.wait(0.5)

    th = threading.Thread(target=feed, daemon=True)
    th.start()
    src = ChronyTime(socket_path=str(d / "cmd.sock"), poll_s=0.5)
    try:
        assert _wait(lambda: (src.poll(), src.quality().locked)[1], 40), src.tracking
        q = src.quality()
        assert q.source == "chrony" and q.locked and q.sigma_ns < 1_000_000, (q, src.tracking)
        assert src.tracking["ref_name"] == "GPS" and src.tracking["stratum"] == 1
    finally:
        stop.set()
        chronyd.terminate()
        chronyd.wait(timeout=10)
    # chronyd gone: chronyc fails, the node counts it and soon calls the clock unlocked.
    src.stale_s = 0.5
    time.sleep(0.6)
    src._next = 0
    src.poll()
    assert src.errors >= 1 and not src.quality().locked


def test_chrony_and_pmc_parsers_refuse_garbage():
    with pytest.raises(ValueError, match="expected 14 fields"):
        parse_tracking("garbage")
    d = parse_tracking("47505300,GPS,1,1795478947.148,0.000250,-0.000250,0.000250,0.0,0.0,0.0,"
                       "0.000000001,0.000002778,0.0,Normal")
    assert d["leap_status"] == "Normal" and d["root_dispersion_s"] == pytest.approx(2.778e-6)
    assert parse_pmc("sending: GET X\n\t\toffsetFromMaster -320.0\n\t\tportState UNCALIBRATED\n") == \
        {"offsetFromMaster": "-320.0", "portState": "UNCALIBRATED"}


# ---------------------------------------------------------------------- PTP
@pytest.fixture
def ptp_pair(tmp_path):
    """ptp4l master and slave over a veth pair between two network namespaces, software
    timestamping, both --free_running (namespaces don't isolate the system clock)."""
    if os.geteuid() != 0 or not shutil.which("ptp4l") or not shutil.which("ip"):
        pytest.skip("needs root, linuxptp and iproute2")
    tag = f"sn{os.getpid() % 100000}"
    ns_m, ns_s, if_m, if_s = f"{tag}m", f"{tag}s", f"{tag}a", f"{tag}b"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    procs = []
    try:
        run("ip", "netns", "add", ns_m)
        run("ip", "netns", "add", ns_s)
        run("ip", "link", "add", if_m, "type", "veth", "peer", "name", if_s)
        run("ip", "link", "set", if_m, "netns", ns_m)
        run("ip", "link", "set", if_s, "netns", ns_s)
        for ns, ifc in ((ns_m, if_m), (ns_s, if_s)):
            run("ip", "-n", ns, "link", "set", ifc, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        uds_m, uds_s = str(tmp_path / "m.uds"), str(tmp_path / "s.uds")
        common = ["-S", "-2", "-m", "--free_running=1", "--summary_interval=0"]
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns_m, "ptp4l", "-i", if_m, *common,
                                       "--priority1=10", f"--uds_address={uds_m}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns_s, "ptp4l", "-i", if_s, "-s", *common,
                                       f"--uds_address={uds_s}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield uds_s, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns_m], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns_s], capture_output=True)


def test_ptp_offset_from_a_free_running_slave(ptp_pair):
    """pmc reads the slave's offset from the master and its port state; the node applies
    the offset itself (the slave never steers the clock) and calls the clock locked. When
    the master stops, the grandmaster is lost and the clock is unlocked."""
    uds, procs = ptp_pair
    src = PtpTime(uds=uds, poll_s=0.5)
    assert _wait(lambda: (src.poll(), src.quality().locked)[1], 40), src.state()
    q = src.quality()
    assert q.source == "ptp" and q.locked and q.sigma_ns < 1_000_000, (q, src.state())
    assert src.port_state in ("UNCALIBRATED", "SLAVE") and src.gm_present
    assert abs(src.correction_ns()) < 1_000_000     # one machine: master and slave share a clock
    procs[0].terminate()                             # the master goes away
    procs[0].wait(timeout=10)
    assert _wait(lambda: (src.poll(), not src.quality().locked)[1], 40), src.state()


# ---------------------------------------------------------------------- spool
def _det(seq, label="impulse", sid="S01"):
    return Detection(sid, seq, T0 + seq * NS_PER_S, 100_000, label, 0.9, 0.9 if label == "gunshot" else 0.1)


def test_spool_is_bounded_drops_non_gunshots_first_and_keeps_seq(tmp_path):
    path = tmp_path / "spool.sqlite"
    sp = Spool(path, max_rows=100)
    for s in range(150):
        sp.add(_det(s, "gunshot" if s % 10 == 0 else "firework"))
    assert sp.depth() == 100 and sp.dropped == 50
    left = [r[0] for r in sp.db.execute("SELECT seq FROM spool WHERE label = 'gunshot'")]
    assert left == list(range(0, 150, 10)), "every gunshot kept while others could go"
    sent = sp.due(resend_s=2.0, limit=10)
    assert [s for s, _ in sent] == sorted(s for s, _ in sent) and len(sent) == 10
    assert sp.due(resend_s=2.0, limit=10)[0][0] > sent[-1][0], "in flight ones are not due again yet"
    assert sp.ack([s for s, _ in sent]) == 10
    sp.close()
    sp = Spool(path, max_rows=100)          # a node restart: the rest is still there
    assert sp.depth() == 90 and sp.next_seq() == 150
    sp.ack([r[0] for r in sp.db.execute("SELECT seq FROM spool")])
    assert sp.depth() == 0 and sp.next_seq() == 150, "seq never repeats, even with an empty spool"


def test_node_restart_delivers_its_spool(tmp_path):
    """The node spools while the locator is away, is restarted itself, and the new process
    delivers the old backlog in order, each detection once."""
    ctx = zmq.Context()
    port = _port()
    spool_path = tmp_path / "spool.sqlite"
    s1 = DetectionSender(f"tcp://127.0.0.1:{port}", "S01", ctx=ctx, spool=Spool(spool_path), resend_s=0.3)
    for s in range(20):
        s1.send(_det(s))
    s1.close()
    s1.spool.close()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://127.0.0.1:{port}")
    s2 = DetectionSender(f"tcp://127.0.0.1:{port}", "S01", ctx=ctx, spool=Spool(spool_path), resend_s=0.3)
    got = []
    end = time.monotonic() + 10
    while s2.depth and time.monotonic() < end:
        s2.poll(20)
        while router.poll(0):
            ident, *frames = router.recv_multipart()
            from shotnet.sensor.contract import decode, encode, KIND_ACK
            _, payload = decode(frames)
            if payload["seq"] not in got:
                got.append(payload["seq"])
            router.send_multipart([ident] + encode(KIND_ACK, {"seqs": [payload["seq"]]}))
    assert got == list(range(20)) and s2.depth == 0
    s2.close()
    ctx.destroy(linger=0)


# ---------------------------------------------------------------------- CURVE
def test_curve_only_registered_keys_get_through(tmp_path, city_scene):
    """`shotnet keys` makes the key pairs; the locator accepts a registered node key, for
    its own sensor id only. An unknown key gets nothing through and the locator counts
    the refused handshake."""
    from shotnet.sensor.keys import main as keys_main

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    assert keys_main(["create", "locator", "S01", "S02", "--dir", str(keys)]) == 0
    allowed.mkdir()
    shutil.copy(keys / "S01.key", allowed / "S01.key")          # S02 is not registered
    assert keys_main(["list", "--dir", str(keys)]) == 0
    ctx = zmq.Context()
    svc = LocatorService(city_scene.layout, AssocConfig(), "tcp://127.0.0.1:0", ctx=ctx, step_s=0.05,
                         curve_secret_key_file=str(keys / "locator.key_secret"), authorized_keys_dir=str(allowed))
    th = threading.Thread(target=svc.run, kwargs={"duration_s": 6.0}, daemon=True)
    th.start()
    sids = city_scene.layout.ids
    good = DetectionSender(svc.endpoint, sids[0], ctx=ctx,
                           curve=CurveKeys.load(str(keys / "S01.key_secret"), str(keys / "locator.key")))
    # S01's key claiming to be another sensor: an impostor.
    claim = DetectionSender(svc.endpoint, sids[1], ctx=ctx,
                            curve=CurveKeys.load(str(keys / "S01.key_secret"), str(keys / "locator.key")))
    unknown = DetectionSender(svc.endpoint, sids[2], ctx=ctx,
                              curve=CurveKeys.load(str(keys / "S02.key_secret"), str(keys / "locator.key")))
    # No CURVE at all against a CURVE server: refused too.
    plain = DetectionSender(svc.endpoint, sids[3], ctx=ctx)
    t = time.time_ns()
    # Registered as S01 in the key directory, but the layout's ids are the scene's: map it.
    svc.key_owner = {k: sids[0] for k in svc.key_owner}
    good.send(Detection(sids[0], 0, t, 100_000, "impulse", 0.9))
    claim.send(Detection(sids[1], 0, t, 100_000, "impulse", 0.9))
    unknown.send(Detection(sids[2], 0, t, 100_000, "impulse", 0.9))
    plain.send(Detection(sids[3], 0, t, 100_000, "impulse", 0.9))
    assert good.drain(4.0), "the registered node is acknowledged"
    time.sleep(1.0)
    for s in (claim, unknown, plain):
        s.poll(0)
        assert s.acked == 0 and s.depth == 1, "nothing gets through; the node keeps it spooled"
    th.join()
    assert svc.stats.acked == 1 and svc.stats.impostors >= 1
    assert svc.stats.auth_failures >= 2, svc.stats
    assert [d.sensor_id for d in svc.assoc.pending] == [sids[0]]
    for s in (good, claim, unknown, plain):
        s.close()
    svc.close()
    ctx.destroy(linger=0)


# ---------------------------------------------------------------------- heartbeats and health
def _hb(**kw):
    d = dict(sensor_id="S01", t_ns=T0, uptime_s=10.0, noise_floor_dbfs=-60.0, clipped_samples=0,
             nonfinite_blocks=0, overflows=0, detections=0, clock_source="gps", clock_locked=True,
             clock_sigma_ns=1000, clock_ppm=12.0, spool_depth=0, spool_dropped=0, cpu_percent=5.0,
             model="m", model_sha256="abc")
    d.update(kw)
    return heartbeat_from_dict(d)


def test_heartbeat_contract_and_assessment():
    with pytest.raises(ContractError, match="unknown key"):
        heartbeat_from_dict(dict(_hb().to_dict(), temperature=3))
    with pytest.raises(ContractError, match="missing key"):
        heartbeat_from_dict({"sensor_id": "S01"})
    pol = HealthPolicy(silent_after_s=30)
    assert assess(_hb(), None, 1.0, pol) == ("ok", [])
    assert assess(_hb(), None, 31.0, pol)[0] == "silent"
    st, why = assess(_hb(clock_locked=False, clock_sigma_ns=20_000_000, clipped_samples=50, noise_floor_dbfs=-10),
                     _hb(), 1.0, pol)
    assert st == "degraded" and len(why) == 4, why
    st, why = assess(_hb(noise_floor_dbfs=-200.0), None, 1.0, pol)
    assert st == "degraded" and "digital silence" in why[0]


def _node_cfg(tmp_path, wav, sid, locator, **node):
    doc = {"node": {"sensor_id": sid, "locator": locator, "spool_path": str(tmp_path / f"{sid}.sqlite"),
                    "heartbeat_s": 0.2, "drain_on_stop_s": 5.0, **node},
           "audio": {"source": "wav", "wav_path": str(wav), "wav_t0_ns": T0, "block_frames": 1600},
           "clock": {"source": "system", "system_sigma_ns": 100_000}}
    return nodeconf.parse(doc)


def _wav(tmp_path, x, fs=16000, name="a.wav"):
    import soundfile as sf

    p = tmp_path / name
    sf.write(str(p), np.asarray(x, dtype=np.float32), fs, subtype="FLOAT")
    return p


def _impulse(fs, at_s, n_s):
    from shotnet.sensor.synth import gunshot

    x = np.random.default_rng(0).normal(0, 1e-3, int(n_s * fs)).astype(np.float32)
    g = gunshot(fs, np.random.default_rng(1))[: fs // 2]
    g = 0.5 * g / np.abs(g).max()
    i = int(at_s * fs)
    x[i:i + len(g)] += g
    return x


def test_bad_input_each_has_a_clear_counted_outcome(tmp_path, city_scene):
    """NaN blocks, digital silence, clipping and a wrong sample rate: each is counted or
    refused with a clear message, shows in the heartbeat, and the locator's health check
    names it; the node keeps detecting around the bad blocks."""
    fs = 16000
    sid = city_scene.layout.ids[0]
    x = _impulse(fs, 2.0, 4.0)
    x[int(0.5 * fs):int(0.6 * fs)] = np.nan            # a broken driver
    x[int(3.0 * fs):int(3.01 * fs)] = 1.0              # clipping
    ctx = zmq.Context()
    svc = LocatorService(city_scene.layout, AssocConfig(), "tcp://127.0.0.1:0", ctx=ctx, step_s=0.05)
    th = threading.Thread(target=svc.run, kwargs={"duration_s": 4.0}, daemon=True)
    th.start()
    node = FieldNode(_node_cfg(tmp_path, _wav(tmp_path, x), sid, svc.endpoint), ctx=ctx)
    summary = node.run()
    assert summary["stats"]["nonfinite_blocks"] >= 1 and summary["stats"]["clipped_samples"] >= 100
    assert summary["stats"]["detections"] >= 1, "the impulse after the NaN block is still found"
    assert summary["drained"] and summary["unacked"] == 0
    th.join()
    status, why = svc.node_health()[sid]
    assert status == "degraded" and any("clipped" in w for w in why) and any("not locked" in w for w in why), why
    assert svc.stats.heartbeats >= 2
    node.close()
    # Digital silence: no detections, the heartbeat's floor says so.
    silent = FieldNode(_node_cfg(tmp_path, _wav(tmp_path, np.zeros(2 * fs), name="z.wav"), sid,
                                 "tcp://127.0.0.1:1", spool_path=str(tmp_path / "z.sqlite")), ctx=ctx)
    silent.cfg = dataclasses.replace(silent.cfg, node=dataclasses.replace(silent.cfg.node, drain_on_stop_s=0.1))
    summary = silent.run()
    assert summary["stats"]["detections"] == 0
    assert any(w.startswith("input is digital silence") for w in assess(silent.heartbeat(), None, 0.0,
                                                                         HealthPolicy())[1])
    silent.close()
    svc.close()
    ctx.destroy(linger=0)
    # A device that runs at another rate than node.toml says: refused, with both rates named.
    from shotnet.sensor.node import run_node  # noqa: F401  (the same check guards run_node)

    cfg = dataclasses.replace(_node_cfg(tmp_path, _wav(tmp_path, x), sid, "tcp://127.0.0.1:1"),
                              audio=dataclasses.replace(nodeconf.AudioSection(), source="mic", fs_hz=48000))
    ctx = zmq.Context()
    node = FieldNode(cfg, ctx=ctx, source=ArraySource(x, 44100), clock=LinearSampleClock(T0, 44100))
    with pytest.raises(ValueError, match="runs at 44100 Hz, node.toml says 48000 Hz"):
        node.run()
    node.close()
    ctx.destroy(linger=0)


def test_health_monitor_noise_floor():
    h = HealthMonitor(16000, 1600)
    for k in range(20):
        h.block(np.full(1600, 0.01 if k % 2 else 0.001, dtype=np.float32))
    assert h.noise_floor_dbfs() == pytest.approx(-60.0, abs=0.5)
    h.block(np.full(1600, np.nan, dtype=np.float32))  # ignored, counted by the core
    assert h.noise_floor_dbfs() == pytest.approx(-60.0, abs=0.5)


# ---------------------------------------------------------------------- configuration and the process
def test_node_toml_is_validated(tmp_path):
    p = tmp_path / "node.toml"
    p.write_text('[node]\nsensor_id = "S01"\nheartbeat_sec = 5\n')
    with pytest.raises(ValueError, match="unknown key.*heartbeat_sec"):
        nodeconf.load(p)
    p.write_text('[node]\nsensor_id = "S01"\n[audio]\nfs_hz = "48k"\n')
    with pytest.raises(ValueError, match="audio.fs_hz must be an integer"):
        nodeconf.load(p)
    p.write_text('[node]\nsensor_id = "S01"\n[privacy]\nclip_pre_s = 3.0\n')
    with pytest.raises(ValueError, match="exceeds clip_max_s"):
        nodeconf.load(p)
    p.write_text('[nodes]\nsensor_id = "S01"\n')
    with pytest.raises(ValueError, match="unknown table"):
        nodeconf.load(p)
    p.write_text('[node]\nsensor_id = "S01"\nspool_path = "sp.sqlite"\n[clock]\nsource = "ptp"\n')
    cfg = nodeconf.load(p)
    assert cfg.node.spool_path == str(tmp_path / "sp.sqlite") and cfg.clock.source == "ptp"
    assert nodeconf.parse(__import__("tomllib").loads(nodeconf.to_toml(cfg))) == cfg, "print-config round-trips"
    r = subprocess.run([sys.executable, "-m", "shotnet", "sensor", "run", "--config", str(p), "--print-config"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and 'source = "ptp"' in r.stdout
    p.write_text('[node]\nsensor_id = "S01"\nheartbeat_sec = 5\n')
    r = subprocess.run([sys.executable, "-m", "shotnet", "sensor", "run", "--config", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "heartbeat_sec" in r.stderr


def test_sigterm_flushes_the_spool(tmp_path, city_scene):
    """`shotnet sensor run --config` as a process, paced in real time; SIGTERM mid-file:
    it stops capturing, sends what it found, waits for the acks and exits 0 with nothing
    left unacknowledged. --dry-run opens everything and exits."""
    fs = 16000
    sid = city_scene.layout.ids[0]
    x = _impulse(fs, 1.0, 30.0)
    wav = _wav(tmp_path, x)
    ctx = zmq.Context()
    svc = LocatorService(city_scene.layout, AssocConfig(), "tcp://127.0.0.1:0", ctx=ctx, step_s=0.05)
    th = threading.Thread(target=svc.run, kwargs={"duration_s": 12.0}, daemon=True)
    th.start()
    conf = tmp_path / "node.toml"
    conf.write_text(f'[node]\nsensor_id = "{sid}"\nlocator = "{svc.endpoint}"\nspool_path = "spool.sqlite"\n'
                    f'heartbeat_s = 1.0\n[audio]\nsource = "wav"\nwav_path = "{wav}"\nwav_t0_ns = {T0}\n'
                    f'realtime = true\nblock_frames = 1600\n[clock]\nsystem_sigma_ns = 100000\n')
    r = subprocess.run([sys.executable, "-m", "shotnet", "sensor", "run", "--config", str(conf), "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["spool"]["next_seq"] == 0, r.stderr
    assert json.loads(r.stdout)["kernels"] == "ahead of time"       # (built by make: no Numba on the node)
    p = subprocess.Popen([sys.executable, "-m", "shotnet", "sensor", "run", "--config", str(conf)],
                         stderr=subprocess.PIPE, text=True)
    time.sleep(5.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    summary = json.loads(p.stderr.read().strip().splitlines()[-1])
    assert summary["stats"]["detections"] >= 1 and summary["drained"] and summary["unacked"] == 0, summary
    assert summary["stats"]["samples"] < len(x), "stopped mid-file"
    th.join()
    svc.close()
    ctx.destroy(linger=0)


@pytest.mark.skipif(not os.path.exists("/usr/share/alsa/alsa.conf"), reason="no ALSA configuration")
def test_live_capture_through_portaudio(tmp_path, city_scene):
    """The capture path end to end through a real PortAudio device: an ALSA capture PCM
    backed by a file (ALSA_CONFIG_PATH), read by sounddevice in `shotnet sensor run` with
    audio.source = "mic". The impulse in the file arrives as a detection at the locator
    with a clip; nothing else of the audio leaves the node."""
    fs = 48000
    x = _impulse(fs, 2.0, 20.0)
    raw = tmp_path / "in.raw"
    x.astype(np.float32).tofile(raw)
    asound = tmp_path / "asound.conf"
    asound.write_text("</usr/share/alsa/alsa.conf>\n"
                      "pcm.shotnet_file {\n type file\n slave { pcm \"null\" }\n file \"/dev/null\"\n"
                      f" infile \"{raw}\"\n format \"raw\"\n"
                      " hint { show on description \"shotnet test capture\" }\n}\n")
    sid = city_scene.layout.ids[0]
    ctx = zmq.Context()
    svc = LocatorService(city_scene.layout, AssocConfig(max_clock_sigma_ms=100.0), "tcp://127.0.0.1:0", ctx=ctx,
                         step_s=0.05)
    th = threading.Thread(target=svc.run, kwargs={"duration_s": 12.0}, daemon=True)
    th.start()
    conf = tmp_path / "node.toml"
    conf.write_text(f'[node]\nsensor_id = "{sid}"\nlocator = "{svc.endpoint}"\nspool_path = "spool.sqlite"\n'
                    f'heartbeat_s = 0.5\n[audio]\nsource = "mic"\ndevice = "shotnet_file"\nfs_hz = {fs}\n'
                    f'block_frames = 2400\n')
    env = dict(os.environ, ALSA_CONFIG_PATH=str(asound))
    p = subprocess.Popen([sys.executable, "-m", "shotnet", "sensor", "run", "--config", str(conf)],
                         stderr=subprocess.PIPE, text=True, env=env)
    assert _wait(lambda: svc.stats.acked >= 1, 40), svc.stats
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    summary = json.loads(p.stderr.read().strip().splitlines()[-1])
    th.join()
    assert summary["stats"]["detections"] >= 1 and summary["unacked"] == 0, summary
    dets = [d for d in svc.assoc.pending if d.sensor_id == sid]
    assert dets and dets[0].label in ("gunshot", "impulse", "firework", "backfire", "pop", "other", "slam",
                                      "clap", "construction")
    gun = [d for d in dets if d.label == "gunshot"]
    for d in gun:
        assert d.clip is not None and len(d.clip) // 2 <= 2.0 * fs, "a clip of at most 2 s, only for gunshots"
    for d in dets:
        if d.label != "gunshot":
            assert d.clip is None
    assert svc.stats.heartbeats >= 1
    svc.close()
    ctx.destroy(linger=0)


def test_unsynchronised_detections_are_stored_but_not_located(city_scene):
    """A detection whose clock is worse than max_clock_sigma_ms (a node on its bare system
    clock) is acknowledged and stored, but never used to place a shot."""
    from shotnet.locator.associate import Associator

    a = Associator(city_scene.layout, AssocConfig(max_clock_sigma_ms=5.0))
    sid = city_scene.layout.ids[0]
    ok = Detection(sid, 0, T0, 100_000, "gunshot", 0.9, 0.9, clock_source="gps", clock_locked=True,
                   clock_sigma_ns=1_000)
    bad = Detection(sid, 1, T0 + 1, 10_000_000, "gunshot", 0.9, 0.9, clock_source="system", clock_locked=False,
                    clock_sigma_ns=10_000_000)
    assert a.feed(ok) and not a.feed(bad)
    assert a.stats.unsynchronised == 1 and [d.seq for d in a.pending] == [0]
