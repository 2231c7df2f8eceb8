"""``shotnet simulate OUT``: write a simulated scene to disk so anyone can reuse it.

OUT gets ``sensors.geojson``, ``scene.json`` (the full specification: sources, weather,
clock offsets, seed), one float32 WAV per sensor, ``truth.jsonl`` (one line per emitted
round, with true and sensor-clock arrival times) and, with ``--detect``,
``detections.jsonl`` from running every track through the node's pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from shotnet.sensor.contract import NS_PER_S, detection_to_json
from shotnet.sensor.layout import load_layout
from shotnet.sensor.scene import default_scene, render_sensor, write_scene


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet simulate", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--duration-s", type=float, default=40.0)
    ap.add_argument("--start-ns", type=int, default=None, help="scene start (default: now, whole second)")
    ap.add_argument("--sensors", default=None, help="use this sensor layout instead of the default city")
    ap.add_argument("--temperature-c", type=float, default=None)
    ap.add_argument("--wind", type=float, nargs=2, default=None, metavar=("EAST", "NORTH"), help="wind in m/s")
    ap.add_argument("--detect", action="store_true", help="also write detections.jsonl from the node pipeline")
    args = ap.parse_args(argv)
    start = args.start_ns if args.start_ns is not None else (time.time_ns() // NS_PER_S) * NS_PER_S
    layout = load_layout(args.sensors) if args.sensors else None
    scene = default_scene(start, seed=args.seed, duration_s=args.duration_s, layout=layout)
    if args.temperature_c is not None:
        scene = dataclasses.replace(scene, temperature_c=args.temperature_c)
    if args.wind is not None:
        scene = dataclasses.replace(scene, wind_m_per_s=tuple(args.wind))
    out = write_scene(scene, args.out, progress=True)
    n_det = 0
    if args.detect:
        from shotnet.sensor.classify import load_classifier
        from shotnet.sensor.node import detect_all

        clf = load_classifier()
        with open(Path(out) / "detections.jsonl", "w") as fh:
            for i, sid in enumerate(scene.layout.ids):
                for d in detect_all(render_sensor(scene, i), scene.fs_hz, sid, scene.t_start_ns, clf):
                    fh.write(detection_to_json(d) + "\n")
                    n_det += 1
    print(f"wrote {len(scene.layout)} sensors, {len(scene.sources)} sources"
          + (f", {n_det} detections" if args.detect else "") + f" to {out}")
    print(f"temperature {scene.temperature_c} C; try: shotnet locate --sensors {out}/sensors.geojson "
          f"--temperature-c {scene.temperature_c} {out}/detections.jsonl")
    return 0
