"""``shotnet sensor run``: one sensor node as a process.

Sources: ``--scene DIR --sensor-id ID`` (a simulated scene's track, rendered in memory),
``--wav FILE --t0-ns T`` (a recording whose first sample was taken at ``T``), or ``--mic``
(live capture). With ``--wait-start`` the node renders its track, prints ``READY`` and
waits for a line ``START <t_ns>`` on stdin, then plays the track paced to real time from
that instant (this is how the demo starts two dozen nodes together).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time

from .classify import load_classifier
from .clock import ClockQuality, LinearSampleClock
from .node import NodeConfig, NodeCore, run_node
from .transport import DetectionSender

log = logging.getLogger(__name__)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet sensor run", description="Run one sensor node.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--scene", help="folder of a simulated scene (scene.json + sensors.geojson)")
    src.add_argument("--wav", help="a recording to play through the node")
    src.add_argument("--mic", action="store_true", help="live capture through sounddevice")
    ap.add_argument("--sensor-id", required=True)
    ap.add_argument("--connect", default="tcp://127.0.0.1:5560", help="locator ROUTER endpoint")
    ap.add_argument("--t0-ns", type=int, default=None, help="time of the first sample (--wav)")
    ap.add_argument("--fs-hz", type=int, default=48000, help="capture rate (--mic)")
    ap.add_argument("--model", default=None, help="ONNX model path, or 'heuristic'")
    ap.add_argument("--realtime", action="store_true", help="pace a scene or file to real time")
    ap.add_argument("--wait-start", action="store_true", help="print READY, wait for 'START <t_ns>' on stdin")
    args = ap.parse_args(argv)

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))

    classifier = load_classifier(args.model)
    if args.scene:
        from .scene import load_scene_spec, scene_with_start
        from .sources import SceneSource

        scene = load_scene_spec(args.scene)
        i = scene.layout.index()[args.sensor_id]
        source = SceneSource(scene, args.sensor_id, realtime=False)  # renders now
        t0 = scene.t_start_ns
        if args.wait_start:
            print("READY", flush=True)
            line = sys.stdin.readline().split()
            if len(line) != 2 or line[0] != "START":
                print(f"expected 'START <t_ns>', got {line!r}", file=sys.stderr)
                return 2
            t0 = int(line[1])
            scene = scene_with_start(scene, t0)
        if args.realtime or args.wait_start:
            source.realtime_t0_ns = t0
        quality = ClockQuality("sim", True, 1000)
        pos = (float(scene.layout.lat_deg[i]), float(scene.layout.lon_deg[i]), float(scene.layout.alt_m[i]))
    elif args.wav:
        from .sources import WavSource

        source = WavSource(args.wav)
        t0 = args.t0_ns if args.t0_ns is not None else time.time_ns()
        quality = ClockQuality("system", False, 10_000_000)
        pos = None
    else:
        from .sources import MicSource

        source = MicSource(args.fs_hz)
        t0 = time.time_ns()
        quality = ClockQuality("system", False, 10_000_000)
        pos = None
    clock = LinearSampleClock(t0, source.fs_hz, quality)
    core = NodeCore(NodeConfig(args.sensor_id, source.fs_hz, position=pos), clock, classifier)
    sender = DetectionSender(args.connect, args.sensor_id)

    def emit(det):
        sender.send(det)
        sender.poll(0)

    stats = run_node(core, source, emit, block_frames=max(256, source.fs_hz // 20),
                     should_stop=lambda: (sender.poll(0), stop["now"])[1])
    drained = sender.drain(5.0)
    sender.close()
    print(json.dumps({"sensor_id": args.sensor_id, "model": classifier.name, "model_sha256": classifier.sha256,
                      "stats": dataclasses.asdict(stats), "sent": sender.sent,
                      "acked": sender.acked, "unacked": len(sender.outbox), "drained": drained}),
          file=sys.stderr, flush=True)
    return 0
