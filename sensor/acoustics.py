"""Outdoor sound propagation: speed of sound, wind, air absorption (ISO 9613-1).

Pure functions on arrays. Units are in the names: metres, seconds, Hz, degrees Celsius.
"""

from __future__ import annotations

import numpy as np

P_REF_PA = 20e-6  # reference pressure for dB SPL


def speed_of_sound_m_per_s(temperature_c: float) -> float:
    """Speed of sound in dry air, c = 331.3 * sqrt(1 + T/273.15) m/s."""
    return 331.3 * float(np.sqrt(1.0 + temperature_c / 273.15))


def travel_time_s(src_m, rcv_m, c_m_per_s: float, wind_m_per_s=(0.0, 0.0)):
    """Time for sound to go from ``src_m`` to ``rcv_m`` (ENU metres, ``(..., 3)``) in a
    uniform wind (east, north in m/s).

    Sound moves at ``c`` relative to the air, which moves at ``w``: the travel time
    ``t`` solves ``|d - w t| = c t`` with ``d = rcv - src``, i.e.
    ``t = (-(d.w) + sqrt((d.w)^2 + (c^2 - |w|^2)|d|^2)) / (c^2 - |w|^2)``.
    """
    d = np.asarray(rcv_m, dtype=np.float64) - np.asarray(src_m, dtype=np.float64)
    w = np.zeros(3)
    w[:2] = np.asarray(wind_m_per_s, dtype=np.float64)[:2]
    dw = d @ w
    dd = np.einsum("...i,...i->...", d, d)
    a = c_m_per_s**2 - w @ w
    return (-dw + np.sqrt(dw * dw + a * dd)) / a


def absorption_db_per_m(freq_hz, temperature_c: float = 20.0, humidity_pct: float = 70.0,
                        pressure_kpa: float = 101.325):
    """Atmospheric absorption coefficient (dB/m) from ISO 9613-1:1993, eq. (3)-(5)."""
    f = np.asarray(freq_hz, dtype=np.float64)
    t = temperature_c + 273.15
    t0, t01 = 293.15, 273.16
    pr = pressure_kpa / 101.325
    c = -6.8346 * (t01 / t) ** 1.261 + 4.6151
    h = humidity_pct * (10.0**c) / pr  # molar concentration of water vapour, %
    fr_o = pr * (24.0 + 4.04e4 * h * (0.02 + h) / (0.391 + h))
    fr_n = pr * (t / t0) ** -0.5 * (9.0 + 280.0 * h * np.exp(-4.170 * ((t / t0) ** (-1.0 / 3.0) - 1.0)))
    alpha = 8.686 * f * f * (
        1.84e-11 / pr * (t / t0) ** 0.5
        + (t / t0) ** -2.5 * (0.01275 * np.exp(-2239.1 / t) / (fr_o + f * f / fr_o)
                              + 0.1068 * np.exp(-3352.0 / t) / (fr_n + f * f / fr_n)))
    return alpha


def minimum_phase_spectrum(mag: np.ndarray, n_fft: int, floor_db: float = -120.0) -> np.ndarray:
    """Minimum-phase complex response on the rfft grid of length ``n_fft`` from a magnitude.

    Real-cepstrum folding (homomorphic method). A minimum-phase filter is causal and puts
    its energy as early as possible, so it never moves an onset earlier, as a zero-phase
    filter would.
    """
    m = np.maximum(np.asarray(mag, dtype=np.float64), 10.0 ** (floor_db / 20.0))
    cep = np.fft.irfft(np.log(m), n=n_fft)
    fold = np.zeros(n_fft)
    fold[0] = cep[0]
    fold[1:n_fft // 2] = 2.0 * cep[1:n_fft // 2]
    fold[n_fft // 2] = cep[n_fft // 2]
    return np.exp(np.fft.rfft(fold))


def path_response(n_fft: int, fs_hz: float, distance_m: float, *, temperature_c: float = 20.0,
                  humidity_pct: float = 70.0, gain: float = 1.0, delay_s: float = 0.0) -> np.ndarray:
    """Frequency response of one propagation path on the rfft grid (no bulk integer delay).

    Spherical spreading ``1/r`` (pressure re 1 m), minimum-phase air absorption over
    ``distance_m``, a scalar ``gain`` (e.g. a reflection coefficient) and a fractional
    delay ``delay_s`` (a linear phase).
    """
    f = np.fft.rfftfreq(n_fft, 1.0 / fs_hz)
    atten_db = absorption_db_per_m(f, temperature_c, humidity_pct) * distance_m
    h = minimum_phase_spectrum(10.0 ** (-atten_db / 20.0), n_fft)
    h *= gain / max(distance_m, 1.0)
    if delay_s:
        h *= np.exp(-2j * np.pi * f * delay_s)
    return h
