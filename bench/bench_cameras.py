"""Cue selection time per incident with 10,000 registered cameras.

    .venv/bin/python bench/bench_cameras.py [--cameras 10000] [--incidents 2000] [--buildings 5000]

A synthetic city of 10 x 10 km: cameras at random positions (70% fixed with random
heading, 60-110 deg field of view and 40-150 m range; 30% PTZ with 150-300 m range),
every consent level; incidents at random positions with 2-15 m ellipses. Times
:meth:`CameraRegistry.select` (k-d tree candidates, field of view / pan-tilt, ellipse
coverage) per incident, without and with 5,000 building footprints for line of sight,
and in the same process a brute-force selection (the same tests on every camera, no
index) for the ratio. Target: under 10 ms per incident.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from shotnet.locator.cameras import CONSENT, Camera, CameraRegistry
from shotnet.sensor.geodesy import LocalFrame


def city(n: int, rng, frame):
    cams = []
    e = rng.uniform(-5000, 5000, n)
    nn = rng.uniform(-5000, 5000, n)
    lat, lon, _ = frame.to_geodetic(e, nn, np.zeros(n))
    for i in range(n):
        ptz = rng.random() < 0.3
        consent = CONSENT[int(rng.integers(4))]
        cams.append(Camera(f"C{i:05d}", float(lat[i]), float(lon[i]), float(rng.uniform(3, 12)),
                           "ptz" if ptz else "fixed", float(rng.uniform(0, 360)),
                           float(rng.uniform(60, 110)), float(rng.uniform(150, 300) if ptz else rng.uniform(40, 150)),
                           -170.0, 170.0, -80.0, 10.0, 20.0 if ptz else 1.0, "rtsp://x", "o", consent))
    return cams


def buildings(n: int, rng):
    from shapely.geometry import box

    out = []
    for _ in range(n):
        e, nn = rng.uniform(-5000, 5000, 2)
        w, d = rng.uniform(10, 40, 2)
        out.append((box(e, nn, e + w, nn + d), float(rng.uniform(4, 40))))
    return out


def brute_force(reg: CameraRegistry, x, y, ell):
    """The same selection with the index replaced by a scan of every camera."""
    saved = reg.tree

    class All:
        def query_ball_point(self, *_a, **_k):
            return range(len(reg.cameras))

    reg.tree = All()
    try:
        return reg.select(x, y, ell)
    finally:
        reg.tree = saved


def timeit(fn, incidents):
    t = []
    for x, y, ell in incidents:
        t0 = time.perf_counter()
        fn(x, y, ell)
        t.append(time.perf_counter() - t0)
    return np.array(t) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=10_000)
    ap.add_argument("--incidents", type=int, default=2000)
    ap.add_argument("--buildings", type=int, default=5000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(5)
    frame = LocalFrame(41.85, -87.68, 0.0)
    cams = city(args.cameras, rng, frame)
    reg = CameraRegistry(cams, frame)
    regb = CameraRegistry(cams, frame, buildings(args.buildings, rng))
    inc = [(float(rng.uniform(-4500, 4500)), float(rng.uniform(-4500, 4500)),
            (float(rng.uniform(2, 15)), float(rng.uniform(1, 5)), float(rng.uniform(0, 180))))
           for _ in range(args.incidents)]
    found = [len(reg.select(*i)) for i in inc]
    t = timeit(reg.select, inc)
    tb = timeit(regb.select, inc)
    tf = timeit(lambda x, y, e: brute_force(reg, x, y, e), inc[: max(50, args.incidents // 20)])
    print(f"{args.cameras:,} cameras over 10 x 10 km, {args.incidents} incidents "
          f"(median {np.median(found):.0f} cameras selected, max {max(found)})")
    print(f"  selection: median {np.median(t):.3f} ms, p99 {np.percentile(t, 99):.3f} ms per incident")
    print(f"  with {args.buildings:,} building footprints (line of sight): median {np.median(tb):.3f} ms, "
          f"p99 {np.percentile(tb, 99):.3f} ms")
    print(f"  brute force over every camera: median {np.median(tf):.2f} ms; k-d tree speed-up "
          f"{np.median(tf) / np.median(t):.0f}x")
    from _record import record

    record(f"camera selection per incident, {args.cameras:,} cameras",
           f"median {np.median(t):.2f} ms, p99 {np.percentile(t, 99):.2f} ms",
           f"brute force over every camera: {np.median(tf):.1f} ms", f"{np.median(tf) / np.median(t):.0f}x")
    record(f"same, with {args.buildings:,} building footprints (line of sight)",
           f"median {np.median(tb):.2f} ms, p99 {np.percentile(tb, 99):.2f} ms", "target < 10 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
