"""Audio sources behind one interface: a simulated scene, a WAV file, a live microphone.

A source yields :class:`Block` objects: mono float32 samples in [-1, 1] and the absolute
index of the first sample. The node never asks a source for wall time; time comes from
the node's clock (:mod:`shotnet.sensor.clock`).
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from .contract import NS_PER_S

log = logging.getLogger(__name__)


@dataclass
class Block:
    samples: np.ndarray  # float32, mono
    index: int           # absolute index of samples[0]
    adc_time_s: float | None = None  # PortAudio ADC time of samples[0], when valid
    wall_ns: int | None = None       # system wall time of samples[0] (live capture)
    wall_exact: bool = False         # True: from the ADC time; False: callback time (late by jitter)


class AudioSource(Protocol):
    fs_hz: int

    def blocks(self, block_frames: int) -> Iterator[Block]: ...


class ArraySource:
    """A source over an in-memory array, optionally paced to real time so that sample
    ``j`` is delivered no earlier than wall time ``t0_ns + j/fs``."""

    def __init__(self, samples: np.ndarray, fs_hz: int, *, realtime_t0_ns: int | None = None):
        self.samples = np.asarray(samples, dtype=np.float32)
        self.fs_hz = int(fs_hz)
        self.realtime_t0_ns = realtime_t0_ns

    def blocks(self, block_frames: int) -> Iterator[Block]:
        n = len(self.samples)
        for a in range(0, n, block_frames):
            b = min(n, a + block_frames)
            if self.realtime_t0_ns is not None:
                due_ns = self.realtime_t0_ns + int(b * NS_PER_S / self.fs_hz)
                wait = (due_ns - time.time_ns()) / NS_PER_S
                if wait > 0:
                    time.sleep(wait)
            yield Block(self.samples[a:b], a)


class SceneSource(ArraySource):
    """One sensor's track of a simulated :class:`~shotnet.sensor.scene.Scene`, rendered
    in memory (nothing is written to disk)."""

    def __init__(self, scene, sensor_id: str, *, realtime: bool = False):
        from .scene import render_sensor

        i = scene.layout.index()[sensor_id]
        super().__init__(render_sensor(scene, i), scene.fs_hz,
                         realtime_t0_ns=scene.t_start_ns if realtime else None)
        self.t_start_ns = scene.t_start_ns


class WavSource:
    """A sound file (any format libsndfile reads), mixed down to mono, read in blocks."""

    def __init__(self, path: str | Path, *, realtime_t0_ns: int | None = None):
        import soundfile as sf

        self.path = Path(path)
        self.realtime_t0_ns = realtime_t0_ns      # pace: sample j no earlier than t0 + j/fs
        info = sf.info(str(self.path))
        self.fs_hz = int(info.samplerate)
        self.channels = int(info.channels)
        self.frames = int(info.frames)

    def blocks(self, block_frames: int) -> Iterator[Block]:
        import soundfile as sf

        idx = 0
        for blk in sf.blocks(str(self.path), blocksize=block_frames, dtype="float32", always_2d=True):
            if self.realtime_t0_ns is not None:
                wait = (self.realtime_t0_ns + int((idx + len(blk)) * NS_PER_S / self.fs_hz) - time.time_ns()) / NS_PER_S
                if wait > 0:
                    time.sleep(wait)
            yield Block(blk.mean(axis=1).astype(np.float32), idx)
            idx += len(blk)


class MicSource:
    """Live capture through sounddevice (PortAudio).

    The callback only copies samples and timing into a queue; all work happens in the
    node thread. Each block carries the system wall time of its first sample: PortAudio's
    ADC time mapped to the wall clock (wall now - (stream now - ADC time)) where the
    host API provides it, otherwise the callback's wall time minus the block length
    (``wall_exact=False``: late by the scheduling jitter; the sample clock then fits the
    lower envelope). Overflows are counted, never hidden."""

    def __init__(self, fs_hz: int = 48000, device=None, channels: int = 1, latency="high"):
        self.fs_hz = int(fs_hz)
        self.device = device if device not in ("", None) else None
        self.channels = channels
        self.latency = latency
        self.overflows = 0
        self._q: queue.Queue = queue.Queue(maxsize=1000)
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    def blocks(self, block_frames: int) -> Iterator[Block]:
        import sounddevice as sd

        fs = self.fs_hz

        def callback(indata, frames, time_info, status):
            wall = time.time_ns()
            if status.input_overflow:
                self.overflows += 1
            adc, cur = time_info.inputBufferAdcTime, time_info.currentTime
            if adc and cur and 0 <= cur - adc < 1.0:
                first_ns, exact = wall - int((cur - adc) * NS_PER_S), True
            else:
                first_ns, exact = wall - int(frames * NS_PER_S / fs), False
            try:
                self._q.put_nowait((indata.copy(), adc if exact else None, first_ns, exact))
            except queue.Full:
                self.overflows += 1

        idx = 0
        with sd.InputStream(samplerate=self.fs_hz, blocksize=block_frames, device=self.device,
                            channels=self.channels, dtype="float32", latency=self.latency,
                            callback=callback):
            while not self._stop:
                try:
                    data, adc, first_ns, exact = self._q.get(timeout=0.5)
                except queue.Empty:
                    continue
                mono = data.mean(axis=1).astype(np.float32)
                yield Block(mono, idx, adc, first_ns, exact)
                idx += len(mono)
