"""Clocks: map a sample index to disciplined wall time, and say how good that time is.

Every detection carries the node clock's quality (source, locked, 1-sigma in ns) so the
locator can weight or exclude it. The simplest clock is linear: sample ``j`` is at
``t0_ns + j * 1e9 / fs``; the field node (live capture) fits that line continuously
against GPS/PTP-disciplined wall time.
"""

from __future__ import annotations

from dataclasses import dataclass

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
