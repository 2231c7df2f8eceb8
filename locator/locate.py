"""Locate one shot from its detections: robust least squares and an honest 95% ellipse.

The public function :func:`locate` validates input, allocates buffers, calls the Numba
kernel :func:`~shotnet.locator.kernels.lm_solve` (with many detections the whole robust
sequence below runs as one compiled call, :func:`~shotnet.locator.kernels.robust_fit`)
and packages the result. Robustness:

1. L2 Levenberg-Marquardt from the starting point (a search's source or a guess);
2. with many detections always a Cauchy fit (a few moderate late arrivals can spread
   over an L2 fit so that none stands out); with few, RANSAC over minimal subsets when
   any standardised residual is large;
3. the model error learned from the robust residuals (MAD), then detections dropped
   whose residual exceeds ``outlier_sigma`` early or ``late_sigma`` late (echoes and
   blocked paths are always *late*), and a final L2 fit on the rest.

:func:`locate_wind_robust` finds those outliers under the given wind first and only then
frees the wind (a free wind would bend to explain them).

Uncertainty: the covariance ``s^2 (J^T W J)^-1`` with ``s^2 = chi^2 / (n - p)`` estimated
from the residuals (never below the stated sigmas), and a 95% ellipse with the factor
``k = 2 F_0.95(2, n - p)`` (the chi-square factor 5.991 under-covers when sigma is
estimated); a wind that was given, with its stated error, adds its effect on the
position to the covariance.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import f as f_dist

from . import kernels

CHI2_95_2D = 5.991464547107979


@dataclass(frozen=True)
class Solution:
    x_m: float
    y_m: float
    z_m: float
    t0_s: float
    cov: np.ndarray            # parameter covariance, scaled by s^2 (m^2, s^2)
    used: np.ndarray           # bool mask of detections kept
    residuals_s: np.ndarray    # t - predicted, for all detections (s)
    chi2: float
    dof: int
    scale2: float              # s^2 applied to the covariance
    ellipse_factor: float      # k: semi-axes are sqrt(k * eigenvalues)
    ndim: int
    wind_m_per_s: tuple[float, float] = (0.0, 0.0)
    wind_estimated: bool = False

    # (Computed once: a solution is immutable, and the association asks several times.)
    @functools.cached_property
    def n_used(self) -> int:
        return int(self.used.sum())

    @functools.cached_property
    def residual_rms_s(self) -> float:
        r = self.residuals_s[self.used]
        return float(np.sqrt(np.mean(r * r))) if len(r) else float("nan")

    def ellipse95(self) -> tuple[float, float, float]:
        """(major, minor semi-axis in m, azimuth of the major axis in degrees clockwise from
        north, 0..180). (Computed once.)"""
        got = self.__dict__.get("_ellipse95")
        if got is None:
            got = self.__dict__["_ellipse95"] = ellipse_from_cov(self.cov[:2, :2], self.ellipse_factor)
        return got


_EPS2 = (2.0 ** -53) ** 2             # LAPACK's dlamch('E') squared
_SAFMIN = 2.2250738585072014e-308      # ... and dlamch('S')


def _eig2(a: float, b: float, c: float) -> tuple[float, float, float, float]:
    """The eigensystem of the symmetric 2x2 matrix ``[[a, b], [b, c]]`` as LAPACK's
    ``dlaev2`` works it out: ``(rt1, rt2, cs1, sn1)``, ``rt1`` the eigenvalue of larger
    absolute value, ``(cs1, sn1)`` its unit eigenvector. (The smaller eigenvalue comes
    from the determinant over the larger, never from a difference of near-equal ones.)"""
    sm, df = a + c, a - c
    adf, tb = abs(df), b + b
    ab = abs(tb)
    acmx, acmn = (a, c) if abs(a) > abs(c) else (c, a)
    if adf > ab:
        rt = adf * math.sqrt(1.0 + (ab / adf) ** 2)
    elif adf < ab:
        rt = ab * math.sqrt(1.0 + (adf / ab) ** 2)
    else:
        rt = ab * math.sqrt(2.0)
    if sm < 0.0:
        rt1, sgn1 = 0.5 * (sm - rt), -1
        rt2 = (acmx / rt1) * acmn - (b / rt1) * b
    elif sm > 0.0:
        rt1, sgn1 = 0.5 * (sm + rt), 1
        rt2 = (acmx / rt1) * acmn - (b / rt1) * b
    else:
        rt1, rt2, sgn1 = 0.5 * rt, -0.5 * rt, 1
    cs, sgn2 = (df + rt, 1) if df >= 0.0 else (df - rt, -1)
    if abs(cs) > ab:
        ct = -tb / cs
        sn1 = 1.0 / math.sqrt(1.0 + ct * ct)
        cs1 = ct * sn1
    elif ab == 0.0:
        cs1, sn1 = 1.0, 0.0
    else:
        tn = -cs / tb
        cs1 = 1.0 / math.sqrt(1.0 + tn * tn)
        sn1 = tn * cs1
    if sgn1 == sgn2:
        cs1, sn1 = -sn1, cs1
    return rt1, rt2, cs1, sn1


def ellipse_from_cov(cov2: np.ndarray, k: float) -> tuple[float, float, float]:
    """The ellipse ``p' cov2^-1 p = k`` of a 2x2 covariance (m^2; east, north): (major,
    minor semi-axis in m, azimuth of the major axis in degrees clockwise from north,
    0..180). Worked out in closed form as ``np.linalg.eigh`` (LAPACK ``dsyevd``) does
    for a 2x2 (its lower triangle; an off-diagonal negligible against the diagonal is
    taken as zero; ``dlaev2``), so the semi-axes agree with it to the last bit or
    two: ``eigh``'s call overhead was 3% of a fireworks night's association. A
    covariance with a NaN or infinite entry has no ellipse: NaN, all three."""
    cov2 = np.asarray(cov2, dtype=np.float64)
    a, b, c = float(cov2[0, 0]), float(cov2[1, 0]), float(cov2[1, 1])
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        return math.nan, math.nan, math.nan        # (no ellipse from a broken covariance)
    if b * b <= (_EPS2 * abs(a)) * abs(c) + _SAFMIN:
        lo, hi, e, n = (a, c, 0.0, 1.0) if a <= c else (c, a, 1.0, 0.0)
    else:
        hi, lo, e, n = _eig2(a, b, c)
        if hi < lo:
            hi, lo, e, n = lo, hi, -n, e
    major, minor = math.sqrt(k * max(hi, 0.0)), math.sqrt(k * max(lo, 0.0))
    return major, minor, math.degrees(math.atan2(e, n)) % 180.0


@functools.lru_cache(maxsize=1024)
def f_quantile(q: float, dfn: int, dfd: int) -> float:
    """The F distribution's ``q`` quantile (scipy's ``ppf``, ~0.3 ms a call; cached: the
    locator asks for a few degrees of freedom over and over)."""
    return float(f_dist.ppf(q, dfn, dfd))


def ellipse_factor(dof: int, estimated: bool) -> float:
    if estimated and dof >= 1:
        return 2.0 * f_quantile(0.95, 2, dof)
    return CHI2_95_2D


@dataclass(frozen=True)
class _Model:
    c: float
    z_src: float
    ndim: int
    est_wind: bool
    wind: np.ndarray

    @property
    def n_params(self) -> int:
        return self.ndim + 1 + (2 if self.est_wind else 0)

    def wind_of(self, params) -> tuple[float, float]:
        if self.est_wind:
            return float(params[self.ndim + 1]), float(params[self.ndim + 2])
        return float(self.wind[0]), float(self.wind[1])


def _median(x: np.ndarray) -> float:
    """``np.median`` of a short 1-D array without its per-call overhead (it dominated
    the robust stages' cost on a fireworks night)."""
    v = np.array(x, dtype=np.float64)      # (a copy, sorted in place: np.sort's own steps)
    v.sort()
    n = len(v)
    if n == 0:
        return float("nan")
    return float(v[n // 2]) if n % 2 else 0.5 * float(v[n // 2 - 1] + v[n // 2])


def _predict(pos: np.ndarray, params: np.ndarray, mod: _Model) -> np.ndarray:
    """Predicted arrival times (s) at ``pos`` (n, 3) for ``params``
    (:func:`kernels.predict_arrivals`, the model the compiled stages use)."""
    wx, wy = mod.wind_of(params)
    out = np.empty(len(pos))
    kernels.predict_arrivals(np.ascontiguousarray(pos[:, 0]), np.ascontiguousarray(pos[:, 1]),
                             np.ascontiguousarray(pos[:, 2]), np.asarray(params, dtype=np.float64), mod.ndim,
                             float(mod.z_src), float(mod.c), float(wx), float(wy), out)
    return out


def _solve(cols, t, sig, mask, x0, mod: _Model, loss, loss_k, max_iter=50):
    """``cols``: the sensors' east, north, up coordinates as three contiguous arrays."""
    m = mod.n_params
    par = np.zeros(m)
    cov = np.zeros((m, m))
    chi2 = kernels.lm_solve(cols[0], cols[1], cols[2], t, sig, mask.astype(np.int8),
                            np.asarray(x0, dtype=np.float64)[:m], float(mod.c), float(mod.z_src), mod.ndim,
                            mod.est_wind, mod.wind, loss, float(loss_k), max_iter, par, cov)
    return par, cov, chi2


_OUTLIER_SIGMA, _RANSAC_BELOW, _MIN_USED, _MAX_WIND, _LATE_SIGMA = 4.0, 9, 4, 25.0, 3.0   # locate's defaults


def _checked(pos_m, t_s, sigma_s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A solve's input as contiguous float64 arrays: positions (n, 3) m, arrival times
    (n,) s, sigmas (n,) s; a ValueError unless the shapes agree, positions and times are
    finite and sigmas positive."""
    pos = np.ascontiguousarray(pos_m, dtype=np.float64)
    t = np.ascontiguousarray(t_s, dtype=np.float64)
    sig = np.ascontiguousarray(sigma_s, dtype=np.float64)
    n = len(t)
    if pos.shape != (n, 3) or sig.shape != (n,):
        raise ValueError("pos_m must be (n, 3) and sigma_s (n,) for n arrival times")
    if not kernels.valid_input(pos, t, sig):
        raise ValueError("positions and times must be finite and sigmas positive")
    return pos, t, sig


def locate(pos_m: np.ndarray, t_s: np.ndarray, sigma_s: np.ndarray, *, c_m_per_s: float,
           z_src_m: float = 1.5, x0=None, ndim: int = 2, wind_m_per_s=(0.0, 0.0),
           estimate_wind: bool = False, outlier_sigma: float = _OUTLIER_SIGMA, ransac_below: int = _RANSAC_BELOW,
           min_used: int = _MIN_USED, max_wind_m_per_s: float = _MAX_WIND, late_sigma: float = _LATE_SIGMA,
           wind_sigma_m_per_s: float = 0.0, c_sigma_m_per_s: float = 0.0) -> Solution | None:
    """Locate a source from arrival times.

    Parameters
    ----------
    pos_m : (n, 3) sensor ENU positions, metres
    t_s : (n,) arrival times, seconds relative to any reference
    sigma_s : (n,) 1-sigma timing uncertainty, seconds (include model error)
    c_m_per_s : speed of sound
    z_src_m : assumed source height (ENU up, m) for the 2-D solve
    x0 : starting [x, y, (z,) t0]; default the centroid of the earliest sensors
    ndim : 2 (x, y, t0) or 3 (x, y, z, t0)
    wind_m_per_s : known horizontal wind (east, north); the start value when estimated
    estimate_wind : add the wind as two unknowns (needs a few more sensors)
    wind_sigma_m_per_s : 1-sigma error of a wind that is given, not estimated (m/s, per
        component); its effect on the solution is added to the covariance
    c_sigma_m_per_s : 1-sigma error of ``c_m_per_s``; its effect is added likewise
    late_sigma : a detection this many sigmas late is dropped (early ones at ``outlier_sigma``)

    Returns None when fewer than ``min_used`` detections remain or the problem is singular.
    """
    pos, t, sig = _checked(pos_m, t_s, sigma_s)
    n = len(t)
    mod = _Model(float(c_m_per_s), float(z_src_m), ndim, bool(estimate_wind),
                 np.asarray(wind_m_per_s, dtype=np.float64)[:2].copy())
    p = mod.n_params
    if n < max(min_used, p):
        return None
    if x0 is None:
        early = np.argsort(t)[:3]
        cx, cy = pos[early, 0].mean(), pos[early, 1].mean()
        x0 = [cx, cy] + ([z_src_m] if ndim == 3 else []) + [float(t.min()) - 0.05]
    x0 = list(np.asarray(x0, dtype=np.float64)[: ndim + 1])
    if estimate_wind:
        x0 += [float(mod.wind[0]), float(mod.wind[1])]
    x0 = np.asarray(x0)
    mask = np.ones(n, dtype=bool)

    cols = tuple(np.ascontiguousarray(pos[:, k]) for k in range(3))  # once, not per solve
    if n >= ransac_below:
        # Many detections: the same stages in one compiled call (no RANSAC needed).
        status, sol = _robust_many(pos, cols, t, sig, x0, mod, outlier_sigma, late_sigma, max_wind_m_per_s,
                                   min_used, wind_sigma_m_per_s, c_sigma_m_per_s)
        if status == 1:
            return locate(pos_m, t_s, sigma_s, c_m_per_s=c_m_per_s, z_src_m=z_src_m, x0=x0[: ndim + 1], ndim=ndim,
                          wind_m_per_s=wind_m_per_s, estimate_wind=False, outlier_sigma=outlier_sigma,
                          ransac_below=ransac_below, min_used=min_used, late_sigma=late_sigma,
                          wind_sigma_m_per_s=wind_sigma_m_per_s, c_sigma_m_per_s=c_sigma_m_per_s)
        return sol
    par, cov, chi2 = _solve(cols, t, sig, mask, x0, mod, kernels.LOSS_L2, 1.0)
    if mod.est_wind and (chi2 < 0 or np.hypot(*mod.wind_of(par)) > max_wind_m_per_s):
        # Too little geometry to tell wind from position: solve with the wind as given.
        return locate(pos_m, t_s, sigma_s, c_m_per_s=c_m_per_s, z_src_m=z_src_m, x0=x0[: ndim + 1], ndim=ndim,
                      wind_m_per_s=wind_m_per_s, estimate_wind=False, outlier_sigma=outlier_sigma,
                      ransac_below=ransac_below, min_used=min_used, late_sigma=late_sigma,
                      wind_sigma_m_per_s=wind_sigma_m_per_s, c_sigma_m_per_s=c_sigma_m_per_s)
    if chi2 < 0:
        return None
    r = t - _predict(pos, par, mod)
    # 1. A robust fit, with gates scaled by a robust (MAD) estimate of the residual spread:
    #    the nodes' sigmas know the pick, not the survey, the wind model or the street.
    z = r / sig
    scale = max(1.0, 1.4826 * _median(np.abs(z - _median(z))))
    # With many detections the robust fit always runs: a few late arrivals of moderate
    # size can spread over an L2 fit so that none of them stands out (masking).
    robust = False
    if n >= ransac_below:
        par_c, _, chi2c = _solve(cols, t, sig, mask, par, mod, kernels.LOSS_CAUCHY, 2.0 * scale)
        if chi2c >= 0 and not (mod.est_wind and np.hypot(*mod.wind_of(par_c)) > max_wind_m_per_s):
            par, robust = par_c, True
        r = t - _predict(pos, par, mod)
    elif np.any(np.abs(z) > outlier_sigma * scale):
        par, mask = _ransac(pos, cols, t, sig, par, mod, outlier_sigma * scale, max_wind_m_per_s)
        r = t - _predict(pos, par, mod)
    # 2. Learn the model error from the robust fit's residuals (MAD) and add it to every
    #    sigma, so that weights and gates match the errors actually present; late
    #    arrivals (echoes, blocked paths) then stand out and are dropped.
    if mask.sum() < max(min_used, p):
        return None                       # RANSAC found no consensus set
    rc = r[mask]
    s_rob = 1.4826 * _median(np.abs(rc - _median(rc)))
    s_model2 = max(0.0, s_rob**2 - _median(sig[mask] ** 2))
    sig = np.sqrt(sig**2 + s_model2)
    # Sound is never early: a residual far on the late side is an echo or a blocked
    # path, so the late gate is tighter than the early one.
    z = r / sig
    mask = mask & (z >= -outlier_sigma) & (z <= late_sigma)
    if mask.sum() < max(min_used, p):
        return None
    # 3. The final least-squares fit on the inliers with those sigmas.
    if robust or not mask.all() or s_model2 > 0:
        par, cov, chi2 = _solve(cols, t, sig, mask, par, mod, kernels.LOSS_L2, 1.0)
        if chi2 < 0 or (mod.est_wind and np.hypot(*mod.wind_of(par)) > max_wind_m_per_s):
            return None
    return _finish(pos, par, cov, mask, t - _predict(pos, par, mod), sig, mod, wind_sigma_m_per_s, c_sigma_m_per_s)


def _robust_many(pos, cols, t, sig, x0, mod: _Model, outlier_sigma, late_sigma, max_wind_m_per_s, min_used,
                 wind_sigma_m_per_s, c_sigma_m_per_s) -> tuple[int, Solution | None]:
    """:func:`locate`'s robust stages for many detections (:func:`kernels.robust_fit`,
    one compiled call) on validated arrays (``cols``: ``pos``'s three columns,
    contiguous). Returns the kernel's status (1: the estimated wind came out singular
    or too strong; solve with it as given) and the solution (None unless status 0)."""
    n, p = len(t), mod.n_params
    par, cov = np.zeros(p), np.zeros((p, p))
    used, r = np.zeros(n, dtype=np.int8), np.zeros(n)
    sig_out = np.zeros(n)
    status = kernels.robust_fit(cols[0], cols[1], cols[2], t, sig, x0, mod.c, mod.z_src, mod.ndim, mod.est_wind,
                                mod.wind, float(outlier_sigma), float(late_sigma), float(max_wind_m_per_s),
                                int(min_used), par, cov, used, r, sig_out)
    if status != 0:
        return status, None
    return 0, _finish(pos, par, cov, used.astype(bool), r, sig_out, mod, wind_sigma_m_per_s, c_sigma_m_per_s)


def _finish(pos, par, cov, used, r, sig, mod: _Model, wind_sigma_m_per_s: float,
            c_sigma_m_per_s: float = 0.0, used_out=None, r_out=None, summary=None, rms=None) -> Solution:
    """Package a fit: covariance scaled by the residuals, the errors of a given wind and
    of the speed of sound added. ``used_out`` and ``r_out``: the mask and residuals the solution states, if not
    ``used`` and ``r`` (a fit on a subset of the detections, stated for all of them).
    ``summary``: :func:`kernels.fit_summary`'s ``(chi2, the added covariance or None)``
    if already worked out; ``rms``: the solution's :attr:`Solution.residual_rms_s`, if
    already worked out (:func:`kernels.masked_rms`)."""
    ndim = mod.ndim
    dof = int(np.count_nonzero(used)) - mod.n_params
    if summary is None:
        cols = [np.ascontiguousarray(pos[:, k]) for k in range(3)]
        add = np.zeros((mod.n_params, mod.n_params))
        chi2, added = kernels.fit_summary(*cols, r, sig, used, par, ndim, mod.z_src, mod.c, mod.est_wind,
                                          float(wind_sigma_m_per_s), float(c_sigma_m_per_s), add)
        summary = (chi2, add if added else None)
    chi2, add = summary
    # Scale the covariance by the residuals (sigma estimated: F-distribution factor), but
    # never below the stated sigmas: a few detections that fit by chance must not shrink
    # the ellipse below what the timing errors allow (then chi-square, sigma known).
    scale2, k = 1.0, ellipse_factor(dof, estimated=False)
    if dof >= 1 and chi2 / dof * ellipse_factor(dof, estimated=True) > k:
        scale2, k = chi2 / dof, ellipse_factor(dof, estimated=True)
    cov = cov * scale2
    if add is not None:
        cov = cov + add
    wx, wy = mod.wind_of(par)
    z_src_m = mod.z_src
    sol = Solution(
        x_m=float(par[0]), y_m=float(par[1]), z_m=float(par[2]) if ndim == 3 else float(z_src_m),
        t0_s=float(par[ndim]), cov=cov, used=used if used_out is None else used_out,
        residuals_s=r if r_out is None else r_out, chi2=chi2, dof=dof,
        scale2=scale2, ellipse_factor=k, ndim=ndim, wind_m_per_s=(wx, wy), wind_estimated=mod.est_wind)
    # (What its cached properties would work out, known here: the association asks for
    # both of every fit.)
    object.__setattr__(sol, "n_used", dof + mod.n_params)
    if rms is not None:
        object.__setattr__(sol, "residual_rms_s", float(rms))
    return sol


def locate_wind_robust(pos_m, t_s, sigma_s, *, c_m_per_s: float, z_src_m: float = 1.5, x0=None,
                       wind_m_per_s=(0.0, 0.0), wind_sigma_m_per_s: float = 1.5, min_wind_used: int = 7,
                       **kw) -> Solution | None:
    """Locate with the wind as two unknowns, after finding the outliers with it fixed.

    With the wind free, a late arrival (echo, blocked path) can be absorbed by a wrong
    wind instead of standing out as an outlier, which biases the position and shrinks
    its ellipse. So the outliers are found first under the given wind (``wind_m_per_s``
    +- ``wind_sigma_m_per_s``); the wind is then estimated on the inliers only. Falls
    back to the fixed-wind solution when fewer than ``min_wind_used`` inliers remain or
    the free solve fails."""
    pos = np.asarray(pos_m, dtype=np.float64)
    t = np.asarray(t_s, dtype=np.float64)
    sig = np.asarray(sigma_s, dtype=np.float64)
    if x0 is not None and len(t) >= kw.get("ransac_below", _RANSAC_BELOW) and set(kw) <= _FUSED_KW:
        fixed = _wind_robust_fused(pos, t, sig, float(c_m_per_s), float(z_src_m), x0, wind_m_per_s,
                                   wind_sigma_m_per_s, min_wind_used, **kw)
        if not isinstance(fixed, tuple):
            return fixed
        fixed = fixed[0]        # (the free solve needs locate's small-sample path)
    else:
        fixed = locate(pos, t, sig, c_m_per_s=c_m_per_s, z_src_m=z_src_m, x0=x0, wind_m_per_s=wind_m_per_s,
                       wind_sigma_m_per_s=wind_sigma_m_per_s, **kw)
    return _free_wind(fixed, pos, t, sig, c_m_per_s, z_src_m, wind_m_per_s, wind_sigma_m_per_s, min_wind_used, kw)


def _free_wind(fixed: Solution | None, pos, t, sig, c_m_per_s, z_src_m, wind_m_per_s, wind_sigma_m_per_s,
               min_wind_used, kw) -> Solution | None:
    """:func:`locate_wind_robust`'s second fit: the wind free, on the inliers of the
    solution ``fixed`` (the wind given; ``kw`` :func:`locate`'s other arguments), or
    ``fixed`` when too few remain or that fit fails."""
    if fixed is None or fixed.n_used < min_wind_used:
        return fixed
    u = fixed.used
    start = [fixed.x_m, fixed.y_m] + ([fixed.z_m] if fixed.ndim == 3 else []) + [fixed.t0_s]
    if fixed.n_used >= max(kw.get("ransac_below", _RANSAC_BELOW), kw.get("min_used", _MIN_USED), fixed.ndim + 3):
        # What locate would do with these (already checked) inliers, without its checks
        # and, when the wind comes out singular or too strong, without the fixed-wind
        # solve it would fall back to: that is the solution already in hand.
        mod = _Model(float(c_m_per_s), float(z_src_m), fixed.ndim, True,
                     np.asarray(wind_m_per_s, dtype=np.float64)[:2].copy())
        pu = np.ascontiguousarray(pos[u])
        free = _robust_many(pu, tuple(np.ascontiguousarray(pu[:, k]) for k in range(3)), t[u], sig[u],
                            np.array(start + [float(mod.wind[0]), float(mod.wind[1])]), mod,
                            kw.get("outlier_sigma", _OUTLIER_SIGMA), kw.get("late_sigma", _LATE_SIGMA),
                            kw.get("max_wind_m_per_s", _MAX_WIND), kw.get("min_used", _MIN_USED),
                            wind_sigma_m_per_s, kw.get("c_sigma_m_per_s", 0.0))[1]
    else:
        free = locate(pos[u], t[u], sig[u], c_m_per_s=c_m_per_s, z_src_m=z_src_m, x0=start,
                      wind_m_per_s=wind_m_per_s, estimate_wind=True, wind_sigma_m_per_s=wind_sigma_m_per_s, **kw)
    if free is None or not free.wind_estimated:
        return fixed
    used = np.zeros(len(t), dtype=bool)
    used[u.nonzero()[0][free.used]] = True
    mod = _Model(float(c_m_per_s), float(z_src_m), free.ndim, False, np.asarray(free.wind_m_per_s, dtype=np.float64))
    par = np.array([free.x_m, free.y_m] + ([free.z_m] if free.ndim == 3 else []) + [free.t0_s])
    return dataclasses.replace(free, used=used, residuals_s=t - _predict(pos, par, mod))


_FUSED_KW = frozenset({"ndim", "ransac_below", "min_used", "outlier_sigma", "late_sigma", "max_wind_m_per_s",
                       "c_sigma_m_per_s"})


def _wind_robust_fused(pos, t, sig, c, z_src, x0, wind_m_per_s, wind_sigma_m_per_s, min_wind_used, *, ndim=2,
                       ransac_below=_RANSAC_BELOW, min_used=_MIN_USED, outlier_sigma=_OUTLIER_SIGMA,
                       late_sigma=_LATE_SIGMA, max_wind_m_per_s=_MAX_WIND, c_sigma_m_per_s=0.0):
    """:func:`locate_wind_robust` for many detections (at least ``ransac_below``), its two
    robust fits in one compiled call (:func:`kernels.wind_robust_solution`): the same
    checks, fits and solutions as :func:`locate` with the wind given, then on its
    inliers with the wind free. Returns the solution, or ``(the fixed-wind solution,)``
    when the free solve needs :func:`locate`'s small-sample path (fewer inliers than
    ``ransac_below`` but at least ``min_wind_used``)."""
    pos, t, sig = _checked(pos, t, sig)
    if len(t) < max(min_used, ndim + 1):
        return None
    return _wind_robust_core(pos, tuple(np.ascontiguousarray(pos[:, k]) for k in range(3)), t, sig, c, z_src,
                             np.asarray(x0, dtype=np.float64)[: ndim + 1].copy(),
                             np.asarray(wind_m_per_s, dtype=np.float64)[:2].copy(), wind_sigma_m_per_s, min_wind_used,
                             ndim, ransac_below, min_used, outlier_sigma, late_sigma, max_wind_m_per_s,
                             c_sigma_m_per_s)


def _wind_robust_core(pos, cols, t, sig, c, z_src, x0, wind, wind_sigma_m_per_s, min_wind_used, ndim, ransac_below,
                      min_used, outlier_sigma, late_sigma, max_wind_m_per_s, c_sigma_m_per_s):
    """:func:`_wind_robust_fused` on checked arrays (positions ``pos`` (n, 3) m and as
    three contiguous columns ``cols``, at least ``max(min_used, ndim + 1)`` detections;
    ``x0`` (ndim + 1) and ``wind`` (2) float64 arrays)."""
    n = len(t)
    m = ndim + 1
    fix_par, fix_cov, free_par, free_cov = np.zeros(m), np.zeros((m, m)), np.zeros(m + 2), np.zeros((m + 2, m + 2))
    fix_used, free_used = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8)
    fix_r, fix_sig, free_r, free_sig, r_all = (np.zeros(n) for _ in range(5))
    add = np.zeros((m + 2, m + 2))
    st, st2, chi2, added, rms = kernels.wind_robust_solution(
        cols[0], cols[1], cols[2], t, sig, x0, float(c), float(z_src), ndim, wind, float(outlier_sigma),
        float(late_sigma), float(max_wind_m_per_s), int(min_used), max(min_wind_used, ransac_below, min_used, ndim + 3),
        float(wind_sigma_m_per_s), float(c_sigma_m_per_s), fix_par, fix_cov, fix_used, fix_r, fix_sig, free_par,
        free_cov, free_used, free_r, free_sig, r_all, add)
    if st != 0:
        return None
    u = fix_used.astype(bool)
    if st2 != 0:
        fixed = _finish(pos, fix_par, fix_cov, u, fix_r, fix_sig, _Model(float(c), float(z_src), ndim, False, wind),
                        wind_sigma_m_per_s, c_sigma_m_per_s, summary=(chi2, add[:m, :m] if added else None), rms=rms)
        return (fixed,) if st2 == -1 and fixed.n_used >= min_wind_used else fixed
    idx = u.nonzero()[0]
    nu = len(idx)
    free_u = free_used[:nu].astype(bool)
    used = np.zeros(n, dtype=bool)
    used[idx[free_u]] = True
    return _finish(None, free_par, free_cov, free_u, free_r[:nu], free_sig[:nu],
                   _Model(float(c), float(z_src), ndim, True, wind),
                   wind_sigma_m_per_s, c_sigma_m_per_s, used_out=used, r_out=r_all,
                   summary=(chi2, add if added else None), rms=rms)


def wind_robust_on_arrays(pos, cols, t, sig, *, c_m_per_s: float, z_src_m: float, x0: np.ndarray, wind: np.ndarray,
                          wind_sigma_m_per_s: float, min_wind_used: int, c_sigma_m_per_s: float) -> Solution | None:
    """``locate_wind_robust(pos, t, sig, c_m_per_s=..., z_src_m=..., x0=x0, wind_m_per_s=wind,
    wind_sigma_m_per_s=..., min_wind_used=..., c_sigma_m_per_s=...)``, the same solution, for
    arrays the caller has checked (finite positions and times, positive sigmas; the
    association's :func:`kernels.fit_inputs` does) with at least ``ransac_below``
    (9) detections: ``pos`` (n, 3) m, also as three contiguous columns ``cols``; ``x0``
    (3) and ``wind`` (2) float64 arrays. Without the checks and conversions, most of the
    cost of a fit of a crowded night besides its compiled solve."""
    fixed = _wind_robust_core(pos, cols, t, sig, c_m_per_s, z_src_m, x0, wind, wind_sigma_m_per_s, min_wind_used, 2,
                              _RANSAC_BELOW, _MIN_USED, _OUTLIER_SIGMA, _LATE_SIGMA, _MAX_WIND, c_sigma_m_per_s)
    if not isinstance(fixed, tuple):
        return fixed
    # (The free solve needs locate's small-sample path.)
    return _free_wind(fixed[0], pos, t, sig, c_m_per_s, z_src_m, wind, wind_sigma_m_per_s, min_wind_used,
                      {"c_sigma_m_per_s": c_sigma_m_per_s})


def _ransac(pos, cols, t, sig, par0, mod: _Model, outlier_sigma, max_wind_m_per_s=25.0):
    """Exhaustive RANSAC over minimal subsets (p + 1 detections, one redundant) for small
    n; keeps the consensus set with the most inliers, then the smallest chi^2."""
    n = len(t)
    p = mod.n_params
    best_mask = np.ones(n, dtype=bool)
    best_key = (-1, 0.0)
    best_par = par0
    for subset in itertools.combinations(range(n), p + 1):
        m = np.zeros(n, dtype=bool)
        m[list(subset)] = True
        par, _, chi2 = _solve(cols, t, sig, m, par0, mod, kernels.LOSS_L2, 1.0)
        if chi2 < 0 or (mod.est_wind and np.hypot(*mod.wind_of(par)) > max_wind_m_per_s):
            continue
        r = (t - _predict(pos, par, mod)) / sig
        inl = np.abs(r) <= outlier_sigma
        key = (int(inl.sum()), -float(np.sum(r[inl] ** 2)))
        if key > best_key:
            best_key, best_mask, best_par = key, inl, par
    return best_par, best_mask


def crlb_position_cov(pos_m: np.ndarray, src_m: np.ndarray, sigma_s, c_m_per_s: float, ndim: int = 2) -> np.ndarray:
    """Cramér-Rao bound on the position covariance (m^2), emission time unknown.

    Rows of H are ``[u_i^T / c, 1]`` (``u_i`` unit vector sensor -> source, first ``ndim``
    components); ``J = H^T W H``, ``W = diag(1/sigma^2)``; the bound is the top-left block
    of ``J^-1``."""
    pos = np.asarray(pos_m, dtype=np.float64)
    d = np.asarray(src_m, dtype=np.float64)[None, :] - pos
    u = d / np.linalg.norm(d, axis=1, keepdims=True)
    h = np.hstack([u[:, :ndim] / c_m_per_s, np.ones((len(pos), 1))])
    w = 1.0 / np.broadcast_to(np.asarray(sigma_s, dtype=np.float64), (len(pos),)) ** 2
    j = h.T @ (h * w[:, None])
    return np.linalg.inv(j)[:ndim, :ndim]
