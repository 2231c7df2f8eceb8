"""``shotnet locate``: batch location of a JSON Lines file of detections, through the same
association and solver code as the service (time is replayed from the detections)."""

from __future__ import annotations

import argparse
import sys

from shotnet.sensor.contract import ContractError, detection_from_json
from shotnet.sensor.layout import load_layout

from .associate import AssocConfig, locate_stream


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet locate", description="Locate shots in a detections file.")
    ap.add_argument("--sensors", required=True, help="sensor layout (GeoJSON FeatureCollection)")
    ap.add_argument("--temperature-c", type=float, default=20.0, help="air temperature (deg C)")
    ap.add_argument("--temperature-sigma-c", type=float, default=AssocConfig.temperature_sigma_c,
                    help="its 1-sigma error (deg C) until shots heard by many sensors measure the speed of sound; "
                         "0: exact, not learned")
    ap.add_argument("--min-sensors", type=int, default=AssocConfig.min_sensors)
    ap.add_argument("--no-wind", action="store_true", help="do not estimate the wind")
    ap.add_argument("--survey-sigma-m", type=float, default=AssocConfig.survey_sigma_m,
                    help="1-sigma error of the sensor positions (m)")
    ap.add_argument("detections", help="JSON Lines file of detections ('-' for stdin)")
    args = ap.parse_args(argv)
    try:
        layout = load_layout(args.sensors)
    except (ContractError, OSError) as exc:
        print(f"shotnet locate: {args.sensors}: {exc}", file=sys.stderr)
        return 2
    fh = sys.stdin if args.detections == "-" else open(args.detections)
    dets, bad = [], 0
    known = set(layout.ids)
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = detection_from_json(line)
                if d.sensor_id not in known:
                    raise ContractError(f"unknown sensor_id {d.sensor_id!r} (not in {args.sensors})")
                dets.append(d)
            except ContractError as exc:
                bad += 1
                print(f"{args.detections}:{n}: skipped: {exc}", file=sys.stderr)
    cfg = AssocConfig(temperature_c=args.temperature_c, temperature_sigma_c=args.temperature_sigma_c,
                      min_sensors=args.min_sensors,
                      estimate_wind=not args.no_wind, survey_sigma_m=args.survey_sigma_m)
    for ev in locate_stream(layout, dets, cfg):
        print(ev.to_json())
    if bad:
        print(f"shotnet locate: {bad} line(s) skipped", file=sys.stderr)
    return 0
