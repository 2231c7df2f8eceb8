"""Hostile input at the locator: fuzzed, truncated and oversized messages; replayed and
reordered detections; revoked keys."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import threading
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shotnet.locator.associate import AssocConfig, locate_stream
from shotnet.locator.service import LocatorService
from shotnet.sensor.contract import (KIND_ACK, KIND_DETECTION, KIND_EVENT, KIND_HEARTBEAT, MAX_PAYLOAD_BYTES,
                                     PROTOCOL, Detection, detection_to_dict, encode)
from shotnet.sensor.transport import CurveKeys, DetectionSender

FUZZ_CASES = int(os.environ.get("SHOTNET_FUZZ_CASES", "3000"))

_DET_KEYS = ["sensor_id", "seq", "t_ns", "t_sigma_ns", "label", "score", "p_gunshot", "clock_source",
             "clock_locked", "clock_sigma_ns", "lat", "lon", "alt_m", "peak_dbfs", "snr_db", "model",
             "model_sha256", "clip", "clip_fs_hz"]
_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)      # what msgpack can carry
_values = st.one_of(st.none(), st.booleans(), _ints, st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=80), st.binary(max_size=200), st.lists(_ints, max_size=4),
                    st.dictionaries(st.text(max_size=5), _ints, max_size=3))
_payload_maps = st.dictionaries(st.one_of(st.sampled_from(_DET_KEYS), st.text(max_size=12)), _values, max_size=12)


def _valid(seq=0, sid="S01"):
    return detection_to_dict(dataclasses.replace(BASE, sensor_id=sid, seq=seq))


@st.composite
def messages(draw):
    """A ROUTER message: [identity, *frames]. Mostly almost-valid, sometimes garbage."""
    kind = draw(st.sampled_from(["garbage", "map", "mutated", "truncated", "kind", "oversized", "valid"]))
    ident = b"node"
    if kind == "garbage":
        return [ident] + draw(st.lists(st.binary(max_size=300), max_size=5))
    if kind == "kind":
        return [ident, PROTOCOL, draw(st.sampled_from([KIND_ACK, KIND_EVENT, b"xx", b""])), msgpack.packb({"a": 1})]
    if kind == "map":
        k = draw(st.sampled_from([KIND_DETECTION, KIND_HEARTBEAT]))
        return [ident, PROTOCOL, k, msgpack.packb(draw(_payload_maps), use_bin_type=True)]
    d = _valid(draw(st.integers(min_value=0, max_value=50)), draw(st.sampled_from(["S01", "S02", "S99", "bad id!"])))
    if kind == "mutated":
        key = draw(st.sampled_from(_DET_KEYS + ["extra"]))
        d[key] = draw(_values)
    body = msgpack.packb(d, use_bin_type=True)
    if kind == "truncated":
        body = body[: draw(st.integers(min_value=0, max_value=max(0, len(body) - 1)))]
    if kind == "oversized":
        body = msgpack.packb(dict(d, model="x" * (MAX_PAYLOAD_BYTES + 10)), use_bin_type=True)
    return [ident, PROTOCOL, KIND_DETECTION, body]


T0 = 1_800_000_000 * 1_000_000_000
BASE = Detection("S01", 0, T0, 100_000, "gunshot", 0.9, 0.9)


def _base():
    return BASE


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory):
    from shotnet.sensor.scene import default_layout

    ctx = zmq.Context()
    svc = LocatorService(default_layout(), AssocConfig(), "tcp://127.0.0.1:0", ctx=ctx,
                         store=tmp_path_factory.mktemp("fuzz") / "s.sqlite")
    yield svc
    svc.close()
    ctx.destroy(linger=0)


def _buckets(s):
    return s.acked + s.malformed + s.rejected + s.impostors + s.heartbeats


@settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(batch=st.lists(messages(), min_size=1, max_size=4))
def test_fuzzed_messages_never_crash_and_every_rejection_is_counted(fuzz_service, batch):
    """Property: whatever arrives, the service neither raises nor loses count: every
    message is acknowledged (valid), or counted as malformed, rejected (unknown sensor),
    an impostor, or a heartbeat. (SHOTNET_FUZZ_CASES=100000 under `make test-slow`.)"""
    s = fuzz_service.stats
    before_r, before_b = s.received, _buckets(s)
    fuzz_service.handle_batch(batch)
    assert s.received - before_r == len(batch)
    assert _buckets(s) - before_b == len(batch)


@pytest.mark.slow
def test_fuzz_100k(tmp_path):
    """The full 100,000-case run (about a minute)."""
    import subprocess
    import sys

    env = dict(os.environ, SHOTNET_FUZZ_CASES="100000")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                        "fuzzed_messages", "-m", "not slow"], env=env, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stdout[-2000:]


def test_oversized_messages_drop_the_connection_not_the_locator(city_scene):
    """A 3 MiB message exceeds the socket's size limit: the sender's connection is cut at
    the transport, nothing is parsed or stored, and others carry on."""
    ctx = zmq.Context()
    svc = LocatorService(city_scene.layout, AssocConfig(), "tcp://127.0.0.1:0", ctx=ctx, step_s=0.05)
    th = threading.Thread(target=svc.run, kwargs={"duration_s": 3.0}, daemon=True)
    th.start()
    bad = ctx.socket(zmq.DEALER)
    bad.setsockopt(zmq.LINGER, 0)
    bad.connect(svc.endpoint)
    bad.send_multipart([PROTOCOL, KIND_DETECTION, b"\x00" * (3 << 20)])
    good = DetectionSender(svc.endpoint, city_scene.layout.ids[1], ctx=ctx)
    good.send(dataclasses.replace(BASE, sensor_id=city_scene.layout.ids[1], t_ns=time.time_ns()))
    assert good.drain(3.0)
    th.join()
    assert svc.stats.received == 1 and svc.stats.acked == 1
    bad.close(0)
    good.close()
    svc.close()
    ctx.destroy(linger=0)


def test_replayed_and_reordered_detections_change_nothing(city_scene, city_detections):
    """Every detection delivered twice, arriving 0.5 s after its onset and shuffled within
    0.3 s: the duplicates are acknowledged but counted and dropped, and the rounds found
    are those of the same live run delivered in order. Delivered as one backlog (a
    healed partition), the event ids do not depend on order or duplicates at all."""
    import numpy as np

    ref = locate_stream(city_scene.layout, city_detections, AssocConfig(temperature_c=18.0))
    stream = sorted(city_detections, key=lambda d: d.t_ns)
    ctx = zmq.Context()

    def run(jitter_s, backlog=False):
        rng = random.Random(3)
        msgs = []
        for d in stream:
            frames = [d.sensor_id.encode()] + encode(KIND_DETECTION, detection_to_dict(d))
            for _ in range(2):
                msgs.append((d.t_ns + 0.5e9 + rng.uniform(0, jitter_s * 1e9), frames))
        msgs.sort(key=lambda m: m[0])
        svc = LocatorService(city_scene.layout, AssocConfig(temperature_c=18.0), "tcp://127.0.0.1:0", ctx=ctx)
        out, step_at = [], None
        for t, frames in msgs:
            if not backlog and (step_at is None or t - step_at >= 1e8):
                out += svc.assoc.step(int(t))
                step_at = t
            svc.handle_batch([frames])
        out += svc.assoc.flush()
        assert svc.stats.duplicates == len(stream) and svc.stats.acked == 2 * len(stream)
        svc.close()
        return list({e.event_id: e for e in out}.values())

    def found(evs):
        return {round(g.t_ns / 1e7) for g in ref if g.label == "gunshot" and any(
            abs(e.t_ns - g.t_ns) < 0.01 * 1e9 and np.hypot(e.x_m - g.x_m, e.y_m - g.y_m) < 5 for e in evs)}

    ordered, shuffled = run(0.0), run(0.3)
    assert found(shuffled) == found(ordered)
    assert len(found(ordered)) >= sum(e.label == "gunshot" for e in ref) - 2
    # A backlog is searched as a whole: order and duplicates make no difference at all.
    assert {e.event_id for e in run(0.3, backlog=True)} == {e.event_id for e in run(0.0, backlog=True)}
    ctx.destroy(linger=0)


def test_a_revoked_key_gets_nothing_through(tmp_path, city_scene):
    """Remove a node's key from the authorised directory and reload (SIGHUP): its open
    connection is refused from then on, and a new connection fails the handshake."""
    from shotnet.sensor.keys import create

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    allowed.mkdir()
    sid = city_scene.layout.ids[0]
    for name in ("locator", sid):
        create(keys, name)
    shutil.copy(keys / f"{sid}.key", allowed / f"{sid}.key")
    ctx = zmq.Context()
    svc = LocatorService(city_scene.layout, AssocConfig(), "tcp://127.0.0.1:0", ctx=ctx, step_s=0.05,
                         curve_secret_key_file=str(keys / "locator.key_secret"), authorized_keys_dir=str(allowed))
    th = threading.Thread(target=svc.run, kwargs={"duration_s": 6.0}, daemon=True)
    th.start()
    curve = CurveKeys.load(str(keys / f"{sid}.key_secret"), str(keys / "locator.key"))
    node = DetectionSender(svc.endpoint, sid, ctx=ctx, curve=curve)
    node.send(dataclasses.replace(_base(), sensor_id=sid, seq=0, t_ns=time.time_ns()))
    assert node.drain(3.0)
    (allowed / f"{sid}.key").unlink()
    assert svc.reload_keys() == 0
    node.send(dataclasses.replace(_base(), sensor_id=sid, seq=1, t_ns=time.time_ns()))
    time.sleep(1.0)
    node.poll(0)
    assert node.depth == 1, "the open connection gets nothing through"
    again = DetectionSender(svc.endpoint, sid, ctx=ctx, curve=curve)
    again.send(dataclasses.replace(_base(), sensor_id=sid, seq=2, t_ns=time.time_ns()))
    time.sleep(1.0)
    again.poll(0)
    th.join()
    assert again.depth == 1 and svc.stats.acked == 1
    assert svc.stats.impostors >= 1 and svc.stats.auth_failures >= 1, svc.stats
    for s in (node, again):
        s.close()
    svc.close()
    ctx.destroy(linger=0)
