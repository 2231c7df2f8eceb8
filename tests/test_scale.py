"""Beyond one machine: alerts fanned out through an XSUB/XPUB proxy to many
subscribers from two regional locators; two locators on one stream agree on event ids."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import zmq

from shotnet.locator.associate import AssocConfig
from shotnet.locator.fanout import Fanout
from shotnet.locator.service import LocatorService
from shotnet.locator.synthetic import StreamConfig, make_stream
from shotnet.sensor.contract import KIND_EVENT, NS_PER_S
from shotnet.sensor.scene import default_layout
from shotnet.sensor.transport import DetectionSender


def _stream(n_shots=6, span_s=6.0, seed=4):
    """Single rounds well apart, delivered from now on (what a live test can wait for)."""
    lay = default_layout()
    cfg = StreamConfig(late_fraction=0.0, false_per_sensor_per_s=0.0, lookalike_fraction=0.0, survey_sigma_m=0.0,
                       wind_m_per_s=(0.0, 0.0))
    dets, truth, _ = make_stream(lay, n_shots, span_s, cfg, seed=seed)
    shift = time.time_ns() + NS_PER_S - min(d.t_ns for d in dets)
    return lay, [dataclasses.replace(d, t_ns=d.t_ns + shift) for d in dets]


def _play(dets, endpoints, ctx, latency_s=0.2):
    """Every node sends each detection to every locator, at onset + latency."""
    senders = {}
    for d in sorted(dets, key=lambda d: d.t_ns):
        while time.time_ns() < d.t_ns + latency_s * NS_PER_S:
            for s in senders.values():
                s.poll(0)
            time.sleep(0.002)
        for k, ep in enumerate(endpoints):
            s = senders.get((d.sensor_id, k))
            if s is None:
                s = senders[(d.sensor_id, k)] = DetectionSender(ep, d.sensor_id, ctx=ctx)
            s.send(d)
    for s in senders.values():
        assert s.drain(10.0)
        s.close()


def test_two_locators_on_one_stream_agree_and_fan_out_to_many(tmp_path):
    ctx = zmq.Context()
    lay, dets = _stream()
    pubs = ["tcp://127.0.0.1:0", "tcp://127.0.0.1:0"]
    svcs = [LocatorService(lay, AssocConfig(temperature_c=18.0, estimate_wind=False), "tcp://127.0.0.1:0",
                           pub=p, ctx=ctx, step_s=0.05, store=tmp_path / f"loc{k}.sqlite") for k, p in enumerate(pubs)]
    fan = Fanout([s.pub_endpoint for s in svcs], "tcp://127.0.0.1:0", ctx).start()
    subs = []
    for k in range(5):                              # five consoles / hubs on the proxy
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, KIND_EVENT if k < 4 else b"cap")
        sub.connect(fan.endpoint)
        subs.append(sub)
    time.sleep(0.5)                                 # subscriptions propagate upstream
    threads = [threading.Thread(target=s.run, kwargs={"duration_s": 20.0}, daemon=True) for s in svcs]
    for th in threads:
        th.start()
    _play(dets, [s.endpoint for s in svcs], ctx)
    time.sleep(6.0)
    for s in svcs:
        s.stop()
    for th in threads:
        th.join()
    ids = [{e.event_id for e in s.store.events()} for s in svcs]
    assert len(ids[0]) == 6 and ids[0] == ids[1], "active-active: the same events under the same ids"
    got = []
    for sub in subs:
        seen = []
        while sub.poll(200):
            topic, body = sub.recv_multipart()
            seen.append(json.loads(body)["event_id"] if topic == KIND_EVENT else topic)
        got.append(seen)
    for seen in got[:4]:
        assert set(seen) == ids[0], "every subscriber sees every event, from both locators"
        assert len(seen) >= 2 * len(ids[0])
    assert got[4] and set(got[4]) == {b"cap"}, "a cap-only subscriber gets only CAP"
    fan.stop()
    for s in svcs:
        s.close()
    for sub in subs:
        sub.close(0)
    ctx.destroy(linger=0)
