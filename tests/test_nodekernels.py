"""The node's kernels compiled ahead of time: built, the same bits as Numba's JIT on the
same source, the filters equal to scipy's, and a node that never loads Numba."""

import importlib.util
import json
import subprocess
import sys

import numba
import numpy as np
import pytest

from shotnet.sensor import dsp, nodekernels

JIT = {name: numba.njit(cache=False)(fn) for name, (fn, _) in nodekernels._KERNELS.items()}


def _inputs(rng):
    x = rng.standard_normal(20_000)
    x[5_000:5_200] *= 40.0           # an impulse: the LTA freezes, then follows again
    x[12_000:12_050] = 0.0           # digital silence
    return x


def test_make_built_the_module_from_this_source():
    """`make` (which `make test` runs first) compiled the kernels ahead of time, and the
    node uses that module, not the JIT."""
    assert nodekernels.COMPILED == "ahead of time", (
        "sensor/_nodekernels.* is missing or stale: run `make setup` or `shotnet sensor build-kernels`")
    from shotnet.sensor import _nodekernels

    assert _nodekernels.built_from() == nodekernels.source_hash()


def test_compiled_kernels_equal_the_jit_to_the_bit(rng):
    x = _inputs(rng)
    sos = dsp.butter_sos(4, (150.0, 6000.0), "bandpass", 48_000.0)
    y = {}
    for name, k in (("aot", nodekernels), ("jit", None)):
        zi = np.zeros((sos.shape[0], 2))
        out = np.empty_like(x)
        (k.sosfilt if k else JIT["sosfilt"])(sos, x, zi, out)
        state = np.array([1e-3, 1e-3, 1e-3, 0.0])
        ratio, jump = np.empty_like(x), np.empty_like(x)
        (k.sta_lta if k else JIT["sta_lta"])(out, 0.05, 0.01, 0.001, 2.0, 500.0, state, ratio, jump)
        aic = np.empty(1_000)
        (k.aic if k else JIT["aic"])(np.ascontiguousarray(out[4_600:5_600]), aic)
        y[name] = (out, zi, ratio, jump, state, aic)
    for a, b in zip(y["aot"], y["jit"]):
        assert np.array_equal(a, b)
    assert (y["aot"][2] > 2.0).any() and np.isfinite(y["aot"][5][2:-2]).all()


def test_arrays_of_another_type_layout_or_size_are_refused(rng):
    """The compiled functions read their arrays as declared, unchecked: a strided view,
    float32 or a short output would be read or written out of bounds. Each is refused."""
    x = rng.standard_normal(100)
    for call in (lambda: nodekernels.aic(x[::2], np.empty(50)),
                 lambda: nodekernels.aic(x.astype(np.float32), np.empty(100)),
                 lambda: nodekernels.aic(x, np.empty(99)),
                 lambda: nodekernels.aic(list(x), np.empty(100)),
                 lambda: nodekernels.sosfilt(np.zeros((2, 6)), x, np.zeros((3, 2)), np.empty(100)),
                 lambda: nodekernels.sosfilt(np.zeros((2, 5)), x, np.zeros((2, 2)), np.empty(100)),
                 lambda: nodekernels.sta_lta(x, 0.1, 0.01, 0.001, 2.0, 50.0, np.zeros(3), np.empty(100),
                                             np.empty(100))):
        with pytest.raises(TypeError, match="C-contiguous float64 array of shape"):
            call()
    out = np.empty(100)
    nodekernels.sta_lta(x, 0.1, 0.01, 0.001, 2, 50, np.ones(4), out, np.empty(100))   # (ints are numbers)
    assert np.isfinite(out).all()


def test_filters_equal_scipys(rng):
    """The node's filters without scipy.signal: the same designs and outputs."""
    signal = pytest.importorskip("scipy.signal")
    x = _inputs(rng)
    for order, fc, btype, fs in ((4, (150.0, 6000.0), "bandpass", 48_000.0), (2, 300.0, "highpass", 16_000.0)):
        sos = dsp.butter_sos(order, fc, btype, fs)
        ref_sos = signal.butter(order, fc, btype, fs=fs, output="sos")
        # (The same filter; its zeros may be paired into sections differently.)
        w, h = signal.sosfreqz(sos, worN=512, fs=fs)
        assert np.allclose(h, signal.sosfreqz(ref_sos, worN=w, fs=fs)[1], rtol=1e-9, atol=1e-12)
        ref = signal.sosfilt(ref_sos, x)
        assert np.allclose(dsp.sosfilt(sos, x), ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
        assert np.allclose(dsp.sosfilt(sos, x), signal.sosfilt(sos, x), rtol=1e-12, atol=1e-15)
        # In blocks, with the state carried: the same as in one go.
        zi = np.zeros((sos.shape[0], 2))
        parts = []
        for a in range(0, len(x), 2_400):
            y, zi = dsp.sosfilt(sos, x[a:a + 2_400], zi=zi)
            parts.append(y)
        assert np.array_equal(np.concatenate(parts), dsp.sosfilt(sos, x))
    for up, down in ((3, 1), (1, 3), (2, 3)):
        assert np.allclose(dsp.resample_poly(x, up, down), signal.resample_poly(x, up, down), rtol=1e-9, atol=1e-12)


def test_a_node_never_loads_numba():
    """The node's whole path (the service's imports, the model, a block of audio with an
    impulse through trigger, picker and classifier) in a fresh process: Numba and LLVM
    are never imported."""
    code = """
import json, sys
import numpy as np
import shotnet.cli, shotnet.sensor.run
from shotnet.sensor.classify import load_classifier
from shotnet.sensor.clock import LinearSampleClock
from shotnet.sensor.node import NodeConfig, NodeCore
from shotnet.sensor.synth import friedlander
fs = 48000
x = np.random.default_rng(1).standard_normal(3 * fs) * 1e-3
p = friedlander(fs, 0.5, 1e-3, length_s=0.05)
x[2 * fs:2 * fs + len(p)] += p
core = NodeCore(NodeConfig("S1", fs), LinearSampleClock(1_800_000_000 * 10**9, fs), load_classifier(None))
dets = core.feed(x.astype(np.float32)) + core.flush()
print(json.dumps({"dets": len(dets), "numba": "numba" in sys.modules, "llvmlite": "llvmlite" in sys.modules}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"dets": 1, "numba": False, "llvmlite": False}, got


def test_a_module_built_from_other_source_is_not_used(monkeypatch):
    """A node upgraded without rebuilding its kernels falls back to the JIT (and says so
    in `shotnet sensor run --dry-run`), never to stale code."""
    monkeypatch.setattr(nodekernels, "source_hash", lambda: 12345)
    mod, why = nodekernels._load()
    assert mod is None and why == "built from other source"


def test_build_kernels_writes_an_importable_module(tmp_path):
    """`shotnet sensor build-kernels --output-dir D` compiles a module stamped with this
    source's hash."""
    r = subprocess.run([sys.executable, "-m", "shotnet", "sensor", "build-kernels", "--output-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (path,) = tmp_path.glob("_nodekernels.*")
    spec = importlib.util.spec_from_file_location("_nodekernels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.built_from() == nodekernels.source_hash()
    x = np.linspace(-1.0, 1.0, 50)
    out = np.empty(50)
    mod.aic(x, out)
    ref = np.empty(50)
    JIT["aic"](x, ref)
    assert np.array_equal(out, ref)
