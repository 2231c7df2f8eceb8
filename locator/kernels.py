"""Numba kernels for multilateration and association.

Kernels take arrays and scalars only (never module config: Numba freezes globals), write
into buffers the caller allocated, and do no I/O. Times are float64 seconds relative to a
reference the caller subtracted; positions are local ENU metres.

Model: detection ``i`` at sensor ``s_i`` (position ``p_i``) arrives at
``t_i = t0 + |x - p_i| / c``; the unknowns are the source position ``x`` (2-D with an
assumed source height, or 3-D) and the emission time ``t0``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

LOSS_L2 = 0
LOSS_HUBER = 1
LOSS_CAUCHY = 2


@numba.njit(cache=True)
def _robust_weight(r_std, loss, k):
    if loss == LOSS_HUBER:
        a = abs(r_std)
        return 1.0 if a <= k else k / a
    if loss == LOSS_CAUCHY:
        return 1.0 / (1.0 + (r_std / k) ** 2)
    return 1.0


@numba.njit(cache=True)
def travel_time(dx, dy, dz, wx, wy, c, grad):
    """Travel time (s) along ``d = receiver - source`` (m) in a uniform horizontal wind
    ``(wx, wy)`` (m/s): ``T`` solves ``|d - w T| = c T``. ``grad`` receives
    ``dT/d(source x, y, z)`` and ``dT/d(wx, wy)``."""
    a = c * c - wx * wx - wy * wy
    dw = dx * wx + dy * wy
    dd = dx * dx + dy * dy + dz * dz
    T = (-dw + math.sqrt(dw * dw + a * dd)) / a
    gx = dx - wx * T
    gy = dy - wy * T
    gz = dz
    den = gx * wx + gy * wy + c * c * T
    if den < 1e-12:
        den = 1e-12
    grad[0] = -gx / den
    grad[1] = -gy / den
    grad[2] = -gz / den
    grad[3] = -T * gx / den
    grad[4] = -T * gy / den
    return T


@numba.njit(cache=True)
def _chi2(px, py, pz, t, sigma, mask, q, c, z_src, ndim, est_wind, wind, loss, loss_k, tt, gg):
    """The (robust) chi^2 at ``q``; each used detection's travel time and its gradient
    (:func:`travel_time`) kept in ``tt[i]``, ``gg[i]`` for :func:`_normal` at the same
    point."""
    s = 0.0
    wx = q[ndim + 1] if est_wind else wind[0]
    wy = q[ndim + 2] if est_wind else wind[1]
    for i in range(px.shape[0]):
        if mask[i] == 0:
            continue
        zs = q[2] if ndim == 3 else z_src
        T = travel_time(px[i] - q[0], py[i] - q[1], pz[i] - zs, wx, wy, c, gg[i])
        tt[i] = T
        r = (t[i] - q[ndim] - T) / sigma[i]
        s += _robust_weight(r, loss, loss_k) * r * r
    return s


@numba.njit(cache=True)
def _normal(t, sigma, mask, p, ndim, est_wind, loss, loss_k, A, g, tt, gg):
    """The normal equations at ``p``, from the travel times and gradients :func:`_chi2`
    kept there (``tt``, ``gg``)."""
    m = A.shape[0]
    for a in range(m):
        g[a] = 0.0
        for b in range(m):
            A[a, b] = 0.0
    row = np.zeros(m)
    for i in range(t.shape[0]):
        if mask[i] == 0:
            continue
        T = tt[i]
        grad = gg[i]
        res = t[i] - p[ndim] - T
        # d(predicted)/d(params); the prediction is t0 + T(receiver - source).
        row[0] = grad[0]
        row[1] = grad[1]
        if ndim == 3:
            row[2] = grad[2]
        row[ndim] = 1.0
        if est_wind:
            row[ndim + 1] = grad[3]
            row[ndim + 2] = grad[4]
        w = _robust_weight(res / sigma[i], loss, loss_k) / (sigma[i] * sigma[i])
        for a in range(m):
            g[a] += row[a] * w * res
            for b in range(m):
                A[a, b] += row[a] * w * row[b]


@numba.njit(cache=True, nogil=True)
def lm_solve(px, py, pz, t, sigma, mask, x0, c, z_src, ndim, est_wind, wind, loss, loss_k, max_iter,
             out_params, out_cov):
    """Levenberg-Marquardt for the arrival-time model with unknown emission time.

    Parameters (arrays of length n unless noted)
    ----------
    px, py, pz : sensor ENU positions (m)
    t : arrival times (s, relative)
    sigma : 1-sigma timing uncertainty (s)
    mask : 1 to use a detection, 0 to ignore it
    x0 : starting point ``[x, y, (z,) t0, (wx, wy)]`` (length m)
    c : speed of sound (m/s); z_src : source height (m) when ndim == 2
    ndim : 2 or 3 position unknowns; est_wind : also solve for the wind (2 unknowns)
    wind : known wind ``[wx, wy]`` (m/s), used when not estimated
    loss : LOSS_L2, LOSS_HUBER or LOSS_CAUCHY; loss_k : its scale in sigmas
    out_params (m,) : the solution; out_cov (m, m) : ``(J^T W J)^-1`` at the solution
    (unscaled; W = robust weight / sigma^2)

    Returns chi^2 (with robust weights) at the solution, or -1.0 if singular.
    """
    m = ndim + 1 + (2 if est_wind else 0)
    p = np.empty(m)
    for j in range(m):
        p[j] = x0[j]
    q = np.empty(m)
    step = np.empty(m)
    # The travel times and gradients at p and at the trial point q (the normal equations
    # at p are built from those its chi^2 worked out).
    n = px.shape[0]
    tp, tq = np.empty(n), np.empty(n)
    gp, gq = np.zeros((n, 5)), np.zeros((n, 5))
    A = np.zeros((m, m))
    Ad = np.empty((m, m))
    L = np.empty((m, m))
    g = np.zeros(m)
    lam = 1e-3
    cost = _chi2(px, py, pz, t, sigma, mask, p, c, z_src, ndim, est_wind, wind, loss, loss_k, tp, gp)
    for it in range(max_iter):
        _normal(t, sigma, mask, p, ndim, est_wind, loss, loss_k, A, g, tp, gp)
        improved = False
        small = False
        for _ in range(12):
            for a in range(m):
                for b in range(m):
                    Ad[a, b] = A[a, b]
                Ad[a, a] = A[a, a] * (1.0 + lam) + 1e-30
            if not _cholesky(Ad, L, m):
                return -1.0
            _cholesky_solve(L, g, step, m)
            for a in range(m):
                q[a] = p[a] + step[a]
            new_cost = _chi2(px, py, pz, t, sigma, mask, q, c, z_src, ndim, est_wind, wind, loss, loss_k, tq, gq)
            if new_cost <= cost:
                small = abs(cost - new_cost) <= 1e-10 * (1.0 + cost)
                p, q = q, p
                tp, tq = tq, tp
                gp, gq = gq, gp
                cost = new_cost
                lam = max(lam * 0.3, 1e-9)
                improved = True
                break
            lam *= 10.0
        if not improved or small:
            break
    _normal(t, sigma, mask, p, ndim, est_wind, loss, loss_k, A, g, tp, gp)
    if not _cholesky(A, L, m):
        return -1.0
    for a in range(m):
        out_params[a] = p[a]
        for b in range(m):
            g[b] = 1.0 if a == b else 0.0
        _cholesky_solve(L, g, step, m)
        for b in range(m):
            out_cov[b, a] = step[b]
    return cost


@numba.njit(cache=True, nogil=True)
def _cholesky(A, L, m):
    """The Cholesky factor (lower) of the symmetric ``m x m`` ``A`` into ``L``; False
    unless ``A`` is positive definite (a singular problem). Allocation-free: the
    solver's systems are at most 6 x 6, where LAPACK's call overhead was most of their
    cost."""
    for j in range(m):
        s = A[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not s > 0.0:
            return False
        d = math.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, m):
            s = A[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            L[i, j] = s / d
    return True


@numba.njit(cache=True, nogil=True)
def _cholesky_solve(L, b, x, m):
    """Solve ``L L^T x = b`` (:func:`_cholesky`'s factor) into ``x``."""
    for i in range(m):
        s = b[i]
        for k in range(i):
            s -= L[i, k] * x[k]
        x[i] = s / L[i, i]
    for i in range(m - 1, -1, -1):
        s = x[i]
        for k in range(i + 1, m):
            s -= L[k, i] * x[k]
        x[i] = s / L[i, i]


@numba.njit(parallel=True, cache=True)
def lm_solve_many(px, py, pz, t, sigma, x0, c, z_src, max_iter, out_params, out_cost):
    """Solve many independent 2-D problems in parallel (L2 loss).

    ``px, py, pz, t, sigma`` have shape (n_problems, n_sensors); ``x0`` (n_problems, 3)."""
    n_prob, n = t.shape
    for k in prange(n_prob):
        mask = np.ones(n, dtype=np.int8)
        cov = np.empty((3, 3))
        par = np.empty(3)
        out_cost[k] = lm_solve(px[k], py[k], pz[k], t[k], sigma[k], mask, x0[k], c, z_src, 2,
                               False, np.zeros(2), LOSS_L2, 1.0, max_iter, par, cov)
        for j in range(3):
            out_params[k, j] = par[j]


@numba.njit(cache=True, nogil=True)
def _first_at_least(v, lo, hi, x):
    """The first index in ``lo..hi`` where the ascending ``v`` is ``>= x`` (``hi`` if none)."""
    a = lo
    b = hi
    while a < b:
        m = (a + b) >> 1
        if v[m] < x:
            a = m + 1
        else:
            b = m
    return a


@numba.njit(cache=True, nogil=True)
def _nearest(t_sorted, lo, hi, p):
    """``(index, |t - p|)`` of the time in ``t_sorted[lo:hi]`` (ascending) nearest ``p``;
    ``(-1, inf)`` if empty."""
    a = _first_at_least(t_sorted, lo, hi, p)
    best = -1
    r = np.inf
    if a < hi:
        best = a
        r = t_sorted[a] - p
    if a > lo and p - t_sorted[a - 1] < r:
        best = a - 1
        r = p - t_sorted[a - 1]
    return best, r


@numba.njit(cache=True, nogil=True)
def _nearest_residual(t_sorted, lo, hi, p):
    """|t - p| for the time in ``t_sorted[lo:hi]`` (ascending) nearest ``p``; inf if empty.
    (A short run is scanned whole, without a branch on the data: cheaper than the binary
    search's unpredictable branches, or a scan's stop at the first time past ``p``.
    ``|t - p|`` is the difference the binary search takes, ``t - p`` or ``p - t``.)"""
    if hi - lo <= 16:
        r = np.inf
        for i in range(lo, hi):
            r = min(r, abs(t_sorted[i] - p))
        return r
    return _nearest(t_sorted, lo, hi, p)[1]


@numba.njit(cache=True, nogil=True)
def _travel1(sx, sy, sz, s, x, y, z, c, wx, wy):
    """Travel time (s) from ``(x, y, z)`` to sensor ``s``, the wind ``(wx, wy)`` to first
    order: ``|d| / c - (d . w) / c^2``, ``d`` = sensor minus source (the search kernels'
    model; :func:`travel_time` is the exact one the solver uses)."""
    dx = sx[s] - x
    dy = sy[s] - y
    dz = sz[s] - z
    return math.sqrt(dx * dx + dy * dy + dz * dz) / c - (dx * wx + dy * wy) / (c * c)


@numba.njit(cache=True, nogil=True)
def _travel1_inv(px, py, pz, x, y, z, inv_c, inv_c2, wx, wy):
    """:func:`_travel1` to a sensor at ``(px, py, pz)``, its divisions by ``c`` and
    ``c^2`` as products with ``inv_c = 1 / c`` and ``inv_c2 = 1 / c^2``. The last bit may
    differ; the triple search (:func:`seed_hypotheses`) asks whether an arrival falls in
    a window of milliseconds, and ranks sources of one count on their residuals' sums,
    so it could only tell where two sums agreed to that bit."""
    dx = px - x
    dy = py - y
    dz = pz - z
    return math.sqrt(dx * dx + dy * dy + dz * dz) * inv_c - (dx * wx + dy * wy) * inv_c2


@numba.njit(parallel=True, cache=True, nogil=True)
def seed_coherence(gx, gy, z_src, sx, sy, sz, s0, t_sorted, offsets, c, wx, wy, half_window_s,
                   best_count, best_cost):
    """Anchored space-time consistency search (one seed detection).

    The seed is a detection at sensor ``s0`` at time 0. For every grid node
    ``(gx[g], gy[g], z_src)`` the seed implies an origin time ``-T(node, s0)``; a
    detection at sensor ``s`` at time ``t`` (s after the seed) then has the residual
    ``r = t - T(node, s) + T(node, s0)``. Per node, writes the number of distinct sensors
    (the seed's included) with a detection within ``half_window_s`` of zero residual, and
    the sum of each such sensor's smallest ``|r|`` (s), so ties go to the tightest fit.

    The other detections come grouped by sensor: sensor ``s``'s times (s after the seed,
    ascending) are ``t_sorted[offsets[s]:offsets[s + 1]]``, so each node costs one binary
    search per sensor: O(nodes x sensors x log(detections per sensor)), independent of
    how crowded the window is. ``sx, sy, sz`` are all sensors' positions (m); ``(wx, wy)``
    the wind (m/s), to first order: ``T = |d|/c - (d.w)/c^2``.
    """
    n_cells = gx.shape[0]
    n_sens = sx.shape[0]
    for g in prange(n_cells):
        off = _travel1(sx, sy, sz, s0, gx[g], gy[g], z_src, c, wx, wy)
        cnt = 1
        cost = 0.0
        for s in range(n_sens):
            lo = offsets[s]
            hi = offsets[s + 1]
            if s == s0 or lo == hi:
                continue
            p = _travel1(sx, sy, sz, s, gx[g], gy[g], z_src, c, wx, wy) - off
            r = _nearest_residual(t_sorted, lo, hi, p)
            if r <= half_window_s:
                cnt += 1
                cost += r
        best_count[g] = cnt
        best_cost[g] = cost


@numba.njit(cache=True, nogil=True)
def grid_peaks(gx, gy, count, cost, min_count, min_sep_m, k):
    """Up to ``k`` grid nodes with ``count >= min_count``, best first (higher count, then
    lower cost), each at least ``min_sep_m`` from those already taken: the separate peaks
    of a coherence grid rather than the neighbours of its single best node."""
    cand = np.flatnonzero(count >= min_count)
    key = np.empty(cand.shape[0])
    for i in range(cand.shape[0]):
        key[i] = -count[cand[i]] * 1e6 + cost[cand[i]]
    order = cand[np.argsort(key)]
    out = np.empty(k, dtype=np.int64)
    n = 0
    sep2 = min_sep_m * min_sep_m
    for g in order:
        ok = True
        for j in range(n):
            dx = gx[g] - gx[out[j]]
            dy = gy[g] - gy[out[j]]
            if dx * dx + dy * dy < sep2:
                ok = False
                break
        if ok:
            out[n] = g
            n += 1
            if n == k:
                break
    return out[:n]


@numba.njit(cache=True, nogil=True)
def seed_hypotheses(sx, sy, sz, z_src, s0, nbrs, t_sorted, offsets, c, wx, wy, half_window_s,
                    seed_region_m, x_lo, x_hi, y_lo, y_hi, max_per_sensor, near, n_full, full_sens, d_min, cell_m,
                    pair_ns, out_x, out_y, out_cnt, out_cost):
    """Source hypotheses for one seed from detection triples, verified on the sensors around it.

    The seed is a detection at sensor ``s0`` at time 0; the other detections are grouped by
    sensor as in :func:`seed_coherence`. For every pair of sensors ``(a, b)`` in ``nbrs``
    (the seed sensor's nearest neighbours) and every pair of their detections (at most
    ``max_per_sensor`` each), the three arrivals fix the source in closed form: with the
    wind's first-order term removed, ``D_i - D_0 = c dt_i``; subtracting the squared range
    equations gives two linear equations in the position, ``q_i . x = e_i - D_0 c dt_i``
    (``q_i`` = sensor i minus the seed's sensor), and ``|x|^2 + dz_0^2 = D_0^2`` leaves a
    quadratic in the seed's range ``D_0`` (up to two sources). Two detections further
    apart in time than the pair gate ``pair_ns[a, b]`` (ns) allows are not one shot's
    and form no triple. A source outside the search
    box, or where the seed's sensor is more than ``seed_region_m`` farther than the
    nearest sensor (a first arrival comes from near the source; ``d_min[i, j]`` is the
    distance from ``(x_lo + i cell_m, y_lo + j cell_m)`` to its nearest sensor, looked up
    at the closest node), is dropped. Each source
    is scored like a grid node: distinct sensors with a detection within
    ``half_window_s`` of the predicted arrival, then the sum of those residuals (s).

    Two passes: every source is first scored on ``near`` (the sensors nearest the seed's,
    which hear a real shot seeded there; the triple's own two detections count without a
    lookup: the source predicts their times exactly); only the ``n_full`` best of those
    (all if ``n_full`` <= 0) are then scored on the sensors ``full_sens`` (ascending;
    if empty, every sensor with detections), best first, each pass
    stopping once a source cannot beat the one kept (in the first pass: cannot enter the
    best ``n_full``, ties going to the earlier). In a crowded window most triples are
    chance and this saves most of the scoring.

    Writes the best few distinct sources (count descending, cost ascending, at least
    10 m apart) into ``out_*`` (length k) and returns how many were written.
    """
    k_out = out_x.shape[0]
    n_out = 0
    n_sens = sx.shape[0]
    n_nb = nbrs.shape[0]
    n_near = near.shape[0]
    dz0 = sz[s0] - z_src
    busy = np.empty(n_sens, dtype=np.int64)     # the other sensors with detections (scored on)
    n_busy = 0
    scored = full_sens if full_sens.shape[0] > 0 else np.arange(n_sens)
    for i in range(scored.shape[0]):
        s = scored[i]
        if s != s0 and offsets[s + 1] > offsets[s]:
            busy[n_busy] = s
            n_busy += 1
    in_near = np.zeros(n_sens, dtype=np.int64)
    for i in range(n_near):
        in_near[near[i]] = 1
    # The near sensors' positions and detection runs, gathered once for the lookups
    # below (most of a crowded window's time), and the travel time's divisions as
    # products (:func:`_travel1_inv`).
    near_x, near_y, near_z = np.empty(n_near), np.empty(n_near), np.empty(n_near)
    near_lo, near_hi = np.empty(n_near, dtype=np.int64), np.empty(n_near, dtype=np.int64)
    for i in range(n_near):
        s = near[i]
        near_x[i], near_y[i], near_z[i] = sx[s], sy[s], sz[s]
        near_lo[i], near_hi[i] = offsets[s], offsets[s + 1]
    inv_c, inv_c2 = 1.0 / c, 1.0 / (c * c)
    max_roots = 2 * max_per_sensor * max_per_sensor * n_nb * (n_nb - 1) // 2 + 1
    rx = np.empty(max_roots)
    ry = np.empty(max_roots)
    roff = np.empty(max_roots)
    rpart = np.empty(max_roots, dtype=np.int64)
    n_roots = 0
    # How many sources kept so far have each near count, and the count a new one must
    # beat to enter the best n_full (ties go to the earlier source).
    hist = np.zeros(n_near + 2, dtype=np.int64)
    bar = -1
    for ia in range(n_nb):
        a = nbrs[ia]
        qax = sx[a] - sx[s0]
        qay = sy[a] - sy[s0]
        dza = sz[a] - z_src
        wa = (qax * wx + qay * wy) / (c * c)
        na = min(offsets[a + 1] - offsets[a], max_per_sensor)
        for ib in range(ia + 1, n_nb):
            b = nbrs[ib]
            qbx = sx[b] - sx[s0]
            qby = sy[b] - sy[s0]
            det = qax * qby - qay * qbx
            if abs(det) < 1e-6 * (qax * qax + qay * qay + qbx * qbx + qby * qby):
                continue                        # collinear with the seed's sensor
            dzb = sz[b] - z_src
            wb = (qbx * wx + qby * wy) / (c * c)
            nb = min(offsets[b + 1] - offsets[b], max_per_sensor)
            gate_ab = pair_ns[a, b] / 1e9
            for ja in range(na):
                ta = t_sorted[offsets[a] + ja]
                fa = c * (ta + wa)
                ea = 0.5 * (qax * qax + qay * qay + dza * dza - dz0 * dz0 - fa * fa)
                for jb in range(nb):
                    tb = t_sorted[offsets[b] + jb]
                    if abs(tb - ta) > gate_ab:
                        continue
                    fb = c * (tb + wb)
                    eb = 0.5 * (qbx * qbx + qby * qby + dzb * dzb - dz0 * dz0 - fb * fb)
                    # x = u - D0 v, from Q x = e - D0 f.
                    ux = (eb * -qay + ea * qby) / det
                    uy = (qax * eb - qbx * ea) / det
                    vx = (fb * -qay + fa * qby) / det
                    vy = (qax * fb - qbx * fa) / det
                    qa = vx * vx + vy * vy - 1.0
                    qb = -2.0 * (ux * vx + uy * vy)
                    qc = ux * ux + uy * uy + dz0 * dz0
                    r1 = r2 = -1.0
                    if abs(qa) < 1e-12:
                        if abs(qb) > 1e-12:
                            r1 = -qc / qb
                    else:
                        disc = qb * qb - 4.0 * qa * qc
                        if disc >= 0.0:
                            sq = math.sqrt(disc)
                            r1 = (-qb - sq) / (2.0 * qa)
                            r2 = (-qb + sq) / (2.0 * qa)
                    for ir in range(2):
                        d0 = r1 if ir == 0 else r2
                        if d0 < 0.0 or d0 + fa < 0.0 or d0 + fb < 0.0:
                            continue
                        x = sx[s0] + ux - d0 * vx
                        y = sy[s0] + uy - d0 * vy
                        if x < x_lo or x > x_hi or y < y_lo or y > y_hi:
                            continue
                        # A first arrival comes from near the source: the seed's sensor
                        # must be within seed_region_m of the nearest sensor's range.
                        dx = sx[s0] - x
                        dy = sy[s0] - y
                        r0 = math.sqrt(dx * dx + dy * dy + dz0 * dz0)
                        if r0 > seed_region_m:
                            gi = min(max(int((x - x_lo) / cell_m + 0.5), 0), d_min.shape[0] - 1)
                            gj = min(max(int((y - y_lo) / cell_m + 0.5), 0), d_min.shape[1] - 1)
                            if r0 - d_min[gi, gj] > seed_region_m:
                                continue
                        dx = sx[s0] - x
                        dy = sy[s0] - y
                        off = r0 / c - (dx * wx + dy * wy) / (c * c)
                        # The seed and the triple's own two detections are hits by
                        # construction (the source predicts their times exactly).
                        part = 1 + in_near[a] + in_near[b]
                        left = n_near - in_near[a] - in_near[b]
                        # Each near sensor's arrival is worked out as it is looked up,
                        # stopping once the source cannot enter the best n_full: most
                        # sources of a crowded window are chance and miss early. A run
                        # of up to 64 detections is scanned whole, without a branch on
                        # the data: cheaper than a binary search's unpredictable ones.
                        for i in range(n_near):
                            if part + left <= bar:
                                break
                            s = near[i]
                            if s == a or s == b:
                                continue
                            left -= 1
                            p = _travel1_inv(near_x[i], near_y[i], near_z[i], x, y, z_src, inv_c, inv_c2, wx, wy) - off
                            lo_ = near_lo[i]
                            hi_ = near_hi[i]
                            if hi_ - lo_ <= 64:
                                hit = 0
                                for j in range(lo_, hi_):
                                    if abs(t_sorted[j] - p) <= half_window_s:
                                        hit = 1
                                part += hit
                            elif _nearest(t_sorted, lo_, hi_, p)[1] <= half_window_s:
                                part += 1
                        if part <= bar:
                            continue
                        rx[n_roots] = x
                        ry[n_roots] = y
                        roff[n_roots] = off
                        rpart[n_roots] = part
                        n_roots += 1
                        if n_full > 0:
                            hist[part] += 1
                            above = 0
                            for v in range(n_near + 1, -1, -1):
                                above += hist[v]
                                if above >= n_full:
                                    bar = v
                                    break
    order = np.argsort(-rpart[:n_roots], kind="mergesort")
    n_take = n_roots if n_full <= 0 else min(n_full, n_roots)
    for q in range(n_take):
        h = order[q]
        x = rx[h]
        y = ry[h]
        off = roff[h]
        # Score it like a grid node; stop once it cannot beat the worst source kept.
        bar = out_cnt[k_out - 1] if n_out == k_out else 0
        cnt = 1
        cost = 0.0
        for i in range(n_busy):
            s = busy[i]
            if cnt + n_busy - i < bar:
                break
            p = _travel1_inv(sx[s], sy[s], sz[s], x, y, z_src, inv_c, inv_c2, wx, wy) - off
            r = _nearest_residual(t_sorted, offsets[s], offsets[s + 1], p)
            if r <= half_window_s:
                cnt += 1
                cost += r
        if cnt < bar:
            continue
        # Insert into the best list (distinct sources only).
        pos = n_out
        dup = -1
        for j in range(n_out):
            ddx = out_x[j] - x
            ddy = out_y[j] - y
            if ddx * ddx + ddy * ddy < 100.0:
                dup = j
                break
        if dup >= 0:
            if cnt > out_cnt[dup] or (cnt == out_cnt[dup] and cost < out_cost[dup]):
                # Replace the near-duplicate, then restore the order.
                out_x[dup] = x
                out_y[dup] = y
                out_cnt[dup] = cnt
                out_cost[dup] = cost
                j = dup
                while j > 0 and (out_cnt[j] > out_cnt[j - 1] or
                                 (out_cnt[j] == out_cnt[j - 1] and out_cost[j] < out_cost[j - 1])):
                    out_x[j], out_x[j - 1] = out_x[j - 1], out_x[j]
                    out_y[j], out_y[j - 1] = out_y[j - 1], out_y[j]
                    out_cnt[j], out_cnt[j - 1] = out_cnt[j - 1], out_cnt[j]
                    out_cost[j], out_cost[j - 1] = out_cost[j - 1], out_cost[j]
                    j -= 1
            continue
        while pos > 0 and (cnt > out_cnt[pos - 1] or (cnt == out_cnt[pos - 1] and cost < out_cost[pos - 1])):
            pos -= 1
        if pos >= k_out:
            continue
        last = min(n_out, k_out - 1)
        for j in range(last, pos, -1):
            out_x[j] = out_x[j - 1]
            out_y[j] = out_y[j - 1]
            out_cnt[j] = out_cnt[j - 1]
            out_cost[j] = out_cost[j - 1]
        out_x[pos] = x
        out_y[pos] = y
        out_cnt[pos] = cnt
        out_cost[pos] = cost
        if n_out < k_out:
            n_out += 1
    return n_out


@numba.njit(cache=True, nogil=True)
def poisson_binomial_tail(p, n):
    """P(at least ``n`` of independent events with probabilities ``p`` happen)."""
    m = p.shape[0]
    if n <= 0:
        return 1.0
    if n > m:
        return 0.0
    pmf = np.zeros(m + 1)
    pmf[0] = 1.0
    for i in range(m):
        for k in range(i + 1, 0, -1):
            pmf[k] = pmf[k] * (1.0 - p[i]) + pmf[k - 1] * p[i]
        pmf[0] *= 1.0 - p[i]
    tail = 0.0
    for k in range(n, m + 1):
        tail += pmf[k]
    return min(tail, 1.0)


@numba.njit(cache=True, nogil=True)
def event_arrivals(px, py, pz, x, y, z, t0_ns, c, cov3, gate_s, medium_err, c2, used, never, own_pred, own_gate,
                   heard_pred, gate, dist, order):
    """A located event's predicted arrival at every sensor, for the attach step and the
    explained-arrival test: ``dist`` (m) from the source ``(x, y, z)``; the arrival
    ``t0_ns + dist / c`` (ns, truncated); its gate ``(gate_s + 3 sd + medium_err dist /
    c2)`` in ns, ``sd`` the arrival's standard deviation (s) from ``cov3``, the
    covariance of (x, y, emission time); the same with -1 and 0 at the event's own
    sensors ``used`` (``own_pred``, ``own_gate``), and the arrivals with ``never``
    beyond the farthest of them (``heard_pred``), and the sensors by distance (``order``:
    ``np.argsort(dist)``, for :func:`attach_choose`). Returns that farthest distance (m).
    (The arithmetic is numpy's, operation for operation: the distance summed in
    order, the variance as ``np.einsum("ij,jk,ik->i", J, cov3, J)`` sums it.)"""
    for i in range(px.shape[0]):
        v0 = x - px[i]
        v1 = y - py[i]
        v2 = z - pz[i]
        d = math.sqrt(v0 * v0 + v1 * v1 + v2 * v2)
        dist[i] = d
        own_pred[i] = t0_ns + np.int64(d / c * 1e9)
        cd = c * d
        j0 = v0 / cd
        j1 = v1 / cd
        q = 0.0
        for a in range(3):
            ja = j0 if a == 0 else (j1 if a == 1 else 1.0)
            for b in range(3):
                jb = j0 if b == 0 else (j1 if b == 1 else 1.0)
                q += ja * cov3[a, b] * jb
        if q < 0.0:
            q = 0.0
        gate[i] = (gate_s + 3.0 * math.sqrt(q) + medium_err * d / c2) * 1e9
        own_gate[i] = gate[i]
    r_used = -np.inf
    for u in range(used.shape[0]):
        r_used = max(r_used, dist[used[u]])
    for i in range(px.shape[0]):
        heard_pred[i] = never if dist[i] > r_used else own_pred[i]
    for u in range(used.shape[0]):
        own_pred[used[u]] = -1
        own_gate[used[u]] = 0.0
    order[:] = np.argsort(dist)
    return r_used


@numba.njit(cache=True, nogil=True)
def predict_arrivals(px, py, pz, params, ndim, z_src, c, wx, wy, out):
    """Predicted arrival times (s) at every sensor for ``params`` = ``[x, y, (z,) t0, ...]``:
    the exact travel time in a uniform wind ``(wx, wy)`` (m/s) plus the emission time."""
    sxp = params[0]
    syp = params[1]
    szp = params[2] if ndim == 3 else z_src
    a = c * c - wx * wx - wy * wy
    for i in range(px.shape[0]):
        dx = px[i] - sxp
        dy = py[i] - syp
        dz = pz[i] - szp
        dw = dx * wx + dy * wy
        out[i] = params[ndim] + (-dw + math.sqrt(dw * dw + a * (dx * dx + dy * dy + dz * dz))) / a


@numba.njit(cache=True, nogil=True)
def _mad(x):
    """1.4826 x the median absolute deviation (a robust sigma)."""
    med = np.median(x)
    return 1.4826 * np.median(np.abs(x - med))


@numba.njit(cache=True, nogil=True)
def robust_fit(px, py, pz, t, sigma, x0, c, z_src, ndim, est_wind, wind, outlier_sigma, late_sigma,
               max_wind, min_used, out_par, out_cov, out_mask, out_r, out_sig):
    """The robust stages of :func:`shotnet.locator.locate.locate` for many detections
    (no RANSAC), in one compiled call: an L2 fit from ``x0``; a Cauchy fit at twice the
    residuals' robust spread; the model error learned from the robust residuals (MAD)
    and added to every sigma; detections beyond ``outlier_sigma`` early or ``late_sigma``
    late dropped; a final L2 fit on the rest.

    Writes the parameters, the unscaled covariance ``(J^T W J)^-1``, the mask of kept
    detections, the residuals (s, all detections) and the inflated sigmas (s). Returns
    0 on success, 1 if the wind was estimated and came out singular or beyond
    ``max_wind`` on the first fit (solve again with the wind as given), 2 on failure.
    """
    n = t.shape[0]
    m = ndim + 1 + (2 if est_wind else 0)
    mask = np.ones(n, dtype=np.int8)
    par = np.empty(m)
    cov = np.empty((m, m))
    chi2 = lm_solve(px, py, pz, t, sigma, mask, x0, c, z_src, ndim, est_wind, wind, LOSS_L2, 1.0, 50, par, cov)
    if est_wind and (chi2 < 0 or math.hypot(par[ndim + 1], par[ndim + 2]) > max_wind):
        return 1
    if chi2 < 0:
        return 2
    wx = par[ndim + 1] if est_wind else wind[0]
    wy = par[ndim + 2] if est_wind else wind[1]
    r = np.empty(n)
    predict_arrivals(px, py, pz, par, ndim, z_src, c, wx, wy, r)
    for i in range(n):
        r[i] = (t[i] - r[i]) / sigma[i]
    scale = max(1.0, _mad(r))
    par_c = np.empty(m)
    cov_c = np.empty((m, m))
    chi2c = lm_solve(px, py, pz, t, sigma, mask, par, c, z_src, ndim, est_wind, wind, LOSS_CAUCHY, 2.0 * scale,
                     50, par_c, cov_c)
    robust = False
    if chi2c >= 0 and not (est_wind and math.hypot(par_c[ndim + 1], par_c[ndim + 2]) > max_wind):
        par = par_c
        robust = True
    wx = par[ndim + 1] if est_wind else wind[0]
    wy = par[ndim + 2] if est_wind else wind[1]
    predict_arrivals(px, py, pz, par, ndim, z_src, c, wx, wy, r)
    for i in range(n):
        r[i] = t[i] - r[i]
    s_rob = _mad(r)
    s_model2 = max(0.0, s_rob * s_rob - np.median(sigma * sigma))
    sig = np.sqrt(sigma * sigma + s_model2)
    n_used = 0
    for i in range(n):
        z = r[i] / sig[i]
        mask[i] = 1 if (z >= -outlier_sigma and z <= late_sigma) else 0
        n_used += mask[i]
    if n_used < max(min_used, m):
        return 2
    if robust or n_used < n or s_model2 > 0:
        chi2 = lm_solve(px, py, pz, t, sig, mask, par, c, z_src, ndim, est_wind, wind, LOSS_L2, 1.0, 50, par, cov)
        if chi2 < 0 or (est_wind and math.hypot(par[ndim + 1], par[ndim + 2]) > max_wind):
            return 2
        wx = par[ndim + 1] if est_wind else wind[0]
        wy = par[ndim + 2] if est_wind else wind[1]
        predict_arrivals(px, py, pz, par, ndim, z_src, c, wx, wy, r)
        for i in range(n):
            r[i] = t[i] - r[i]
    for a in range(m):
        out_par[a] = par[a]
        for b in range(m):
            out_cov[a, b] = cov[a, b]
    for i in range(n):
        out_mask[i] = mask[i]
        out_r[i] = r[i]
        out_sig[i] = sig[i]
    return 0


@numba.njit(cache=True, nogil=True)
def wind_robust_fit(px, py, pz, t, sigma, x0, c, z_src, ndim, wind, outlier_sigma, late_sigma, max_wind, min_used,
                    min_free, fix_par, fix_cov, fix_mask, fix_r, fix_sig, free_par, free_cov, free_mask, free_r,
                    free_sig, r_all):
    """:func:`shotnet.locator.locate.locate_wind_robust`'s two robust fits in one call
    (both :func:`robust_fit`): the wind as given (``wind``, from ``x0``, into the
    ``fix_`` arrays), then, if at least ``min_free`` detections were kept, the wind as
    two more unknowns on those (from the first fit's solution and ``wind``, into the
    first ``n_kept`` entries of the ``free_`` arrays), and the arrivals that solution
    predicts, with its wind as given, for every detection (``r_all``: t - predicted, s).

    Returns (the first fit's status, the second's, or -1 if it was not tried)."""
    st = robust_fit(px, py, pz, t, sigma, x0, c, z_src, ndim, False, wind, outlier_sigma, late_sigma, max_wind,
                    min_used, fix_par, fix_cov, fix_mask, fix_r, fix_sig)
    if st != 0:
        return st, -1
    idx = np.flatnonzero(fix_mask)
    nu = idx.shape[0]
    if nu < min_free:
        return 0, -1
    m = ndim + 1
    x0f = np.empty(m + 2)
    for a in range(m):
        x0f[a] = fix_par[a]
    x0f[m] = wind[0]
    x0f[m + 1] = wind[1]
    st2 = robust_fit(px[idx], py[idx], pz[idx], t[idx], sigma[idx], x0f, c, z_src, ndim, True, wind, outlier_sigma,
                     late_sigma, max_wind, min_used, free_par, free_cov, free_mask[:nu], free_r[:nu], free_sig[:nu])
    if st2 == 0:
        predict_arrivals(px, py, pz, free_par[:m], ndim, z_src, c, free_par[m], free_par[m + 1], r_all)
        for i in range(t.shape[0]):
            r_all[i] = t[i] - r_all[i]
    return 0, st2


@numba.njit(cache=True, nogil=True)
def wind_robust_solution(px, py, pz, t, sigma, x0, c, z_src, ndim, wind, outlier_sigma, late_sigma, max_wind,
                         min_used, min_free, wind_sigma, c_sigma, fix_par, fix_cov, fix_mask, fix_r, fix_sig, free_par,
                         free_cov, free_mask, free_r, free_sig, r_all, add):
    """:func:`wind_robust_fit`, and the summary (:func:`fit_summary`) of the solution it
    ends with: the free-wind fit's (on the first fit's inliers; ``add`` (m + 2, m + 2))
    if that succeeded, else the first fit's (``add[:m, :m]``). Returns (the first fit's
    status, the second's or -1, chi-square, whether ``add`` was written, the RMS (s) of
    the residuals of the detections that solution uses (``r_all`` or ``fix_r``), as
    :attr:`~shotnet.locator.locate.Solution.residual_rms_s` works it out)."""
    st, st2 = wind_robust_fit(px, py, pz, t, sigma, x0, c, z_src, ndim, wind, outlier_sigma, late_sigma, max_wind,
                              min_used, min_free, fix_par, fix_cov, fix_mask, fix_r, fix_sig, free_par, free_cov,
                              free_mask, free_r, free_sig, r_all)
    if st != 0:
        return st, st2, 0.0, False, np.nan
    m = ndim + 1
    if st2 != 0:
        chi2, added = fit_summary(px, py, pz, fix_r, fix_sig, fix_mask, fix_par, ndim, z_src, c, False, wind_sigma,
                                  c_sigma, add[:m, :m])
        return st, st2, chi2, added, masked_rms(fix_r, fix_mask, np.arange(fix_r.shape[0]))
    idx = np.flatnonzero(fix_mask)
    nu = idx.shape[0]
    chi2, added = fit_summary(px[idx], py[idx], pz[idx], free_r[:nu], free_sig[:nu], free_mask[:nu], free_par, ndim,
                              z_src, c, True, wind_sigma, c_sigma, add)
    return st, st2, chi2, added, masked_rms(r_all, free_mask[:nu], idx)


@numba.njit(cache=True, nogil=True)
def _given_normal(px, py, pz, sig, mask, par, ndim, z_src, c, est_wind, r, jtj, jtg, jtr, gtg, gtr):
    """The weighted normal sums behind :func:`given_cov` and :func:`c_offset`, to first
    order (travel time ``|d| / c - d . w / c^2``, ``d`` sensor minus source): ``J`` the
    arrival's derivatives in the solved unknowns (x, y, (z,) t0, (wind east, north)),
    ``G`` in the given ones (wind east, wind north, speed of sound: ``-d_x / c^2``,
    ``-d_y / c^2``, ``-|d| / c^2``), ``W = 1 / sig^2`` over the detections in ``mask``,
    ``r`` the residuals (s). Fills ``J^T W J``, ``J^T W G``, ``J^T W r``, ``G^T W G``
    and ``G^T W r``."""
    m = jtj.shape[0]
    row = np.zeros(m)
    g = np.empty(3)
    szp = par[2] if ndim == 3 else z_src
    for i in range(px.shape[0]):
        if not mask[i]:
            continue
        dx = px[i] - par[0]
        dy = py[i] - par[1]
        dz = pz[i] - szp
        d = math.sqrt(dx * dx + dy * dy + dz * dz)
        row[0] = -dx / (c * d)
        row[1] = -dy / (c * d)
        if ndim == 3:
            row[2] = -dz / (c * d)
        row[ndim] = 1.0
        g[0] = -dx / (c * c)
        g[1] = -dy / (c * c)
        g[2] = -d / (c * c)
        if est_wind:
            row[ndim + 1] = g[0]
            row[ndim + 2] = g[1]
        w = 1.0 / (sig[i] * sig[i])
        for a in range(m):
            for k in range(3):
                jtg[a, k] += row[a] * w * g[k]
            jtr[a] += row[a] * w * r[i]
            for b in range(m):
                jtj[a, b] += row[a] * w * row[b]
        for k in range(3):
            gtr[k] += g[k] * w * r[i]
            for k2 in range(3):
                gtg[k, k2] += g[k] * w * g[k2]


@numba.njit(cache=True, nogil=True)
def given_cov(px, py, pz, sig, mask, par, ndim, z_src, c, est_wind, wind_sigma, c_sigma, out):
    """Covariance (of the solved unknowns; ``out`` (m, m)) caused by errors in what the
    solve took as given: ``wind_sigma`` m/s in each component of a wind that was not
    estimated (ignored when ``est_wind``), ``c_sigma`` m/s in the speed of sound.

    To first order an error ``e`` in a given quantity moves the arrivals by ``G e``;
    weighted least squares maps that to ``S e`` with ``S = (J^T W J)^-1 J^T W G``, so the
    added covariance is ``sum sigma_k^2 S_k S_k^T`` (:func:`_given_normal`). Returns
    False (``out`` untouched) when ``J^T W J`` is singular."""
    m = out.shape[0]
    jtj = np.zeros((m, m))
    jtg = np.zeros((m, 3))
    jtr = np.zeros(m)
    gtg = np.zeros((3, 3))
    gtr = np.zeros(3)
    _given_normal(px, py, pz, sig, mask, par, ndim, z_src, c, est_wind, np.zeros(px.shape[0]), jtj, jtg, jtr,
                  gtg, gtr)
    if abs(np.linalg.det(jtj)) < 1e-300:
        return False
    s_mat = np.linalg.solve(jtj, jtg)
    ws2 = 0.0 if est_wind else wind_sigma * wind_sigma
    cs2 = c_sigma * c_sigma
    for a in range(m):
        for b in range(m):
            out[a, b] = ws2 * (s_mat[a, 0] * s_mat[b, 0] + s_mat[a, 1] * s_mat[b, 1]) + cs2 * s_mat[a, 2] * s_mat[b, 2]
    return True


@numba.njit(cache=True, nogil=True)
def _pairwise_leaf(a, lo, n):
    """numpy's pairwise summation of ``a[lo:lo + n]``, ``n <= 128``: below 8 values in
    turn, else in eight running sums."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(cache=True, nogil=True)
def pairwise_sum(a, lo, n):
    """``np.sum(a[lo:lo + n])`` operation for operation: numpy's pairwise summation
    (:func:`_pairwise_leaf` up to 128 values; above, the sum of the two halves' sums,
    the first half a multiple of 8 long), so the two agree to the last bit. (Its
    recursion is unrolled onto a stack: Numba's cache cannot hold a recursive function,
    numba#6061.)"""
    if n <= 128:
        return _pairwise_leaf(a, lo, n)
    s_lo = np.empty(64, dtype=np.int64)
    s_n = np.empty(64, dtype=np.int64)
    s_stage = np.empty(64, dtype=np.int64)      # 0: left half next, 1: right half next, 2: add them
    vals = np.empty(64)
    top = 0
    nv = 0
    s_lo[0], s_n[0], s_stage[0] = lo, n, 0
    while top >= 0:
        m = s_n[top]
        if m <= 128:
            vals[nv] = _pairwise_leaf(a, s_lo[top], m)
            nv += 1
            top -= 1
            continue
        m2 = m // 2
        m2 -= m2 % 8
        stage = s_stage[top]
        s_stage[top] = stage + 1
        if stage == 0:
            top += 1
            s_lo[top], s_n[top], s_stage[top] = s_lo[top - 1], m2, 0
        elif stage == 1:
            top += 1
            s_lo[top], s_n[top], s_stage[top] = s_lo[top - 1] + m2, m - m2, 0
        else:
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
            top -= 1
    return vals[0]


@numba.njit(cache=True, nogil=True)
def fit_summary(px, py, pz, r, sig, mask, par, ndim, z_src, c, est_wind, wind_sigma, c_sigma, add):
    """A fit's chi-square over the detections in ``mask`` (``sum((r / sig)^2)``, summed
    as ``np.sum`` does) and the covariance of what the solve took as given
    (:func:`given_cov`: a given wind's ``wind_sigma`` m/s unless ``est_wind``, the speed
    of sound's ``c_sigma`` m/s) into ``add`` (m, m). Returns ``(chi2, added)``: added is
    False (``add`` untouched) when there is nothing to add or ``J^T W J`` is singular."""
    z = np.empty(r.shape[0])
    m = 0
    for i in range(r.shape[0]):
        if mask[i]:
            v = r[i] / sig[i]
            z[m] = v * v
            m += 1
    chi2 = pairwise_sum(z, 0, m)
    added = False
    if (not est_wind and wind_sigma > 0) or c_sigma > 0:
        added = given_cov(px, py, pz, sig, mask, par, ndim, z_src, c, est_wind, wind_sigma, c_sigma, add)
    return chi2, added


@numba.njit(cache=True, nogil=True)
def valid_input(pos, t, sig):
    """Whether positions (n, 3) m and times s are finite and sigmas positive."""
    for i in range(t.shape[0]):
        if not (math.isfinite(pos[i, 0]) and math.isfinite(pos[i, 1]) and math.isfinite(pos[i, 2]) and
                math.isfinite(t[i]) and sig[i] > 0):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def c_offset(px, py, pz, sig, mask, par, ndim, z_src, c, est_wind, r):
    """What a fit's residuals ``r`` (s; the solution ``par`` at speed of sound ``c``)
    say of the speed of sound: one Gauss-Newton step with ``c`` as one more unknown
    (:func:`_given_normal`, its column ``G_c = -|d| / c^2``). Returns ``(dc, info)``:
    the correction (m/s) and its information ``G_c^T W P G_c`` (``P`` projects out the
    solved unknowns), so ``dc``'s variance is the fit's residual scale over ``info``;
    ``info`` is 0 when the geometry cannot tell ``c`` from the other unknowns."""
    m = ndim + 1 + (2 if est_wind else 0)
    jtj = np.zeros((m, m))
    jtg = np.zeros((m, 3))
    jtr = np.zeros(m)
    gtg = np.zeros((3, 3))
    gtr = np.zeros(3)
    _given_normal(px, py, pz, sig, mask, par, ndim, z_src, c, est_wind, r, jtj, jtg, jtr, gtg, gtr)
    if abs(np.linalg.det(jtj)) < 1e-300:
        return 0.0, 0.0
    a = np.linalg.solve(jtj, jtg[:, 2].copy())     # (J^T W J)^-1 J^T W G_c
    info = gtg[2, 2]
    num = gtr[2]
    for k in range(m):
        info -= jtg[k, 2] * a[k]
        num -= a[k] * jtr[k]
    if info <= 1e-12 * gtg[2, 2] or info <= 0.0:
        return 0.0, 0.0
    return num / info, info


@numba.njit(cache=True, nogil=True)
def significant_radius(dist, matched, p, r_min, min_count, n_free):
    """The radius of the most significant disc around a source.

    ``dist`` (m) are the sensors' distances from the source, ``matched`` whether each has
    a detection near its predicted arrival, ``p`` the chance of such a detection at each.
    Among discs with radius >= ``r_min`` holding >= ``min_count`` matched sensors, returns
    the radius (a matched sensor's distance) at which the matched count beyond
    ``n_free`` is least likely by chance: the log Poisson tail ``P(X >= n - n_free)`` at
    the summed ``p``, bounded as ``pmf(k) (k + 1) / (k + 1 - lambda)``. Returns -1.0
    when no disc qualifies."""
    return _significant_radius(dist, np.argsort(dist), matched, p, r_min, min_count, n_free, np.empty(0))


@numba.njit(cache=True, nogil=True)
def _significant_radius(dist, order, matched, p, r_min, min_count, n_free, lgamma_of):
    """:func:`significant_radius` with the sensors' order by distance (``np.argsort(dist)``)
    given, and ``lgamma_of[k] = math.lgamma(k + 1.0)`` where the table reaches."""
    n = 0
    lam = 0.0
    best = 0.0
    best_r = -1.0
    for i in order:
        lam += p[i]
        if not matched[i]:
            continue
        n += 1
        if n < min_count or dist[i] < r_min:
            continue
        k = n - n_free
        if k + 1 > lam and lam > 0:
            lg = lgamma_of[k] if 0 <= k < lgamma_of.shape[0] else math.lgamma(k + 1.0)
            logtail = k * math.log(lam) - lam - lg + math.log((k + 1.0) / (k + 1.0 - lam))
        elif lam <= 0:
            logtail = -1e300
        else:
            logtail = 0.0
        if best_r < 0 or logtail < best:
            best = logtail
            best_r = dist[i]
    return best_r


@numba.njit(cache=True, nogil=True)
def seed_window(tp, sp, alive, k, span_ns, pair_ns_to_seed, max_search, n_sensors, nearest_first):
    """The detections that can belong to the same shot as the seed ``k`` (the pending
    detections' times ``tp`` (ns, ascending) and sensor indices ``sp``, those still
    pending marked ``alive``): later ones, at other sensors, within ``span_ns`` and the
    pair gate ``pair_ns_to_seed[sensor]``, at most ``max_search``. When there are more,
    whole sensors are taken in the order ``nearest_first`` (the seed sensor's others,
    nearest first) while they fit: the nearest sensors decide whether a shot was there
    (its triples, its first scoring), and the earliest ``max_search`` of a crowded night
    would hold every far sensor's detections of the first second and none of the near
    sensors' later arrivals. Returns ``(indices into tp, their times in s after the
    seed, offsets)``, grouped by sensor (``offsets[s]:offsets[s + 1]``) with ascending
    times within each (a stable counting sort), and the number of distinct sensors
    including the seed's. (The search uses :func:`seed_window_by_sensor`, the same window
    found faster; this scan in time order states it plainly, and the tests hold the
    other to it.)"""
    s0 = sp[k]
    t_seed = tp[k]
    n = tp.shape[0]
    sel = np.empty(min(n - k, max_search), dtype=np.int64)
    m = 0
    counts = np.zeros(n_sensors + 1, dtype=np.int64)
    j = k + 1
    while j < n and tp[j] - t_seed <= span_ns and m < max_search:
        s = sp[j]
        if s != s0 and alive[j] and tp[j] - t_seed <= pair_ns_to_seed[s]:
            sel[m] = j
            m += 1
            counts[s + 1] += 1
        j += 1
    if m == max_search and j < n and tp[j] - t_seed <= span_ns:
        # Too crowded to take everything: count each sensor's share of the whole window,
        # then take the nearest sensors whole.
        share = np.zeros(n_sensors, dtype=np.int64)
        for q in range(m):
            share[sp[sel[q]]] += 1
        end = j
        while end < n and tp[end] - t_seed <= span_ns:
            s = sp[end]
            if s != s0 and alive[end] and tp[end] - t_seed <= pair_ns_to_seed[s]:
                share[s] += 1
            end += 1
        take = np.zeros(n_sensors, dtype=np.bool_)
        total = 0
        for i in range(nearest_first.shape[0]):
            s = nearest_first[i]
            if total + share[s] > max_search:
                break
            take[s] = True
            total += share[s]
        m = 0
        counts[:] = 0
        for j in range(k + 1, end):
            s = sp[j]
            if take[s] and alive[j] and tp[j] - t_seed <= pair_ns_to_seed[s]:
                sel[m] = j
                m += 1
                counts[s + 1] += 1
    n_sens = 1
    for s in range(n_sensors):
        if counts[s + 1] > 0:
            n_sens += 1
        counts[s + 1] += counts[s]
    offsets = counts.copy()
    js = np.empty(m, dtype=np.int64)
    t = np.empty(m)
    fill = counts[:n_sensors].copy()
    for q in range(m):
        i = sel[q]
        s = sp[i]
        js[fill[s]] = i
        t[fill[s]] = (tp[i] - t_seed) / 1e9
        fill[s] += 1
    return js, t, offsets, n_sens


@numba.njit(cache=True, nogil=True)
def by_sensor(sp, n_sensors):
    """The pending detections grouped by sensor: ``(indices, offsets)``, sensor ``s``'s
    at ``indices[offsets[s]:offsets[s + 1]]``, ascending (so in time order, as ``sp``'s
    detections are)."""
    off = np.zeros(n_sensors + 1, dtype=np.int64)
    for i in range(sp.shape[0]):
        off[sp[i] + 1] += 1
    for s in range(n_sensors):
        off[s + 1] += off[s]
    idx = np.empty(sp.shape[0], dtype=np.int64)
    fill = off[:n_sensors].copy()
    for i in range(sp.shape[0]):
        s = sp[i]
        idx[fill[s]] = i
        fill[s] += 1
    return idx, off


@numba.njit(cache=True, nogil=True)
def seed_window_by_sensor(tp, alive, k, s0, idx, off, pair_ns_to_seed, max_search, n_sensors, nearest_first):
    """:func:`seed_window` from the detections grouped by sensor (:func:`by_sensor`
    ``idx, off``; the seed ``k`` is at sensor ``s0``): the same window, found by two
    binary searches per sensor, nearest first, and a scan of what it takes. A crowded
    night's window spans tens of thousands of detections, which :func:`seed_window`
    scans whole to learn each sensor's share; this stops at the first sensor that does
    not fit. ``nearest_first`` must hold every other sensor (and may hold ``s0``)."""
    t_seed = tp[k]
    lo = np.zeros(n_sensors, dtype=np.int64)
    hi = np.zeros(n_sensors, dtype=np.int64)
    cnt = np.zeros(n_sensors, dtype=np.int64)
    total = 0
    for i in range(nearest_first.shape[0]):
        s = nearest_first[i]
        if s == s0:
            continue
        a = _first_at_least(idx, off[s], off[s + 1], k + 1)    # the first after the seed
        start = a
        lim = t_seed + pair_ns_to_seed[s]
        b = off[s + 1]
        while a < b:                          # ...and the first beyond the pair gate
            m = (a + b) // 2
            if tp[idx[m]] <= lim:
                a = m + 1
            else:
                b = m
        c = 0
        for p in range(start, a):
            if alive[idx[p]]:
                c += 1
        if total + c > max_search:
            break                             # too crowded: the nearer sensors whole
        lo[s] = start
        hi[s] = a
        cnt[s] = c
        total += c
    offsets = np.zeros(n_sensors + 1, dtype=np.int64)
    n_sens = 1
    for s in range(n_sensors):
        offsets[s + 1] = offsets[s] + cnt[s]
        if cnt[s] > 0:
            n_sens += 1
    js = np.empty(total, dtype=np.int64)
    t = np.empty(total)
    q = 0
    for s in range(n_sensors):
        for p in range(lo[s], hi[s]):
            i = idx[p]
            if alive[i]:
                js[q] = i
                t[q] = (tp[i] - t_seed) / 1e9
                q += 1
    return js, t, offsets, n_sens


@numba.njit(cache=True, nogil=True)
def choose_candidate(x, y, z_src, s0, tau0, sx, sy, sz, c, wx, wy, t_sorted, offsets, w_s, rates, min_count):
    """The detections of a candidate shot at ``(x, y, z_src)`` seeded at sensor ``s0``,
    emitted ``tau0`` s after the seed's time (``-`` its travel time to ``s0``).

    For every other sensor, the detection (grouped as in :func:`seed_coherence`, times in
    s after the seed) nearest its predicted arrival, if within ``w_s``; then only those
    within the disc around the source whose matched count is least likely by chance
    (:func:`significant_radius`, chance per sensor ``1 - exp(-rate * 2 w_s)`` from
    ``rates`` in detections/s, three matches free for the fit's unknowns). Returns the
    chosen positions in ``t_sorted``, by sensor."""
    n_sens = sx.shape[0]
    pick = np.full(n_sens, -1, dtype=np.int64)
    dist = np.empty(n_sens)
    matched = np.zeros(n_sens, dtype=np.bool_)
    p = np.empty(n_sens)
    for s in range(n_sens):
        dx = sx[s] - x
        dy = sy[s] - y
        dist[s] = math.sqrt(dx * dx + dy * dy)
        p[s] = -math.expm1(-rates[s] * 2.0 * w_s)
        if s == s0 or offsets[s] == offsets[s + 1]:
            continue
        pred = _travel1(sx, sy, sz, s, x, y, z_src, c, wx, wy) + tau0
        best, r = _nearest(t_sorted, offsets[s], offsets[s + 1], pred)
        if r <= w_s:
            pick[s] = best
            matched[s] = True
    matched[s0] = True
    r_keep = significant_radius(dist, matched, p, dist[s0], min_count, 3)
    n = 0
    for s in range(n_sens):
        if pick[s] >= 0 and (r_keep < 0 or dist[s] <= r_keep):
            n += 1
    out = np.empty(n, dtype=np.int64)
    n = 0
    for s in range(n_sens):
        if pick[s] >= 0 and (r_keep < 0 or dist[s] <= r_keep):
            out[n] = pick[s]
            n += 1
    return out


@numba.njit(cache=True, nogil=True)
def chance_tail(x, y, z, sx, sy, sz, cand_sensors, w_s, rates, n_evidence):
    """P(at least ``n_evidence`` sensors within the farthest of ``cand_sensors`` from the
    source ``(x, y, z)`` have a detection within +-``w_s`` (s) of their predicted arrival
    by chance), each sensor's chance ``1 - exp(-rate * 2 w_s)`` at ``rates`` (per s)."""
    n_sens = sx.shape[0]
    dist = np.empty(n_sens)
    for s in range(n_sens):
        dx = sx[s] - x
        dy = sy[s] - y
        dz = sz[s] - z
        dist[s] = math.sqrt(dx * dx + dy * dy + dz * dz)
    r_max = 0.0
    for i in range(cand_sensors.shape[0]):
        r_max = max(r_max, dist[cand_sensors[i]])
    p = np.empty(n_sens)
    m = 0
    for s in range(n_sens):
        if dist[s] <= r_max:
            p[m] = -math.expm1(-rates[s] * 2.0 * w_s)
            m += 1
    return poisson_binomial_tail(p[:m], max(n_evidence, 0))


@numba.njit(cache=True, nogil=True)
def label_chance(x, y, z, sx, sy, sz, sens, gun, w_s, r_all, r_gun, n_free):
    """The chance-alignment probability of a candidate's detections at ``sens`` (sensor
    indices; ``gun`` marks those the node rated likelier a gunshot than not) from the
    source ``(x, y, z)``: :func:`chance_tail` with ``n_free`` detections free for the
    fit's unknowns, at every detection's rate ``r_all`` (per s, per sensor). With more
    than ``n_free`` gunshot-rated detections, also the same test on those alone at the
    rate of gunshot-rated detections ``r_gun``: on a fireworks night every sensor
    reports several impulses a second but few it rates gunshots, so a gunshot heard
    by a dozen sensors is still far beyond chance. Returns the smaller, doubled (two
    tests: the false-alarm probability stays within the threshold)."""
    n = sens.shape[0]
    p_all = chance_tail(x, y, z, sx, sy, sz, sens, w_s, r_all, n - n_free)
    n_gun = 0
    for i in range(n):
        if gun[i]:
            n_gun += 1
    if n_gun <= n_free:
        return p_all
    gs = np.empty(n_gun, dtype=np.int64)
    m = 0
    for i in range(n):
        if gun[i]:
            gs[m] = sens[i]
            m += 1
    p_gun = chance_tail(x, y, z, sx, sy, sz, gs, w_s, r_gun, n_gun - n_free)
    return min(1.0, 2.0 * min(p_all, p_gun))


@numba.njit(cache=True, nogil=True)
def candidate_at(x, y, z_src, k, tp, sp, sig_p, gun_p, js, t, offsets, sx, sy, sz, c, wx, wy, w_s, hist_t, hist_off,
                 gun_t, gun_off, seen_from, seen_to, min_count, n_wind, out_cand):
    """The candidate shot at a source ``(x, y, z_src)`` found for the seed ``k`` (pending
    detection times ``tp`` ns, sensors ``sp``, stated sigmas ``sig_p`` s; its window
    ``js, t, offsets`` from :func:`seed_window`): the seed and the detections
    :func:`choose_candidate` keeps (within ``w_s`` s), written to ``out_cand`` as
    indices into ``tp``. Returns ``(how many, emission offset tau0 s from the seed's
    time, chance pre-test, the same with five free)``: the pre-test is
    :func:`label_chance` with the detections' median sigma times three as the window
    and three detections free for the fit's unknowns (the solve can only drop
    detections and widen the window, so a candidate failing it cannot pass the test
    after its fit); 1.0 with fewer than ``min_count``. A candidate of ``n_wind`` or more
    (if positive) will be fitted with the wind as two more unknowns: the same test with
    five free (else 0.0).
    Chance rates are the sensors' rates around the emission time (:func:`rate_row`),
    of all detections from the histories ``hist_t, hist_off`` and of gunshot-rated ones
    (``gun_p`` marks the pending ones) from ``gun_t, gun_off``, both covering
    ``seen_from..seen_to`` ns."""
    s0 = sp[k]
    tau0 = -_travel1(sx, sy, sz, s0, x, y, z_src, c, wx, wy)
    sec = (tp[k] + np.int64(tau0 * 1e9)) // 1_000_000_000
    r = np.empty(sx.shape[0])
    rate_row(hist_t, hist_off, sec, seen_from, seen_to, r)
    chosen = choose_candidate(x, y, z_src, s0, tau0, sx, sy, sz, c, wx, wy, t, offsets, w_s, r, min_count)
    n = chosen.shape[0] + 1
    out_cand[0] = k
    for i in range(n - 1):
        out_cand[i + 1] = js[chosen[i]]
    if n < min_count:
        return n, tau0, 1.0, 0.0
    sens = np.empty(n, dtype=np.int64)
    sig = np.empty(n)
    gun = np.empty(n, dtype=np.bool_)
    for i in range(n):
        sens[i] = sp[out_cand[i]]
        sig[i] = sig_p[out_cand[i]]
        gun[i] = gun_p[out_cand[i]]
    r_gun = np.empty(sx.shape[0])
    rate_row(gun_t, gun_off, sec, seen_from, seen_to, r_gun)
    w = 3.0 * np.median(sig)
    p5 = label_chance(x, y, z_src, sx, sy, sz, sens, gun, w, r, r_gun, 5) if 0 < n_wind <= n else 0.0
    return n, tau0, label_chance(x, y, z_src, sx, sy, sz, sens, gun, w, r, r_gun, 3), p5


SEED_FEW = 0            # fewer than min_count sensors in the seed's window (count: sensors)
SEED_NO_TRIPLE = 1      # no triple could be formed: the grid search must decide
SEED_WEAK = 2           # the best source explains fewer than min_count sensors (count: that)
SEED_CANDIDATE = 3      # a candidate (count: detections, the seed's included)


@numba.njit(cache=True, nogil=True)
def _labelled(js, t, offsets, keep):
    """The part of a seed window (grouped as :func:`seed_window` returns it) whose
    detections ``keep[js[i]]`` marks: ``(times, offsets)``, grouped and ordered alike."""
    n_sens = offsets.shape[0] - 1
    off = np.zeros(n_sens + 1, dtype=np.int64)
    for s in range(n_sens):
        n = 0
        for i in range(offsets[s], offsets[s + 1]):
            if keep[js[i]]:
                n += 1
        off[s + 1] = off[s] + n
    out = np.empty(off[n_sens])
    m = 0
    for i in range(t.shape[0]):
        if keep[js[i]]:
            out[m] = t[i]
            m += 1
    return out, off


@numba.njit(cache=True, nogil=True)
def _best_source(s0, t, offsets, sx, sy, sz, z_src, c, wx, wy, half_window_s, seed_region_m, x_lo, x_hi, y_lo,
                 y_hi, nbr_order, n_nbrs, max_per_sensor, n_near, n_full, n_full_sens, d_min, cell_m, pair_ns,
                 min_count):
    """The best source for a seed at sensor ``s0`` with the window ``t, offsets``
    (:func:`seed_hypotheses` with its ``n_nbrs`` nearest sensors that have detections,
    scored first on ``n_near``, then on ``n_full_sens``, 0: all): ``(SEED_CANDIDATE,
    count, x, y)``, or ``SEED_WEAK`` with the best count under ``min_count``, or
    ``SEED_NO_TRIPLE``."""
    order = nbr_order[s0]
    nb = np.empty(n_nbrs, dtype=np.int64)
    near = np.empty(n_near, dtype=np.int64)
    n_fs = n_full_sens if 0 < n_full_sens < order.shape[0] else 0
    full = np.empty(n_fs, dtype=np.int64)
    m_nb = 0
    m_near = 0
    m_full = 0
    for i in range(order.shape[0]):
        s = order[i]
        if offsets[s + 1] > offsets[s]:
            if m_nb < n_nbrs:
                nb[m_nb] = s
                m_nb += 1
            if m_near < n_near:
                near[m_near] = s
                m_near += 1
            if m_full < n_fs:
                full[m_full] = s
                m_full += 1
            if m_nb == n_nbrs and m_near == n_near and m_full == n_fs:
                break
    if n_fs > 0 and m_full < n_fs:
        n_fs = 0            # every sensor with detections is among them: score on all
    full = np.sort(full[:n_fs])
    if n_nbrs < 2 or m_nb < 2:
        return SEED_NO_TRIPLE, 0, 0.0, 0.0
    ox = np.zeros(1)
    oy = np.zeros(1)
    ocnt = np.zeros(1, dtype=np.int64)
    ocost = np.zeros(1)
    n = seed_hypotheses(sx, sy, sz, z_src, s0, nb[:m_nb], t, offsets, c, wx, wy, half_window_s, seed_region_m,
                        x_lo, x_hi, y_lo, y_hi, max_per_sensor, near[:m_near], n_full, full, d_min, cell_m,
                        pair_ns, ox, oy, ocnt, ocost)
    if n == 0:
        return SEED_NO_TRIPLE, 0, 0.0, 0.0
    if ocnt[0] < min_count:
        return SEED_WEAK, ocnt[0], 0.0, 0.0
    return SEED_CANDIDATE, ocnt[0], ox[0], oy[0]


@numba.njit(parallel=True, cache=True, nogil=True)
def search_seeds(seeds, tp, sp, by_idx, by_off, alive, sig_p, gun_p, span_ns, pair_ns, max_search, sx, sy, sz,
                 z_src, c, wx, wy, half_window_s, seed_region_m, x_lo, x_hi, y_lo, y_hi, nbr_order, n_nbrs,
                 max_per_sensor, n_near, n_full, n_full_sens, d_min, cell_m, gate_s, hist_t, hist_off, gun_t, gun_off,
                 seen_from, seen_to, min_count, n_wind, out_status, out_count, out_x, out_y, out_tau0, out_prob,
                 out_prob5, out_cand):
    """Search many seeds at once (in parallel): for each pending detection ``seeds[q]``
    (an index into the pending times ``tp`` ns, ascending, sensors ``sp``, grouped by
    sensor ``by_idx, by_off`` (:func:`by_sensor`), still pending ``alive``, stated sigmas
    ``sig_p`` s, gunshot-rated ``gun_p``), its window (:func:`seed_window_by_sensor`, the
    pair gates ``pair_ns[s0]``, crowded windows filled from the nearest sensors
    ``nbr_order[s0]``), the best source from triples
    with its ``n_nbrs`` nearest sensors that have detections, scored on the ``n_near``
    and then the ``n_full_sens`` nearest (:func:`_best_source`; for
    a gunshot-rated seed first from the gunshot-rated detections alone), and the
    candidate there
    (:func:`candidate_at`, window ``half_window_s + gate_s``, chance rates from the
    detection histories ``hist_t, hist_off`` and ``gun_t, gun_off`` covering
    ``seen_from..seen_to`` ns).

    Writes per seed: ``out_status`` (``SEED_*``), ``out_count``, the source
    ``out_x, out_y`` (m) and emission offset ``out_tau0`` (s), the chance pre-test
    ``out_prob`` (and with five free ``out_prob5``, for candidates of ``n_wind`` or more)
    and the candidate's pending indices ``out_cand[q, :count]``. The
    searches are independent: the caller re-searches a seed whose window lost
    detections to a shot found meanwhile."""
    for q in prange(seeds.shape[0]):
        k = seeds[q]
        s0 = sp[k]
        js, t, offsets, n_sens = seed_window_by_sensor(tp, alive, k, s0, by_idx, by_off, pair_ns[s0], max_search,
                                                       sx.shape[0], nbr_order[s0])
        out_prob[q] = 1.0
        if n_sens < min_count:
            out_status[q] = SEED_FEW
            out_count[q] = n_sens
            continue
        st = SEED_NO_TRIPLE
        if gun_p[k]:
            # A seed the node rated a gunshot: its triples first from the gunshot-rated
            # detections alone (few, on a fireworks night, where the full window's
            # chance triples can outscore a shot whose arrivals it crowds).
            tg, og = _labelled(js, t, offsets, gun_p)
            st, cnt, x, y = _best_source(s0, tg, og, sx, sy, sz, z_src, c, wx, wy, half_window_s, seed_region_m,
                                         x_lo, x_hi, y_lo, y_hi, nbr_order, n_nbrs, max_per_sensor, n_near, n_full,
                                         n_full_sens, d_min, cell_m, pair_ns, min_count)
        if st != SEED_CANDIDATE:
            st, cnt, x, y = _best_source(s0, t, offsets, sx, sy, sz, z_src, c, wx, wy, half_window_s, seed_region_m,
                                         x_lo, x_hi, y_lo, y_hi, nbr_order, n_nbrs, max_per_sensor, n_near, n_full,
                                         n_full_sens, d_min, cell_m, pair_ns, min_count)
        if st != SEED_CANDIDATE:
            out_status[q] = st
            out_count[q] = cnt
            continue
        n_c, tau0, prob, prob5 = candidate_at(x, y, z_src, k, tp, sp, sig_p, gun_p, js, t, offsets, sx, sy, sz, c, wx,
                                              wy, half_window_s + gate_s, hist_t, hist_off, gun_t, gun_off, seen_from,
                                              seen_to, min_count, n_wind, out_cand[q])
        out_status[q] = SEED_CANDIDATE
        out_count[q] = n_c
        out_x[q] = x
        out_y[q] = y
        out_tau0[q] = tau0
        out_prob[q] = prob
        out_prob5[q] = prob5


@numba.njit(cache=True, nogil=True)
def rate_row(hist_t, hist_off, sec, seen_from, seen_to, out):
    """Each sensor's detection rate (per s) over the 20 s around the epoch second
    ``sec`` (clipped to ``[seen_from, seen_to]`` ns, the span the histories cover) into
    ``out[sensor]``; ``hist_t[hist_off[s]:hist_off[s + 1]]`` are sensor ``s``'s detection
    times (ns, ascending)."""
    lo = max((sec - 10) * 1_000_000_000, seen_from)
    hi = min((sec + 11) * 1_000_000_000, seen_to)
    span = max(hi - lo, 1_000_000_000) / 1e9
    for s in range(out.shape[0]):
        h = hist_t[hist_off[s]:hist_off[s + 1]]
        out[s] = (np.searchsorted(h, hi, side="right") - np.searchsorted(h, lo, side="left")) / span


@numba.njit(cache=True, nogil=True)
def hist_update(hist_t, hist_off, add_s, add_t, cut):
    """Sensor histories (``hist_t[hist_off[s]:hist_off[s + 1]]``: sensor ``s``'s detection
    times, ns ascending) with the times ``add_t`` (at sensors ``add_s``, any order)
    added and every time before ``cut`` (ns) dropped. Returns the new ``(times, offsets)``."""
    n_s = hist_off.shape[0] - 1
    order = np.argsort(add_t, kind="mergesort")
    cnt = np.zeros(n_s + 1, dtype=np.int64)
    for k in range(add_s.shape[0]):
        cnt[add_s[k] + 1] += 1
    for s in range(n_s):
        cnt[s + 1] += cnt[s]
    by_s = np.empty(add_t.shape[0], dtype=np.int64)       # the added times, by sensor then time
    fill = cnt[:n_s].copy()
    for k in order:
        by_s[fill[add_s[k]]] = add_t[k]
        fill[add_s[k]] += 1
    out = np.empty(hist_t.shape[0] + add_t.shape[0], dtype=np.int64)
    off = np.zeros(n_s + 1, dtype=np.int64)
    w = 0
    for s in range(n_s):
        i, i_end = hist_off[s], hist_off[s + 1]
        j, j_end = cnt[s], cnt[s + 1]
        while i < i_end and hist_t[i] < cut:
            i += 1
        while j < j_end and by_s[j] < cut:
            j += 1
        while i < i_end or j < j_end:
            if j >= j_end or (i < i_end and hist_t[i] <= by_s[j]):
                out[w] = hist_t[i]
                i += 1
            else:
                out[w] = by_s[j]
                j += 1
            w += 1
        off[s + 1] = w
    return out[:w].copy(), off


@numba.njit(cache=True, nogil=True)
def new_in_windows(seed_t, seed_s, new_t, new_s, pair_ns, span_ns, out):
    """How many new detections (``new_t`` ns ascending, at sensors ``new_s``) land in
    each seed's window (:func:`seed_window_by_sensor`'s): at another sensor ``s``, at
    or after the seed's time ``seed_t`` and at most ``pair_ns[seed_s, s]`` later (ns;
    ``span_ns`` their largest). Into ``out[seed]``."""
    for i in range(seed_t.shape[0]):
        t0 = seed_t[i]
        row = pair_ns[seed_s[i]]
        c = 0
        for j in range(np.searchsorted(new_t, t0), new_t.shape[0]):
            dt = new_t[j] - t0
            if dt > span_ns:
                break
            if new_s[j] != seed_s[i] and dt <= row[new_s[j]]:
                c += 1
        out[i] = c


@numba.njit(cache=True, nogil=True)
def new_at_sources(x, y, t0, new_t, new_s, sx, sy, sz, z_src, c, wx, wy, w_ns, out):
    """How many new detections (``new_t`` ns ascending, at sensors ``new_s``) arrive
    where a candidate source predicts: within ``w_ns`` of its emission time ``t0`` (ns)
    plus the travel time from ``(x, y, z_src)`` (m; :func:`_travel1`) to their sensor.
    Into ``out[source]``."""
    for i in range(x.shape[0]):
        c_ = 0
        for j in range(np.searchsorted(new_t, t0[i] - w_ns), new_t.shape[0]):
            pred = t0[i] + np.int64(_travel1(sx, sy, sz, new_s[j], x[i], y[i], z_src, c, wx, wy) * 1e9)
            if abs(new_t[j] - pred) <= w_ns:
                c_ += 1
        out[i] = c_


@numba.njit(cache=True, nogil=True)
def explained_until(pred, gate, close, s, t_ns, late_ns):
    """Until when (ns) a detection at sensor ``s`` at ``t_ns`` (ns) is explained as an
    open event's arrival: the latest ``close[e]`` of the events ``e`` whose predicted
    arrival ``pred[e, s]`` (ns) it follows by at least ``-gate[e, s]`` and at most
    ``gate[e, s] + late_ns`` (ns); -1 if it matches none."""
    until = -1
    for e in range(pred.shape[0]):
        r = t_ns - pred[e, s]
        if r >= -gate[e, s] and r <= gate[e, s] + late_ns and close[e] > until:
            until = close[e]
    return until


@numba.njit(cache=True, nogil=True)
def explained_until_many(pred, gate, close, s, t_ns, late_ns, out):
    """:func:`explained_until` of detections at sensors ``s`` at times ``t_ns`` (ns), into
    ``out``."""
    for q in range(s.shape[0]):
        out[q] = explained_until(pred, gate, close, s[q], t_ns[q], late_ns)


@numba.njit(cache=True, nogil=True)
def event_near(t0, ex, ey, major, t0_ns, x, y, max_dt_ns, radius_m, first):
    """The event (of those with emission times ``t0`` ns, positions ``ex, ey`` m and
    ellipse major semi-axes ``major`` m) within ``max_dt_ns`` of ``t0_ns`` and within
    ``radius_m + major`` of ``(x, y)``: with ``first`` the first such, else the nearest
    in time (the first of equals). -1 if none."""
    best = -1
    best_dt = 0
    for i in range(t0.shape[0]):
        dt = abs(t0[i] - t0_ns)
        if dt <= max_dt_ns and math.hypot(ex[i] - x, ey[i] - y) <= radius_m + major[i]:
            if first:
                return i
            if best < 0 or dt < best_dt:
                best = i
                best_dt = dt
    return best


@numba.njit(cache=True, nogil=True)
def event_near_many(t0, ex, ey, major, t0s, xs, ys, max_dt_ns, radius_m, out):
    """:func:`event_near` (the first such) for each ``(t0s[q], xs[q], ys[q])``, into ``out[q]``."""
    for q in range(t0s.shape[0]):
        out[q] = event_near(t0, ex, ey, major, t0s[q], xs[q], ys[q], max_dt_ns, radius_m, True)


@numba.njit(cache=True, nogil=True)
def louder_before(t0, ex, ey, n, t0_ns, x, y, window_ns, radius_m, n_sensors):
    """Whether an event (emission times ``t0`` ns, positions ``ex, ey`` m, detection
    counts ``n``) emitted up to ``window_ns`` before ``t0_ns``, within ``radius_m`` of
    ``(x, y)``, used more than twice ``n_sensors``."""
    for i in range(t0.shape[0]):
        dt = t0_ns - t0[i]
        if dt > 0 and dt <= window_ns and n_sensors < 0.5 * n[i] and math.hypot(ex[i] - x, ey[i] - y) <= radius_m:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _gated_run(tg, lo, hi, p, g):
    """The run of ``tg[lo:hi]`` (times ns, ascending) within ``g`` (ns) of ``p`` (ns):
    ``(first, end)``, the first no more than the gate early, then those no more than the
    gate late."""
    a = lo
    b = hi
    while a < b:
        c = (a + b) >> 1
        if p - tg[c] <= g:
            b = c
        else:
            a = c + 1
    k = a
    while k < hi and tg[k] - p <= g:
        k += 1
    return a, k


@numba.njit(cache=True, nogil=True)
def _by_pending_index(out_i, out_m, first, end):
    """One event's pairs ``first:end`` put in order of pending index."""
    if end - first > 1:
        order = np.argsort(out_i[first:end])
        out_i[first:end] = out_i[first:end][order]
        out_m[first:end] = out_m[first:end][order]


@numba.njit(cache=True, nogil=True)
def _arrival_matches_serial(p_t, p_s, pred, gate, n_sensors):
    """:func:`arrival_matches` in one thread (few events: the threads' start costs more).
    Every pair of an open event ``e`` and a pending detection ``i`` (time ``p_t[i]`` ns,
    ascending; sensor ``p_s[i]``) that sits within ``gate[e, s]`` (ns) of the event's
    predicted arrival ``pred[e, s]`` (ns) at its sensor: ``|t - pred| <= gate``. The
    pending detections are grouped by sensor, so each (event, sensor) costs one binary
    search instead of a pass over every pending detection. Returns ``(events, pending
    indices, |t - pred| ns)``, ordered by event, then pending index."""
    grouped, off = by_sensor(p_s, n_sensors)     # pending indices, by sensor, in time order
    tg = p_t[grouped]                            # their times, gathered (the searches read these)
    cap = 256
    out_e = np.empty(cap, dtype=np.int64)
    out_i = np.empty(cap, dtype=np.int64)
    out_m = np.empty(cap, dtype=np.int64)
    m = 0
    for e in range(pred.shape[0]):
        first = m
        for s in range(n_sensors):
            lo = off[s]
            hi = off[s + 1]
            if lo == hi:
                continue
            p = pred[e, s]
            a0, a1 = _gated_run(tg, lo, hi, p, gate[e, s])
            for a in range(a0, a1):
                if m == cap:
                    cap *= 2
                    out_e = _grown(out_e, cap)
                    out_i = _grown(out_i, cap)
                    out_m = _grown(out_m, cap)
                i = grouped[a]
                out_e[m] = e
                out_i[m] = i
                out_m[m] = abs(p_t[i] - p)
                m += 1
        _by_pending_index(out_i, out_m, first, m)
    return out_e[:m], out_i[:m], out_m[:m]


@numba.njit(parallel=True, cache=True, nogil=True)
def _arrival_matches_parallel(p_t, p_s, pred, gate, n_sensors):
    """:func:`arrival_matches` with the events shared among the threads: each (event,
    sensor)'s first match and count, the events' offsets, then the pairs written (each
    event's sorted by pending index, as in one thread)."""
    grouped, off = by_sensor(p_s, n_sensors)
    tg = p_t[grouped]
    n_ev = pred.shape[0]
    start = np.empty((n_ev, n_sensors), dtype=np.int64)
    count = np.zeros((n_ev, n_sensors), dtype=np.int64)
    per_ev = np.zeros(n_ev + 1, dtype=np.int64)
    for e in prange(n_ev):
        tot = 0
        for s in range(n_sensors):
            lo = off[s]
            hi = off[s + 1]
            if lo == hi:
                continue
            a, k = _gated_run(tg, lo, hi, pred[e, s], gate[e, s])
            start[e, s] = a
            count[e, s] = k - a
            tot += k - a
        per_ev[e + 1] = tot
    for e in range(n_ev):
        per_ev[e + 1] += per_ev[e]
    m = per_ev[n_ev]
    out_e = np.empty(m, dtype=np.int64)
    out_i = np.empty(m, dtype=np.int64)
    out_m = np.empty(m, dtype=np.int64)
    for e in prange(n_ev):
        w = per_ev[e]
        for s in range(n_sensors):
            p = pred[e, s]
            for a in range(start[e, s], start[e, s] + count[e, s]):
                i = grouped[a]
                out_e[w] = e
                out_i[w] = i
                out_m[w] = abs(p_t[i] - p)
                w += 1
        _by_pending_index(out_i, out_m, per_ev[e], w)
    return out_e, out_i, out_m


# Below this many (event, sensor) pairs one thread does the matching (the threads' start
# costs more than it shares).
PARALLEL_MATCHES_MIN = 20_000


def arrival_matches(p_t, p_s, pred, gate, n_sensors):
    """Every pair of an open event ``e`` and a pending detection ``i`` (time ``p_t[i]`` ns,
    ascending; sensor ``p_s[i]``) that sits within ``gate[e, s]`` (ns) of the event's
    predicted arrival ``pred[e, s]`` (ns) at its sensor: ``|t - pred| <= gate``. The
    pending detections are grouped by sensor, so each (event, sensor) costs one binary
    search instead of a pass over every pending detection; many events are shared among
    the threads (:data:`PARALLEL_MATCHES_MIN`; the same pairs either way). Returns
    ``(events, pending indices, |t - pred| ns)``, ordered by event, then pending index."""
    if pred.shape[0] * n_sensors >= PARALLEL_MATCHES_MIN:
        return _arrival_matches_parallel(p_t, p_s, pred, gate, n_sensors)
    return _arrival_matches_serial(p_t, p_s, pred, gate, n_sensors)


@numba.njit(cache=True, nogil=True)
def _nearest_matches(idx, miss, q_lo, q_hi, p_s, p_key, held, tried, t_lo, t_hi, mark, tag, best_i, best_m,
                     touched):
    """Per sensor, the match nearest its event's prediction among the pairs
    ``idx[q_lo:q_hi]`` (pending indices, ``miss`` ns from the prediction), leaving out
    sensors marked ``tag`` in ``mark``, detections ``held`` and those whose key
    (``p_key``, by pending index) is in ``tried[t_lo:t_hi]`` (sorted): written to
    ``best_i``, ``best_m`` (which must hold -1 at every sensor), the sensors so set to
    ``touched``. Returns how many."""
    n_t = 0
    for q in range(q_lo, q_hi):
        i = idx[q]
        s = p_s[i]
        if mark[s] == tag or held[i]:
            continue
        a = _first_at_least(tried, t_lo, t_hi, p_key[i])
        if a < t_hi and tried[a] == p_key[i]:
            continue
        if best_i[s] < 0:
            touched[n_t] = s
            n_t += 1
            best_i[s] = i
            best_m[s] = miss[q]
        elif miss[q] < best_m[s]:
            best_i[s] = i
            best_m[s] = miss[q]
    return n_t


@numba.njit(cache=True, nogil=True)
def _sorted_runs(a, off):
    """A copy of ``a`` with each run ``a[off[j]:off[j + 1]]`` sorted."""
    out = a.copy()
    for j in range(off.shape[0] - 1):
        out[off[j]:off[j + 1]] = np.sort(a[off[j]:off[j + 1]])
    return out


@numba.njit(cache=True, nogil=True)
def give_way(idx, miss, lo, hi, p_s, p_key, held, tried_off, tried, wait_off, wait_s, wait_miss, n_sens):
    """Which detections waiting with open events give way to pending ones nearer the
    prediction at their sensors. For each event ``j`` in order (its pairs from
    :func:`arrival_matches` at ``idx[lo[j]:hi[j]]``, pending indices, ``miss`` ns from the
    prediction), per sensor the pending detection nearest the prediction, leaving out
    those it has tried (their keys ``tried[tried_off[j]:tried_off[j + 1]]``, any order;
    a pending detection's key is ``p_key[i]``) and those an earlier event took
    (``held``, updated here); a waiting detection ``w`` (``wait_off`` CSR per event,
    sensor ``wait_s[w]``, ``wait_miss[w]`` ns from the prediction) farther from the
    prediction than that one gives way to it. Returns, per waiting detection, the
    pending index that takes its place, or -1."""
    tried = _sorted_runs(tried, tried_off)
    n_ev = lo.shape[0]
    best_i = np.full(n_sens, -1, dtype=np.int64)
    best_m = np.zeros(n_sens, dtype=np.int64)
    touched = np.empty(n_sens, dtype=np.int64)
    out = np.full(wait_s.shape[0], -1, dtype=np.int64)
    no_mark = np.zeros(n_sens, dtype=np.int64)
    for j in range(n_ev):
        if wait_off[j] == wait_off[j + 1]:
            continue
        n_t = _nearest_matches(idx, miss, lo[j], hi[j], p_s, p_key, held, tried, tried_off[j], tried_off[j + 1],
                               no_mark, -1, best_i, best_m, touched)
        for w in range(wait_off[j], wait_off[j + 1]):
            s = wait_s[w]
            if best_i[s] >= 0 and best_m[s] < wait_miss[w]:
                out[w] = best_i[s]
                held[best_i[s]] = True
                best_i[s] = -1
        for q in range(n_t):
            best_i[touched[q]] = -1
    return out


@numba.njit(cache=True, nogil=True)
def attach_choose(idx, miss, lo, hi, p_s, p_key, held, have_off, have_s, tried_off, tried, pred, dist, dorder, gate,
                  hist_t, hist_off, secs, seen_from, seen_to, gate0_s, medium_err, c2, min_count, cache_ok, cache_off,
                  cache_mine, cache_r):
    """The attach step's choice, for each open event ``j`` with matches (its pairs from
    :func:`arrival_matches` at ``idx[lo[j]:hi[j]]``, pending indices, ``miss`` ns from
    the prediction; events in order): per sensor the pending detection nearest the
    prediction, leaving out the sensors it already waits on (``have``), the detections
    it has tried (their keys ``tried``, any order within the event's run; a pending
    detection's key is ``p_key[i]``) and those an earlier event took this step
    (``held``, updated here); then only those within hearing range: all, if none is
    farther than its farthest own sensor (m; its own sensors are where its predicted
    arrival ``pred[j]`` is -1, ``dist[j]`` the distances, m); else those within the
    radius of the most significant disc
    (:func:`significant_radius` of its own sensors, the waiting ones and the
    matched ones, its sensors by distance ``dorder[j]``, chance per sensor
    ``1 - exp(-rate * 2 g)`` at the sensors' rates per s
    around the epoch second ``secs[j]`` (:func:`rate_row` of the histories ``hist_t,
    hist_off`` covering ``seen_from..seen_to`` ns), ``g`` the gate ``gate[j]`` ns, at its
    own sensors (gate 0) the plain one, ``gate0_s + medium_err d / c2`` s at distance
    ``d``), reusing the radius cached for the same matched sensors when ``cache_ok[j]``
    (``cache_mine``, ``cache_r``): the rates and plain gates are only worked out where a
    radius is. The CSR pairs ``*_off, *_s`` are per event.

    Returns ``(joined pending indices, their offsets per event, matched sensors, their
    offsets, radius, computed)``: where ``computed[j]`` the radius was computed for
    those matched sensors (the caller caches it)."""
    tried = _sorted_runs(tried, tried_off)
    n_ev = lo.shape[0]
    n_sens = dist.shape[1]
    best_i = np.full(n_sens, -1, dtype=np.int64)
    best_m = np.zeros(n_sens, dtype=np.int64)
    mark = np.zeros(n_sens, dtype=np.int64)
    touched = np.empty(n_sens, dtype=np.int64)
    join = np.empty(hi[n_ev - 1] - lo[0] if n_ev else 0, dtype=np.int64)
    join_off = np.zeros(n_ev + 1, dtype=np.int64)
    mine_all = np.empty(hi[n_ev - 1] - lo[0] if n_ev else 0, dtype=np.int64)
    mine_off = np.zeros(n_ev + 1, dtype=np.int64)
    radius = np.full(n_ev, -1.0)
    computed = np.zeros(n_ev, dtype=np.bool_)
    hit = np.zeros(n_sens, dtype=np.bool_)
    p = np.empty(n_sens)
    # The rates per epoch second, worked out once each (a step's events share a few).
    usec = np.unique(secs)
    rate_rows = np.empty((usec.shape[0], n_sens))
    rate_done = np.zeros(usec.shape[0], dtype=np.bool_)
    lgamma_of = np.empty(n_sens + 1)
    for k in range(n_sens + 1):
        lgamma_of[k] = math.lgamma(k + 1.0)
    n_join = 0
    n_mine = 0
    for j in range(n_ev):
        for q in range(have_off[j], have_off[j + 1]):
            mark[have_s[q]] = j + 1
        n_t = _nearest_matches(idx, miss, lo[j], hi[j], p_s, p_key, held, tried, tried_off[j], tried_off[j + 1],
                               mark, j + 1, best_i, best_m, touched)
        mine = np.sort(touched[:n_t])
        for q in range(n_t):
            mine_all[n_mine + q] = mine[q]
        n_mine += n_t
        mine_off[j + 1] = n_mine
        r_keep = -1.0
        if n_t > 0:
            far = 0.0
            for q in range(n_t):
                far = max(far, dist[j, mine[q]])
            r_used = -np.inf
            for s in range(n_sens):
                if pred[j, s] == -1:
                    r_used = max(r_used, dist[j, s])
            if far > r_used:
                same = cache_ok[j] and cache_off[j + 1] - cache_off[j] == n_t
                if same:
                    for q in range(n_t):
                        if cache_mine[cache_off[j] + q] != mine[q]:
                            same = False
                            break
                if same:
                    r_keep = cache_r[j]
                else:
                    for s in range(n_sens):
                        hit[s] = pred[j, s] == -1
                    r_own = max(0.0, r_used)
                    for q in range(have_off[j], have_off[j + 1]):
                        hit[have_s[q]] = True
                    for q in range(n_t):
                        hit[mine[q]] = True
                    u = np.searchsorted(usec, secs[j])
                    rates = rate_rows[u]
                    if not rate_done[u]:
                        rate_row(hist_t, hist_off, secs[j], seen_from, seen_to, rates)
                        rate_done[u] = True
                    for s in range(n_sens):
                        g = gate[j, s]
                        if not g > 0:
                            g = (gate0_s + medium_err * dist[j, s] / c2) * 1e9
                        p[s] = -math.expm1(-(rates[s] * 2.0) * (g / 1e9))
                    r_keep = _significant_radius(dist[j], dorder[j], hit, p, r_own, min_count, 3, lgamma_of)
                    computed[j] = True
                radius[j] = r_keep
        start = n_join
        for q in range(n_t):
            s = mine[q]
            if r_keep < 0 or dist[j, s] <= r_keep:
                join[n_join] = best_i[s]
                n_join += 1
            best_i[s] = -1
        join[start:n_join] = np.sort(join[start:n_join])
        for q in range(start, n_join):
            held[join[q]] = True
        join_off[j + 1] = n_join
    return join[:n_join], join_off, mine_all[:n_mine], mine_off, radius, computed


@numba.njit(cache=True, nogil=True)
def _grown(a, n):
    out = np.empty(n, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


@numba.njit(cache=True, nogil=True)
def fit_inputs(raw, pos, x_start, y_start, z_src, var_model, var_survey, t, p, sig, start_off):
    """A fit's arrays from its detections' integers ``raw`` (3, n): arrival times ns,
    sensor indices (rows of ``pos`` (sensors, 3) m) and stated sigmas ns, in numpy's
    arithmetic (the association's statements for them, to the last bit). Writes the
    arrival times ``t`` (s after the earliest, ``(t_ns - t_ref) / 1e9``), the sensors'
    coordinates ``p`` (3, n) m, the sigmas ``sig`` s (``sqrt(s^2 + var_model +
    var_survey)``, s the stated sigma in s) and the earliest arrival's sensor minus the
    start (``x_start``, ``y_start``, ``z_src``) ``start_off`` (3) m (its first, as
    ``np.argmin``). Returns (``t_ref`` ns, the earliest's time s (0.0), whether every
    time and position is finite and every sigma positive (False for none), the
    sigmas' median (:func:`~shotnet.locator.locate._median`) and their mean square
    (``np.mean(sig * sig)``))."""
    n = raw.shape[1]
    if n == 0:
        return 0, 0.0, False, np.nan, np.nan
    t_ref = raw[0, 0]
    for i in range(1, n):
        if raw[0, i] < t_ref:
            t_ref = raw[0, i]
    ok = True
    first = 0
    sq = np.empty(n)
    for i in range(n):
        t[i] = (raw[0, i] - t_ref) / 1e9
        s = raw[1, i]
        p[0, i], p[1, i], p[2, i] = pos[s, 0], pos[s, 1], pos[s, 2]
        si = raw[2, i] / 1e9
        sig[i] = math.sqrt(si * si + var_model + var_survey)
        sq[i] = sig[i] * sig[i]
        if t[i] < t[first]:
            first = i
        if not (math.isfinite(p[0, i]) and math.isfinite(p[1, i]) and math.isfinite(p[2, i]) and
                math.isfinite(t[i]) and sig[i] > 0):
            ok = False
    start_off[0] = p[0, first] - x_start
    start_off[1] = p[1, first] - y_start
    start_off[2] = p[2, first] - z_src
    srt = np.sort(sig)
    med = srt[n // 2] if n % 2 else 0.5 * (srt[n // 2 - 1] + srt[n // 2])
    return t_ref, t[first], ok, med, pairwise_sum(sq, 0, n) / n


@numba.njit(cache=True, nogil=True)
def masked_rms(r, mask, at):
    """``sqrt(mean(r[used] ** 2))`` as numpy works it out (pairwise sum of the squares,
    divided by their count; NaN for none), the detections used being ``at[q]`` for
    each ``q`` where ``mask[q]`` (``at`` ascending)."""
    sq = np.empty(mask.shape[0])
    k = 0
    for q in range(mask.shape[0]):
        if mask[q]:
            v = r[at[q]]
            sq[k] = v * v
            k += 1
    if k == 0:
        return np.nan
    return math.sqrt(pairwise_sum(sq, 0, k) / k)
