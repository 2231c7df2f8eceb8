"""The node's processing core: audio blocks in, detections out.

``NodeCore.feed(block)`` returns the detections completed by that block; it owns no
sockets, threads or clocks of its own (the clock is injected), so the same code runs on a
rooftop, in the demo and in tests. :func:`run_node` is the loop around it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .classify import HeuristicClassifier
from .contract import Detection
from .features import FeatureSpec
from .trigger import Trigger, TriggerConfig, pick_onset, pick_sigma_ns

log = logging.getLogger(__name__)


class RingBuffer:
    """Fixed-capacity ring of float32 samples addressed by absolute sample index."""

    def __init__(self, capacity: int):
        self.buf = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.end = 0  # absolute index one past the newest sample

    @property
    def start(self) -> int:
        return max(0, self.end - self.capacity)

    def write(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if len(x) >= self.capacity:
            x = x[-self.capacity:]
            self.end += len(x) - self.capacity  # account for dropped head
        a = self.end % self.capacity
        n1 = min(len(x), self.capacity - a)
        self.buf[a:a + n1] = x[:n1]
        self.buf[: len(x) - n1] = x[n1:]
        self.end += len(x)

    def read(self, a: int, b: int) -> np.ndarray | None:
        """Samples ``[a, b)``, or None if not all of them are held."""
        if a < self.start or b > self.end or b < a:
            return None
        i = np.arange(a, b) % self.capacity
        return self.buf[i].copy()


@dataclass
class NodeStats:
    blocks: int = 0
    samples: int = 0
    triggers: int = 0
    detections: int = 0
    unpickable: int = 0
    echoes_suppressed: int = 0
    nonfinite_blocks: int = 0
    clipped_samples: int = 0
    by_label: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NodeConfig:
    sensor_id: str
    fs_hz: int
    trigger: TriggerConfig = TriggerConfig()
    ring_s: float = 4.0
    clip_pre_s: float = 1.0
    clip_post_s: float = 0.45          # what is already held when the detection is made
    clip_labels: tuple[str, ...] = ("gunshot",)
    echo_window_s: float = 0.3         # an impulse this soon after a louder one...
    echo_ratio: float = 0.35           # ...and weaker than this fraction of its peak is an echo
    position: tuple[float, float, float] | None = None  # lat, lon, alt_m


class NodeCore:
    """Trigger -> pick -> classify -> Detection, block by block."""

    def __init__(self, cfg: NodeConfig, clock, classifier=None, first_seq: int = 0):
        self.cfg = cfg
        self.clock = clock
        self.classifier = classifier or HeuristicClassifier()
        self.spec: FeatureSpec = self.classifier.spec
        self.trigger = Trigger(cfg.fs_hz, cfg.trigger)
        cap = int(cfg.ring_s * cfg.fs_hz)
        self.raw = RingBuffer(cap)
        self.filt = RingBuffer(cap)
        self.pending: deque[int] = deque()
        self.seq = first_seq
        self.stats = NodeStats()
        fs = cfg.fs_hz
        self._pre = int(math.ceil(self.spec.pre_s * fs))
        self._post = int(math.ceil((self.spec.win_s - self.spec.pre_s) * fs))
        self._pick_pre = int(cfg.trigger.pick_pre_s * fs) + 2
        self._recent_peaks: deque[tuple[int, float]] = deque(maxlen=32)  # (onset index, peak)

    def feed(self, samples: np.ndarray) -> list[Detection]:
        x = np.asarray(samples, dtype=np.float32)
        self.stats.blocks += 1
        self.stats.samples += len(x)
        if not np.all(np.isfinite(x)):
            # NaN/inf from a broken driver: count it and feed silence so the filters and
            # STA/LTA state stay finite; never trigger on garbage.
            self.stats.nonfinite_blocks += 1
            log.warning("%s: non-finite samples in block %d; replaced by silence",
                        self.cfg.sensor_id, self.stats.blocks)
            x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
        n_clip = int(np.count_nonzero(np.abs(x) >= 0.999))
        if n_clip:
            # Full scale is 1.0; a float source beyond it is clipping (counted), and is
            # clipped here so levels stay within the contract.
            self.stats.clipped_samples += n_clip
            x = np.clip(x, -1.0, 1.0)
        hits, y = self.trigger.process(x)
        self.raw.write(x)
        self.filt.write(y.astype(np.float32))
        self.stats.triggers += len(hits)
        self.pending.extend(hits)
        return self._drain(final=False)

    def flush(self) -> list[Detection]:
        """Complete pending triggers with whatever audio is held (end of stream)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[Detection]:
        out = []
        while self.pending:
            trig = self.pending[0]
            if not final and self.raw.end < trig + self._post + 2:
                break
            self.pending.popleft()
            det = self._detect(trig)
            if det is not None:
                out.append(det)
        return out

    def _detect(self, trig: int) -> Detection | None:
        fs = self.cfg.fs_hz
        a = max(self.filt.start, trig - self._pick_pre - 2)
        b = min(self.filt.end, trig + int(0.03 * fs))
        seg = self.filt.read(a, b)
        pick = pick_onset(seg, a, trig, fs, self.cfg.trigger) if seg is not None else None
        if pick is None:
            self.stats.unpickable += 1
            return None
        onset = int(math.floor(pick.index))
        # Facade echoes of a shot arrive within a few hundred ms and weaker; a burst's
        # rounds are about as loud as each other. Drop the former, keep the latter.
        win = int(self.cfg.echo_window_s * fs)
        louder = [p for (o, p) in self._recent_peaks if 0 < onset - o <= win]
        self._recent_peaks.append((onset, pick.peak))
        if louder and pick.peak < self.cfg.echo_ratio * max(louder):
            self.stats.echoes_suppressed += 1
            return None
        wa, wb = onset - self._pre, min(onset + self._post, self.raw.end)
        window = self.raw.read(max(wa, self.raw.start), wb)
        if window is None:
            self.stats.unpickable += 1
            return None
        if wa < self.raw.start:
            window = np.concatenate([np.zeros(self.raw.start - wa, np.float32), window])
        verdict = self.classifier.classify(window, fs)
        q = self.clock.quality()
        sigma = int(math.hypot(pick_sigma_ns(pick.snr_db, fs), q.sigma_ns))
        peak = float(np.max(np.abs(window))) if len(window) else 0.0
        clip = None
        if verdict.label in self.cfg.clip_labels:
            ca = max(self.raw.start, onset - int(self.cfg.clip_pre_s * fs))
            cb = min(self.raw.end, onset + int(self.cfg.clip_post_s * fs))
            clip = self.raw.read(ca, cb).astype(np.float16).tobytes()
        lat = lon = alt = None
        if self.cfg.position:
            lat, lon, alt = self.cfg.position
        det = Detection(
            sensor_id=self.cfg.sensor_id, seq=self.seq, t_ns=self.clock.t_ns(pick.index),
            t_sigma_ns=sigma, label=verdict.label, score=round(verdict.score, 6),
            p_gunshot=round(verdict.p_gunshot, 6), clock_source=q.source, clock_locked=q.locked,
            clock_sigma_ns=q.sigma_ns, lat=lat, lon=lon, alt_m=alt,
            peak_dbfs=round(20 * math.log10(max(peak, 1e-12)), 2), snr_db=round(pick.snr_db, 2),
            model=self.classifier.name, model_sha256=self.classifier.sha256,
            clip_fs_hz=fs if clip is not None else None, clip=clip)
        self.seq += 1
        self.stats.detections += 1
        self.stats.by_label[verdict.label] = self.stats.by_label.get(verdict.label, 0) + 1
        return det


