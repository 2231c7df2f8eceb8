"""The few filters the node needs, without importing scipy.signal.

``scipy.signal`` costs ~75 MB of resident memory on import, a third of a small board's
budget for the whole node, for three functions. These are the same algorithms, checked
against scipy in the tests:

- :func:`butter_sos`: digital Butterworth high-pass or band-pass as second-order
  sections (analog prototype, frequency transform, bilinear transform with pre-warping;
  scipy's ``butter(..., output="sos")``).
- :func:`sosfilt`: cascaded biquads, transposed direct form II, with state (a kernel
  compiled ahead of time: :mod:`shotnet.sensor.nodekernels`).
- :func:`resample_poly`: polyphase resampling with scipy's default anti-alias filter
  (Kaiser window, beta 5, half length 10 x the larger rate factor) and alignment.
"""

from __future__ import annotations

import math

import numpy as np

from . import nodekernels


def butter_sos(order: int, fc_hz, btype: str, fs_hz: float) -> np.ndarray:
    """Butterworth filter of ``order`` as SOS rows ``[b0, b1, b2, 1, a1, a2]``.

    ``btype`` "highpass" (``fc_hz`` a number) or "bandpass" (``fc_hz`` = (lo, hi)); the
    passband gain is 1 (at the geometric centre for a band-pass, at Nyquist for a
    high-pass)."""
    fs2 = 2.0 * fs_hz
    k = np.arange(order)
    proto = np.exp(1j * np.pi * (2 * k + order + 1) / (2 * order))       # analog low-pass poles
    if btype == "highpass":
        wc = fs2 * math.tan(math.pi * float(fc_hz) / fs_hz)
        s_poles = wc / proto                                              # lp -> hp
        z_zeros = np.ones(order)                                          # s = 0 -> z = 1
        ref_z = -1.0
    elif btype == "bandpass":
        lo, hi = (fs2 * math.tan(math.pi * float(f) / fs_hz) for f in fc_hz)
        bw, w0 = hi - lo, math.sqrt(lo * hi)
        half = proto * bw / 2.0
        root = np.sqrt(half * half - w0 * w0)
        s_poles = np.concatenate([half + root, half - root])              # lp -> bp
        z_zeros = np.concatenate([np.ones(order), -np.ones(order)])       # s = 0 and s = inf
        ref_z = np.exp(1j * 2.0 * math.atan(w0 / fs2))                    # centre, digital
    else:
        raise ValueError(f"btype must be highpass or bandpass, got {btype!r}")
    z_poles = (fs2 + s_poles) / (fs2 - s_poles)
    # Pair conjugate poles (upper half plane) into sections, each with two zeros.
    up = z_poles[np.imag(z_poles) >= 0]
    up = up[np.argsort(np.abs(up))]
    zeros = list(np.sort(z_zeros))
    sos = []
    for p in up:
        z1, z2 = zeros.pop(0), zeros.pop(-1) if btype == "bandpass" else zeros.pop(0)
        b = np.real(np.poly([z1, z2]))
        a = np.real(np.poly([p, np.conj(p)]))
        sos.append(np.concatenate([b, a]))
    sos = np.array(sos, dtype=np.float64)
    # Unit gain at the reference frequency.
    h = 1.0
    for row in sos:
        h *= np.polyval(row[:3], ref_z) / np.polyval(row[3:], ref_z)
    sos[0, :3] /= abs(h)
    return sos


def sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray | None = None):
    """Filter ``x``; with ``zi`` (sections x 2, updated in place) returns ``(y, zi)``."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.empty_like(x)
    state = np.zeros((sos.shape[0], 2)) if zi is None else zi
    nodekernels.sosfilt(np.ascontiguousarray(sos, dtype=np.float64), x, state, y)
    return y if zi is None else (y, state)


def _kaiser_lowpass(up: int, down: int) -> tuple[np.ndarray, int]:
    max_rate = max(up, down)
    half_len = 10 * max_rate
    n = 2 * half_len + 1
    cutoff = 1.0 / max_rate
    m = np.arange(n) - half_len
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(n, 5.0)
    return h / h.sum() * up, half_len


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """Resample by ``up/down`` (integers without common factor), as scipy does."""
    x = np.asarray(x, dtype=np.float64)
    h, half_len = _kaiser_lowpass(up, down)
    n_out = -(-len(x) * up // down)
    if up > 1:
        xu = np.zeros(len(x) * up)
        xu[::up] = x
    else:
        xu = x
    full = np.convolve(xu, h)
    idx = half_len + np.arange(n_out) * down
    out = np.zeros(n_out)
    ok = idx < len(full)
    out[ok] = full[idx[ok]]
    return out
