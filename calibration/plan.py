"""Plan an array: expected location accuracy and coverage, where to add sensors, density.

For every point of a grid over the area of interest: the sensors within hearing range
(``n_heard``), the Cramér–Rao bound on the horizontal position error with emission time
unknown (``rms_m``: sqrt of the trace of the 2x2 position block of the inverse Fisher
information) under the timing-noise model, and the GDOP (the same bound for a 1 m
timing error on every sensor, in metres per metre). A point needs ``min_sensors`` to be
located at all (the locator's rule); elsewhere it is *uncovered*.

Timing-noise model (1-sigma, seconds) at a sensor ``d`` metres from the shot::

    sigma(d) = sqrt((pick_sigma_s * (1 + d / pick_growth_m))**2 + clock_sigma_s**2
                    + model_sigma_s**2 + (survey_sigma_m / c)**2)

(the pick degrades with distance as the blast loses its high frequencies; the clock;
unmodelled propagation such as wind; and the sensor's survey error, 1 m being 2.9 ms). The defaults match the locator's realistic bench.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from shotnet.sensor.acoustics import speed_of_sound_m_per_s
from shotnet.sensor.layout import SensorLayout


@dataclass(frozen=True)
class NoiseModel:
    pick_sigma_s: float = 1e-4
    pick_growth_m: float = 400.0
    clock_sigma_s: float = 2e-6
    model_sigma_s: float = 3e-4
    survey_sigma_m: float = 0.0
    hearing_m: float = 1500.0
    min_sensors: int = 5
    temperature_c: float = 18.0
    source_height_m: float = 1.5

    def sigma_s(self, d_m):
        d = np.asarray(d_m, dtype=np.float64)
        c = speed_of_sound_m_per_s(self.temperature_c)
        return np.sqrt((self.pick_sigma_s * (1 + d / self.pick_growth_m)) ** 2 + self.clock_sigma_s ** 2
                       + self.model_sigma_s ** 2 + (self.survey_sigma_m / c) ** 2)


@dataclass
class AccuracyMap:
    x_m: np.ndarray          # grid east coordinates (nx,)
    y_m: np.ndarray          # grid north coordinates (ny,)
    rms_m: np.ndarray        # (ny, nx) CRB horizontal RMS, inf where uncovered
    gdop: np.ndarray         # (ny, nx)
    n_heard: np.ndarray      # (ny, nx)

    def covered(self, min_sensors: int) -> np.ndarray:
        return self.n_heard >= min_sensors

    def summary(self, min_sensors: int) -> dict:
        cov = self.covered(min_sensors)
        r = self.rms_m[cov]
        return {"points": int(cov.size), "covered_fraction": round(float(cov.mean()), 4),
                "rms_median_m": round(float(np.median(r)), 3) if r.size else None,
                "rms_p90_m": round(float(np.percentile(r, 90)), 3) if r.size else None,
                "gdop_median": round(float(np.median(self.gdop[cov])), 3) if r.size else None}


def _fisher(px, py, pz, sx, sy, sz, model: NoiseModel, c: float, unit_sigma: bool = False):
    """Fisher information (G, 3, 3) for points (px, py, pz) and sensors (sx, sy, sz), and
    the number of sensors that hear each point."""
    dx = px[:, None] - sx[None, :]
    dy = py[:, None] - sy[None, :]
    dz = pz - sz[None, :]
    d = np.sqrt(dx * dx + dy * dy + dz * dz)
    heard = d <= model.hearing_m
    d_safe = np.maximum(d, 1e-3)
    w = np.where(heard, 1.0 / (model.sigma_s(d) ** 2 if not unit_sigma else 1.0), 0.0)
    scale = 1.0 / c if not unit_sigma else 1.0
    h = np.stack([dx / d_safe * scale, dy / d_safe * scale, np.ones_like(d)], axis=-1)   # (G, S, 3)
    fim = np.einsum("gs,gsi,gsj->gij", w, h, h)
    return fim, heard.sum(axis=1)


def _rms_from_fim(fim: np.ndarray) -> np.ndarray:
    det = np.linalg.det(fim)
    ok = np.abs(det) > 1e-30 * np.maximum(1.0, np.abs(fim).max(axis=(1, 2)) ** 3)
    out = np.full(len(fim), np.inf)
    if ok.any():
        inv = np.linalg.inv(fim[ok])
        out[ok] = np.sqrt(np.maximum(inv[:, 0, 0] + inv[:, 1, 1], 0.0))
    return out


def _grid(bounds, cell_m: float):
    """Grid axes and the flattened points over ``bounds`` = (xmin, ymin, xmax, ymax), m."""
    xs = np.arange(bounds[0], bounds[2] + 1e-9, cell_m)
    ys = np.arange(bounds[1], bounds[3] + 1e-9, cell_m)
    gx, gy = np.meshgrid(xs, ys)
    return xs, ys, gx.shape, gx.ravel(), gy.ravel()


def accuracy_map(sensors_enu: np.ndarray, bounds: tuple[float, float, float, float], cell_m: float = 25.0,
                 model: NoiseModel = NoiseModel(), z_src_m: float = 0.0) -> AccuracyMap:
    """CRB and GDOP over ``bounds`` = (xmin, ymin, xmax, ymax) metres in the layout's frame."""
    c = speed_of_sound_m_per_s(model.temperature_c)
    xs, ys, shape, px, py = _grid(bounds, cell_m)
    s = np.asarray(sensors_enu, dtype=np.float64)
    rms = np.empty(len(px))
    gdop = np.empty(len(px))
    n = np.empty(len(px), dtype=np.int64)
    for a in range(0, len(px), 4096):      # chunks bound the memory: G x S x 3
        sl = slice(a, a + 4096)
        fim, nh = _fisher(px[sl], py[sl], z_src_m, s[:, 0], s[:, 1], s[:, 2], model, c)
        rms[sl] = _rms_from_fim(fim)
        fim1, _ = _fisher(px[sl], py[sl], z_src_m, s[:, 0], s[:, 1], s[:, 2], model, c, unit_sigma=True)
        gdop[sl] = _rms_from_fim(fim1)
        n[sl] = nh
    rms[n < model.min_sensors] = np.inf
    gdop[n < model.min_sensors] = np.inf
    return AccuracyMap(xs, ys, rms.reshape(shape), gdop.reshape(shape), n.reshape(shape))


