"""Node pipeline speed (multiple of real time, one core) and peak memory.

    .venv/bin/python bench/bench_node.py [--fs-hz 48000] [--sensors 4] [--duration-s 120]

Renders tracks of the simulated city at the capture rate (not timed), then runs each
through the node exactly as in the field — causal band-pass, STA/LTA trigger, AIC pick,
echo suppression, the ONNX classifier on every candidate that is picked, the clip for
gunshots — with every library limited to one thread. In the same process it runs an
energy-threshold detector (10 ms frames against 20x the running median energy), the
simplest peer, on the same audio, and prints the ratio. The node runs in its own
process reading the audio block by block, as from a sound card; its peak memory is that
process's high-water resident set (VmHWM) (everything: Python, numpy, onnxruntime, the model,
the ring buffers, the node's kernels; those are compiled ahead of time by ``make``, so the node
never loads Numba: :mod:`shotnet.sensor.nodekernels`; the report says which ran).
Targets: >= 200x real time and < 200 MB.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def energy_detector(x: np.ndarray, fs: int, frame_s: float = 0.01, k: float = 20.0) -> int:
    """Frames whose energy exceeds ``k`` times the median of the last 5 s of frames."""
    n = int(frame_s * fs)
    e = np.square(x[: len(x) // n * n].reshape(-1, n), dtype=np.float64).mean(axis=1)
    hist = int(5.0 / frame_s)
    hits = 0
    ref = np.median(e[:hist]) if len(e) else 0.0
    for i in range(len(e)):
        if i % 50 == 0 and i >= hist:
            ref = np.median(e[i - hist:i])
        if e[i] > k * ref + 1e-12:
            hits += 1
    return hits


def _vm_hwm_mb() -> float:
    """Peak resident memory of this process image (VmHWM; unlike ru_maxrss it is not
    inherited from the parent across fork and exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_node_on_files(files: list[str], fs: int, block_frames: int) -> dict:
    """The node over raw float32 files read block by block: what a field node holds in
    memory, no more. Runs in its own process so that its peak RSS is the node's."""
    import sys

    from shotnet.sensor.classify import load_classifier
    from shotnet.sensor.clock import LinearSampleClock
    from shotnet.sensor.node import NodeConfig, NodeCore
    from shotnet.sensor.nodekernels import COMPILED

    t0 = 1_800_000_000 * 1_000_000_000
    clf = load_classifier(None)
    calls = {"n": 0}
    classify = clf.classify

    def counted(window, fs_hz):
        calls["n"] += 1
        return classify(window, fs_hz)

    clf.classify = counted
    # Warm up (Numba kernels, onnxruntime session) on a second of silence and a click.
    warm = np.zeros(fs, dtype=np.float32)
    warm[fs // 2] = 0.5
    NodeCore(NodeConfig("W", fs), LinearSampleClock(t0, fs), clf).feed(warm)
    calls["n"] = 0
    dets = 0
    samples = 0
    buf = np.empty(block_frames, dtype=np.float32)
    w0, c0 = time.perf_counter(), time.process_time()
    for i, path in enumerate(files):
        core = NodeCore(NodeConfig(f"S{i}", fs), LinearSampleClock(t0, fs), clf)
        with open(path, "rb") as fh:
            while True:
                n = fh.readinto(memoryview(buf).cast("B")) // 4
                if n == 0:
                    break
                samples += n
                dets += len(core.feed(buf[:n]))
        dets += len(core.flush())
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "samples": samples,
            "classified": calls["n"], "detections": dets, "model": clf.name,
            "peak_mb": _vm_hwm_mb(), "kernels": COMPILED, "numba_loaded": "numba" in sys.modules,
            "end_mb": int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20}


def main(argv=None) -> int:
    from shotnet.sensor.scene import default_scene, render_sensor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fs-hz", type=int, default=48000)
    ap.add_argument("--sensors", type=int, default=4)
    ap.add_argument("--duration-s", type=float, default=120.0)
    ap.add_argument("--block-frames", type=int, default=2400)
    args = ap.parse_args(argv)
    t0 = 1_800_000_000 * 1_000_000_000
    scene = dataclasses.replace(default_scene(t0, seed=11, duration_s=args.duration_s), fs_hz=args.fs_hz)
    import json
    import subprocess
    import sys
    import tempfile

    tmp = tempfile.mkdtemp(prefix="shotnet-bench-node-")
    files = []
    for i in range(args.sensors):
        files.append(os.path.join(tmp, f"s{i}.f32"))
        render_sensor(scene, i).astype(np.float32).tofile(files[-1])
    audio_s = sum(os.path.getsize(f) for f in files) / 4 / args.fs_hz
    out = subprocess.run([sys.executable, __file__, "--child", str(args.fs_hz), str(args.block_frames), *files],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    wall, cpu, peak_mb, end_mb = r["wall_s"], r["cpu_s"], r["peak_mb"], r["end_mb"]
    w1 = time.perf_counter()
    hits = sum(energy_detector(np.fromfile(f, dtype=np.float32), args.fs_hz) for f in files)
    wall_e = time.perf_counter() - w1
    for f in files:
        os.remove(f)
    os.rmdir(tmp)
    clf_calls, dets = {"n": r["classified"]}, r["detections"]

    class _C:
        name = r["model"]

    clf = _C()
    print(f"node pipeline at {args.fs_hz} Hz, {audio_s:.0f} s of city audio ({args.sensors} sensors), one thread:")
    print(f"  {audio_s / wall:,.0f}x real time (wall {wall:.2f} s, CPU {cpu:.2f} s); "
          f"{clf_calls['n']} candidates classified ({clf.name}), {dets} detections")
    print(f"  energy-threshold detector, same audio: {audio_s / wall_e:,.0f}x real time, {hits} frames over "
          f"threshold (no pick, no classification); node/energy speed ratio {wall_e / wall:.2f}")
    from _record import record

    record(f"node pipeline at {args.fs_hz // 1000} kHz, one thread, classifier on every picked candidate",
           f"{audio_s / wall:,.0f}x real time", f"energy-threshold detector: {audio_s / wall_e:,.0f}x",
           f"{wall_e / wall:.2f}")
    what = (f"Python, numpy, onnxruntime, model, buffers; kernels compiled {r['kernels']}, "
            f"Numba {'loaded' if r['numba_loaded'] else 'not loaded'}")
    record(f"node process memory ({what})", f"{peak_mb:.0f} MB peak", "target < 200 MB")
    print(f"  memory of the node process ({what}): peak RSS {peak_mb:.0f} MB, {end_mb:.0f} MB resident at the end")
    return 0


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import json

        print(json.dumps(run_node_on_files(sys.argv[4:], int(sys.argv[2]), int(sys.argv[3]))))
        raise SystemExit(0)
    raise SystemExit(main())
