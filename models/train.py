"""``shotnet train``: build the corpus, train the impulse classifier, export it to ONNX.

Reproduces ``models/shotnet-impulse.onnx`` and its card from a seed::

    shotnet train                 # the shipped model (~25 min on 2 cores)
    shotnet train --quick --out /tmp/m   # a small run for tests

The network is a small CNN on the log-mel patch of :mod:`shotnet.sensor.features` (the
node computes exactly the same patch). Input normalisation constants are baked into the
graph, so the node feeds raw log-mel. Nodes need only onnxruntime; torch is for training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from shotnet.sensor.features import FeatureSpec

from .corpus import CLASSES, TRAIN, build, triggered_background

MODELS_DIR = Path(__file__).resolve().parent
NAME = "shotnet-impulse"
VERSION = "1.0.0"


def make_model(n_classes: int, mean: float, std: float):
    import torch
    from torch import nn

    class ImpulseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(float(mean)))
            self.register_buffer("std", torch.tensor(float(std)))

            def block(i, o, pool=True):
                layers = [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
                if pool:
                    layers.append(nn.MaxPool2d(2))
                return layers

            self.features = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), *block(64, 64, pool=False))
            self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, n_classes))

        def forward(self, x):  # x: (batch, 1, n_mels, n_frames) raw log-mel
            h = self.features((x - self.mean) / self.std)
            h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
            return self.head(h)

    return ImpulseNet()


def train(out_dir: Path, n_train: int, n_val: int, epochs: int, seed: int, workers: int, batch: int = 128,
          progress: bool = True, background_minutes: int = 0) -> dict:
    import torch
    from torch import nn
    from tqdm import tqdm

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, workers))
    spec = FeatureSpec()
    t_start = time.time()
    Xtr, ytr, _ = build(n_train, seed, TRAIN, spec, workers, progress, "training corpus")
    if background_minutes:
        # Hard negatives: what the node's trigger actually picks out of ordinary urban sound.
        Xbg = triggered_background(background_minutes, seed, spec, workers, progress)
        Xtr = np.concatenate([Xtr, Xbg])
        ytr = np.concatenate([ytr, np.full(len(Xbg), CLASSES.index("other"), np.int64)])
    n_bg = len(Xtr) - n_train
    Xva, yva, _ = build(n_val, seed + 1, TRAIN, spec, workers, progress, "validation corpus")
    t_data = time.time() - t_start
    mean, std = float(Xtr.astype(np.float32).mean()), float(Xtr.astype(np.float32).std())
    model = make_model(len(CLASSES), mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(ytr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    Xt = torch.from_numpy(Xtr.astype(np.float32))[:, None]
    yt = torch.from_numpy(ytr)
    Xv = torch.from_numpy(Xva.astype(np.float32))[:, None]
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(total=steps, desc="training", unit="batch", disable=not progress)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        tot = 0.0
        for a in range(0, len(perm), batch):
            idx = perm[a:a + batch]
            xb = Xt[idx]
            # augmentation: small time shifts (picker jitter beyond the corpus's) and gain
            # in log domain (the window is peak-normalised, so gain only moves the floor)
            shift = int(torch.randint(-2, 3, (1,), generator=gen))
            if shift:
                xb = torch.roll(xb, shift, dims=3)
            opt.zero_grad()
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            bar.update(1)
        model.eval()
        with torch.no_grad():
            pv = torch.cat([model(Xv[a:a + 512]) for a in range(0, len(Xv), 512)]).argmax(1).numpy()
        acc = float((pv == yva).mean())
        history.append({"epoch": ep + 1, "loss": round(tot / len(yt), 4), "val_acc": round(acc, 4)})
        bar.set_postfix(loss=f"{tot / len(yt):.3f}", val_acc=f"{acc:.3f}")
    bar.close()
    t_train = time.time() - t_start - t_data

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{NAME}.onnx"
    model.eval()
    dummy = torch.zeros(1, 1, spec.n_mels, spec.n_frames)
    torch.onnx.export(model, dummy, str(onnx_path), input_names=["logmel"], output_names=["logits"],
                      dynamic_axes={"logmel": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    parity = onnx_parity(model, onnx_path, Xv[:256])
    with torch.no_grad():
        logits = torch.cat([model(Xv[a:a + 512]) for a in range(0, len(Xv), 512)])
    p = torch.softmax(logits, 1).numpy()
    val = quick_metrics(p, yva)
    blob = onnx_path.read_bytes()
    card = {
        "name": NAME, "version": VERSION, "task": "classify a candidate impulse window",
        "classes": CLASSES, "gunshot_class": "gunshot",
        "features": spec.to_dict(),
        "feature_recipe": ("window of win_s s starting pre_s before the picked onset, resampled to fs_hz, "
                           "mean removed, peak-normalised; periodic-Hann STFT (n_fft, hop, centred, zero pad), "
                           "power, Slaney mel filterbank (n_mels, fmin_hz..fmax_hz), natural log(x + log_floor); "
                           "code: shotnet.sensor.features.window_features"),
        "input": {"name": "logmel", "shape": ["batch", 1, spec.n_mels, spec.n_frames], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", len(CLASSES)], "note": "softmax gives probabilities"},
        "architecture": "4 conv blocks (16-32-64-64 ch, BN, ReLU, 3 max-pools), global mean+max pool, linear",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "size_bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
        "training": {
            "seed": seed, "examples": int(n_train), "node_triggered_background_examples": int(n_bg),
            "background_minutes": int(background_minutes), "validation_examples": int(n_val), "epochs": epochs,
            "batch": batch, "optimizer": "AdamW lr 3e-3 one-cycle, label smoothing 0.05",
            "data_seconds": round(t_data, 1), "train_seconds": round(t_train, 1), "history": history,
            "data": [{
                "source": "shotnet.models.corpus (physically based synthesis, generated at training time)",
                "licence": "Apache-2.0 (this repository's code; no recordings)",
                "content": ("gunshots: handgun, rifle, shotgun, suppressed, with and without ballistic crack, doubles, "
                            "automatic bursts, indoor heard outside; look-alikes: firecrackers and strings, aerial "
                            "fireworks, backfires, door and dumpster-lid slams, claps, hammering, nail guns, balloon "
                            "and bag pops, dropped objects, thunder; urban sound: traffic, sirens, speech, music, "
                            "dogs, wind, rain; propagation 10 m - 1.5 km with ISO 9613-1 absorption, ground "
                            "reflection, street reverberation, facade echoes; SNR -5..30 dB"),
            }, {
                "source": "shotnet.models.corpus.triggered_background (class 'other')",
                "licence": "Apache-2.0 (generated)",
                "content": "windows the node's own trigger picks out of synthetic urban background: "
                           "traffic, sirens, speech, music, dogs, wind, rain",
            }],
            "real_recordings": "none in this version",
        },
        "metrics_validation": val,
        "parity_onnx_vs_torch_max_abs_logit_diff": parity,
    }
    (out_dir / f"{NAME}.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def onnx_parity(model, onnx_path: Path, X) -> float:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(X).numpy()
    got = sess.run(None, {"logmel": X.numpy()})[0]
    return float(np.max(np.abs(ref - got)))


def quick_metrics(p: np.ndarray, y: np.ndarray) -> dict:
    g = CLASSES.index("gunshot")
    is_gun = y == g
    acc = float((p.argmax(1) == y).mean())
    pg = p[:, g]
    out = {"accuracy": round(acc, 4), "n": int(len(y))}
    neg = np.sort(pg[~is_gun])[::-1]
    for fpr in (0.01, 0.02, 0.05):
        k = max(0, int(np.floor(fpr * len(neg))) - 1)
        thr = float(neg[k]) if len(neg) else 0.5
        out[f"gunshot_recall_at_fpr_{fpr}"] = round(float((pg[is_gun] > thr).mean()), 4)
    out["gunshot_recall_at_0.5"] = round(float((pg[is_gun] >= 0.5).mean()), 4)
    out["lookalike_fpr_at_0.5"] = round(float((pg[~is_gun] >= 0.5).mean()), 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet train", description="Train and export the impulse classifier.")
    ap.add_argument("--out", default=str(MODELS_DIR), help="where to write the .onnx and its card")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--examples", type=int, default=32000)
    ap.add_argument("--background-minutes", type=int, default=120,
                    help="minutes of urban background run through the node trigger for hard negatives")
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a small run (1,500 examples, 2 epochs) for tests")
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("shotnet train needs PyTorch: .venv/bin/pip install torch==2.13.0 onnx", flush=True)
        return 2
    n, ep, bg = (1500, 2, 10) if args.quick else (args.examples, args.epochs, args.background_minutes)
    card = train(Path(args.out), n, max(300, n // 8), ep, args.seed, args.workers, background_minutes=bg)
    print(json.dumps({"model": str(Path(args.out) / f"{NAME}.onnx"), "size_bytes": card["size_bytes"],
                      "validation": card["metrics_validation"],
                      "parity": card["parity_onnx_vs_torch_max_abs_logit_diff"]}))
    return 0
