"""Fireworks night under load: hundreds of simulated nodes against a running locator.

    .venv/bin/python bench/bench_load.py [--nodes 196] [--rate 4] [--duration-s 60] [--gunshots 12]
                                         [--figure docs/figures/load.png]

A grid of ``--nodes`` sensors over a city (300 m apart) hears a fireworks-night stream:
``--rate`` impulses per second anywhere in the city (90% fireworks), false single-sensor
detections, and ``--gunshots`` real gunshots hidden in it. Every node is a real DEALER
socket with its own spool; the locator is ``shotnet locator run`` in its own process
(real ROUTER, real SQLite store). The stream is played in real time. Reported: the
detection rate, the acknowledgement backlog over time (does it grow?), the association's
search lag over time (does the search keep up? from the locator's metrics endpoint: how
long past its planned search the oldest unsearched detection is), the detections pending
association (held by design until sound has crossed the city, so they grow with the
rate up to a plateau), the locator's resident memory over time (its association
process's included: does it stay bounded?), and how many hidden gunshots were located,
and where. ``--figure`` draws the search lag, the detections awaiting association and the
memory over time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shotnet.locator.synthetic import grid_layout


# The search keeps up when no seed waits past its planned search by more than a few
# steps' budgets (the service's step searches for at most 1 s; seeds ripen meanwhile).
# Falling behind shows as a lag that grows for as long as the night lasts.
KEEPS_UP_LAG_S = 3.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(port: int) -> tuple[float, float]:
    """From the locator's metrics endpoint: the detections pending association (held by
    design until sound has crossed the city, so it grows with the rate) and the search
    lag (s: how long past its planned search the oldest unsearched detection is; 0 when
    the association keeps up)."""
    import urllib.request

    got = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5) as r:
            for line in r.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in ("shotnet_locator_pending_detections", "shotnet_locator_search_lag_seconds"):
                    got[name] = float(value)
    except OSError:
        pass
    return (got.get("shotnet_locator_pending_detections", float("nan")),
            got.get("shotnet_locator_search_lag_seconds", float("nan")))


def _rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and its descendants (the locator's association
    process)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except OSError:
            continue
    return total if total else float("nan")


def run_load(nodes: int, rate: float, duration_s: float, gunshots: int, seed: int = 7, workdir: str | None = None,
             verbose: bool = True) -> dict:
    import zmq

    from shotnet.locator.store import Store
    from shotnet.locator.synthetic import StreamConfig, make_stream
    from shotnet.sensor.contract import NS_PER_S
    from shotnet.sensor.layout import save_layout
    from shotnet.sensor.transport import DetectionSender

    work = Path(workdir or tempfile.mkdtemp(prefix="shotnet-load-"))
    lay = grid_layout(nodes)
    save_layout(lay, work / "sensors.geojson")
    ext = float(np.abs(lay.enu_m[:, :2]).max())
    n_imp = int(rate * duration_s)
    cfg = StreamConfig(lookalike_fraction=1.0, false_per_sensor_per_s=0.05, hearing_m=1200.0)
    dets, truth, _ = make_stream(lay, n_imp, duration_s, cfg, seed=seed, extent_m=ext)
    # The hidden gunshots: a second stream of real rounds, merged (seq renumbered per node).
    gcfg = dataclasses.replace(cfg, lookalike_fraction=0.0, false_per_sensor_per_s=0.0)
    gdets, gtruth, _ = make_stream(lay, gunshots, duration_s - 5.0, gcfg, seed=seed + 1, extent_m=ext * 0.8)
    allr = sorted(dets + gdets, key=lambda d: d.t_ns)
    seq: dict[str, int] = {}
    stream = []
    for d in allr:
        stream.append(dataclasses.replace(d, seq=seq.setdefault(d.sensor_id, 0)))
        seq[d.sensor_id] += 1
    bind, pub, metrics = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}", _port()
    t_start = time.time_ns() + 3 * NS_PER_S
    shift = t_start - stream[0].t_ns
    stream = [dataclasses.replace(d, t_ns=d.t_ns + shift) for d in stream]
    gtruth = [dataclasses.replace(g, t_ns=g.t_ns + shift) for g in gtruth]
    loc = subprocess.Popen([sys.executable, "-m", "shotnet", "locator", "run", "--sensors",
                            str(work / "sensors.geojson"), "--bind", bind, "--pub", pub, "--store",
                            str(work / "loc.sqlite"), "--temperature-c", "18", "--metrics-port", str(metrics),
                            "--quiet"],
                           stdout=subprocess.PIPE, stderr=open(work / "locator.log", "w"), text=True)
    assert loc.stdout.readline().startswith("{")
    ctx = zmq.Context()
    senders = {sid: DetectionSender(bind, sid, ctx=ctx, resend_s=2.0) for sid in lay.ids}
    # The nodes share this machine with the locator under test (in the field each is its
    # own board): a node is looked at when its acknowledgements arrive, and every node
    # four times a second for what is due again (resends after 2 s). Looking at all 196
    # every 2 ms took half a core here, from the locator.
    poller = zmq.Poller()
    by_sock = {}
    for s in senders.values():
        poller.register(s.sock, zmq.POLLIN)
        by_sock[s.sock] = s
    try:
        samples = []
        next_sample = time.monotonic()
        next_due = time.monotonic()
        k = 0
        latency_ns = int(0.2 * NS_PER_S)
        while k < len(stream):
            now = time.time_ns()
            while k < len(stream) and stream[k].t_ns + latency_ns <= now:
                senders[stream[k].sensor_id].send(stream[k])
                k += 1
            for sock, _ in poller.poll(0):
                by_sock[sock].poll(0)
            if time.monotonic() >= next_due:
                for s in senders.values():
                    s.poll(0)
                next_due += 0.25
            if time.monotonic() >= next_sample:
                backlog = sum(s.depth for s in senders.values())
                samples.append(((now - t_start) / NS_PER_S, backlog, _rss_mb(loc.pid), *_metrics(metrics)))
                next_sample += 1.0
                if verbose:
                    print(f"  t={samples[-1][0]:5.1f} s  sent {k:6d}  unacknowledged {backlog:5d}  "
                          f"awaiting association {samples[-1][3]:6.0f}  search lag {samples[-1][4]:5.1f} s  "
                          f"locator RSS {samples[-1][2]:.0f} MB", flush=True)
            time.sleep(0.002)
        end = time.monotonic() + 15.0
        while time.monotonic() < end and sum(s.depth for s in senders.values()):
            for s in senders.values():
                s.poll(5)
        left = sum(s.depth for s in senders.values())
        time.sleep(8.0)                          # sound crosses the city; the last shots settle
        loc.send_signal(signal.SIGTERM)
        try:
            loc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            loc.send_signal(signal.SIGUSR1)      # the locator dumps every thread's stack to its log
            time.sleep(1.0)
            loc.kill()
            loc.wait()
            log_tail = (work / "locator.log").read_text()[-6000:]
            raise RuntimeError(f"the locator did not stop within 120 s of SIGTERM; its log ends:\n{log_tail}") from None
    finally:
        # Sockets closed and the context destroyed even when this run fails: a context
        # left to the garbage collector blocks in term() (and hangs whatever runs next).
        for s in senders.values():
            s.close()
        ctx.destroy(linger=0)
        if loc.poll() is None:
            loc.kill()
            loc.wait()
    st = Store(work / "loc.sqlite")
    stored = st.count_detections()
    events = st.events()
    st.close()
    found, errs = 0, []
    for g in gtruth:
        best = None
        for ev in events:
            if ev.label != "gunshot" or abs(ev.t_ns - g.t_ns) > 0.05 * NS_PER_S:
                continue
            e, n, _ = lay.frame.to_enu(ev.lat, ev.lon, ev.alt_m)
            d = float(np.hypot(e - g.e_m, n - g.n_m))
            best = d if best is None or d < best else best
        if best is not None and best < 50:
            found += 1
            errs.append(best)
    half = len(samples) // 2
    return {"nodes": nodes, "detections": len(stream), "duration_s": duration_s,
            "rate_det_per_s": len(stream) / duration_s, "stored": stored, "unacked_after_drain": left,
            "backlog_max": max(b for _, b, *_ in samples), "backlog_last": samples[-1][1],
            "backlog_first_half_max": max((b for _, b, *_ in samples[:half]), default=0),
            "backlog_second_half_max": max((b for _, b, *_ in samples[half:]), default=0),
            "pending_first_half_max": float(np.nanmax([x[3] for x in samples[:half]] or [np.nan])),
            "pending_second_half_max": float(np.nanmax([x[3] for x in samples[half:]] or [np.nan])),
            "lag_first_half_max_s": float(np.nanmax([x[4] for x in samples[:half]] or [np.nan])),
            "lag_second_half_max_s": float(np.nanmax([x[4] for x in samples[half:]] or [np.nan])),
            "lag_last_s": samples[-1][4],
            "rss_first_mb": samples[min(3, len(samples) - 1)][2], "rss_max_mb": max(x[2] for x in samples),
            "gunshots": len(gtruth), "gunshots_located": found,
            "gunshot_error_median_m": float(np.median(errs)) if errs else None,
            "events": len(events), "workdir": str(work),
            "series": {"t_s": [x[0] for x in samples], "unacknowledged": [x[1] for x in samples],
                       "rss_mb": [x[2] for x in samples], "awaiting": [x[3] for x in samples],
                       "lag_s": [x[4] for x in samples]}}


def plot(r: dict, path: str) -> None:
    """The run over time: the search lag (with the bound the bench calls keeping up), the
    detections awaiting association (with the cap beyond which the oldest expire), the
    locator's memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shotnet.locator.associate import AssocConfig

    ser = r["series"]
    fig, ax = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    ax[0].plot(ser["t_s"], ser["lag_s"], color="tab:red")
    ax[0].axhline(KEEPS_UP_LAG_S, color="grey", ls="--", lw=0.8, label="keeps up below")
    ax[0].legend(loc="upper left", fontsize=8)
    ax[0].set_ylabel("search lag (s)")
    ax[1].plot(ser["t_s"], ser["awaiting"], color="tab:blue")
    ax[1].axhline(AssocConfig().max_pending, color="grey", ls="--", lw=0.8,
                  label="max_pending (the oldest beyond expire, counted)")
    ax[1].legend(loc="upper left", fontsize=8)
    ax[1].set_ylabel("awaiting association")
    ax[2].plot(ser["t_s"], ser["rss_mb"], color="tab:green")
    ax[2].set_ylabel("locator RSS (MB)")
    ax[2].set_xlabel("time (s)")
    fig.suptitle(f"{r['nodes']} nodes, {r['rate_det_per_s']:,.0f} detections/s over real sockets: "
                 f"hidden gunshots located {r['gunshots_located']}/{r['gunshots']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=196)
    ap.add_argument("--rate", type=float, default=4.0, help="impulses per second over the city")
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--gunshots", type=int, default=12)
    ap.add_argument("--figure", help="draw the run over time to this PNG")
    args = ap.parse_args(argv)
    r = run_load(args.nodes, args.rate, args.duration_s, args.gunshots)
    if args.figure:
        plot(r, args.figure)
    print(json.dumps({k: v for k, v in r.items() if k != "series"}, indent=1))
    print(f"{r['nodes']} nodes, {r['rate_det_per_s']:.0f} detections/s for {r['duration_s']:.0f} s: "
          f"{r['stored']}/{r['detections']} stored, {r['unacked_after_drain']} unacknowledged after the drain; "
          f"backlog max {r['backlog_first_half_max']} (first half) vs {r['backlog_second_half_max']} (second half); "
          f"awaiting association max {r['pending_first_half_max']:.0f} vs {r['pending_second_half_max']:.0f}; "
          f"search lag max {r['lag_first_half_max_s']:.1f} s vs {r['lag_second_half_max_s']:.1f} s "
          f"({'keeps up' if r['lag_second_half_max_s'] <= KEEPS_UP_LAG_S else 'falls behind'}); "
          f"locator RSS {r['rss_first_mb']:.0f} -> {r['rss_max_mb']:.0f} MB; hidden gunshots located "
          f"{r['gunshots_located']}/{r['gunshots']}" + (f" (median error {r['gunshot_error_median_m']:.2f} m)"
                                                        if r['gunshot_error_median_m'] is not None else ""))
    try:
        sys.path.insert(0, os.path.dirname(__file__))
        from _record import record

        record(f"fireworks night under load: {r['nodes']} nodes over real sockets, {r['rate_det_per_s']:.0f} "
               f"detections/s for {r['duration_s']:.0f} s", f"{r['stored']}/{r['detections']} stored, "
               f"unacknowledged backlog max {r['backlog_max']}, awaiting association max "
               f"{r['pending_first_half_max']:.0f} / {r['pending_second_half_max']:.0f} and search lag max "
               f"{r['lag_first_half_max_s']:.1f} / {r['lag_second_half_max_s']:.1f} s (first / second half), "
               f"locator RSS {r['rss_first_mb']:.0f}->{r['rss_max_mb']:.0f} MB, hidden gunshots located {r['gunshots_located']}/{r['gunshots']}")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
