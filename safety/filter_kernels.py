"""Compiled (numba) kernels that assemble the safety filter's QP rows.

The maths is documented in :mod:`safetwin.safety.filter_rows`, which holds the typed inputs
(``Limits``, ``JointTerms``, ``ObstacleArrays``) and the public wrappers; here it is written as
scalar loops so one ``certify`` call costs a few microseconds of assembly instead of a hundred
numpy calls (the 1 kHz budget). ``cache=True`` stores the machine code beside this file, so only
the first process after an install compiles (seconds); ``NUMBA_DISABLE_JIT=1`` runs it as Python.

Packed inputs (built once per filter by ``filter_rows.KernelTables``):

* ``jt`` (8, n): per joint ``lower, upper`` (rad), ``velocity`` (rad/s), ``acceleration``
  (rad/s^2), ``adt = a dt`` (rad/s), ``h_star = a / lam^2`` (rad), ``unseen_static`` (rad, B9)
  and ``brake_acceleration`` (rad/s^2) for the Cartesian braking cap;
* ``sc`` (8,): ``lam = gamma / dt`` (1/s), ``delay`` (s), ``has_unseen`` (0/1), ``lipschitz``
  (m/rad^2), ``dt`` (s), ``gamma``, ``ee_offset`` (m/s), ``distance_margin`` (m).

Rows come out in the order of ``filter_rows.row_names``: the end-effector speed rows, then per
point the workspace upper faces x, y, z, then the lower faces, then every keep-out box, then
every obstacle (blocks, each point-major). Units: m, rad, s; ``G u <= b`` rows in m/s.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

LOWER, UPPER, VELOCITY, ACCEL, ADT, H_STAR, UNSEEN, BRAKE_ACCEL = range(8)
"""Row indices of the per-joint table ``jt``."""
LAM, DELAY, HAS_UNSEEN, LIPSCHITZ, DT, GAMMA, EE_OFFSET, DIST_MARGIN = range(8)
"""Indices of the scalar table ``sc``."""
REDUNDANT_BAND = 1e-9
"""m/s (or rad/s): a row is dropped as implied by the bounds only with at least this much room."""


@njit(cache=True)
def joint_bounds(jt, sc, q, dq):  # noqa: ANN001, ANN201 - numba kernel
    """``(lb, ub, lows (4, n), highs (4, n))`` rad/s; see ``filter_rows.joint_bounds``."""
    n = q.shape[0]
    lam = sc[LAM]
    lows, highs = np.empty((4, n)), np.empty((4, n))
    lb, ub = np.empty(n), np.empty(n)
    for j in range(n):
        hu, hl = jt[UPPER, j] - q[j], q[j] - jt[LOWER, j]
        if sc[HAS_UNSEEN] > 0.0:  # B9: the clearance the joint may already have used unseen
            unseen = jt[UNSEEN, j] + abs(dq[j]) * sc[DELAY]
            hu -= unseen
            hl -= unseen
        adt, a, h_star = jt[ADT, j], jt[ACCEL, j], jt[H_STAR, j]
        pu, pl = lam * hu, lam * hl
        if hu < 0.0:  # B6 recovery ramp: back toward the range, speed growing by a dt per step
            pu = max(pu, min(dq[j], 0.0) - adt)
        if hl < 0.0:
            pl = max(pl, -max(dq[j], 0.0) - adt)
        su = math.inf if hu <= h_star else math.sqrt(max(adt * adt + 2.0 * a * (hu - 0.5 * h_star), 0.0)) - adt
        sl = math.inf if hl <= h_star else math.sqrt(max(adt * adt + 2.0 * a * (hl - 0.5 * h_star), 0.0)) - adt
        lows[0, j], highs[0, j] = -jt[VELOCITY, j], jt[VELOCITY, j]
        lows[1, j], highs[1, j] = dq[j] - adt, dq[j] + adt
        lows[2, j], highs[2, j] = -pl, pu
        lows[3, j], highs[3, j] = -sl, su
        lb[j] = max(max(lows[0, j], lows[1, j]), max(lows[2, j], lows[3, j]))
        ub[j] = min(min(highs[0, j], highs[1, j]), min(highs[2, j], highs[3, j]))
    return lb, ub, lows, highs


@njit(cache=True)
def fk_margin(lipschitz, lb, ub, dt):  # noqa: ANN001, ANN201
    """Bound (m) on the one-step linearisation error of any point for ``lb <= u <= ub``."""
    reach = 0.0
    for j in range(lb.shape[0]):
        reach += max(abs(lb[j]), abs(ub[j]))
    reach *= dt
    return 0.5 * lipschitz * reach * reach


@njit(cache=True)
def state_margin(jac, unseen):  # noqa: ANN001, ANN201
    """``max_p sum_j |J_p[:, j]| unseen_j`` (m) for point Jacobians ``jac`` (P, 3, n)."""
    best = 0.0
    for i in range(jac.shape[0]):
        total = 0.0
        for j in range(jac.shape[2]):
            total += math.sqrt(jac[i, 0, j] ** 2 + jac[i, 1, j] ** 2 + jac[i, 2, j] ** 2) * unseen[j]
        best = max(best, total)
    return best


@njit(cache=True)
def _row(G, h, row, jac, i, gx, gy, gz, value):  # noqa: ANN001, ANN202
    """Write one barrier row: ``G[row] = (gx, gy, gz) . J_i`` (descent direction) and ``h``."""
    for j in range(jac.shape[2]):
        G[row, j] = gx * jac[i, 0, j] + gy * jac[i, 1, j] + gz * jac[i, 2, j]
    h[row] = value


@njit(cache=True)
def _box_distance(px, py, pz, cx, cy, cz, hx, hy, hz):  # noqa: ANN001, ANN202
    """Signed distance (m) from a point to a box and its descent direction ``-grad`` (3 floats):
    from the nearest surface point outside; the deepest face's normal inside."""
    d = (px - cx, py - cy, pz - cz)
    half = (hx, hy, hz)
    ex = np.empty(3)
    sq, best, k = 0.0, -math.inf, 0
    for a in range(3):
        ex[a] = abs(d[a]) - half[a]
        if ex[a] > 0.0:
            sq += ex[a] * ex[a]
        if ex[a] > best:
            best, k = ex[a], a
    g = np.zeros(3)
    if sq > 0.0:
        norm = math.sqrt(sq)
        for a in range(3):
            if ex[a] > 0.0:
                g[a] = -ex[a] / norm if d[a] >= 0.0 else ex[a] / norm
        return norm, g[0], g[1], g[2]
    g[k] = -1.0 if d[k] >= 0.0 else 1.0
    return best, g[0], g[1], g[2]


