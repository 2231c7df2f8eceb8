"""``shotnet demo``: a simulated city, the whole network end to end, on real sockets.

1. Builds the default city (24 rooftop sensors over ~2 x 2 km) and its scenario (a dozen
   gunshots, one a burst of automatic fire, plus door slams, claps, firecrackers, a
   backfire and an aerial firework), and writes the scene specification to a temp folder.
2. Starts the locator (``shotnet locator run``) and one process per sensor node
   (``shotnet sensor run --scene``) on loopback. Each node renders its own microphone
   track, then all play in real time from a common start instant.
3. Subscribes to the locator's alert feed and prints each alert as it arrives.
4. Prints a closing table: every true emission against what the network made of it
   (error, sensors, latency, whether it was alerted), plus anything alerted that was not
   there. Gunshot alerts are what a dispatcher would get; other located impulses are shown
   as notices and never alerted.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from shotnet.sensor.contract import KIND_EVENT, NS_PER_S, event_from_dict
from shotnet.sensor.scene import default_scene, save_scene_spec, scene_with_start, truth_records


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _line(ev, recv_ns) -> str:
    e = ev.ellipse95_m
    tag = ("ALERT " if ev.version == 1 else "UPDATE") if ev.label == "gunshot" else "notice"
    return (f"  {tag} {ev.label:9s} {ev.lat:.5f},{ev.lon:.5f} +/-{e.major:5.1f}x{e.minor:4.1f} m  "
            f"{len(ev.sensor_ids):2d} sensors  rms {ev.residual_rms_ms:5.2f} ms  conf {ev.confidence:.2f}  "
            f"{(recv_ns - ev.t_ns) / 1e9:4.1f} s after the shot  [{ev.event_id[:8]} v{ev.version}]")


def match(truth: list[dict], events: dict, first_seen: dict, max_dt_s=0.05, max_dist_m=60.0):
    """Pair true emissions with final event versions (each event serves one emission)."""
    rows = []
    taken = set()
    for tr in sorted(truth, key=lambda r: r["t_ns"]):
        best, best_d = None, None
        for eid, ev in events.items():
            if eid in taken or abs(ev.t_ns - tr["t_ns"]) > max_dt_s * NS_PER_S:
                continue
            d = float(np.hypot(ev.x_m - tr["e_m"], ev.y_m - tr["n_m"]))
            if d <= max_dist_m and (best_d is None or d < best_d):
                best, best_d = eid, d
        if best is not None:
            taken.add(best)
        rows.append((tr, events.get(best), best_d, first_seen.get(best)))
    ghosts = [ev for eid, ev in events.items() if eid not in taken]
    return rows, ghosts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet demo", description="Simulated city, end to end.")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--duration-s", type=float, default=36.0)
    ap.add_argument("--keep", default=None, help="keep the run's files in this folder")
    ap.add_argument("--model", default=None, help="classifier for the nodes (ONNX path or 'heuristic')")
    args = ap.parse_args(argv)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="shotnet-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    nominal = 1_700_000_000 * NS_PER_S
    scene = default_scene(nominal, seed=args.seed, duration_s=args.duration_s)
    save_scene_spec(scene, work / "scene")
    n_gun = sum(1 for s in scene.sources if s.kind in ("handgun", "rifle", "shotgun", "suppressed", "burst"))
    print(f"shotnet demo: {len(scene.layout)} sensors over "
          f"{np.ptp(scene.layout.enu_m[:, 0]) / 1000:.1f} x {np.ptp(scene.layout.enu_m[:, 1]) / 1000:.1f} km, "
          f"{len(scene.sources)} sources ({n_gun} gunfire incl. a {max(s.rounds for s in scene.sources)}-round burst), "
          f"{scene.temperature_c:.0f} C, wind {scene.wind_m_per_s} m/s (unknown to the locator)")

    bind, pub = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    py = sys.executable
    loc = subprocess.Popen([py, "-m", "shotnet", "locator", "run", "--sensors", str(work / "scene/sensors.geojson"),
                            "--bind", bind, "--pub", pub, "--events", str(work / "events.jsonl"),
                            "--store", str(work / "locator.sqlite"),
                            "--temperature-c", str(scene.temperature_c), "--quiet"],
                           stdout=subprocess.PIPE, stderr=open(work / "locator.log", "w"), text=True, env=env)
    ready = loc.stdout.readline()
    if not ready.startswith("{"):
        print("locator failed to start; see", work / "locator.log", file=sys.stderr)
        return 1
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, KIND_EVENT)
    sub.connect(pub)

    t_boot = time.monotonic()
    print(f"starting the locator and {len(scene.layout)} sensor node processes on loopback ...", flush=True)
    nodes = []
    model_args = ["--model", args.model] if args.model else []
    for sid in scene.layout.ids:
        nodes.append(subprocess.Popen(
            [py, "-m", "shotnet", "sensor", "run", "--scene", str(work / "scene"), "--sensor-id", sid,
             "--connect", bind, "--wait-start", *model_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(work / f"node-{sid}.log", "w"),
            text=True, env=env))
    for p in nodes:
        line = p.stdout.readline().strip()
        if line != "READY":
            print(f"a node failed to start ({line!r}); see {work}", file=sys.stderr)
            for q in nodes + [loc]:
                q.kill()
            return 1
    start_ns = time.time_ns() + NS_PER_S
    for p in nodes:
        p.stdin.write(f"START {start_ns}\n")
        p.stdin.flush()
    scene = scene_with_start(scene, start_ns)
    truth = truth_records(scene)
    print(f"nodes ready in {time.monotonic() - t_boot:.1f} s; playing {args.duration_s:.0f} s of city sound "
          f"in real time\n", flush=True)

    events, first_seen = {}, {}
    end_ns = start_ns + int((args.duration_s + 1.5) * NS_PER_S)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while time.time_ns() < end_ns:
        if dict(poller.poll(200)).get(sub):
            _, body = sub.recv_multipart()
            ev = event_from_dict(json.loads(body))
            now = time.time_ns()
            first_seen.setdefault(ev.event_id, now)
            events[ev.event_id] = ev
            if ev.version == 1:
                print(_line(ev, now), flush=True)
    for p in nodes:
        p.wait(timeout=30)
    loc.terminate()
    loc.wait(timeout=30)
    # Final versions from the locator's log (includes versions published after we stopped).
    for line in (work / "events.jsonl").read_text().splitlines():
        ev = event_from_dict(json.loads(line))
        events[ev.event_id] = ev
    sub.close(0)

    rows, ghosts = match(truth, events, first_seen)
    print("\n" + "=" * 108)
    print(f"{'t (s)':>6}  {'true source':16s} {'rnd':>3} {'E (m)':>7} {'N (m)':>7}  {'error m':>7} "
          f"{'ellipse95 m':>11} {'sensors':>7} {'latency s':>9}  outcome")
    print("-" * 108)
    gun_err, gun_found, gun_total, false_alerts = [], 0, 0, []
    for tr, ev, d, seen in rows:
        t_rel = (tr["t_ns"] - start_ns) / NS_PER_S
        gun = tr["gunshot"]
        gun_total += gun
        if ev is None:
            outcome = "MISSED" if gun else "not located (no alert)"
            print(f"{t_rel:6.2f}  {tr['kind']:16s} {tr['round'] + 1:3d} {tr['e_m']:7.0f} {tr['n_m']:7.0f}  "
                  f"{'-':>7} {'-':>11} {'-':>7} {'-':>9}  {outcome}")
            continue
        alerted = ev.label == "gunshot"
        if gun:
            gun_found += 1
            gun_err.append(d)
            outcome = "alerted" if alerted else f"located, labelled {ev.label} (NOT alerted)"
        else:
            outcome = "FALSE ALERT (classified gunshot)" if alerted else f"located, labelled {ev.label}, no alert"
            if alerted:
                false_alerts.append(tr["kind"])
        lat = (seen - tr["t_ns"]) / NS_PER_S if seen else float("nan")
        print(f"{t_rel:6.2f}  {tr['kind']:16s} {tr['round'] + 1:3d} {tr['e_m']:7.0f} {tr['n_m']:7.0f}  "
              f"{d:7.2f} {ev.ellipse95_m.major:5.1f}x{ev.ellipse95_m.minor:<5.1f} {len(ev.sensor_ids):7d} "
              f"{lat:9.2f}  {outcome}")
    print("-" * 108)
    ghost_alerts = [g for g in ghosts if g.label == "gunshot"]
    for g in ghosts:
        print(f"{(g.t_ns - start_ns) / NS_PER_S:6.2f}  {'(nothing there)':16s}     {g.x_m:7.0f} {g.y_m:7.0f}  "
              f"{'-':>7} {g.ellipse95_m.major:5.1f}x{g.ellipse95_m.minor:<5.1f} {len(g.sensor_ids):7d} {'':9s}  "
              + ("GHOST ALERT" if g.label == "gunshot" else f"ghost event, labelled {g.label}, no alert"))
    print("=" * 108)
    med = float(np.median(gun_err)) if gun_err else float("nan")
    p95 = float(np.percentile(gun_err, 95)) if gun_err else float("nan")
    lats = [(first_seen[ev.event_id] - tr["t_ns"]) / NS_PER_S for tr, ev, d, s in rows
            if ev is not None and tr["gunshot"] and ev.event_id in first_seen]
    print(f"gunshot rounds located: {gun_found}/{gun_total}; horizontal error median {med:.2f} m, "
          f"p95 {p95:.2f} m, max {max(gun_err) if gun_err else float('nan'):.2f} m")
    if lats:
        print(f"latency shot -> first alert: median {np.median(lats):.2f} s, max {max(lats):.2f} s")
    print(f"non-gunshot impulses alerted as gunshots: {len(false_alerts)}"
          + (f" ({', '.join(false_alerts)})" if false_alerts else "")
          + f"; ghost alerts: {len(ghost_alerts)}")
    node_stats = []
    for sid in scene.layout.ids:
        try:
            node_stats.append(json.loads((work / f"node-{sid}.log").read_text().strip().splitlines()[-1]))
        except (ValueError, IndexError, OSError):
            pass
    if node_stats:
        n_det = sum(n["stats"]["detections"] for n in node_stats)
        unacked = sum(n["unacked"] for n in node_stats)
        print(f"nodes: {n_det} detections sent, {unacked} unacknowledged; classifier on the nodes: "
              f"{node_stats[0]['model']} ({node_stats[0]['model_sha256']})")
    print(f"files of this run: {work}")
    return 0

