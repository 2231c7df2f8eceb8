"""``make bench``: run every benchmark, write BENCHMARKS.md, refresh the README's table.

Each script prints its full report (kept verbatim in BENCHMARKS.md) and records its
headline figures through ``bench/_record.py``: the figure, the value, the baseline run
in the same process (or the target), the ratio, and the command that produced it.
The README's performance table, between its ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` markers, is rewritten from the same rows (plus the demo's, which
``make demo`` prints and which are kept as they are).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["bench_solver.py", "bench_locator.py", "bench_robustness.py", "bench_node.py", "bench_cameras.py", "eval_classifier.py",
           "bench_load.py", "bench_load.py --rate 25 --duration-s 60 --gunshots 6",
           "bench_load.py --rate 40 --duration-s 60 --gunshots 6",
           "bench_load.py --rate 60 --duration-s 180 --gunshots 12 --figure docs/figures/load_2400.png"]


def table(rows: list[dict]) -> str:
    out = ["| figure | value | baseline or target | ratio | command |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['figure']} | {r['value']} | {r['baseline']} | {r['ratio']} | `{r['command']}` |")
    return "\n".join(out)


def main(argv=None) -> int:
    rows, reports = [], []
    t_all = time.time()
    for entry in SCRIPTS:
        script, *args = entry.split()
        cmd = f".venv/bin/python bench/{entry}"
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as tmp:
            env = dict(os.environ, SHOTNET_BENCH_JSON=tmp.name, SHOTNET_BENCH_CMD=cmd)
            print(f"== {cmd}", flush=True)
            t0 = time.time()
            res = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                                 capture_output=True, text=True)
            sys.stdout.write(res.stdout)
            if res.returncode != 0:
                sys.stderr.write(res.stderr[-4000:])
                print(f"{script} failed with exit code {res.returncode}", file=sys.stderr)
                return 1
            rows += [json.loads(x) for x in Path(tmp.name).read_text().splitlines() if x.strip()]
            reports.append((cmd, res.stdout.rstrip(), time.time() - t0))
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    md = ["# Benchmarks", "",
          f"Written by `make bench` (`bench/run_all.py`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, in {time.time() - t_all:.0f} s. "
          "Timings are of this machine; the baselines ran in the same process on the same data.", "",
          table(rows), "", "## Full output", ""]
    for cmd, out, dt in reports:
        md += [f"### `{cmd}` ({dt:.0f} s)", "", "```", out, "```", ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(md))
    readme = ROOT / "README.md"
    text = readme.read_text()
    a, b = "<!-- bench:begin -->", "<!-- bench:end -->"
    if a in text and b in text:
        head, rest = text.split(a, 1)
        _, tail = rest.split(b, 1)
        keep = [line for line in _.splitlines() if "`make demo`" in line]
        new = table(rows).splitlines() + keep
        readme.write_text(head + a + "\n" + "\n".join(new) + "\n" + b + tail)
    print(f"wrote BENCHMARKS.md ({len(rows)} figures) and the README's table")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