@njit(cache=True)
def _geometry_rows(G, h, e, p, r, jac, ws, keep_lo, keep_hi, centers, half, dist_margin):  # noqa: ANN001, ANN202
    """Barrier rows ``G[e:]`` and values ``h[e:]`` of every point, in ``row_names`` order."""
    npts, nk, no = p.shape[0], keep_lo.shape[0], centers.shape[0]
    row = e
    for side in range(2):  # workspace upper faces, then lower faces
        for i in range(npts):
            for a in range(3):
                sgn = 1.0 if side == 0 else -1.0
                value = ws[1, a] - p[i, a] - r[i] if side == 0 else p[i, a] - r[i] - ws[0, a]
                _row(G, h, row, jac, i, sgn * (a == 0), sgn * (a == 1), sgn * (a == 2), value)
                row += 1
    for i in range(npts):  # keep-out boxes: the face the point is farthest past
        for b in range(nk):
            best, face = -math.inf, 0
            for a in range(6):
                f = p[i, a] - keep_hi[b, a] if a < 3 else keep_lo[b, a - 3] - p[i, a - 3]
                if f > best:
                    best, face = f, a
            sgn = -1.0 if face < 3 else 1.0
            ax = face % 3
            _row(G, h, row, jac, i, sgn * (ax == 0), sgn * (ax == 1), sgn * (ax == 2), best - r[i] - dist_margin)
            row += 1
    for i in range(npts):  # obstacles: signed distance to the box
        for o in range(no):
            dist, gx, gy, gz = _box_distance(p[i, 0], p[i, 1], p[i, 2], centers[o, 0], centers[o, 1],
                                             centers[o, 2], half[o, 0], half[o, 1], half[o, 2])
            _row(G, h, row, jac, i, gx, gy, gz, dist - r[i] - dist_margin)
            row += 1


