"""The fast path (numpy assembly + DAQP) solves the same QP as the cvxpy reference, and the
same as quadprog, on random problems of the planar test arm (joint and twist nominals)."""

from __future__ import annotations

import filter_models as M  # tests/safety is on pytest's pythonpath
import numpy as np
import pytest

from safetwin.safety.filter import FilterState, Nominal, SafetyFilter
from safetwin.safety.qp import CvxpyReference, DaqpSolver, QPProblem, QuadprogSolver

DT = 0.01


def random_problems(count: int, seed: int):
    arm = M.PlanarArm()
    filt = SafetyFilter.from_spec(M.arm_spec(arm), arm, DT)
    rng = np.random.default_rng(seed)
    for i in range(count):
        q = rng.uniform(-2.5, 2.5, 3)
        dq = rng.uniform(-0.3, 0.3, 3)
        if i % 2:
            nominal = Nominal.twist(np.concatenate([rng.uniform(-0.6, 0.6, 3), rng.uniform(-1, 1, 3)]))
        else:
            nominal = Nominal.joint(rng.uniform(-2.0, 2.0, 3))
        yield filt, FilterState(q, dq), nominal


def test_fast_path_matches_cvxpy_reference() -> None:
    """DAQP on the numpy-assembled QP == cvxpy (Parameters, CLARABEL) within 1e-5 rad/s, and both
    agree on infeasibility; certify returns exactly the verified DAQP answer of the presolved QP
    (rows the bounds imply dropped), which equals the full QP's answer."""
    ref = CvxpyReference()
    agree = infeasible = pruned = 0
    for filt, state, nominal in random_problems(60, seed=11):
        fp = filt.build(state, nominal)
        assert len(fp.row_names) == fp.qp.G.shape[0] >= 30
        fast, slow = DaqpSolver()(fp.qp), ref(fp.qp)
        if np.any(fp.qp.lb > fp.qp.ub):
            infeasible += 1
            assert slow.status == "infeasible" and fast.status == "infeasible"
            continue
        assert fast.status == slow.status
        if fast.status != "optimal":
            infeasible += 1
            continue
        np.testing.assert_allclose(fast.x, slow.x, atol=1e-5)
        assert abs(fp.qp.objective(fast.x) - fp.qp.objective(slow.x)) <= 1e-7 * (1 + fp.qp.objective(slow.x))
        out, rep = filt.certify(state, nominal)
        if rep.feasible:
            np.testing.assert_array_equal(out, DaqpSolver()(fp.reduced()).x)
            np.testing.assert_allclose(out, fast.x, atol=1e-10)
        pruned += fp.reduced().G.shape[0] < fp.qp.G.shape[0]
        agree += 1
    assert agree >= 40 and pruned >= 20


def test_quadprog_matches_daqp() -> None:
    """The alternative dense solver gives the same answers as DAQP."""
    for filt, state, nominal in random_problems(60, seed=5):
        fp = filt.build(state, nominal)
        if np.any(fp.qp.lb > fp.qp.ub):
            continue
        a, b = DaqpSolver()(fp.qp), QuadprogSolver()(fp.qp)
        assert a.status == b.status
        if a.status == "optimal":
            np.testing.assert_allclose(a.x, b.x, atol=1e-7)


@pytest.mark.parametrize("solver", [DaqpSolver(), QuadprogSolver(), CvxpyReference()],
                         ids=["daqp", "quadprog", "cvxpy"])
def test_solvers_report_infeasible_box(solver) -> None:
    """B3 at the solver level: contradictory rows give status 'infeasible', not an iterate."""
    problem = QPProblem(A=np.eye(2), c=np.zeros(2), G=np.array([[1.0, 0.0], [-1.0, 0.0]]),
                        b=np.array([-1.0, -1.0]), lb=-np.ones(2) * 5, ub=np.ones(2) * 5)
    result = solver(problem)
    assert result.status == "infeasible" and result.x is None


def test_twist_nominal_tracked_when_safe() -> None:
    """B1 for a twist: a small, safe end-effector twist is tracked (J qd == twist up to the
    damped least-squares bias) and nothing is corrected relative to the free optimum."""
    arm = M.PlanarArm()
    filt = SafetyFilter.from_spec(M.arm_spec(arm), arm, DT)
    q = np.array([-0.5, 1.0, 0.5])
    twist = np.array([0.01, -0.01, 0.0, 0.0, 0.0, 0.02])
    moving = np.linalg.lstsq(arm.ee_jacobian(q), twist, rcond=None)[0]  # already moving that way
    out, rep = filt.certify(FilterState(q, moving), Nominal.twist(twist))
    assert rep.feasible and rep.correction_norm <= 1e-9 and rep.active == ()
    jac = arm.ee_jacobian(q)
    damped = np.linalg.solve(jac.T @ jac + 1e-3 * np.eye(3), jac.T @ twist)  # spec regularization
    np.testing.assert_allclose(out, damped, atol=1e-9)
    assert np.linalg.norm(jac @ out - twist) <= 0.05 * np.linalg.norm(twist)
