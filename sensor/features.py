"""Classifier features, in one place for training and for the node, so they cannot drift.

The classifier sees a fixed window around each onset: ``pre_s`` before it and the rest
after, resampled to ``fs_hz``, peak-normalised (level is not a feature: a near door slam
is louder than a far gunshot), and turned into a log-mel patch with numpy only (the node
does not import librosa; the tests check this against librosa).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class FeatureSpec:
    fs_hz: int = 16000
    pre_s: float = 0.05
    win_s: float = 0.5
    n_fft: int = 512
    hop: int = 128
    n_mels: int = 64
    fmin_hz: float = 50.0
    fmax_hz: float = 8000.0
    log_floor: float = 1e-6

    @property
    def n_samples(self) -> int:
        return int(round(self.win_s * self.fs_hz))

    @property
    def n_frames(self) -> int:
        return 1 + self.n_samples // self.hop

    def to_dict(self) -> dict:
        return asdict(self)


def _hz_to_mel(f):
    # Slaney-style mel scale (librosa's default, htk=False).
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep, mels)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@lru_cache(maxsize=8)
def mel_filterbank(fs_hz: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape (n_mels, n_fft//2+1); matches
    ``librosa.filters.mel(sr, n_fft=..., n_mels=..., fmin=..., fmax=...)``."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / fs_hz)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin_hz), _hz_to_mel(fmax_hz), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(np.float32)


def resample(x: np.ndarray, fs_in: int, fs_out: int) -> np.ndarray:
    """Polyphase resampling (scipy's algorithm and filter, :func:`dsp.resample_poly`)."""
    if int(fs_in) == int(fs_out):
        return np.asarray(x, dtype=np.float32)
    from math import gcd

    from .dsp import resample_poly

    g = gcd(int(fs_in), int(fs_out))
    return resample_poly(np.asarray(x, dtype=np.float64), int(fs_out) // g, int(fs_in) // g).astype(np.float32)


def normalise_window(x: np.ndarray, spec: FeatureSpec = FeatureSpec()) -> np.ndarray:
    """Pad/crop to ``spec.n_samples`` and scale so the peak is 1 (silence stays 0)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.zeros(spec.n_samples, dtype=np.float32)
    n = min(len(x), spec.n_samples)
    out[:n] = x[:n]
    out -= out.mean()
    peak = float(np.max(np.abs(out)))
    return out / peak if peak > 0 else out


def logmel(x: np.ndarray, spec: FeatureSpec = FeatureSpec()) -> np.ndarray:
    """Log-mel patch of one normalised window: shape (n_mels, n_frames), float32.

    Frames are centred with zero padding (``librosa.feature.melspectrogram(center=True,
    pad_mode="constant")``), power spectrogram, Hann window, natural log with a floor."""
    x = np.asarray(x, dtype=np.float32)
    pad = spec.n_fft // 2
    xp = np.pad(x, (pad, pad))
    n_frames = 1 + (len(xp) - spec.n_fft) // spec.hop
    idx = np.arange(spec.n_fft)[None, :] + spec.hop * np.arange(n_frames)[:, None]
    win = np.hanning(spec.n_fft + 1)[:-1].astype(np.float32)  # periodic Hann, as scipy/librosa
    frames = xp[idx] * win
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    fb = mel_filterbank(spec.fs_hz, spec.n_fft, spec.n_mels, spec.fmin_hz, spec.fmax_hz)
    mel = fb @ power.T.astype(np.float32)
    return np.log(mel + spec.log_floor).astype(np.float32)


def window_features(x: np.ndarray, fs_in: int, spec: FeatureSpec = FeatureSpec()) -> np.ndarray:
    """Full recipe from a raw window (onset at ``spec.pre_s``) at any rate to a patch."""
    return logmel(normalise_window(resample(x, fs_in, spec.fs_hz), spec), spec)