def run_node(core: NodeCore, source, emit: Callable[[Detection], None], block_frames: int = 800,
             should_stop: Callable[[], bool] = lambda: False) -> NodeStats:
    """Feed every block of ``source`` through ``core`` and ``emit`` each detection."""
    if int(source.fs_hz) != int(core.cfg.fs_hz):
        raise ValueError(f"{core.cfg.sensor_id}: source runs at {source.fs_hz} Hz but the node is "
                         f"configured for {core.cfg.fs_hz} Hz")
    for blk in source.blocks(block_frames):
        for det in core.feed(blk.samples):
            emit(det)
        if should_stop():
            break
    for det in core.flush():
        emit(det)
    return core.stats


def detect_all(samples: np.ndarray, fs_hz: int, sensor_id: str, t0_ns: int, classifier=None,
               block_frames: int = 800) -> list[Detection]:
    """Convenience for tests and batch tools: run a whole array through a node core."""
    from .clock import LinearSampleClock
    from .sources import ArraySource

    core = NodeCore(NodeConfig(sensor_id, fs_hz), LinearSampleClock(t0_ns, fs_hz), classifier)
    out: list[Detection] = []
    run_node(core, ArraySource(samples, fs_hz), out.append, block_frames)
    return out


__all__ = ["NodeCore", "NodeConfig", "NodeStats", "RingBuffer", "run_node", "detect_all"]
