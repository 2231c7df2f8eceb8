"""Acoustic scene simulator: what each microphone of an array records.

A :class:`Scene` is a sensor layout, a list of sources (gunshots, bursts, look-alikes) with
emission times and positions, and the weather. :func:`render_sensor` synthesizes one
sensor's track (float32, full scale = ``full_scale_db_spl``) with, per source and path:

- delay at the speed of sound for the air temperature, in a uniform wind;
- spherical spreading (1/r) and ISO 9613-1 air absorption as a minimum-phase filter;
- a ground reflection (image source, reflection coefficient 0.6-0.9);
- optional facade echoes (later and weaker: they must not fool the picker);
- urban background noise at a realistic level, microphone self-noise and ADC clipping;
- the sensor's clock offset (its timestamps read ``true + offset``).

Everything is deterministic from ``Scene.seed``. :func:`write_scene` puts a scene on disk
as ``sensors.geojson`` + ``scene.json`` + one WAV per sensor + ``truth.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .acoustics import path_response, speed_of_sound_m_per_s, travel_time_s
from .contract import NS_PER_S
from .layout import SensorLayout, load_layout, save_layout
from .synth import GUN_KINDS, burst, crack, db_spl_to_pa, gunshot_params, lookalike, muzzle_blast, urban_noise

SOURCE_KINDS = GUN_KINDS + ("burst",) + (
    "firecracker", "firecracker_string", "firework_aerial", "backfire", "door_slam", "dumpster_lid",
    "clap", "hammer", "nail_gun", "balloon_pop", "dropped_object", "thunder")


def is_gun_kind(kind: str) -> bool:
    return kind in GUN_KINDS or kind == "burst"


@dataclass(frozen=True)
class Source:
    """One sound source. Position is in the layout's local ENU frame (metres);
    ``u_m`` is height in that frame (ground is near 0)."""

    source_id: str
    kind: str
    t_ns: int
    e_m: float
    n_m: float
    u_m: float
    gun: str = "rifle"      # for bursts: which weapon
    rounds: int = 1         # for bursts
    rate_hz: float = 10.0   # for bursts


@dataclass(frozen=True)
class Scene:
    layout: SensorLayout
    sources: tuple[Source, ...]
    t_start_ns: int
    duration_s: float
    fs_hz: int = 16000
    seed: int = 0
    temperature_c: float = 20.0
    humidity_pct: float = 70.0
    wind_m_per_s: tuple[float, float] = (0.0, 0.0)
    noise_db_spl: tuple[float, ...] = ()       # per sensor; default 55 dB
    clock_offset_ns: tuple[int, ...] = ()      # per sensor; default 0
    full_scale_db_spl: float = 130.0
    echoes: bool = True

    @property
    def c_m_per_s(self) -> float:
        return speed_of_sound_m_per_s(self.temperature_c)

    def noise_level(self, i: int) -> float:
        return self.noise_db_spl[i] if self.noise_db_spl else 55.0

    def clock_offset(self, i: int) -> int:
        return self.clock_offset_ns[i] if self.clock_offset_ns else 0


@dataclass(frozen=True)
class Emission:
    """One impulse emitted by a source (a burst has one per round)."""

    source_id: str
    round: int
    kind: str
    t_ns: int
    e_m: float
    n_m: float
    u_m: float


def _rng(*keys) -> np.random.Generator:
    h = hashlib.sha256(repr(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def source_waveform(scene: Scene, k: int) -> tuple[np.ndarray, list[float]]:
    """Pressure at 1 m (Pa) for source ``k`` and the offsets (s) of its emissions."""
    src = scene.sources[k]
    rng = _rng(scene.seed, "source", k)
    if src.kind == "burst":
        return burst(scene.fs_hz, rng, src.gun, src.rounds, src.rate_hz)
    if src.kind in GUN_KINDS:
        return muzzle_blast(scene.fs_hz, rng, src.kind), [0.0]
    return lookalike(scene.fs_hz, rng, src.kind), [0.0]


def emissions(scene: Scene) -> list[Emission]:
    out = []
    for k, src in enumerate(scene.sources):
        _, offs = source_waveform(scene, k)
        for r, off in enumerate(offs):
            out.append(Emission(src.source_id, r, src.kind, src.t_ns + int(round(off * NS_PER_S)),
                                src.e_m, src.n_m, src.u_m))
    return out


def _paths(scene: Scene, k: int, i: int, src_m: np.ndarray, rcv_m: np.ndarray, ground_u: float):
    """(travel time s, path length m, gain) for each path from source k to sensor i."""
    c, w = scene.c_m_per_s, scene.wind_m_per_s
    out = [(float(travel_time_s(src_m, rcv_m, c, w)), float(np.linalg.norm(rcv_m - src_m)), 1.0)]
    rng = _rng(scene.seed, "paths", k, i)
    image = src_m.copy()
    image[2] = 2.0 * ground_u - src_m[2]
    out.append((float(travel_time_s(image, rcv_m, c, w)), float(np.linalg.norm(rcv_m - image)),
                rng.uniform(0.6, 0.9)))
    if scene.echoes:
        for _ in range(rng.integers(0, 3)):
            extra_m = rng.uniform(5.0, 60.0)
            out.append((out[0][0] + extra_m / c, out[0][1] + extra_m, rng.uniform(0.15, 0.45)))
    return out


def _cracks(scene: Scene, k: int, i: int) -> list[tuple[float, np.ndarray]]:
    """Ballistic cracks heard by sensor i from source k: (lead before the blast in s,
    waveform at 1 m). A sensor hears them with probability 0.4 (in the bullet's path)."""
    src = scene.sources[k]
    gun = src.gun if src.kind == "burst" else src.kind
    if gun not in GUN_KINDS:
        return []
    _, offs = source_waveform(scene, k)
    out = []
    for r, off in enumerate(offs):
        rng = _rng(scene.seed, "crack", k, r)
        db, _, supersonic, _ = gunshot_params(rng, gun)
        if not supersonic:
            continue
        rs = _rng(scene.seed, "crack", k, r, i)
        if rs.random() < 0.4:
            # lead measured from the source's t_ns (first round at offset 0)
            out.append((rs.uniform(0.5e-3, 3e-3) - off, crack(scene.fs_hz, rs, db)))
    return out


def render_sensor(scene: Scene, i: int) -> np.ndarray:
    """Track of sensor ``i`` as float32 in [-1, 1] (1.0 = ``full_scale_db_spl`` peak).

    Sample ``j`` is stamped by the sensor's own clock at ``t_start_ns + j / fs``; that
    clock reads ``true + clock_offset``.
    """
    fs = scene.fs_hz
    n = int(round(scene.duration_s * fs))
    rng_noise = _rng(scene.seed, "noise", i)
    x = urban_noise(fs, n, rng_noise, scene.noise_level(i))
    rcv = scene.layout.enu_m[i]
    ground_u = float(scene.layout.frame.to_enu(scene.layout.lat_deg[i], scene.layout.lon_deg[i],
                                               scene.layout.ground_alt_m[i])[2])
    offset_ns = scene.clock_offset(i)
    for k, src in enumerate(scene.sources):
        wave, _ = source_waveform(scene, k)
        src_m = np.array([src.e_m, src.n_m, src.u_m])
        paths = _paths(scene, k, i, src_m, rcv, ground_u)
        t0 = min(p[0] for p in paths)
        # Position on the sensor's clock, in samples from the start of the track.
        pos = ((src.t_ns + offset_ns - scene.t_start_ns) / NS_PER_S + t0) * fs
        k0 = int(np.floor(pos))
        tail = int(0.12 * fs)
        span = len(wave) + int((max(p[0] for p in paths) - t0) * fs) + tail
        if k0 + span < 0 or k0 >= n:
            continue
        n_fft = 1 << int(np.ceil(np.log2(span + 2)))
        spec = np.fft.rfft(wave, n=n_fft)
        h = np.zeros(n_fft // 2 + 1, dtype=np.complex128)
        for t_p, r_p, g_p in paths:
            delay = (pos - k0) / fs + (t_p - t0)
            h += path_response(n_fft, fs, r_p, temperature_c=scene.temperature_c,
                               humidity_pct=scene.humidity_pct, gain=g_p, delay_s=delay)
        y = np.fft.irfft(spec * h, n=n_fft)[:span]
        a, b = max(k0, 0), min(k0 + span, n)
        x[a:b] += y[a - k0:b - k0]
        for lead_s, c_wave in _cracks(scene, k, i):
            # A supersonic bullet's N-wave reaches sensors in its path ahead of the blast;
            # it is not a sound from the muzzle, so it is an early outlier for the locator.
            cpos = pos - lead_s * fs
            c0 = int(np.floor(cpos))
            m = len(c_wave) + int(0.01 * fs)
            nf = 1 << int(np.ceil(np.log2(m + 2)))
            hc = path_response(nf, fs, paths[0][1], temperature_c=scene.temperature_c,
                               humidity_pct=scene.humidity_pct, delay_s=(cpos - c0) / fs)
            yc = np.fft.irfft(np.fft.rfft(c_wave, n=nf) * hc, n=nf)[:m]
            a, b = max(c0, 0), min(c0 + m, n)
            if b > a:
                x[a:b] += yc[a - c0:b - c0]
    x /= db_spl_to_pa(scene.full_scale_db_spl)
    x += _rng(scene.seed, "self-noise", i).standard_normal(n) * 10 ** (-95 / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def truth_records(scene: Scene) -> list[dict]:
    """Ground truth: one record per emission, with true arrival times (ns, true clock) and
    the sensor-clock arrival times (what a perfect picker would report)."""
    frame = scene.layout.frame
    out = []
    for em in emissions(scene):
        lat, lon, alt = frame.to_geodetic(em.e_m, em.n_m, em.u_m)
        src_m = np.array([em.e_m, em.n_m, em.u_m])
        tt = travel_time_s(src_m, scene.layout.enu_m, scene.c_m_per_s, scene.wind_m_per_s)
        arrivals = {sid: em.t_ns + int(round(float(tt[i]) * NS_PER_S)) for i, sid in enumerate(scene.layout.ids)}
        out.append({
            "source_id": em.source_id, "round": em.round, "kind": em.kind, "gunshot": is_gun_kind(em.kind),
            "t_ns": em.t_ns, "lat": float(lat), "lon": float(lon), "alt_m": float(alt),
            "e_m": em.e_m, "n_m": em.n_m, "u_m": em.u_m,
            "arrival_ns": arrivals,
            "stamped_ns": {sid: t + scene.clock_offset(i) for i, (sid, t) in enumerate(arrivals.items())},
        })
    return out


# ---------------------------------------------------------------- files
def scene_to_dict(scene: Scene) -> dict:
    d = asdict(scene)
    d.pop("layout")
    d["sources"] = [asdict(s) for s in scene.sources]
    return d


def scene_from_dict(d: dict, layout: SensorLayout) -> Scene:
    d = dict(d)
    d["sources"] = tuple(Source(**s) for s in d["sources"])
    for k in ("noise_db_spl", "clock_offset_ns", "wind_m_per_s"):
        d[k] = tuple(d.get(k, ()))
    return Scene(layout=layout, **d)


def save_scene_spec(scene: Scene, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_layout(scene.layout, folder / "sensors.geojson")
    (folder / "scene.json").write_text(json.dumps(scene_to_dict(scene), indent=1) + "\n")


def load_scene_spec(folder: str | Path) -> Scene:
    folder = Path(folder)
    layout = load_layout(folder / "sensors.geojson")
    return scene_from_dict(json.loads((folder / "scene.json").read_text()), layout)


def write_scene(scene: Scene, folder: str | Path, progress: bool = False) -> Path:
    """Write sensors.geojson, scene.json, <sensor_id>.wav per sensor and truth.jsonl."""
    import soundfile as sf

    folder = Path(folder)
    save_scene_spec(scene, folder)
    ids = scene.layout.ids
    it = range(len(ids))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="rendering sensors", unit="sensor")
    for i in it:
        sf.write(folder / f"{ids[i]}.wav", render_sensor(scene, i), scene.fs_hz, subtype="FLOAT")
    with open(folder / "truth.jsonl", "w") as fh:
        for rec in truth_records(scene):
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return folder


# ---------------------------------------------------------------- the default city
def default_layout(seed: int = 7, n_side: int = 5, spacing_m: float = 450.0,
                   lat0: float = 41.8500, lon0: float = -87.6800, ground_alt_m: float = 180.0,
                   drop: int = 1) -> SensorLayout:
    """A district of about (n_side-1)*spacing metres square with rooftop sensors (8-30 m
    above ground) on a jittered grid; ``drop`` grid points are left empty."""
    from .geodesy import LocalFrame

    rng = _rng(seed, "layout")
    frame = LocalFrame(lat0, lon0, ground_alt_m)
    half = (n_side - 1) * spacing_m / 2
    pts = []
    for a in range(n_side):
        for b in range(n_side):
            pts.append((-half + a * spacing_m + rng.uniform(-80, 80), -half + b * spacing_m + rng.uniform(-80, 80),
                        rng.uniform(8.0, 30.0)))
    keep = sorted(rng.choice(len(pts), len(pts) - drop, replace=False))
    pts = [pts[j] for j in keep]
    e = np.array([p[0] for p in pts])
    nn = np.array([p[1] for p in pts])
    u = np.array([p[2] for p in pts])
    lat, lon, alt = frame.to_geodetic(e, nn, u)
    _, _, gnd = frame.to_geodetic(e, nn, np.zeros_like(u))
    ids = [f"S{j + 1:02d}" for j in range(len(pts))]
    # The layout's own frame is the canonical one (mean position, median ground), the
    # same that loading its GeoJSON gives, so ENU metres agree across processes.
    return SensorLayout.from_arrays(ids, lat, lon, alt, gnd)


def default_scene(t_start_ns: int, seed: int = 2026, duration_s: float = 40.0,
                  layout: SensorLayout | None = None) -> Scene:
    """The demo's city: 24 rooftop sensors over ~2 x 2 km; a dozen gunshots (one a burst of
    automatic fire) and door slams, claps, firecrackers, a backfire and an aerial firework,
    spread over ``duration_s`` seconds starting 2 s after ``t_start_ns``."""
    layout = layout or default_layout()
    rng = _rng(seed, "scene")
    kinds = (["handgun"] * 6 + ["rifle"] * 3 + ["shotgun", "suppressed"] + ["burst"]
             + ["door_slam"] * 3 + ["clap"] * 2 + ["firecracker"] * 2 + ["backfire", "firework_aerial",
                                                                         "dumpster_lid"])
    order = rng.permutation(len(kinds))
    t_last = duration_s - 9.0  # leave time for sound to cross the district
    times = np.sort(rng.uniform(2.0, t_last, len(kinds)))
    ext = np.abs(layout.enu_m[:, :2]).max() * 0.9
    srcs = []
    for j, kidx in enumerate(order):
        kind = kinds[kidx]
        e, n = rng.uniform(-ext, ext, 2)
        u = rng.uniform(120, 250) if kind == "firework_aerial" else 1.5
        srcs.append(Source(f"src{j + 1:02d}", kind, t_start_ns + int(times[j] * NS_PER_S), float(e), float(n), u,
                           gun="rifle", rounds=6 if kind == "burst" else 1, rate_hz=10.0))
    n_s = len(layout)
    return Scene(
        layout=layout, sources=tuple(srcs), t_start_ns=t_start_ns, duration_s=duration_s, fs_hz=16000,
        seed=seed, temperature_c=18.0, humidity_pct=60.0, wind_m_per_s=(2.0, -1.0),
        noise_db_spl=tuple(float(v) for v in rng.uniform(50, 62, n_s)),
        clock_offset_ns=tuple(int(v) for v in rng.normal(0, 2000, n_s)),  # GPS-disciplined: µs
    )


def scene_with_start(scene: Scene, t_start_ns: int) -> Scene:
    """The same scene moved in time so that it starts at ``t_start_ns``."""
    dt = t_start_ns - scene.t_start_ns
    return replace(scene, t_start_ns=t_start_ns,
                   sources=tuple(replace(s, t_ns=s.t_ns + dt) for s in scene.sources))


__all__ = ["Scene", "Source", "Emission", "render_sensor", "truth_records", "write_scene",
           "load_scene_spec", "save_scene_spec", "default_scene", "default_layout", "emissions",
           "scene_with_start", "is_gun_kind", "SOURCE_KINDS"]
