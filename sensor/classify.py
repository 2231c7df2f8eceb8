"""Impulse classification on the node.

Two classifiers behind one interface (``classify(window, fs_hz) -> Verdict``):

- :class:`OnnxClassifier` runs the shipped model (``models/*.onnx`` with its JSON card)
  through onnxruntime on the log-mel patch from :mod:`shotnet.sensor.features`.
- :class:`HeuristicClassifier` ("heuristic-impulse-v0") is the honest fallback: a few
  physical features (rise time, early-energy fraction, high-frequency fraction) scored by
  hand-set logistic weights. It separates sharp impulses from slow ones (door slams,
  thunder) but NOT gunshots from firecrackers, balloon pops or nail guns; every detection
  names which classifier decided (``model``), so nobody mistakes one for the other.

The window passed in starts ``pre_s`` (features spec) before the onset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import FeatureSpec, resample, window_features

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Verdict:
    label: str
    score: float       # probability of label
    p_gunshot: float   # probability of gunshot


class HeuristicClassifier:
    """Hand-set logistic score on physical impulse features (see module docstring)."""

    name = "heuristic-impulse-v0"
    sha256 = hashlib.sha256(name.encode()).hexdigest()[:16]

    def __init__(self, spec: FeatureSpec = FeatureSpec()):
        self.spec = spec

    def features(self, window: np.ndarray, fs_hz: int) -> dict[str, float]:
        x = resample(window, fs_hz, self.spec.fs_hz).astype(np.float64)
        fs = self.spec.fs_hz
        on = int(self.spec.pre_s * fs)
        from .dsp import butter_sos, sosfilt

        x = sosfilt(butter_sos(2, 100, "highpass", fs), x)
        post = x[on:]
        if len(post) < int(0.05 * fs):
            return {"rise_ms": 99.0, "early_frac": 0.0, "hf_frac": 0.0}
        env = np.abs(post)
        peak_i = int(np.argmax(env[: int(0.05 * fs)]))
        rise_ms = 1000.0 * peak_i / fs
        e = post**2
        early = e[: int(0.015 * fs)].sum()
        total = e[: int(0.3 * fs)].sum() + 1e-20
        seg = post[: int(0.02 * fs)]
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
        f = np.fft.rfftfreq(len(seg), 1.0 / fs)
        hf = spec[f >= 1500].sum() / (spec.sum() + 1e-20)
        return {"rise_ms": rise_ms, "early_frac": float(early / total), "hf_frac": float(hf)}

    def classify(self, window: np.ndarray, fs_hz: int) -> Verdict:
        f = self.features(window, fs_hz)
        z = 2.0 - 1.2 * f["rise_ms"] + 5.0 * (f["early_frac"] - 0.5) + 2.0 * (f["hf_frac"] - 0.2)
        p = 1.0 / (1.0 + math.exp(-z))
        if p >= 0.5:
            return Verdict("gunshot", p, p)
        return Verdict("impulse", 1.0 - p, p)


class OnnxClassifier:
    """The shipped ONNX model. Reads its card for classes and the feature recipe."""

    def __init__(self, model_path: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.path = Path(model_path)
        card_path = self.path.with_suffix(".json")
        self.card = json.loads(card_path.read_text())
        self.classes: list[str] = list(self.card["classes"])
        self.spec = FeatureSpec(**self.card["features"])
        blob = self.path.read_bytes()
        self.sha256 = hashlib.sha256(blob).hexdigest()[:16]
        self.name = f"{self.card['name']}-{self.card['version']}"
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # One small window at a time: no arena (it grows to the largest request and keeps it).
        so.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.gun_index = self.classes.index("gunshot")

    def probabilities(self, patches: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of log-mel patches (n, n_mels, n_frames)."""
        logits = self.session.run(None, {self.input_name: patches[:, None].astype(np.float32)})[0]
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def classify(self, window: np.ndarray, fs_hz: int) -> Verdict:
        patch = window_features(window, fs_hz, self.spec)
        p = self.probabilities(patch[None])[0]
        k = int(np.argmax(p))
        return Verdict(self.classes[k], float(p[k]), float(p[self.gun_index]))


def default_model_path() -> Path | None:
    p = MODELS_DIR / "shotnet-impulse.onnx"
    return p if p.exists() and p.with_suffix(".json").exists() else None


def load_classifier(model: str | None = None):
    """``model``: a path to an .onnx, ``"heuristic"``, or None for the shipped model
    (falling back to the heuristic, with a warning, when no model is shipped)."""
    if model == "heuristic":
        return HeuristicClassifier()
    path = Path(model) if model else default_model_path()
    if path is None:
        log.warning("no ONNX model shipped; using %s", HeuristicClassifier.name)
        return HeuristicClassifier()
    return OnnxClassifier(path)
