"""Compiled (numba) kernels of :class:`safetwin.twin.kinematics.Kinematics`.

The kinematics runs inside two hot loops: the twin's IK controller (every control step) and the
safety filter (every ``certify`` call, 1 kHz on hardware). Written with numpy arrays these cost
tens of microseconds in per-call overhead alone; as scalar loops compiled by numba they cost a
few. ``cache=True`` keeps the machine code next to this file, so only the first process after an
install pays the compilation (seconds). ``NUMBA_DISABLE_JIT=1`` runs the same code as Python.

The chain (see ``Kinematics``): frame ``F_k`` after controlled joint ``k`` is
``F_{k-1} @ [before_r[k] @ Rot(axis_k, q_k) | before_p[k] + before_r[k] @ axis_k * q_k]``, the
rotation for revolute joints, the translation term for prismatic ones (``prismatic[k]``).
Frames and units: base frame, m, rad; Jacobian columns in m/s (or rad/s) per rad/s.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def _mul(a, b):  # noqa: ANN001, ANN202
    """``a @ b`` for (3, 3) matrices, written out (numba's ``@`` calls BLAS: slower at this size)."""
    out = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            out[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]
    return out


@njit(cache=True)
def _mul_t(a, b):  # noqa: ANN001, ANN202
    """``a @ b.T`` for (3, 3) matrices."""
    out = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            out[i, j] = a[i, 0] * b[j, 0] + a[i, 1] * b[j, 1] + a[i, 2] * b[j, 2]
    return out


@njit(cache=True)
def _mul_vec(a, x):  # noqa: ANN001, ANN202
    """``a @ x`` for a matrix (m, n) and a vector (n,)."""
    out = np.zeros(a.shape[0])
    for i in range(a.shape[0]):
        for k in range(a.shape[1]):
            out[i] += a[i, k] * x[k]
    return out


@njit(cache=True)
def frames(q, before_r, before_p, axes, prismatic):  # noqa: ANN001, ANN201 - numba kernel
    """Rotations (n, 3, 3), origins (n, 3) and world axes (n, 3) of the frames after each joint."""
    n = q.shape[0]
    rots = np.empty((n, 3, 3))
    origins = np.empty((n, 3))
    z = np.empty((n, 3))
    r_prev = np.eye(3)
    o_prev = np.zeros(3)
    local = np.empty((3, 3))
    for k in range(n):
        ax, ay, az = axes[k, 0], axes[k, 1], axes[k, 2]
        br = before_r[k]
        step = before_p[k].copy()
        if prismatic[k]:
            for i in range(3):
                step[i] += (br[i, 0] * ax + br[i, 1] * ay + br[i, 2] * az) * q[k]
                for j in range(3):
                    local[i, j] = br[i, j]
        else:  # Rodrigues: I + sin K + (1 - cos) K^2, K = skew(axis)
            s, c = math.sin(q[k]), 1.0 - math.cos(q[k])
            rot = np.empty((3, 3))
            rot[0, 0] = 1.0 - c * (ay * ay + az * az)
            rot[1, 1] = 1.0 - c * (ax * ax + az * az)
            rot[2, 2] = 1.0 - c * (ax * ax + ay * ay)
            rot[0, 1] = -s * az + c * ax * ay
            rot[1, 0] = s * az + c * ax * ay
            rot[0, 2] = s * ay + c * ax * az
            rot[2, 0] = -s * ay + c * ax * az
            rot[1, 2] = -s * ax + c * ay * az
            rot[2, 1] = s * ax + c * ay * az
            for i in range(3):
                for j in range(3):
                    local[i, j] = br[i, 0] * rot[0, j] + br[i, 1] * rot[1, j] + br[i, 2] * rot[2, j]
        for i in range(3):
            origins[k, i] = o_prev[i] + r_prev[i, 0] * step[0] + r_prev[i, 1] * step[1] + r_prev[i, 2] * step[2]
            for j in range(3):
                rots[k, i, j] = r_prev[i, 0] * local[0, j] + r_prev[i, 1] * local[1, j] + r_prev[i, 2] * local[2, j]
        for i in range(3):
            z[k, i] = rots[k, i, 0] * ax + rots[k, i, 1] * ay + rots[k, i, 2] * az
        r_prev = rots[k]
        o_prev = origins[k]
    return rots, origins, z


@njit(cache=True)
def points_jacobians(rots, origins, z, prismatic, pt_local, pt_group):  # noqa: ANN001, ANN201
    """Positions (P, 3) and linear Jacobians (P, 3, n) of points fixed on the frames.

    ``pt_local`` (P, 3): coordinates in frame ``pt_group[i]``; joint ``j`` moves point ``i``
    only when ``j <= pt_group[i]``: column ``z_j x (p_i - o_j)`` (revolute) or ``z_j`` (prismatic).
    """
    npts, n = pt_local.shape[0], rots.shape[0]
    points = np.empty((npts, 3))
    jac = np.zeros((npts, 3, n))
    for i in range(npts):
        g = pt_group[i]
        for a in range(3):
            points[i, a] = origins[g, a] + rots[g, a, 0] * pt_local[i, 0] + rots[g, a, 1] * pt_local[i, 1] \
                + rots[g, a, 2] * pt_local[i, 2]
        for j in range(g + 1):
            if prismatic[j]:
                jac[i, 0, j], jac[i, 1, j], jac[i, 2, j] = z[j, 0], z[j, 1], z[j, 2]
                continue
            dx = points[i, 0] - origins[j, 0]
            dy = points[i, 1] - origins[j, 1]
            dz = points[i, 2] - origins[j, 2]
            jac[i, 0, j] = z[j, 1] * dz - z[j, 2] * dy
            jac[i, 1, j] = z[j, 2] * dx - z[j, 0] * dz
            jac[i, 2, j] = z[j, 0] * dy - z[j, 1] * dx
    return points, jac


@njit(cache=True)
def ee_jacobian(point_jac0, z, prismatic):  # noqa: ANN001, ANN201
    """Geometric Jacobian (6, n) from the EE point's linear Jacobian (3, n) and the world axes."""
    n = z.shape[0]
    jac = np.empty((6, n))
    for j in range(n):
        for a in range(3):
            jac[a, j] = point_jac0[a, j]
            jac[3 + a, j] = 0.0 if prismatic[j] else z[j, a]
    return jac


@njit(cache=True)
def pose_error(p, rot, p_goal, rot_goal):  # noqa: ANN001, ANN201
    """The (6,) displacement [p_goal - p (m); axis-angle of rot_goal @ rot^T (rad)]."""
    r_err = _mul_t(rot_goal, rot)
    cos = min(1.0, max(-1.0, (r_err[0, 0] + r_err[1, 1] + r_err[2, 2] - 1.0) / 2.0))
    angle = math.acos(cos)
    out = np.empty(6)
    for a in range(3):
        out[a] = p_goal[a] - p[a]
    vx, vy, vz = r_err[2, 1] - r_err[1, 2], r_err[0, 2] - r_err[2, 0], r_err[1, 0] - r_err[0, 1]
    if angle < 1e-9:
        out[3], out[4], out[5] = 0.5 * vx, 0.5 * vy, 0.5 * vz
    elif math.pi - angle < 1e-6:  # near pi: the axis from the diagonal (the skew part vanishes)
        best, i = -1.0, 0
        for a in range(3):
            d = math.sqrt(max((r_err[a, a] + 1.0) / 2.0, 0.0))
            if d > best:
                best, i = d, a
        axis = r_err[:, i].copy()
        axis[i] += 1.0
        scale = angle / math.sqrt(axis[0] ** 2 + axis[1] ** 2 + axis[2] ** 2)
        out[3], out[4], out[5] = axis[0] * scale, axis[1] * scale, axis[2] * scale
    else:
        scale = angle / (2.0 * math.sin(angle))
        out[3], out[4], out[5] = vx * scale, vy * scale, vz * scale
    return out


@njit(cache=True)
def dls_step(jac, dx, damping):  # noqa: ANN001, ANN201
    """Damped least squares ``J^T (J J^T + damping^2 I)^-1 dx`` (n,) for ``jac`` (6, n).

    ``J J^T + damping^2 I`` is symmetric positive definite (damping > 0): solved by Cholesky,
    written out (no BLAS/LAPACK call for a 6x6 system)."""
    rows, n = jac.shape
    low = np.zeros((rows, rows))  # Cholesky factor of J J^T + damping^2 I
    for i in range(rows):
        for j in range(i + 1):
            acc = damping * damping if i == j else 0.0
            for k in range(n):
                acc += jac[i, k] * jac[j, k]
            for k in range(j):
                acc -= low[i, k] * low[j, k]
            low[i, j] = math.sqrt(acc) if i == j else acc / low[j, j]
    y = np.empty(rows)
    for i in range(rows):  # forward then back substitution
        acc = dx[i]
        for k in range(i):
            acc -= low[i, k] * y[k]
        y[i] = acc / low[i, i]
    for i in range(rows - 1, -1, -1):
        acc = y[i]
        for k in range(i + 1, rows):
            acc -= low[k, i] * y[k]
        y[i] = acc / low[i, i]
    out = np.zeros(n)
    for k in range(n):
        for i in range(rows):
            out[k] += jac[i, k] * y[i]
    return out


@njit(cache=True)
def kinematics_all(q, before_r, before_p, axes, prismatic, pt_local, pt_group, ee_r):  # noqa: ANN001, ANN201
    """One pass: points (P, 3), their Jacobians (P, 3, n), the EE Jacobian (6, n) and rotation
    (3, 3); point 0 must be the EE (on the last frame)."""
    rots, origins, z = frames(q, before_r, before_p, axes, prismatic)
    points, jac = points_jacobians(rots, origins, z, prismatic, pt_local, pt_group)
    return points, jac, ee_jacobian(jac[0], z, prismatic), _mul(rots[-1], ee_r)


@njit(cache=True)
def ik_step(q, goal, rot_goal, use_goal, damping, before_r, before_p, axes, prismatic, ee_local,
            ee_group, ee_r):  # noqa: ANN001, ANN201
    """Damped-least-squares joint step (n,) rad toward a pose goal (``use_goal``: ``goal`` (3,)
    m and ``rot_goal`` (3, 3)) or along a displacement (``goal`` (6,) = [dp; dtheta])."""
    points, jac, ee_jac, rot = kinematics_all(q, before_r, before_p, axes, prismatic, ee_local, ee_group, ee_r)
    dx = pose_error(points[0], rot, goal, rot_goal) if use_goal else goal
    return dls_step(ee_jac, dx, damping)


@njit(cache=True)
def rotvec_matrix(x, y, z):  # noqa: ANN001, ANN201
    """Rotation (3, 3) of the axis-angle vector (x, y, z) rad (Rodrigues)."""
    angle = math.sqrt(x * x + y * y + z * z)
    rot = np.eye(3)
    if angle < 1e-12:
        return rot
    x, y, z = x / angle, y / angle, z / angle
    s, c = math.sin(angle), 1.0 - math.cos(angle)
    rot[0, 0], rot[0, 1], rot[0, 2] = 1.0 - c * (y * y + z * z), -s * z + c * x * y, s * y + c * x * z
    rot[1, 0], rot[1, 1], rot[1, 2] = s * z + c * x * y, 1.0 - c * (x * x + z * z), -s * x + c * y * z
    rot[2, 0], rot[2, 1], rot[2, 2] = -s * y + c * x * z, s * x + c * y * z, 1.0 - c * (x * x + y * y)
    return rot


@njit(cache=True)
def track_here(q, inc, damping, before_r, before_p, axes, prismatic, ee_local, ee_group, ee_r):  # noqa: ANN001, ANN201
    """The tracking step from the EE pose at ``q``: the goal is that pose moved by ``inc`` (6,)
    = [dp (m); dtheta (rad, axis-angle, applied on the left)]; returns ``(p_des, r_des, dq)``."""
    points, jac, ee_jac, rot = kinematics_all(q, before_r, before_p, axes, prismatic, ee_local, ee_group, ee_r)
    p_new = points[0] + inc[:3]
    r_new = _mul(rotvec_matrix(inc[3], inc[4], inc[5]), rot)
    return p_new, r_new, dls_step(ee_jac, pose_error(points[0], rot, p_new, r_new), damping)


@njit(cache=True)
def observe_track(q, dq, p_des, r_des, inc, damping, before_r, before_p, axes, prismatic, pt_local,
                  pt_group, ee_r):  # noqa: ANN001, ANN201
    """At one measured state, from one kinematics pass: the points (P, 3) m (row 0: the EE; the
    spheres need positions only), the EE speed ``|J_v dq|`` (m/s) and rotation, and the tracking
    step toward ``(p_des, r_des)`` moved by ``inc``. Returns ``(points, speed, rot, p_des',
    r_des', dq (n,) rad)``."""
    rots, origins, z = frames(q, before_r, before_p, axes, prismatic)
    ee, ee_jac3 = points_jacobians(rots, origins, z, prismatic, pt_local[:1], pt_group[:1])
    points = np.empty((pt_local.shape[0], 3))  # the spheres need positions only, no Jacobians
    points[0] = ee[0]
    for i in range(1, pt_local.shape[0]):
        g = pt_group[i]
        for a in range(3):
            points[i, a] = origins[g, a] + rots[g, a, 0] * pt_local[i, 0] + rots[g, a, 1] * pt_local[i, 1] \
                + rots[g, a, 2] * pt_local[i, 2]
    v = _mul_vec(ee_jac3[0], dq)
    rot = _mul(rots[-1], ee_r)
    p_new = p_des + inc[:3]
    r_new = _mul(rotvec_matrix(inc[3], inc[4], inc[5]), r_des)
    dq_step = dls_step(ee_jacobian(ee_jac3[0], z, prismatic), pose_error(points[0], rot, p_new, r_new), damping)
    return points, math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]), rot, p_new, r_new, dq_step
