"""``shotnet classify FILE [...]``: find impulses in sound files and classify them.

One JSON line per file: ``{"file", "fs_hz", "duration_s", "model", "impulses": [{"offset_s",
"label", "score", "p_gunshot"}]}``. Any sample rate and channel count (mixed to mono; the
classifier resamples). An unreadable file gets ``{"file", "error"}`` and the others still run.
"""

from __future__ import annotations

import argparse
import json


from .classify import load_classifier
from .clock import LinearSampleClock
from .node import NodeConfig, NodeCore, run_node
from .sources import WavSource


def classify_file(path: str, classifier, threshold: float) -> dict:
    src = WavSource(path)
    clock = LinearSampleClock(0, src.fs_hz)
    core = NodeCore(NodeConfig("file", src.fs_hz), clock, classifier)
    dets = []
    run_node(core, src, dets.append, block_frames=max(256, src.fs_hz // 20))
    imps = []
    for d in dets:
        label, score = d.label, d.score
        if label == "gunshot" and d.p_gunshot < threshold:
            # Below the caller's threshold a gunshot call is only "an impulse".
            label, score = "impulse", 1.0 - d.p_gunshot
        elif label != "gunshot" and d.p_gunshot >= threshold:
            label, score = "gunshot", d.p_gunshot
        imps.append({"offset_s": round(d.t_ns / 1e9, 5), "label": label, "score": round(score, 4),
                     "p_gunshot": round(d.p_gunshot, 4)})
    return {"file": path, "fs_hz": src.fs_hz, "duration_s": round(src.frames / src.fs_hz, 3),
            "model": classifier.name, "impulses": imps,
            "nonfinite_blocks": core.stats.nonfinite_blocks, "clipped_samples": core.stats.clipped_samples}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet classify", description="Find and classify impulses in sound files.")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--threshold", type=float, default=0.5,
                    help="gunshot probability at or above which an impulse is called a gunshot (else 'impulse' "
                         "or the model's other label)")
    ap.add_argument("--model", default=None, help="ONNX model path, or 'heuristic'")
    args = ap.parse_args(argv)
    clf = load_classifier(args.model)
    rc = 0
    for f in args.files:
        try:
            out = classify_file(f, clf, args.threshold)
        except Exception as exc:  # one bad file must not stop the others
            out = {"file": f, "error": f"{type(exc).__name__}: {exc}"}
            rc = 1
        print(json.dumps(out), flush=True)
    return rc