def layout_bounds(layout: SensorLayout, margin_m: float = 300.0) -> tuple[float, float, float, float]:
    e, n = layout.enu_m[:, 0], layout.enu_m[:, 1]
    return (float(e.min() - margin_m), float(n.min() - margin_m), float(e.max() + margin_m), float(n.max() + margin_m))


def _objective(rms: np.ndarray, cap_m: float) -> float:
    """Mean predicted error over the area, an uncovered point counting as ``cap_m``."""
    return float(np.mean(np.minimum(rms, cap_m)))


def suggest_sites(sensors_enu: np.ndarray, candidates_enu: np.ndarray, bounds, k: int = 3, cell_m: float = 50.0,
                  model: NoiseModel = NoiseModel(), cap_m: float = 50.0, z_src_m: float = 0.0,
                  progress: bool = True) -> list[dict]:
    """Greedy: add, one at a time, the candidate site that lowers the area's mean
    predicted error most (an uncovered point counts as ``cap_m``). Returns one dict per
    pick: candidate index, objective before and after."""
    from tqdm import tqdm

    c = speed_of_sound_m_per_s(model.temperature_c)
    _, _, _, px, py = _grid(bounds, cell_m)
    s = np.asarray(sensors_enu, dtype=np.float64)
    fim, n = _fisher(px, py, z_src_m, s[:, 0], s[:, 1], s[:, 2], model, c)
    cand = np.asarray(candidates_enu, dtype=np.float64)
    # Each candidate's own contribution, computed once.
    contrib = []
    for j in range(len(cand)):
        f, h = _fisher(px, py, z_src_m, cand[j:j + 1, 0], cand[j:j + 1, 1], cand[j:j + 1, 2], model, c)
        contrib.append((f, h))
    picks, left = [], set(range(len(cand)))
    for _ in tqdm(range(min(k, len(cand))), desc="greedy sites", disable=not progress):
        rms = _rms_from_fim(fim)
        rms[n < model.min_sensors] = np.inf
        before = _objective(rms, cap_m)
        best = None
        for j in left:
            f, h = contrib[j]
            r = _rms_from_fim(fim + f)
            r[(n + h) < model.min_sensors] = np.inf
            val = _objective(r, cap_m)
            if best is None or val < best[1]:
                best = (j, val)
        j, after = best
        picks.append({"candidate": int(j), "e_m": float(cand[j, 0]), "n_m": float(cand[j, 1]),
                      "objective_before_m": round(before, 3), "objective_after_m": round(after, 3)})
        fim = fim + contrib[j][0]
        n = n + contrib[j][1]
        left.discard(j)
    return picks


def density_for(target_rms_m: float, bounds, model: NoiseModel = NoiseModel(),
                spacings_m=(150, 200, 250, 300, 400, 500, 600, 800, 1000), cell_m: float = 50.0,
                progress: bool = True) -> list[dict]:
    """For square grids of sensors at each spacing over the area: the median and p90
    predicted error over the area (inset by one spacing from the edge) and the covered
    fraction; the widest spacing whose p90 meets the target is marked."""
    from tqdm import tqdm

    rows = []
    for sp in tqdm(spacings_m, desc="density", disable=not progress):
        xs = np.arange(bounds[0], bounds[2] + 1e-9, sp)
        ys = np.arange(bounds[1], bounds[3] + 1e-9, sp)
        gx, gy = np.meshgrid(xs, ys)
        sens = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, 8.0)])
        inner = (bounds[0] + sp, bounds[1] + sp, bounds[2] - sp, bounds[3] - sp)
        if inner[0] >= inner[2] or inner[1] >= inner[3]:
            continue
        m = accuracy_map(sens, inner, cell_m, model)
        cov = m.covered(model.min_sensors)
        r = m.rms_m[cov]
        rows.append({"spacing_m": sp, "sensors_per_km2": round(1e6 / sp ** 2, 2),
                     "covered_fraction": round(float(cov.mean()), 3),
                     "rms_median_m": round(float(np.median(r)), 3) if r.size else None,
                     "rms_p90_m": round(float(np.percentile(r, 90)), 3) if r.size else None})
    ok = [r for r in rows if r["rms_p90_m"] is not None and r["rms_p90_m"] <= target_rms_m
          and r["covered_fraction"] >= 0.99]
    widest = max(ok, key=lambda r: r["spacing_m"]) if ok else None
    for r in rows:
        r["meets_target"] = r is widest
    return rows


