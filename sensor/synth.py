"""Source waveforms: pressure in pascals at 1 m from the source, sampled at ``fs_hz``.

Physically grounded but small: each generator takes a seeded ``numpy.random.Generator``
and draws its own parameters (peak level, durations, resonances) within published ranges.

- Gunshot muzzle blast: a Friedlander wave ``p(t) = P (1 - t/T) exp(-b t/T)`` whose peak
  (150-165 dB SPL at 1 m) and positive-phase duration ``T`` (0.4-2 ms) grow with calibre
  and charge; supersonic rounds add a ballistic N-wave ahead of the blast; suppressed shots
  lower the peak by ~25 dB and lengthen the rise.
- Look-alikes: firecrackers (short, very sharp, ~135-150 dB), aerial fireworks (a big
  burst plus crackle), car backfires (long low-frequency thump), door and dumpster-lid
  slams (slow rise, ringing 60-300 Hz), claps, hammering, balloon pops.

The same generators serve the scene simulator and the classifier's training corpus.
"""

from __future__ import annotations

import numpy as np

from .acoustics import P_REF_PA

GUN_KINDS = ("handgun", "rifle", "shotgun", "suppressed")
LOOKALIKE_KINDS = ("firecracker", "firecracker_string", "firework_aerial", "backfire",
                   "door_slam", "dumpster_lid", "clap", "hammer", "nail_gun", "balloon_pop",
                   "dropped_object", "thunder")


def db_spl_to_pa(db: float) -> float:
    return P_REF_PA * 10.0 ** (db / 20.0)


def friedlander(fs_hz: float, peak_pa: float, t_pos_s: float, decay_b: float = 1.5,
                length_s: float | None = None, rise_s: float = 0.0) -> np.ndarray:
    """Friedlander blast wave sampled at ``fs_hz``, onset at sample 0.

    ``rise_s`` > 0 replaces the ideal shock by a raised-cosine rise (real microphones and
    shocks weakened by distance are not infinitely steep).
    """
    n = int(round((length_s or 8.0 * t_pos_s + 0.01) * fs_hz))
    t = np.arange(n) / fs_hz
    p = peak_pa * (1.0 - t / t_pos_s) * np.exp(-decay_b * t / t_pos_s)
    if rise_s > 0:
        nr = max(1, int(round(rise_s * fs_hz)))
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(nr) / nr)
        p = np.concatenate([p[:1] * ramp, p])[:n]
    return p


def n_wave(fs_hz: float, peak_pa: float, duration_s: float) -> np.ndarray:
    """Ballistic shock (N-wave) of total duration ``duration_s``."""
    n = max(3, int(round(duration_s * fs_hz)))
    return peak_pa * np.linspace(1.0, -1.0, n)


def _damped_modes(fs_hz, n, rng, f_lo, f_hi, n_modes, tau_lo_s, tau_hi_s):
    t = np.arange(n) / fs_hz
    out = np.zeros(n)
    for _ in range(n_modes):
        f = np.exp(rng.uniform(np.log(f_lo), np.log(f_hi)))
        tau = rng.uniform(tau_lo_s, tau_hi_s)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t / tau)
    return out / max(np.max(np.abs(out)), 1e-12)


def _attack(fs_hz, n, rise_s):
    nr = max(1, int(round(rise_s * fs_hz)))
    env = np.ones(n)
    env[:nr] = 0.5 - 0.5 * np.cos(np.pi * np.arange(nr) / nr)
    return env


def gunshot_params(rng: np.random.Generator, kind: str) -> tuple[float, float, bool, float]:
    """(peak dB SPL at 1 m, positive-phase duration s, supersonic?, rise s) for a round."""
    if kind == "handgun":
        return rng.uniform(150, 160), rng.uniform(0.4e-3, 1.0e-3), bool(rng.random() < 0.3), rng.uniform(0.0, 0.15e-3)
    if kind == "rifle":
        return rng.uniform(155, 165), rng.uniform(0.8e-3, 2.0e-3), True, rng.uniform(0.0, 0.15e-3)
    if kind == "shotgun":
        return rng.uniform(152, 162), rng.uniform(1.0e-3, 2.0e-3), False, rng.uniform(0.0, 0.15e-3)
    if kind == "suppressed":
        return rng.uniform(125, 138), rng.uniform(0.8e-3, 2.0e-3), bool(rng.random() < 0.5), rng.uniform(0.2e-3, 0.6e-3)
    raise ValueError(f"unknown gun kind {kind!r}")


