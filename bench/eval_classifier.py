"""Honest evaluation of the shipped classifier on held-out data, with a baseline.

    .venv/bin/python bench/eval_classifier.py [--n 4000] [--hours 0.5] [--quick]

Held out: the corpus generator with other seeds and ranges (more distant, noisier,
weighted toward look-alikes; ``models.corpus.HELD_OUT``), never seen by training. The
baseline is an energy/crest-factor detector (peak-to-RMS of the band-passed window), run
on the same windows. Writes ``docs/figures/classifier_{confusion,roc,pr}.png`` and
``models/eval.json``, and prints recall at fixed false-positive rates for both, false
alarms per sensor-day on a long background stream with look-alikes sprinkled in, and
inference time per window.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfilt
from tqdm import tqdm

from shotnet.models.corpus import CLASSES, HELD_OUT, SOURCES, URBAN, _source, make_window, propagate, urban_sound
from shotnet.sensor.classify import OnnxClassifier, default_model_path
from shotnet.sensor.clock import LinearSampleClock
from shotnet.sensor.features import FeatureSpec, window_features
from shotnet.sensor.node import NodeConfig, NodeCore
from shotnet.sensor.synth import urban_noise

ROOT = Path(__file__).resolve().parent.parent
FIG = ROOT / "docs" / "figures"


def crest_db(x: np.ndarray, fs: int) -> float:
    y = sosfilt(butter(4, [300, 0.45 * fs], "bandpass", fs=fs, output="sos"), x)
    return float(20 * np.log10((np.max(np.abs(y)) + 1e-12) / (np.sqrt(np.mean(y**2)) + 1e-12)))


def held_out(n, seed, spec):
    w = np.asarray(HELD_OUT.class_weights) / np.sum(HELD_OUT.class_weights)
    X, y, base, kinds = [], [], [], []
    for k in tqdm(range(n), desc="held-out set", unit="ex"):
        rng = np.random.default_rng([seed, k])
        c = int(rng.choice(len(CLASSES), p=w))
        x, kind = make_window(rng, CLASSES[c], spec, HELD_OUT)
        X.append(window_features(x, spec.fs_hz, spec))
        y.append(c)
        base.append(crest_db(x, spec.fs_hz))
        kinds.append(kind)
    return np.stack(X), np.array(y), np.array(base), kinds


def roc(scores, pos):
    order = np.argsort(-scores)
    tp = np.cumsum(pos[order]) / max(1, pos.sum())
    fp = np.cumsum(~pos[order]) / max(1, (~pos).sum())
    return np.r_[0, fp], np.r_[0, tp], scores[order]


def recall_at(scores, pos, fpr):
    neg = np.sort(scores[~pos])[::-1]
    k = int(np.floor(fpr * len(neg)))
    thr = neg[k] if k < len(neg) else -np.inf
    return float((scores[pos] > thr).mean()), float(thr)


def long_stream(clf, hours, seed, spec, lookalikes_per_hour=240.0):
    """Urban background with ordinary urban sound and look-alikes sprinkled in, through
    the node pipeline; counts what would be sent as gunshots."""
    fs = spec.fs_hz
    rng = np.random.default_rng(seed)
    seg_s = 60
    n_seg = max(1, int(round(hours * 3600 / seg_s)))
    core = NodeCore(NodeConfig("bg", fs), LinearSampleClock(0, fs), clf)
    n_look = 0
    gun = 0
    for _ in tqdm(range(n_seg), desc="background stream", unit="min"):
        n = seg_s * fs
        x = urban_noise(fs, n, rng, rng.uniform(50, 65))
        x /= np.sqrt(np.mean(x**2))
        for _ in range(rng.poisson(6)):
            k = rng.integers(0, n - fs * 5)
            kind = str(rng.choice(URBAN))
            m = int(rng.uniform(1, 5) * fs)
            x[k:k + m] += urban_sound(fs, m, rng, kind) * 10 ** (rng.uniform(-6, 10) / 20)
        for _ in range(rng.poisson(lookalikes_per_hour * seg_s / 3600)):
            cls = str(rng.choice([c for c in SOURCES if c != "other"]))
            w, kind = _source(fs, rng, cls)
            y = propagate(fs, rng, w, float(np.exp(rng.uniform(np.log(20), np.log(1500)))))
            k = rng.integers(0, n - len(y) - 1)
            e = np.sqrt(np.mean(y[: int(0.05 * fs)] ** 2)) + 1e-20
            x[k:k + len(y)] += y * 10 ** (rng.uniform(0, 30) / 20) / e
            n_look += 1
        x = (x * 0.003).astype(np.float32)
        for a in range(0, n, 800):  # node-sized blocks
            for d in core.feed(x[a:a + 800]):
                if d.label == "gunshot":
                    gun += 1
    dets_total = core.stats.detections
    return {"hours": n_seg * seg_s / 3600, "lookalikes": n_look, "triggers": core.stats.triggers,
            "detections": dets_total, "gunshot_labelled": gun}


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--hours", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.hours = 600, 0.05
    spec = FeatureSpec()
    clf = OnnxClassifier(default_model_path())
    X, y, base, kinds = held_out(args.n, args.seed, spec)
    P = np.concatenate([clf.probabilities(X[a:a + 256]) for a in range(0, len(X), 256)])
    g = CLASSES.index("gunshot")
    pos = y == g
    pg = P[:, g]
    res = {"model": clf.name, "sha256": clf.sha256, "held_out_examples": int(len(y)),
           "held_out_gunshots": int(pos.sum()), "held_out_profile": HELD_OUT.__dict__}
    for fpr in (0.01, 0.02, 0.05):
        rm, tm = recall_at(pg, pos, fpr)
        rb, tb = recall_at(base, pos, fpr)
        res[f"recall_at_fpr_{fpr}"] = {"model": round(rm, 4), "baseline": round(rb, 4),
                                       "ratio": round(rm / rb, 2) if rb > 0 else None, "model_threshold": round(tm, 4)}
    pred = P.argmax(1)
    res["accuracy_8_class"] = round(float((pred == y).mean()), 4)
    res["at_0.5"] = {"gunshot_recall": round(float((pg[pos] >= 0.5).mean()), 4),
                     "lookalike_fpr": round(float((pg[~pos] >= 0.5).mean()), 4)}
    fp_kinds = {}
    for k, p_, is_g in zip(kinds, pg, pos):
        if not is_g and p_ >= 0.5:
            fp_kinds[k] = fp_kinds.get(k, 0) + 1
    res["false_positives_at_0.5_by_kind"] = dict(sorted(fp_kinds.items(), key=lambda kv: -kv[1]))
    cm = np.zeros((len(CLASSES), len(CLASSES)), int)
    for a, b in zip(y, pred):
        cm[a, b] += 1
    res["confusion"] = {"classes": CLASSES, "rows_true_cols_pred": cm.tolist()}

    # inference time per window, one thread
    x1 = X[:1]
    for _ in range(20):
        clf.probabilities(x1)
    t0 = time.perf_counter()
    for _ in range(500):
        clf.probabilities(x1)
    t_inf = (time.perf_counter() - t0) / 500
    win = np.random.default_rng(0).standard_normal(spec.n_samples).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(200):
        window_features(win, spec.fs_hz, spec)
    t_feat = (time.perf_counter() - t0) / 200
    res["inference_ms_per_window"] = round(t_inf * 1e3, 3)
    res["features_ms_per_window"] = round(t_feat * 1e3, 3)
    res["model_size_bytes"] = Path(clf.path).stat().st_size

    bg = long_stream(clf, args.hours, args.seed + 1, spec)
    per_day = bg["gunshot_labelled"] / bg["hours"] * 24
    res["background"] = dict(bg)
    res["background"]["false_alarms_per_sensor_day"] = round(per_day, 2)

    FIG.mkdir(parents=True, exist_ok=True)
    fm, tm_, _ = roc(pg, pos)
    fb, tb_, _ = roc(base, pos)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(fm, tm_, label=f"{clf.name}")
    ax.plot(fb, tb_, label="baseline: crest factor")
    ax.axvline(0.02, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false-positive rate (look-alikes and urban sound)")
    ax.set_ylabel("gunshot recall")
    ax.set_title("ROC, held-out set")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(FIG / "classifier_roc.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for s, name in ((pg, clf.name), (base, "baseline: crest factor")):
        order = np.argsort(-s)
        tp = np.cumsum(pos[order])
        prec = tp / np.arange(1, len(s) + 1)
        rec = tp / pos.sum()
        ax.plot(rec, prec, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall, held-out set")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(FIG / "classifier_pr.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 5))
    cmn = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(cmn, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cmn[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix, held-out set")
    fig.tight_layout()
    fig.savefig(FIG / "classifier_confusion.png", dpi=120)
    plt.close(fig)

    if not args.quick:
        (ROOT / "models" / "eval.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("confusion", "held_out_profile")}, indent=1))
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).parent))
    from _record import record

    r2, r1, r5 = (res[f"recall_at_fpr_{f}"] for f in (0.02, 0.01, 0.05))
    record("classifier, held-out: gunshot recall at 2% look-alike FPR", f"{r2['model']:.3f}",
           f"crest-factor baseline {r2['baseline']:.3f}", f"{r2['ratio']:.0f}x")
    record("classifier, held-out: gunshot recall at 1% / 5% FPR", f"{r1['model']:.3f} / {r5['model']:.3f}",
           f"baseline {r1['baseline']:.3f} / {r5['baseline']:.3f}")
    record("classifier, background stream (urban sound + look-alikes): gunshot labels",
           f"{res['background']['false_alarms_per_sensor_day']:.0f} per sensor-day", "target <= 1")
    record("classifier inference, one window, one core", f"{res['inference_ms_per_window']:.2f} ms "
           f"(+{res['features_ms_per_window']:.2f} ms features)", "target < 1 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
