"""The classifier's training and evaluation corpus, reproducible from a seed.

Every example is one candidate window as the node sees it: ``FeatureSpec.win_s`` of audio
with an impulse onset ``FeatureSpec.pre_s`` in (plus the picker's jitter), built as

1. a source at 1 m from :mod:`shotnet.sensor.synth` (gunshots of four kinds with and without
   the ballistic crack, doubles and automatic bursts, indoor shots heard outside; and the
   look-alikes: firecrackers and strings, aerial fireworks, backfires, door and dumpster
   slams, claps, hammering and nail guns, balloon and bag pops, dropped objects, thunder),
2. propagated over 10 m to 1.5 km with the scene simulator's path model (ISO 9613-1
   absorption as a minimum-phase filter, ground reflection) plus street reverberation and
   facade echoes,
3. mixed into urban background (traffic-spectrum noise and, often, ordinary urban sound:
   sirens, speech, music, dogs, wind and rain on the microphone, traffic pass-bys) at an
   SNR of -5 to 30 dB.

The class ``other`` also holds triggers on ordinary urban sound with no impulse at all.
Train and held-out sets differ in seed, and the held-out set can use its own ranges of
distance and background (``EvalProfile``) and is weighted toward look-alikes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from shotnet.sensor.acoustics import path_response
from shotnet.sensor.features import FeatureSpec, logmel, normalise_window
from shotnet.sensor.synth import GUN_KINDS, burst, gunshot, lookalike, urban_noise

CLASSES = ["gunshot", "firework", "backfire", "slam", "clap", "construction", "pop", "other"]
SOURCES = {
    "firework": ["firecracker", "firecracker", "firecracker_string", "firework_aerial"],
    "backfire": ["backfire"],
    "slam": ["door_slam", "dumpster_lid"],
    "clap": ["clap"],
    "construction": ["hammer", "nail_gun"],
    "pop": ["balloon_pop", "bag_pop"],
    "other": ["dropped_object", "thunder", "urban", "urban", "urban"],
}
URBAN = ("siren", "speech", "music", "dog", "wind", "rain", "traffic")


@dataclass(frozen=True)
class Profile:
    """Ranges an example is drawn from."""

    distance_m: tuple[float, float] = (10.0, 1500.0)
    snr_db: tuple[float, float] = (-5.0, 30.0)
    noise_db_spl: tuple[float, float] = (45.0, 70.0)
    urban_prob: float = 0.5
    class_weights: tuple[float, ...] = (0.30, 0.14, 0.08, 0.10, 0.08, 0.10, 0.08, 0.12)
    jitter_s: float = 0.001
    clip_prob: float = 0.08


TRAIN = Profile()
# Held out: other seeds, more distant and noisier, weighted toward look-alikes.
HELD_OUT = Profile(distance_m=(20.0, 1500.0), snr_db=(0.0, 30.0), noise_db_spl=(50.0, 72.0), urban_prob=0.7,
                   class_weights=(0.20, 0.20, 0.10, 0.10, 0.08, 0.12, 0.10, 0.10))


def _lowpass(x, fs, fc, order=2):
    return sosfilt(butter(order, min(fc, 0.45 * fs), "low", fs=fs, output="sos"), x)


def urban_sound(fs: int, n: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Ordinary, mostly non-impulsive urban sound, unit RMS."""
    t = np.arange(n) / fs
    if kind == "siren":
        f0 = rng.uniform(600, 900)
        f = f0 + rng.uniform(300, 700) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 4) * t))
        x = np.sin(2 * np.pi * np.cumsum(f) / fs) + 0.3 * np.sin(4 * np.pi * np.cumsum(f) / fs)
    elif kind == "speech":
        f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
        ph = 2 * np.pi * np.cumsum(f0) / fs
        x = sum(np.sin(k * ph) / k for k in range(1, 12))
        syll = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)), 0, None) ** 2
        x = _lowpass(x * syll, fs, 3500)
    elif kind == "music":
        x = np.zeros(n)
        for f in rng.choice([220, 261.6, 329.6, 392, 440, 523.3], 3):
            x += np.sin(2 * np.pi * f * t) * rng.uniform(0.3, 1)
        beat = (np.sin(2 * np.pi * rng.uniform(1.5, 2.5) * t) > 0.95).astype(float)
        x += 2 * _lowpass(rng.standard_normal(n) * np.convolve(beat, np.exp(-np.arange(400) / 80), "same"), fs, 200)
    elif kind == "dog":
        x = np.zeros(n)
        for _ in range(rng.integers(1, 4)):
            k = rng.integers(0, max(1, n - fs // 5))
            m = int(rng.uniform(0.08, 0.2) * fs)
            tt = np.arange(m) / fs
            f0 = rng.uniform(400, 900)
            b = sum(np.sin(2 * np.pi * f0 * h * tt) / h for h in range(1, 6)) * np.sin(np.pi * tt / tt[-1])
            x[k:k + m] += b[: n - k]
    elif kind == "wind":
        x = _lowpass(rng.standard_normal(n), fs, rng.uniform(60, 200), 4)
        x *= 1 + 0.8 * np.abs(np.sin(2 * np.pi * rng.uniform(0.3, 2) * t))
    elif kind == "rain":
        x = rng.standard_normal(n) * 0.05
        drops = rng.random(n) < rng.uniform(5, 60) / fs
        x += np.convolve(drops * rng.standard_normal(n), np.exp(-np.arange(40) / 6), "same")
    elif kind == "traffic":
        x = _lowpass(rng.standard_normal(n), fs, rng.uniform(300, 1200))
        x *= np.exp(-((t - rng.uniform(0, t[-1] + 1e-9)) ** 2) / (2 * rng.uniform(0.5, 3) ** 2)) + 0.2
    else:
        raise ValueError(kind)
    x = np.asarray(x, dtype=np.float64)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _source(fs, rng, cls: str) -> tuple[np.ndarray, str]:
    """(waveform at 1 m with onset at sample 0, sub-kind)."""
    if cls == "gunshot":
        kind = rng.choice(GUN_KINDS + ("double", "burst", "indoor"), p=[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
        if kind == "double":
            a, b = gunshot(fs, rng, "handgun"), gunshot(fs, rng, "handgun")
            k = int(rng.uniform(0.12, 0.4) * fs)
            out = np.zeros(k + len(b))
            out[:len(a)] += a
            out[k:] += b
            return out, kind
        if kind == "burst":
            w, _ = burst(fs, rng, rng.choice(["rifle", "handgun"]), int(rng.integers(3, 8)), rng.uniform(8, 15))
            return w, kind
        if kind == "indoor":
            w = gunshot(fs, rng, "handgun")
            w = _lowpass(w, fs, rng.uniform(800, 3000)) * rng.uniform(0.05, 0.3)  # through a wall
            return _reverb(fs, rng, w, rng.uniform(0.5, 1.5), rng.uniform(-6, 0)), kind
        return gunshot(fs, rng, str(kind)), str(kind)
    kind = str(rng.choice(SOURCES[cls]))
    if kind == "urban":
        return np.zeros(1), str(rng.choice(URBAN))
    if kind == "bag_pop":
        w = lookalike(fs, rng, "balloon_pop") * rng.uniform(0.1, 0.4)
        n = int(0.02 * fs)
        w[:n] += np.max(np.abs(w)) * 0.3 * rng.standard_normal(n) * np.exp(-np.arange(n) / (0.003 * fs))
        return w, kind
    return lookalike(fs, rng, kind), kind


def _reverb(fs, rng, x, rt60_s, level_db):
    """Add a diffuse tail (exponentially decaying noise, RT60) at ``level_db`` re direct."""
    m = int(min(rt60_s, 1.5) * fs)
    tail = rng.standard_normal(m) * np.exp(-6.91 * np.arange(m) / (rt60_s * fs))
    tail = _lowpass(tail, fs, rng.uniform(2000, 6000))
    tail *= 10 ** (level_db / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    y = fftconvolve(x, tail)[: len(x) + m]
    out = np.zeros(len(x) + m)
    out[:len(x)] += x
    pre = int(rng.uniform(0.002, 0.02) * fs)  # the tail starts after the first reflections
    out[pre:] += y[: len(out) - pre]
    return out


def propagate(fs, rng, w, distance_m):
    """Direct path + ground reflection + street reverberation + a few facade echoes."""
    n = len(w) + int(0.45 * fs)
    n_fft = 1 << int(np.ceil(np.log2(n + 1)))
    spec = np.fft.rfft(w, n=n_fft)
    h = path_response(n_fft, fs, distance_m, temperature_c=rng.uniform(-5, 35), humidity_pct=rng.uniform(20, 95))
    extra = rng.uniform(0.05e-3, 3e-3)
    h = h + path_response(n_fft, fs, distance_m + extra * 343, gain=rng.uniform(0.5, 0.9), delay_s=extra)
    for _ in range(rng.integers(0, 4)):
        d = rng.uniform(0.005, 0.2)
        h = h + path_response(n_fft, fs, distance_m + d * 343, gain=rng.uniform(0.1, 0.5), delay_s=d)
    y = np.fft.irfft(spec * h, n=n_fft)[:n]
    return _reverb(fs, rng, y, rng.uniform(0.1, 1.2), rng.uniform(-30, -8))[:n]


def make_window(rng: np.random.Generator, cls: str, spec: FeatureSpec = FeatureSpec(),
                prof: Profile = TRAIN) -> tuple[np.ndarray, str]:
    """One raw window (float32, ``spec.n_samples``) and its sub-kind."""
    fs = spec.fs_hz
    n = spec.n_samples
    bg = urban_noise(fs, n + fs // 2, rng, rng.uniform(*prof.noise_db_spl), chunk=1 << 13)[: n]
    bg = bg / (np.sqrt(np.mean(bg**2)) + 1e-12)
    w, kind = _source(fs, rng, cls)
    if rng.random() < prof.urban_prob or kind in URBAN:
        u = urban_sound(fs, n, rng, kind if kind in URBAN else str(rng.choice(URBAN)))
        bg = bg + u * 10 ** (rng.uniform(-10, 10 if kind in URBAN else 3) / 20)
        bg = bg / (np.sqrt(np.mean(bg**2)) + 1e-12)
    x = bg.copy()
    if kind not in URBAN:
        y = propagate(fs, rng, w, float(np.exp(rng.uniform(*np.log(prof.distance_m)))))
        on = int(spec.pre_s * fs + np.clip(rng.normal(0, prof.jitter_s), -3e-3, 3e-3) * fs)
        y = y[: n - on]
        e = np.sqrt(np.mean(y[: int(0.05 * fs)] ** 2)) + 1e-20
        snr = rng.uniform(*prof.snr_db)
        x[on:on + len(y)] += y * (10 ** (snr / 20) / e)
    if rng.random() < prof.clip_prob:
        # a near, loud sound saturates the ADC: flat tops
        c = rng.uniform(0.2, 0.8) * np.max(np.abs(x))
        x = np.clip(x, -c, c)
    return x.astype(np.float32), kind


def make_example(seed: int, k: int, prof: Profile = TRAIN, spec: FeatureSpec = FeatureSpec()):
    """Example ``k`` of the corpus with ``seed``: (log-mel patch, class index, sub-kind)."""
    rng = np.random.default_rng([seed, k])
    c = int(rng.choice(len(CLASSES), p=np.asarray(prof.class_weights) / np.sum(prof.class_weights)))
    x, kind = make_window(rng, CLASSES[c], spec, prof)
    return logmel(normalise_window(x, spec), spec), c, kind


def _chunk(args):
    seed, ks, prof, spec = args
    out = [make_example(seed, k, prof, spec) for k in ks]
    return (np.stack([o[0] for o in out]).astype(np.float16), np.array([o[1] for o in out], np.int64),
            [o[2] for o in out])


def build(n: int, seed: int, prof: Profile = TRAIN, spec: FeatureSpec = FeatureSpec(), workers: int = 2,
          progress: bool = True, desc: str = "corpus"):
    """``n`` examples: X (n, n_mels, n_frames) float16, y (n,) int64, sub-kinds (list)."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    step = 250
    jobs = [(seed, list(range(a, min(n, a + step))), prof, spec) for a in range(0, n, step)]
    xs, ys, kinds = [], [], []
    bar = tqdm(total=n, desc=desc, unit="ex", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            for X, y, k in ex.map(_chunk, jobs):
                xs.append(X), ys.append(y), kinds.extend(k)
                bar.update(len(y))
    else:
        for j in jobs:
            X, y, k = _chunk(j)
            xs.append(X), ys.append(y), kinds.extend(k)
            bar.update(len(y))
    bar.close()
    return np.concatenate(xs), np.concatenate(ys), kinds


class _Capture:
    """A stand-in classifier that keeps every window the node hands it."""

    name = "capture"
    sha256 = "0" * 16

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.windows: list[np.ndarray] = []

    def classify(self, window, fs_hz):
        from shotnet.sensor.classify import Verdict

        self.windows.append(np.asarray(window, dtype=np.float32).copy())
        return Verdict("impulse", 1.0, 0.0)


def urban_minute(fs: int, rng: np.random.Generator, sounds_per_min: float = 20.0) -> np.ndarray:
    """A minute of city background with ordinary urban sound (no impulses of any class)."""
    n = 60 * fs
    x = urban_noise(fs, n, rng, rng.uniform(50, 65))
    x /= np.sqrt(np.mean(x**2))
    for _ in range(rng.poisson(sounds_per_min)):
        k = int(rng.integers(0, n - fs * 5))
        m = int(rng.uniform(1, 5) * fs)
        x[k:k + m] += urban_sound(fs, m, rng, str(rng.choice(URBAN))) * 10 ** (rng.uniform(-6, 12) / 20)
    return (x * 0.003).astype(np.float32)


def _triggered_chunk(args):
    from shotnet.sensor.clock import LinearSampleClock
    from shotnet.sensor.node import NodeConfig, NodeCore

    seed, minutes, spec = args
    rng = np.random.default_rng([seed, 991])
    cap = _Capture(spec)
    core = NodeCore(NodeConfig("bg", spec.fs_hz), LinearSampleClock(0, spec.fs_hz), cap)
    for _ in range(minutes):
        x = urban_minute(spec.fs_hz, rng)
        for a in range(0, len(x), 800):
            core.feed(x[a:a + 800])
    return np.stack([logmel(normalise_window(w, spec), spec) for w in cap.windows]).astype(np.float16) \
        if cap.windows else np.zeros((0, spec.n_mels, spec.n_frames), np.float16)


def triggered_background(minutes: int, seed: int, spec: FeatureSpec = FeatureSpec(), workers: int = 2,
                         progress: bool = True) -> np.ndarray:
    """Log-mel patches of the windows the node's own trigger picks out of ordinary urban
    sound (class ``other``): exactly what a rooftop node would ask the model about on a
    quiet night. Returns (n, n_mels, n_frames) float16."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    per = 10
    jobs = [(seed * 1000 + k, per, spec) for k in range(max(1, minutes // per))]
    out = []
    with ProcessPoolExecutor(workers) as ex:
        for X in tqdm(ex.map(_triggered_chunk, jobs), total=len(jobs), desc="node-triggered background",
                      unit="10 min", disable=not progress):
            out.append(X)
    return np.concatenate(out)