def muzzle_blast(fs_hz: float, rng: np.random.Generator, kind: str = "handgun") -> np.ndarray:
    """The muzzle blast of one round at 1 m, onset at sample 0 (no ballistic crack)."""
    db, t_pos, _, rise = gunshot_params(rng, kind)
    blast = friedlander(fs_hz, db_spl_to_pa(db), t_pos, decay_b=rng.uniform(1.0, 2.5),
                        length_s=0.08, rise_s=rise)
    # Gas and mechanism add a short broadband tail after the blast.
    tail_n = len(blast)
    tail = rng.standard_normal(tail_n) * np.exp(-np.arange(tail_n) / (fs_hz * rng.uniform(0.003, 0.012)))
    blast += 0.04 * db_spl_to_pa(db) * tail * (np.arange(tail_n) > int(t_pos * fs_hz))
    return blast


def crack(fs_hz: float, rng: np.random.Generator, blast_db: float = 155.0) -> np.ndarray:
    """A ballistic N-wave (supersonic bullet), ~6-14 dB below the blast, 0.15-0.4 ms long."""
    return n_wave(fs_hz, db_spl_to_pa(blast_db - rng.uniform(6, 14)), rng.uniform(0.15e-3, 0.4e-3))


def gunshot(fs_hz: float, rng: np.random.Generator, kind: str = "handgun",
            crack_lead_s: float | None = None) -> np.ndarray:
    """One round at 1 m as a sensor in the bullet's path hears it: a ballistic crack
    ``crack_lead_s`` (0.5-3 ms when drawn) ahead of the muzzle blast for supersonic
    rounds, then the blast. Sample 0 is the first sound to arrive. Used for training
    material; the scene simulator places cracks per sensor instead."""
    state = rng.bit_generator.state
    db, _, supersonic, _ = gunshot_params(rng, kind)
    rng.bit_generator.state = state
    blast = muzzle_blast(fs_hz, rng, kind)
    if not supersonic:
        return blast
    lead = int(round((crack_lead_s if crack_lead_s is not None else rng.uniform(0.5e-3, 3e-3)) * fs_hz))
    c = crack(fs_hz, rng, db)
    out = np.zeros(len(blast) + lead)
    out[:len(c)] += c
    out[lead:] += blast
    return out


def burst(fs_hz: float, rng: np.random.Generator, kind: str = "rifle", rounds: int = 6,
          rate_hz: float = 10.0) -> tuple[np.ndarray, list[float]]:
    """Automatic fire: ``rounds`` rounds at ``rate_hz``. Returns the waveform and the
    round offsets in seconds."""
    offsets = [i / rate_hz + rng.normal(0, 0.002) * (i > 0) for i in range(rounds)]
    shots = [muzzle_blast(fs_hz, rng, kind) for _ in range(rounds)]
    n = int(offsets[-1] * fs_hz) + max(len(s) for s in shots) + 1
    out = np.zeros(n)
    for off, s in zip(offsets, shots):
        k = int(round(off * fs_hz))
        out[k:k + len(s)] += s
    return out, offsets


