"""Benchmark scripts report their headline figures here; ``bench/run_all.py`` (``make
bench``) collects them into BENCHMARKS.md and the README's performance table."""

from __future__ import annotations

import json
import os


def record(figure: str, value: str, baseline: str = "—", ratio: str = "—") -> None:
    """One row: what was measured, its value, the baseline measured in the same run (or
    the target), and the ratio. A no-op unless run under ``bench/run_all.py``."""
    path = os.environ.get("SHOTNET_BENCH_JSON")
    if not path:
        return
    row = {"figure": figure, "value": value, "baseline": baseline, "ratio": ratio,
           "command": os.environ.get("SHOTNET_BENCH_CMD", "")}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