@njit(cache=True)
def _barrier_rhs(G, h, b, e, jt, sc, margin, dq):  # noqa: ANN001, ANN202
    """``b[e:]`` (m/s): the barrier rate with the braking cap, or the B6 recovery ramp;
    see ``filter_rows.cartesian_rows``."""
    lam, gamma, dt = sc[LAM], sc[GAMMA], sc[DT]
    for row in range(e, G.shape[0]):
        decel, gdq = 0.0, 0.0
        for j in range(G.shape[1]):
            decel += abs(G[row, j]) * jt[BRAKE_ACCEL, j]
            gdq += G[row, j] * dq[j]
        h_eff = h[row] - margin / gamma
        rate = lam * h_eff
        h_star = decel / (lam * lam)
        adt = decel * dt
        if h_eff > h_star and decel > 0.0:
            rate = min(rate, math.sqrt(max(adt * adt + 2.0 * decel * (h_eff - 0.5 * h_star), 0.0)) - adt)
        if h[row] < 0.0 and decel > 0.0:
            rate = min(max(rate, min(gdq, 0.0) - adt), -margin / dt)
        b[row] = rate


@njit(cache=True)
def cartesian_rows(jt, sc, ee_normals, ws, keep_lo, keep_hi, centers, half, p, r, jac, jv_ee, margin,
                   dq):  # noqa: ANN001, ANN201
    """``(G (R, n), b (R,) m/s, h (R,) m)``; ``h`` is NaN on the end-effector speed rows."""
    e, n = ee_normals.shape[0], jac.shape[2]
    total = e + p.shape[0] * (6 + keep_lo.shape[0] + centers.shape[0])
    G, h, b = np.empty((total, n)), np.empty(total), np.empty(total)
    for k in range(e):
        for j in range(n):
            G[k, j] = ee_normals[k, 0] * jv_ee[0, j] + ee_normals[k, 1] * jv_ee[1, j] + ee_normals[k, 2] * jv_ee[2, j]
        h[k], b[k] = math.nan, sc[EE_OFFSET]
    _geometry_rows(G, h, e, p, r, jac, ws, keep_lo, keep_hi, centers, half, sc[DIST_MARGIN])
    _barrier_rhs(G, h, b, e, jt, sc, margin, dq)
    return G, b, h


@njit(cache=True)
def assemble(jt, sc, ee_normals, ws, keep_lo, keep_hi, centers, half, p, r, jac, jv_ee, q, dq,
             degenerate_norm):  # noqa: ANN001, ANN201
    """The whole constraint set of one ``certify`` call.

    Returns ``(lb, ub, lows, highs, G, b, h, min_barrier, degenerate, finite, needed, G_needed,
    b_needed)``: the simple bounds and their candidates (``joint_bounds``), the Cartesian rows
    with the sampled-data margin and the B9 state margin applied, the smallest barrier value (rad
    or m), whether a row that must move the state (``b < 0``) has a gradient below
    ``degenerate_norm`` (no control authority), whether every entry of ``G`` and ``b`` is
    finite, and the rows the bounds do not already imply (:func:`needed_rows`) with their data.
    """
    lb, ub, lows, highs = joint_bounds(jt, sc, q, dq)
    margin = fk_margin(sc[LIPSCHITZ], lb, ub, sc[DT])
    if sc[HAS_UNSEEN] > 0.0:
        margin += sc[GAMMA] * state_margin(jac, jt[UNSEEN] + np.abs(dq) * sc[DELAY])
    G, b, h = cartesian_rows(jt, sc, ee_normals, ws, keep_lo, keep_hi, centers, half, p, r, jac, jv_ee,
                             margin, dq)
    min_barrier = math.inf
    for j in range(q.shape[0]):
        min_barrier = min(min_barrier, q[j] - jt[LOWER, j], jt[UPPER, j] - q[j])
    degenerate = False
    total = 0.0
    for row in range(G.shape[0]):
        sq = 0.0
        for j in range(G.shape[1]):
            sq += G[row, j] * G[row, j]
        total += sq + b[row]
        if row >= ee_normals.shape[0]:
            min_barrier = min(min_barrier, h[row])
        degenerate = degenerate or (b[row] < 0.0 and sq < degenerate_norm * degenerate_norm)
    needed = needed_rows(G, b, lb, ub)
    G_needed, b_needed = np.empty((needed.shape[0], G.shape[1])), np.empty(needed.shape[0])
    for k in range(needed.shape[0]):
        G_needed[k] = G[needed[k]]
        b_needed[k] = b[needed[k]]
    return lb, ub, lows, highs, G, b, h, min_barrier, degenerate, math.isfinite(total), needed, G_needed, b_needed