def lookalike(fs_hz: float, rng: np.random.Generator, kind: str) -> np.ndarray:
    """A non-gunshot impulse at 1 m. ``kind`` in :data:`LOOKALIKE_KINDS`."""
    if kind == "firecracker":
        return friedlander(fs_hz, db_spl_to_pa(rng.uniform(135, 150)), rng.uniform(0.1e-3, 0.3e-3),
                           decay_b=rng.uniform(1.0, 2.0), length_s=0.03)
    if kind == "firecracker_string":
        n = int(rng.uniform(0.6, 1.5) * fs_hz)
        out = np.zeros(n)
        t = 0.0
        while True:
            k = int(t * fs_hz)
            c = lookalike(fs_hz, rng, "firecracker")
            if k + len(c) >= n:
                break
            out[k:k + len(c)] += c
            t += rng.exponential(0.04) + 0.01
        return out
    if kind == "firework_aerial":
        main = friedlander(fs_hz, db_spl_to_pa(rng.uniform(150, 165)), rng.uniform(2e-3, 6e-3),
                           decay_b=1.2, length_s=0.1)
        n = int(rng.uniform(0.8, 1.6) * fs_hz)
        out = np.zeros(n)
        out[:len(main)] += main
        for _ in range(int(rng.uniform(20, 80))):  # crackle
            k = int(rng.uniform(0.1, 0.95) * n)
            c = friedlander(fs_hz, db_spl_to_pa(rng.uniform(115, 130)), rng.uniform(0.05e-3, 0.2e-3), length_s=0.005)
            out[k:k + len(c)] += c[: n - k]
        return out
    if kind == "backfire":
        p = friedlander(fs_hz, db_spl_to_pa(rng.uniform(130, 145)), rng.uniform(3e-3, 10e-3),
                        decay_b=1.0, length_s=0.15, rise_s=rng.uniform(0.3e-3, 1.5e-3))
        return p + 0.3 * np.max(p) * _damped_modes(fs_hz, len(p), rng, 40, 150, 2, 0.02, 0.06)
    if kind in ("door_slam", "dumpster_lid"):
        big = kind == "dumpster_lid"
        n = int(0.3 * fs_hz)
        modes = _damped_modes(fs_hz, n, rng, 60 if not big else 150, 300 if not big else 900,
                              4, 0.02, 0.08 if not big else 0.15)
        env = _attack(fs_hz, n, rng.uniform(1e-3, 4e-3) if not big else rng.uniform(0.3e-3, 1.5e-3))
        return db_spl_to_pa(rng.uniform(110, 122) if not big else rng.uniform(118, 130)) * modes * env
    if kind == "clap":
        n = int(0.05 * fs_hz)
        noise = rng.standard_normal(n)
        body = _damped_modes(fs_hz, n, rng, 800, 2500, 3, 0.002, 0.006)
        env = np.exp(-np.arange(n) / (rng.uniform(0.002, 0.006) * fs_hz)) * _attack(fs_hz, n, 0.4e-3)
        x = (0.6 * noise / 3 + body) * env
        return db_spl_to_pa(rng.uniform(105, 118)) * x / np.max(np.abs(x))
    if kind in ("hammer", "nail_gun"):
        n = int(0.12 * fs_hz)
        ring = _damped_modes(fs_hz, n, rng, 1000, 5000, 4, 0.005, 0.03)
        env = _attack(fs_hz, n, rng.uniform(0.1e-3, 0.5e-3))
        x = ring * env
        if kind == "nail_gun":
            x[: int(0.02 * fs_hz)] += 0.5 * rng.standard_normal(int(0.02 * fs_hz)) * np.exp(
                -np.arange(int(0.02 * fs_hz)) / (0.004 * fs_hz))
        return db_spl_to_pa(rng.uniform(110, 128)) * x / np.max(np.abs(x))
    if kind == "balloon_pop":
        p = friedlander(fs_hz, db_spl_to_pa(rng.uniform(125, 140)), rng.uniform(0.15e-3, 0.5e-3), length_s=0.02)
        return p
    if kind == "dropped_object":
        n = int(0.2 * fs_hz)
        x = _damped_modes(fs_hz, n, rng, 200, 3000, 5, 0.01, 0.05) * _attack(fs_hz, n, rng.uniform(0.5e-3, 2e-3))
        return db_spl_to_pa(rng.uniform(100, 118)) * x
    if kind == "thunder":
        n = int(rng.uniform(1.0, 2.0) * fs_hz)
        x = rng.standard_normal(n)
        # Thunder is rumbling low-frequency energy with a slow rise.
        from scipy.signal import butter, sosfilt
        x = sosfilt(butter(2, 150, "low", fs=fs_hz, output="sos"), x)
        env = _attack(fs_hz, n, rng.uniform(0.02, 0.1)) * np.exp(-np.arange(n) / (0.5 * fs_hz))
        x = x * env
        return db_spl_to_pa(rng.uniform(120, 135)) * x / np.max(np.abs(x))
    raise ValueError(f"unknown look-alike kind {kind!r}")


def urban_noise(fs_hz: float, n: int, rng: np.random.Generator, level_db_spl: float = 55.0,
                chunk: int = 1 << 16) -> np.ndarray:
    """Urban background: noise with a traffic-like spectrum (falling ~4.5 dB/octave above
    200 Hz) and slow level swells, at RMS ``level_db_spl``. Generated in chunks so hours
    of audio stay cheap."""
    out = np.empty(n)
    f = np.fft.rfftfreq(chunk, 1.0 / fs_hz)
    shape = 1.0 / np.sqrt(1.0 + (np.maximum(f, 1.0) / 200.0) ** 1.5)
    shape[f < 20] = 0.0
    pos = 0
    win = np.hanning(chunk)
    hop = chunk // 2
    # Overlap-add of Hann windows at 50% sums to 1, so chunk joins are seamless.
    buf = np.zeros(n + chunk)
    while pos < n:
        spec = (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f))) * shape
        buf[pos:pos + chunk] += np.fft.irfft(spec, n=chunk) * win
        pos += hop
    out[:] = buf[:n]
    out[: hop] = buf[hop: 2 * hop] if n > 2 * hop else out[:hop]
    t = np.arange(n) / fs_hz
    swell = 1.0 + 0.3 * np.sin(2 * np.pi * t / rng.uniform(5, 20) + rng.uniform(0, 6.3))
    out *= swell
    rms = np.sqrt(np.mean(out**2)) or 1.0
    return out * (db_spl_to_pa(level_db_spl) / rms)