def map_geojson(m: AccuracyMap, layout: SensorLayout, min_sensors: int) -> dict:
    gx, gy = np.meshgrid(m.x_m, m.y_m)
    lat, lon, _ = layout.frame.to_geodetic(gx.ravel(), gy.ravel(), np.zeros(gx.size))
    feats = []
    for k in range(gx.size):
        i, j = np.unravel_index(k, gx.shape)
        r = m.rms_m[i, j]
        feats.append({"type": "Feature", "geometry": {"type": "Point",
                                                      "coordinates": [round(float(lon[k]), 7), round(float(lat[k]), 7)]},
                      "properties": {"rms_m": None if not np.isfinite(r) else round(float(r), 3),
                                     "gdop": None if not np.isfinite(m.gdop[i, j]) else round(float(m.gdop[i, j]), 3),
                                     "n_heard": int(m.n_heard[i, j]),
                                     "covered": bool(m.n_heard[i, j] >= min_sensors)}})
    return {"type": "FeatureCollection", "features": feats}


def plot_map(m: AccuracyMap, sensors_enu: np.ndarray, path, title: str = "", suggested: list[dict] = (),
             min_sensors: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    ext = (m.x_m[0], m.x_m[-1], m.y_m[0], m.y_m[-1])
    r = np.where(np.isfinite(m.rms_m), m.rms_m, np.nan)
    finite = r[np.isfinite(r)]
    vmin, vmax = (max(float(finite.min()), 0.01), float(finite.max())) if finite.size else (0.1, 10)
    im = axes[0].imshow(r, origin="lower", extent=ext, cmap="viridis_r", norm=LogNorm(vmin, max(vmax, vmin * 1.01)))
    axes[0].contour(m.x_m, m.y_m, r, levels=[0.5, 1, 2, 5, 10], colors="w", linewidths=0.6)
    fig.colorbar(im, ax=axes[0], label="predicted horizontal error, CRB RMS (m)")
    axes[0].set_title("expected location accuracy (grey: fewer than %d sensors)" % min_sensors)
    axes[0].set_facecolor("0.8")
    im2 = axes[1].imshow(m.n_heard, origin="lower", extent=ext, cmap="magma")
    fig.colorbar(im2, ax=axes[1], label="sensors that hear a shot")
    axes[1].set_title("coverage")
    for ax in axes:
        ax.plot(sensors_enu[:, 0], sensors_enu[:, 1], "^", color="red", ms=6, mec="k", label="sensors")
        for s in suggested:
            ax.plot(s["e_m"], s["n_m"], "*", color="cyan", ms=14, mec="k")
        ax.set_xlabel("east (m)")
        ax.set_ylabel("north (m)")
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_plan(layout: SensorLayout, out_dir, model: NoiseModel = NoiseModel(), cell_m: float = 25.0,
               margin_m: float = 300.0, candidates: SensorLayout | None = None, k: int = 3,
               target_rms_m: float | None = None, progress: bool = True) -> dict:
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bounds = layout_bounds(layout, margin_m)
    z = layout.ground_enu_up_m + model.source_height_m
    m = accuracy_map(layout.enu_m, bounds, cell_m, model, z)
    summary = {"sensors": len(layout), "bounds_m": bounds, "cell_m": cell_m, "model": model.__dict__,
               "map": m.summary(model.min_sensors)}
    picks = []
    if candidates is not None:
        cand = np.column_stack([*layout.frame.to_enu(candidates.lat_deg, candidates.lon_deg, candidates.alt_m)])
        picks = suggest_sites(layout.enu_m, cand, bounds, k, max(cell_m, 50.0), model, z_src_m=z, progress=progress)
        for p in picks:
            p["id"] = candidates.ids[p["candidate"]]
        summary["suggested"] = picks
    if target_rms_m is not None:
        summary["density"] = density_for(target_rms_m, bounds, model, progress=progress)
    plot_map(m, layout.enu_m, out / "accuracy.png", f"{len(layout)} sensors: median predicted error "
             f"{summary['map']['rms_median_m']} m, covered {100 * summary['map']['covered_fraction']:.0f}%",
             picks, model.min_sensors)
    (out / "accuracy.geojson").write_text(json.dumps(map_geojson(m, layout, model.min_sensors)))
    (out / "plan.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary
