"""The filter's fast path: one-pass kinematics and vectorised constraint rows (scenario B2:
the certified rows must be exactly the spec's barriers, whatever the assembly strategy)."""

from __future__ import annotations

import numpy as np
import pytest

from safetwin.safety import filter_kernels as fk
from safetwin.safety import filter_rows as rows
from safetwin.safety.filter import FilterState, Nominal, SafetyFilter
from safetwin.safety.qp import DaqpSolver

twin_scene = pytest.importorskip("safetwin.twin.scene")
twin_kin = pytest.importorskip("safetwin.twin.kinematics")


@pytest.fixture(scope="module", params=["tabletop_push", "reach_avoid"])
def setup(request):
    scene = twin_scene.load_scene(request.param)
    kin = twin_kin.Kinematics.for_scene(scene)
    return scene.safety, kin, SafetyFilter.from_spec(scene.safety, kin, 0.01)


def _random_q(spec, rng, widen=0.0):
    lo = np.array([j.lower for j in spec.joints])
    hi = np.array([j.upper for j in spec.joints])
    return rng.uniform(lo - widen, hi + widen)


def test_kinematics_all_agrees_with_protocol_methods(setup):
    """kinematics_all (one FK pass) equals ee_pose / ee_jacobian / spheres (B8 consistency)."""
    spec, kin, _ = setup
    rng = np.random.default_rng(3)
    for _ in range(50):
        q = _random_q(spec, rng, widen=0.2)
        k = kin.kinematics_all(q)
        centers, radii, sjac = kin.spheres(q)
        jac6 = np.asarray(kin.ee_jacobian(q))
        np.testing.assert_allclose(k.points[0], kin.ee_pose(q)[0], atol=1e-12)
        np.testing.assert_allclose(k.ee_jac, jac6, atol=1e-12)
        np.testing.assert_allclose(k.point_jac[0], jac6[:3], atol=1e-12)
        np.testing.assert_allclose(k.points[1:], centers, atol=1e-12)
        np.testing.assert_allclose(k.point_jac[1:], sjac, atol=1e-12)
        np.testing.assert_allclose(k.radii, radii, atol=0.0)


def _reference_row(lim, obs, name, p, r, jac):
    """``(g (3,), h)`` for one named Cartesian barrier row of one point, written out plainly."""
    kind = name.split("[")[0]
    if kind.startswith("workspace."):
        axis, side = "xyz".index(kind[10]), kind[12:]
        if side == "hi":
            return -np.eye(3)[axis], lim.ws_hi[axis] - p[axis] - r
        return np.eye(3)[axis], p[axis] - r - lim.ws_lo[axis]
    box = name.split("[")[1].rstrip("]")
    if kind == "keepout":
        i = lim.keep_names.index(box)
        faces = [p[a] - lim.keep_hi[i, a] for a in range(3)] + [lim.keep_lo[i, a] - p[a] for a in range(3)]
        best = int(np.argmax(faces))
        normal = np.eye(3)[best % 3] * (1.0 if best < 3 else -1.0)
        return normal, faces[best] - r - lim.distance_margin
    i = obs.names.index(box)
    d = p - obs.centers[i]
    excess = np.abs(d) - obs.half[i]
    outside = np.maximum(excess, 0.0)
    norm = float(np.linalg.norm(outside))
    sign = np.where(d >= 0.0, 1.0, -1.0)
    if norm > 0.0:
        return outside / norm * sign, norm - r - lim.distance_margin
    axis = int(np.argmax(excess))
    return np.eye(3)[axis] * sign, float(np.max(excess)) - r - lim.distance_margin


def _reference_rhs(g_row, h, lim, dt, margin, dq):
    lam = lim.gamma / dt
    h_eff = h - margin / lim.gamma
    rate = lam * h_eff
    decel = rows.CARTESIAN_BRAKE_FRACTION * float(np.abs(g_row) @ lim.acceleration)
    h_star = decel / lam ** 2
    if h_eff > h_star and decel > 0.0:
        adt = decel * dt
        rate = min(rate, -adt + np.sqrt(adt * adt + 2.0 * decel * (h_eff - 0.5 * h_star)))
    if h < 0.0 and decel > 0.0:
        ramp = min(float(g_row @ dq), 0.0) - decel * dt
        rate = min(max(rate, ramp), -margin / dt)
    return rate


def test_vectorised_rows_equal_per_row_reference(setup):
    """B2/B6: every row of cartesian_rows equals a per-row computation, in row_names order,
    at random states inside and outside the safe set (so both rhs branches are exercised)."""
    spec, kin, filt = setup
    rng = np.random.default_rng(5)
    lim, obs, e = filt.limits, filt._obstacles, len(filt.limits.ee_normals)
    names = rows.row_names(lim, filt.points, obs.names)
    violated = 0
    for _ in range(25):
        q = _random_q(spec, rng, widen=0.1)
        dq = rng.uniform(-1.0, 1.0, len(q)) * lim.velocity
        k = kin.kinematics_all(q)
        sel = filt._point_rows
        p, jac = np.asarray(k.points)[sel], np.asarray(k.point_jac)[sel]
        r = np.concatenate([(0.0,), np.asarray(k.radii)[filt.moving]])
        margin = float(rng.uniform(0.0, 1e-3))
        G, b, h = rows.cartesian_rows(filt.tables, obs, p, r, jac, np.asarray(k.ee_jac)[:3], margin, dq)
        assert G.shape[0] == b.shape[0] == h.shape[0] == len(names)
        np.testing.assert_allclose(G[:e], lim.ee_normals @ np.asarray(k.ee_jac)[:3], atol=1e-14)
        assert np.all(np.isnan(h[:e])) and np.all(b[:e] == lim.ee_offset)
        for row, name in enumerate(names[e:], start=e):
            point = filt.points.index(name.rsplit("[", 1)[1].rstrip("]"))
            g, h_ref = _reference_row(lim, obs, name, p[point], r[point], jac[point])
            g_row = g @ jac[point] * -1.0
            np.testing.assert_allclose(G[row], g_row, atol=1e-13, err_msg=name)
            assert h[row] == pytest.approx(h_ref, abs=1e-13), name
            assert b[row] == pytest.approx(_reference_rhs(g_row, h_ref, lim, 0.01, margin, dq), abs=1e-10), name
            violated += h_ref < 0.0
    assert violated > 0, "no violated row sampled: the recovery branch was not exercised"


def test_presolve_drops_only_rows_the_bounds_imply(setup):
    """The rows the solver is not given hold at every corner of the bound box (so everywhere in
    it: the rows are linear), and the presolved QP has the full QP's solution (B1/B2 unchanged)."""
    spec, _, filt = setup
    rng = np.random.default_rng(9)
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * filt.n, indexing="ij")).reshape(filt.n, -1).T
    dropped_total = 0
    for _ in range(40):
        q = _random_q(spec, rng)
        dq = rng.uniform(-0.5, 0.5, filt.n) * filt.limits.velocity
        fp = filt.build(FilterState(q, dq), Nominal.joint(rng.uniform(-1.5, 1.5, filt.n) * filt.limits.velocity))
        qp = fp.qp
        if np.any(qp.lb > qp.ub):
            continue
        dropped = np.setdiff1d(np.arange(qp.G.shape[0]), fp.needed)
        dropped_total += dropped.size
        vertices = qp.lb + corners * (qp.ub - qp.lb)  # (2^n, n)
        assert np.all(vertices @ qp.G[dropped].T <= qp.b[dropped] + 1e-12)
        full, reduced = DaqpSolver()(qp), DaqpSolver()(fp.reduced())
        assert full.status == reduced.status
        if full.status == "optimal":
            np.testing.assert_allclose(reduced.x, full.x, atol=1e-10)
    assert dropped_total > 0


def test_verify_reads_nan_as_a_violation() -> None:
    """B7 fail-closed: a NaN residual or output never verifies as "no violation" (slack inf)."""
    G, lb, ub, cand = np.array([[1.0, 0.0]]), -np.ones(2), np.ones(2), np.zeros((4, 2))
    assert fk.verify(G, np.array([np.nan]), lb, ub, np.zeros(2), cand, cand, 1e-7)[0] == np.inf
    assert fk.verify(G, np.array([0.5]), lb, ub, np.array([np.nan, 0.0]), cand, cand, 1e-7)[0] == np.inf
    assert fk.verify(G, np.array([0.5]), lb, ub, np.array([1.0, 2.0]), cand, cand, 1e-7)[0] == 1.0
