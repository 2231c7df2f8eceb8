"""The node's three compiled kernels, compiled ahead of time so a node never loads Numba.

Importing Numba maps LLVM and its own runtime: ~120 MB of a node's resident memory (numpy
and onnxruntime together take ~50 MB), for three loops over audio samples that numpy cannot
express. So these kernels are compiled once, at install, by Numba's ahead-of-time compiler
(``numba.pycc``) into a plain extension module, ``shotnet.sensor._nodekernels``, which
needs only numpy at run time:

- :func:`sosfilt`: cascaded biquads, transposed direct form II, with state
  (:func:`shotnet.sensor.dsp.sosfilt` wraps it);
- :func:`sta_lta`: recursive STA/LTA and STA/MTA on the squared signal, the LTA frozen
  above a ratio (:class:`shotnet.sensor.trigger.Trigger`);
- :func:`aic`: Maeda's AIC picker curve (:func:`shotnet.sensor.trigger.aic_curve`).

``make`` builds the module (``python -m shotnet.sensor.nodekernels``; on an installed
node, ``shotnet sensor build-kernels``). It carries a hash of the kernels' source: a
module built from other source, or none, is not used, and the kernels are compiled by
Numba's JIT instead (the same code, the same results to the bit; the node then carries
Numba's memory, and :data:`COMPILED` says ``"jit"``). Every array is float64 and
C-contiguous, of the sizes given: each function checks (a ``TypeError`` otherwise), since
the compiled code reads and writes them unchecked.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_MODULE = "_nodekernels"


def _sosfilt(sos, x, zi, y):
    """``y`` = ``x`` through the sections ``sos`` (n x 6: b0 b1 b2 a0 a1 a2, a0 = 1),
    state ``zi`` (n x 2) updated in place."""
    n_sec = sos.shape[0]
    for i in range(x.shape[0]):
        v = x[i]
        for s in range(n_sec):
            b0, b1, b2, a1, a2 = sos[s, 0], sos[s, 1], sos[s, 2], sos[s, 4], sos[s, 5]
            out = b0 * v + zi[s, 0]
            zi[s, 0] = b1 * v - a1 * out + zi[s, 1]
            zi[s, 1] = b2 * v - a2 * out
            v = out
        y[i] = v


def _sta_lta(x, sta_a, mta_a, lta_a, freeze_ratio, max_freeze, state, ratio_out, jump_out):
    """Recursive STA/LTA and STA/MTA on ``x**2``.

    ``state`` = [sta, mta, lta, frozen] is updated in place. ``ratio_out[i]`` receives
    STA/LTA and ``jump_out[i]`` STA/MTA, both *before* sample i updates the longer
    averages. While STA/LTA exceeds ``freeze_ratio`` the LTA is frozen (at most
    ``max_freeze`` samples), so a loud shot's energy does not inflate the background and
    mask a quieter shot a second later; STA/MTA (MTA ~50 ms) finds each new onset inside
    the reverberant tail of the previous one, as in a burst of automatic fire.
    """
    sta = state[0]
    mta = state[1]
    lta = state[2]
    frozen = state[3]
    for i in range(x.shape[0]):
        e = x[i] * x[i]
        sta += sta_a * (e - sta)
        r = sta / lta if lta > 0.0 else 0.0
        ratio_out[i] = r
        jump_out[i] = sta / mta if mta > 0.0 else 0.0
        mta += mta_a * (e - mta)
        if r > freeze_ratio and frozen < max_freeze:
            frozen += 1.0
        else:
            lta += lta_a * (e - lta)
            if r <= freeze_ratio:
                frozen = 0.0
    state[0] = sta
    state[1] = mta
    state[2] = lta
    state[3] = frozen


def _aic(x, out):
    """Maeda's AIC on a window: ``AIC(k) = k log var(x[:k]) + (n-k-1) log var(x[k:])``.
    The minimum is the onset. ``out`` ends up +inf where undefined."""
    n = x.shape[0]
    s1 = 0.0
    s2 = 0.0
    tot1 = 0.0
    tot2 = 0.0
    for i in range(n):
        tot1 += x[i]
        tot2 += x[i] * x[i]
    for k in range(n):
        out[k] = math.inf
    for k in range(1, n - 1):
        s1 += x[k - 1]
        s2 += x[k - 1] * x[k - 1]
        m1 = s1 / k
        v1 = s2 / k - m1 * m1
        r1 = tot1 - s1
        r2 = tot2 - s2
        m2 = r1 / (n - k)
        v2 = r2 / (n - k) - m2 * m2
        if k >= 2 and n - k >= 2:
            # A floor keeps digital silence (exact zeros before an impulse) pickable.
            out[k] = k * math.log(max(v1, 1e-30)) + (n - k - 1) * math.log(max(v2, 1e-30))


# Exported name -> (Python source, Numba signature).
_KERNELS = {
    "sosfilt": (_sosfilt, "void(f8[:, ::1], f8[::1], f8[:, ::1], f8[::1])"),
    "sta_lta": (_sta_lta, "void(f8[::1], f8, f8, f8, f8, f8, f8[::1], f8[::1], f8[::1])"),
    "aic": (_aic, "void(f8[::1], f8[::1])"),
}


def source_hash() -> int:
    """A hash of the kernels' source and signatures (63 bits): the compiled module
    stores the one it was built from."""
    h = hashlib.sha256()
    for name, (fn, sig) in _KERNELS.items():
        h.update(f"{name}\n{sig}\n{inspect.getsource(fn)}".encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def build(output_dir: str | Path | None = None) -> Path:
    """Compile the kernels ahead of time into ``_nodekernels`` (an extension module)
    in ``output_dir`` (default: this package's directory). Needs Numba and a C
    compiler; returns the module's path."""
    import warnings

    from numba.core.errors import NumbaPendingDeprecationWarning
    with warnings.catch_warnings():
        # (numba.pycc is marked "pending deprecation" until its successor ships; it is
        # what Numba offers for a module that runs without Numba today.)
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
        from numba.pycc import CC

        out = Path(output_dir) if output_dir is not None else Path(__file__).resolve().parent
        with tempfile.TemporaryDirectory(prefix="shotnet-pycc-") as tmp:
            cc = CC(_MODULE)
            cc.output_dir = tmp
            cc.verbose = False
            for name, (fn, sig) in _KERNELS.items():
                cc.export(name, sig)(fn)
            ns: dict = {}
            exec(f"def built_from():\n    return {source_hash()}\n", ns)
            cc.export("built_from", "i8()")(ns["built_from"])
            cc.compile()
            found = sorted(Path(tmp).glob(f"{_MODULE}.*"))
            if not found:
                raise RuntimeError(f"numba.pycc wrote no {_MODULE} module")
            # (Moved into place, not written over: a running node may have the old one mapped.)
            dest = out / found[-1].name
            shutil.copy2(found[-1], out / (found[-1].name + ".tmp"))
            os.replace(out / (found[-1].name + ".tmp"), dest)
    return dest


def _load():
    """``(the compiled module, "")`` if it was built from this source, else ``(None, why not)``."""
    try:
        from . import _nodekernels as mod  # type: ignore[attr-defined]
    except ImportError:
        return None, "not built"
    try:
        ours = source_hash()
    except OSError:                 # (installed without the .py files: nothing to check against)
        return None, "not checkable against its source"
    if mod.built_from() != ours:
        return None, "built from other source"
    return mod, ""


_aot, _why = _load()
if _aot is not None:
    COMPILED = "ahead of time"
    _k_sosfilt, _k_sta_lta, _k_aic = _aot.sosfilt, _aot.sta_lta, _aot.aic
else:
    import numba

    COMPILED = "jit"
    log.info("node kernels compiled by Numba's JIT (the ahead-of-time module is %s: `make` or "
             "`shotnet sensor build-kernels` builds it and saves the node ~120 MB)", _why)
    _k_sosfilt = numba.njit(cache=True)(_sosfilt)
    _k_sta_lta = numba.njit(cache=True)(_sta_lta)
    _k_aic = numba.njit(cache=True)(_aic)


# The compiled functions take their arrays as declared, unchecked (one of another layout
# or type is read as if it were float64 and contiguous, and none checks bounds): these
# check them first, a few microseconds a block.
def _f8(what: str, a, shape: tuple) -> None:
    """``a`` must be a C-contiguous float64 array of ``shape`` (None: any length)."""
    if (isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.c_contiguous and a.ndim == len(shape)
            and all(n is None or n == m for n, m in zip(shape, a.shape))):
        return
    if isinstance(a, np.ndarray):
        got = f"{a.dtype} of shape {a.shape}" + ("" if a.flags.c_contiguous else ", not contiguous")
    else:
        got = type(a).__name__
    want = "(" + ", ".join("n" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
    raise TypeError(f"{what}: a C-contiguous float64 array of shape {want} expected, got {got}")


def sosfilt(sos, x, zi, y) -> None:
    """``y`` (n) = ``x`` (n) through the sections ``sos`` (k x 6: b0 b1 b2 a0 a1 a2, a0 = 1),
    the state ``zi`` (k x 2) updated in place. All float64, C-contiguous."""
    _f8("sos", sos, (None, 6))
    _f8("x", x, (None,))
    _f8("zi", zi, (sos.shape[0], 2))
    _f8("y", y, (x.shape[0],))
    _k_sosfilt(sos, x, zi, y)


def sta_lta(x, sta_a: float, mta_a: float, lta_a: float, freeze_ratio: float, max_freeze: float, state, ratio_out,
            jump_out) -> None:
    """STA/LTA and STA/MTA of ``x`` (n) into ``ratio_out`` and ``jump_out`` (n), ``state``
    (4: sta, mta, lta, samples frozen) updated in place; the averages' weights per sample
    (``*_a``), the ratio above which the LTA is frozen and for at most how many samples."""
    _f8("x", x, (None,))
    _f8("state", state, (4,))
    _f8("ratio_out", ratio_out, (x.shape[0],))
    _f8("jump_out", jump_out, (x.shape[0],))
    _k_sta_lta(x, float(sta_a), float(mta_a), float(lta_a), float(freeze_ratio), float(max_freeze), state, ratio_out,
               jump_out)


def aic(x, out) -> None:
    """Maeda's AIC curve of the window ``x`` (n) into ``out`` (n; +inf where undefined)."""
    _f8("x", x, (None,))
    _f8("out", out, (x.shape[0],))
    _k_aic(x, out)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Compile the node's kernels ahead of time (numba.pycc).")
    ap.add_argument("--output-dir", default=None, help="default: the installed package's directory")
    args = ap.parse_args(argv)
    path = build(args.output_dir)
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
