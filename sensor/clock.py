"""Clocks: map a sample index to disciplined wall time, and say how good that time is.

Every detection carries the node clock's quality (source, locked, 1-sigma in ns) so the
locator can weight or exclude it. The simplest clock is linear: sample ``j`` is at
``t0_ns + j * 1e9 / fs``; the field node (live capture) fits that line continuously
against GPS/PTP-disciplined wall time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .contract import NS_PER_S


@dataclass(frozen=True)
class ClockQuality:
    source: str          # one of contract.CLOCK_SOURCES
    locked: bool
    sigma_ns: int        # 1-sigma error of the wall time the clock reports


class LinearSampleClock:
    """``t_ns(j) = t0_ns + round(j * 1e9 / fs_hz)`` for a fractional sample index ``j``.

    ``ppm`` models a known audio-clock rate error (positive: the ADC runs fast, so each
    sample covers less wall time)."""

    def __init__(self, t0_ns: int, fs_hz: float, quality: ClockQuality = ClockQuality("sim", True, 1000),
                 ppm: float = 0.0):
        self.t0_ns = int(t0_ns)
        self.fs_hz = float(fs_hz)
        self._ns_per_sample = NS_PER_S / self.fs_hz / (1.0 + ppm * 1e-6)
        self._quality = quality

    def t_ns(self, index: float) -> int:
        return self.t0_ns + int(round(index * self._ns_per_sample))

    def quality(self) -> ClockQuality:
        return self._quality


class FittedSampleClock:
    """Sample index -> disciplined wall time, from a continuously refitted line.

    An audio interface's crystal drifts tens of ppm (50 ppm is 180 ms an hour), so the
    time of sample ``j`` is never ``t0 + j/fs``. Each captured block gives one observation
    ``(index of its first sample, wall time of that sample in ns)``: PortAudio's ADC time
    mapped to the wall clock where valid, else the callback's wall time minus the block
    length. ``time_source`` (gps, ptp, chrony, system) corrects the wall clock (a
    free-running PTP slave reports its offset from the master) and states its quality.

    The line is refitted by least squares over the last ``window_s`` of observations
    (default 240 s), with observations more than 5 robust sigmas off dropped (a late
    callback). Observations from callback wall times (no ADC time) are late by a random,
    never negative scheduling delay: with ``one_sided=True`` the line is fitted to the
    lower envelope instead (the earliest observation of each group of ``envelope_group``),
    which removes the mean delay. Extrapolating a fresh fit a few seconds is exact to well under a
    microsecond for any crystal that drifts smoothly. ``fit_sigma_ns`` (the standard
    error of the fitted line at the newest sample) joins the time source's sigma in the
    quality every detection carries.
    """

    def __init__(self, fs_hz: float, time_source=None, window_s: float = 240.0, refit_every: int = 10,
                 one_sided: bool = False, envelope_group: int = 40):
        self.fs_hz = float(fs_hz)
        self.one_sided = one_sided
        self.envelope_group = envelope_group
        self.time_source = time_source
        self.window = int(window_s * self.fs_hz)
        self.refit_every = refit_every
        self._idx: list[int] = []
        self._wall: list[int] = []
        self._since_fit = 0
        self._ref_idx = 0
        self._ref_ns = 0
        self._slope = NS_PER_S / self.fs_hz      # ns per sample
        self.fit_sigma_ns = 0.0
        self.rejected = 0
        self.observations = 0

    def observe(self, index: int, wall_ns: int) -> None:
        """One block: sample ``index`` was taken at system wall time ``wall_ns``."""
        if self.time_source is not None:
            wall_ns += self.time_source.correction_ns()
        self._idx.append(int(index))
        self._wall.append(int(wall_ns))
        self.observations += 1
        while self._idx and self._idx[-1] - self._idx[0] > self.window:
            self._idx.pop(0)
            self._wall.pop(0)
        self._since_fit += 1
        if len(self._idx) < 3 or self._since_fit >= self.refit_every or len(self._idx) <= self.refit_every:
            self._fit()

    @property
    def ready(self) -> bool:
        return bool(self._idx)

    def _fit(self) -> None:
        self._since_fit = 0
        i0, w0 = self._idx[-1], self._wall[-1]
        x = np.array(self._idx, dtype=np.int64) - i0
        y = (np.array(self._wall, dtype=np.int64) - w0).astype(np.float64)
        if len(x) < 3:
            # Too few to fit a slope: nominal rate through the newest observation.
            self._ref_idx, self._ref_ns, self._slope = i0, w0, NS_PER_S / self.fs_hz
            return
        xf = x.astype(np.float64)
        keep = np.ones(len(x), dtype=bool)
        for _ in range(3):
            A = np.column_stack([xf[keep], np.ones(int(keep.sum()))])
            (slope, icpt), *_ = np.linalg.lstsq(A, y[keep], rcond=None)
            r = y - (slope * xf + icpt)
            mad = 1.4826 * float(np.median(np.abs(r[keep] - np.median(r[keep])))) + 1.0
            new = np.abs(r) <= 5 * mad
            if new.sum() < 3 or np.array_equal(new, keep):
                break
            keep = new
        if self.one_sided and len(x) >= 3 * self.envelope_group:
            # Lower envelope: the least delayed observation of each group, then refit.
            g = self.envelope_group
            groups = np.arange(len(x)) // g
            order = np.lexsort((r, groups))
            first = np.r_[True, groups[order][1:] != groups[order][:-1]]
            keep = np.zeros(len(x), dtype=bool)
            keep[order[first]] = True
            A = np.column_stack([xf[keep], np.ones(int(keep.sum()))])
            (slope, icpt), *_ = np.linalg.lstsq(A, y[keep], rcond=None)
            r = y - (slope * xf + icpt)
        self.rejected = int((~keep).sum())
        n = int(keep.sum())
        s = float(np.sqrt(np.sum(r[keep] ** 2) / max(n - 2, 1)))
        # Standard error of the line at x = 0 (the newest observation).
        xm = float(xf[keep].mean())
        sxx = float(np.sum((xf[keep] - xm) ** 2)) or 1.0
        self.fit_sigma_ns = s * float(np.sqrt(1.0 / n + xm * xm / sxx))
        self._ref_idx, self._ref_ns, self._slope = i0, w0 + int(round(icpt)), float(slope)

    @property
    def ppm(self) -> float:
        """Audio clock rate error: positive when the ADC runs fast."""
        return (NS_PER_S / self.fs_hz / self._slope - 1.0) * 1e6

    def t_ns(self, index: float) -> int:
        if not self._idx:
            raise RuntimeError("the sample clock has no observation yet")
        return self._ref_ns + int(round((index - self._ref_idx) * self._slope))

    def quality(self) -> ClockQuality:
        q = self.time_source.quality() if self.time_source is not None else ClockQuality("system", False, 10_000_000)
        return ClockQuality(q.source, q.locked, int(math.hypot(q.sigma_ns, self.fit_sigma_ns)))
