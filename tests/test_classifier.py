"""The shipped classifier: card, features, behaviour on clear cases, the classify command,
and parity between the training framework and the exported ONNX graph."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from shotnet.models.corpus import CLASSES, propagate
from shotnet.sensor.classify import MODELS_DIR, OnnxClassifier, default_model_path, load_classifier
from shotnet.sensor.features import FeatureSpec, logmel, mel_filterbank, normalise_window, window_features
from shotnet.sensor.synth import gunshot, lookalike, urban_noise


@pytest.fixture(scope="module")
def clf():
    path = default_model_path()
    assert path is not None, "models/shotnet-impulse.onnx and its card must ship"
    return OnnxClassifier(path)


def test_card_describes_the_shipped_file(clf):
    card = clf.card
    blob = clf.path.read_bytes()
    assert card["sha256"] == hashlib.sha256(blob).hexdigest()
    assert card["size_bytes"] == len(blob) < 2 * 1024 * 1024
    assert card["classes"] == CLASSES and card["classes"][0] == "gunshot"
    assert FeatureSpec(**card["features"]) == FeatureSpec()
    for k in ("version", "training", "metrics_validation", "feature_recipe"):
        assert k in card
    assert card["parity_onnx_vs_torch_max_abs_logit_diff"] < 1e-4


def test_mel_filterbank_matches_librosa():
    import librosa

    spec = FeatureSpec()
    ours = mel_filterbank(spec.fs_hz, spec.n_fft, spec.n_mels, spec.fmin_hz, spec.fmax_hz)
    ref = librosa.filters.mel(sr=spec.fs_hz, n_fft=spec.n_fft, n_mels=spec.n_mels, fmin=spec.fmin_hz,
                              fmax=spec.fmax_hz)
    assert np.allclose(ours, ref, atol=1e-6)


def test_logmel_matches_librosa(rng):
    import librosa

    spec = FeatureSpec()
    x = normalise_window(rng.standard_normal(spec.n_samples).astype(np.float32), spec)
    ours = logmel(x, spec)
    ref = np.log(librosa.feature.melspectrogram(
        y=x, sr=spec.fs_hz, n_fft=spec.n_fft, hop_length=spec.hop, n_mels=spec.n_mels, fmin=spec.fmin_hz,
        fmax=spec.fmax_hz, center=True, pad_mode="constant", power=2.0) + spec.log_floor)
    assert ours.shape == ref.shape == (spec.n_mels, spec.n_frames)
    assert np.max(np.abs(ours - ref)) < 1e-3


def _window(rng, wave, distance_m, snr_db, spec=FeatureSpec()):
    fs = spec.fs_hz
    x = urban_noise(fs, spec.n_samples, rng, 55.0)
    x /= np.sqrt(np.mean(x**2))
    y = propagate(fs, rng, wave, distance_m)
    on = int(spec.pre_s * fs)
    y = y[: spec.n_samples - on]
    x[on:] += y * 10 ** (snr_db / 20) / np.sqrt(np.mean(y[: int(0.05 * fs)] ** 2))
    return x.astype(np.float32)


def test_clear_gunshots_and_slams_are_told_apart(clf, rng):
    fs = clf.spec.fs_hz
    guns = [clf.classify(_window(rng, gunshot(fs, rng, "handgun"), 150.0, 25.0), fs) for _ in range(12)]
    slams = [clf.classify(_window(rng, lookalike(fs, rng, "door_slam"), 40.0, 25.0), fs) for _ in range(12)]
    assert sum(v.label == "gunshot" for v in guns) >= 10
    assert sum(v.label == "gunshot" for v in slams) <= 1


def test_any_rate_is_resampled(clf, rng):
    fs = clf.spec.fs_hz
    x = _window(rng, gunshot(fs, rng, "rifle"), 100.0, 25.0)
    from scipy.signal import resample_poly

    x48 = resample_poly(x, 3, 1).astype(np.float32)
    a = window_features(x, fs, clf.spec)
    b = window_features(x48, 48000, clf.spec)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_classify_command(tmp_path, clf, rng):
    fs = 48000
    x = urban_noise(fs, fs * 3, rng, 55.0)
    g = propagate(fs, rng, gunshot(fs, rng, "handgun"), 200.0)  # a handgun 200 m away
    x[int(1.5 * fs):int(1.5 * fs) + len(g)] += g
    x /= 63.2  # 130 dB SPL full scale
    sf.write(tmp_path / "shot.wav", np.stack([x, x], axis=1), fs, subtype="FLOAT")  # stereo, 48 kHz
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    out = subprocess.run([sys.executable, "-m", "shotnet", "classify", str(tmp_path / "broken.wav"),
                          str(tmp_path / "shot.wav")], capture_output=True, text=True, timeout=120)
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    assert out.returncode == 1 and len(lines) == 2
    assert "error" in lines[0]
    imps = lines[1]["impulses"]
    assert lines[1]["fs_hz"] == 48000 and imps
    first = imps[0]
    assert abs(first["offset_s"] - 1.5) < 0.005 and first["label"] == "gunshot"


def test_nodes_use_the_model_by_default():
    c = load_classifier()
    assert isinstance(c, OnnxClassifier) and c.path.parent == MODELS_DIR


def test_training_parity_quick(tmp_path):
    """A quick training run exports an ONNX graph that agrees with torch."""
    pytest.importorskip("torch")
    from shotnet.models.train import main

    assert main(["--quick", "--out", str(tmp_path), "--workers", "1"]) == 0
    card = json.loads((tmp_path / "shotnet-impulse.json").read_text())
    assert card["parity_onnx_vs_torch_max_abs_logit_diff"] < 1e-4
    OnnxClassifier(tmp_path / "shotnet-impulse.onnx")
