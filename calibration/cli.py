"""``shotnet calibrate plan | survey | report``: the field tech's tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet calibrate", description="Plan, survey and report on an array.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="accuracy and coverage maps; where to add sensors; density for a target")
    p.add_argument("--sensors", required=True, help="sensor sites (GeoJSON)")
    p.add_argument("--out", required=True, help="folder for accuracy.png, accuracy.geojson, plan.json")
    p.add_argument("--cell-m", type=float, default=25.0)
    p.add_argument("--margin-m", type=float, default=300.0, help="area of interest: the sites' box plus this")
    p.add_argument("--candidates", help="candidate extra sites (GeoJSON) for the greedy suggestion")
    p.add_argument("--add", type=int, default=3, help="how many sites to suggest")
    p.add_argument("--target-rms-m", type=float, help="report the sensor density that reaches this p90 error")
    p.add_argument("--hearing-m", type=float, default=1500.0)
    p.add_argument("--pick-sigma-ms", type=float, default=0.1)
    p.add_argument("--survey-sigma-m", type=float, default=0.0)
    p.add_argument("--temperature-c", type=float, default=18.0)
    s = sub.add_parser("survey", help="sensor positions and clock offsets from test shots")
    s.add_argument("--sensors", required=True, help="nominal sensor layout (GeoJSON)")
    s.add_argument("--shots", required=True, help="JSON Lines: shot_id, t_ns (+-1 s), lat, lon (omit: unknown)")
    s.add_argument("--detections", required=True, help="JSON Lines of detections (the locator's store export)")
    s.add_argument("--out", required=True)
    s.add_argument("--temperature-c", type=float, default=18.0)
    s.add_argument("--estimate-c", action="store_true", help="also fit the speed of sound")
    r = sub.add_parser("report", help="HTML report: residuals, clock and noise over time, node status, coverage")
    r.add_argument("--store", required=True, help="the locator's SQLite store")
    r.add_argument("--sensors", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--since-h", type=float, default=24.0)
    r.add_argument("--temperature-c", type=float, default=18.0)
    args = ap.parse_args(argv)

    from shotnet.sensor.contract import ContractError, detection_from_json
    from shotnet.sensor.layout import load_layout

    try:
        layout = load_layout(args.sensors)
        if args.cmd == "plan":
            from .plan import NoiseModel, write_plan

            model = NoiseModel(pick_sigma_s=args.pick_sigma_ms / 1e3, hearing_m=args.hearing_m,
                               survey_sigma_m=args.survey_sigma_m, temperature_c=args.temperature_c)
            cands = load_layout(args.candidates) if args.candidates else None
            summary = write_plan(layout, args.out, model, args.cell_m, args.margin_m, cands, args.add,
                                 args.target_rms_m)
            print(json.dumps({k: summary[k] for k in ("map", "suggested", "density") if k in summary}, indent=1))
            return 0
        if args.cmd == "survey":
            from .survey import SurveyConfig, TestShot, survey, write_calibration

            shots = []
            for n, line in enumerate(Path(args.shots).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                d = json.loads(line)
                e = nn = None
                if d.get("lat") is not None:
                    e, nn, _ = layout.frame.to_enu(d["lat"], d["lon"], d.get("alt_m", 0.0))
                    e, nn = float(e), float(nn)
                shots.append(TestShot(str(d["shot_id"]), int(d["t_ns"]), e, nn))
            dets, bad = [], 0
            for n, line in enumerate(Path(args.detections).read_text().splitlines(), 1):
                if line.strip():
                    try:
                        dets.append(detection_from_json(line))
                    except ContractError as exc:
                        bad += 1
                        print(f"{args.detections}:{n}: skipped: {exc}", file=sys.stderr)
            res = survey(layout, shots, dets, SurveyConfig(temperature_c=args.temperature_c,
                                                           estimate_c=args.estimate_c))
            write_calibration(layout, res, args.out)
            for sc in res.sensors:
                line = (f"{sc.sensor_id:8s} dE {sc.de_m:+7.2f} m  dN {sc.dn_m:+7.2f} m  (+-{sc.sigma_position_m:.2f})  "
                        f"clock {sc.clock_offset_ns / 1e6:+8.3f} ms (+-{sc.sigma_clock_ns / 1e3:.0f} us)  "
                        f"{sc.n_shots} shots  {'; '.join(sc.flags)}")
                print(line)
            print(f"c = {res.c_m_per_s:.2f} m/s; residual RMS {res.residual_rms_ms} ms; files in {args.out}")
            return 1 if any(f.startswith("SUSPECT") for sc in res.sensors for f in sc.flags) else 0
        from .report import build_report

        rep = build_report(args.store, layout, args.out, args.since_h * 3600, temperature_c=args.temperature_c)
        print(f"{Path(args.out) / 'index.html'}: {rep['events']} events; silent {rep['silent'] or 'none'}; "
              f"degraded {rep['degraded'] or 'none'}")
        return 0
    except (OSError, ValueError, ContractError, KeyError) as exc:
        print(f"shotnet calibrate {args.cmd}: {exc}", file=sys.stderr)
        return 2