@njit(cache=True)
def needed_rows(G, b, lb, ub):  # noqa: ANN001, ANN201
    """Indices of the rows of ``G u <= b`` that can bind inside the box ``lb <= u <= ub``.

    A row whose largest value over the box, ``sum_j max(G_ij lb_j, G_ij ub_j)``, is at most
    ``b_i`` is implied by the bounds: dropping it leaves the feasible set, and so the QP's
    solution, unchanged (exact presolve, not a heuristic). Rows within ``REDUNDANT_BAND`` of
    binding are kept. Most barriers are far from their point, so this removes most rows."""
    keep = np.empty(G.shape[0], dtype=np.int64)
    count = 0
    for i in range(G.shape[0]):
        top = 0.0
        for j in range(G.shape[1]):
            top += max(G[i, j] * lb[j], G[i, j] * ub[j])
        if not top <= b[i] - REDUNDANT_BAND:  # NaN rows are kept (and fail verification)
            keep[count] = i
            count += 1
    return keep[:count]


@njit(cache=True)
def verify(G, b, lb, ub, x, lows, highs, active_tol):  # noqa: ANN001, ANN201
    """Check a solver output ``x`` against every row and bound (not only those it was given).

    Returns ``(slack, rows, bounds)``: the largest violation (rad/s or m/s, 0.0 when all hold;
    inf when any residual is NaN, so a NaN never reads as "no violation"),
    the indices of the rows within ``active_tol * (1 + |b|)`` of their bound, and ``(k, 3)``
    int rows ``(side, joint, source)`` for the active simple bounds (side 0 lower, 1 upper;
    source: the index in ``JOINT_SOURCES`` of the candidate that set the bound).
    """
    n = x.shape[0]
    slack = 0.0
    rows = np.empty(G.shape[0], dtype=np.int64)
    count = 0
    for i in range(G.shape[0]):
        s = 0.0
        for j in range(n):
            s += G[i, j] * x[j]
        residual = b[i] - s
        if not -residual <= slack:
            slack = -residual if residual == residual else math.inf
        if residual <= active_tol * (1.0 + abs(b[i])):
            rows[count] = i
            count += 1
    bounds = np.empty((2 * n, 3), dtype=np.int64)
    nb = 0
    for j in range(n):
        for over in (lb[j] - x[j], x[j] - ub[j]):
            if not over <= slack:
                slack = over if over == over else math.inf
        if x[j] - lb[j] <= active_tol * (1.0 + abs(lb[j])):
            bounds[nb, 0], bounds[nb, 1], bounds[nb, 2] = 0, j, np.argmax(lows[:, j])
            nb += 1
        if ub[j] - x[j] <= active_tol * (1.0 + abs(ub[j])):
            bounds[nb, 0], bounds[nb, 1], bounds[nb, 2] = 1, j, np.argmin(highs[:, j])
            nb += 1
    return slack, rows[:count], bounds[:nb]
