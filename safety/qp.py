"""The safety filter's quadratic program, its fast solvers and its readable cvxpy reference.

One QP per control period, in the joint velocities ``u`` (n,) rad/s for the next period:

    minimize    0.5 * || A u - c ||^2
    subject to  G u <= b                    (barrier and end-effector speed rows)
                lb <= u <= ub               (position barrier, velocity and acceleration bounds)

The objective is given in least-squares form (``A``, ``c``) so the same data feeds the cvxpy
reference (``sum_squares``, DPP-compliant) and the dense solvers (``H = A^T A``, ``f = -A^T c``).

Run time uses :class:`DaqpSolver` (dense dual active-set, called directly); :class:`QuadprogSolver`
is the alternative; :class:`CvxpyReference` states the problem once with cvxpy ``Parameter`` s and
is used to check the fast path. Every solver returns a :class:`QPResult` with a status string and
never raises for a numerical failure; the filter decides what a failure means (it brakes).

This module imports nothing else of SafeTwin's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

INF = 1e30
"""What DAQP reads as an absent bound."""

OPTIMAL = "optimal"
INFEASIBLE = "infeasible"
MAX_ITER = "max_iter"
SOLVER_ERROR = "solver_error"


@dataclass(frozen=True)
class QPProblem:
    """One filter QP (see the module docstring). Shapes: ``A`` (k, n), ``c`` (k,), ``G`` (r, n),
    ``b`` (r,), ``lb``/``ub`` (n,). Units: rows of ``G u <= b`` in m/s (Cartesian) or rad/s."""

    A: np.ndarray
    c: np.ndarray
    G: np.ndarray
    b: np.ndarray
    lb: np.ndarray
    ub: np.ndarray

    @property
    def n(self) -> int:
        return int(self.A.shape[1])

    def hessian(self) -> tuple[np.ndarray, np.ndarray]:
        """``(H, f)`` of ``0.5 u^T H u + f^T u`` (the constant term dropped)."""
        return self.A.T @ self.A, -(self.A.T @ self.c)

    def violation(self, x: np.ndarray) -> float:
        """Largest violation of any constraint at ``x`` (0.0 when all hold; inf when non-finite)."""
        if not np.isfinite(x.sum()):
            return float("inf")
        return max(float(np.max(np.concatenate([self.lb - x, x - self.ub, self.G @ x - self.b]))), 0.0)

    def objective(self, x: np.ndarray) -> float:
        r = self.A @ x - self.c
        return 0.5 * float(r @ r)


@dataclass(frozen=True)
class QPResult:
    """A solver's answer: ``x`` (n,) or None, ``status`` (``optimal``, ``infeasible``,
    ``max_iter``, ``solver_error`` or a solver-specific string), ``iterations`` (-1 if unknown)."""

    x: np.ndarray | None
    status: str
    iterations: int = -1


class QPSolver(Protocol):
    """Anything that solves a :class:`QPProblem` (the filter's solver hook)."""

    def __call__(self, problem: QPProblem) -> QPResult: ...


_DAQP_STATUS = {1: OPTIMAL, 2: OPTIMAL, -1: INFEASIBLE, -4: MAX_ITER}


class DaqpSolver:
    """Dense dual active-set QP (``daqp``), called directly on numpy arrays.

    Args:
        primal_tol: DAQP primal feasibility tolerance (same units as the rows).
        iter_limit: active-set iteration limit; reaching it gives status ``max_iter``.
    """

    def __init__(self, primal_tol: float = 1e-9, iter_limit: int = 1000) -> None:
        import daqp  # imported here so the module loads without the compiled solver

        if not primal_tol > 0 or iter_limit < 1:
            raise ValueError(f"DaqpSolver: primal_tol must be > 0 and iter_limit >= 1, "
                             f"got {primal_tol}, {iter_limit}")
        self._daqp = daqp
        self.primal_tol, self.iter_limit = float(primal_tol), int(iter_limit)
        self._buffers: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, problem: QPProblem) -> QPResult:
        H, f = problem.hessian()
        n, r = problem.n, problem.G.shape[0]
        if (n, r) not in self._buffers:
            self._buffers[(n, r)] = (np.full(n + r, -INF), np.zeros(n + r, dtype=np.int32))
        lower, sense = self._buffers[(n, r)]
        lower, sense = lower.copy(), sense.copy()  # daqp may write into them
        lower[:n] = problem.lb
        upper = np.concatenate([problem.ub, problem.b])
        x, _, flag, info = self._daqp.solve(
            H, f, np.ascontiguousarray(problem.G), upper, lower, sense,
            primal_tol=self.primal_tol, iter_limit=self.iter_limit)
        status = _DAQP_STATUS.get(int(flag), f"daqp_exitflag_{int(flag)}")
        x = np.array(x, dtype=float) if status == OPTIMAL else None
        return QPResult(x=x, status=status, iterations=int(info.get("iterations", -1)))


def infeasibility_slack(problem: QPProblem, solver: QPSolver | None = None) -> float:
    """Smallest uniform relaxation ``s >= 0`` (same units as the rows) that makes ``problem``
    feasible: ``G u <= b + s``, ``lb - s <= u <= ub + s``. For diagnosis of a failed solve only
    (it never produces a command); ``inf`` when it cannot be computed."""
    n, r = problem.n, problem.G.shape[0]
    eye, ones = np.eye(n), np.ones((n, 1))
    rows = np.vstack([np.hstack([problem.G, -np.ones((r, 1))]), np.hstack([eye, -ones]),
                      np.hstack([-eye, -ones])])
    bounds = np.concatenate([problem.b, problem.ub, -problem.lb])
    # minimise s^2 + 1e-6 |u|^2 in least-squares form; s >= 0 as a bound on the last variable
    weights = np.concatenate([np.full(n, 1e-3), [1.0]])
    relaxed = QPProblem(A=np.diag(weights), c=np.zeros(n + 1), G=rows, b=bounds,
                        lb=np.concatenate([np.full(n, -INF), [0.0]]), ub=np.full(n + 1, INF))
    try:
        result = (solver or DaqpSolver())(relaxed)
    except Exception:  # noqa: BLE001 - diagnosis must never raise into the control loop
        return float("inf")
    if result.x is None or not np.all(np.isfinite(result.x)):
        return float("inf")
    return float(max(result.x[-1], 0.0))


class QuadprogSolver:
    """Goldfarb-Idnani dual method (``quadprog``); raises inside are reported as ``infeasible``
    when quadprog says the constraints are inconsistent, else ``solver_error``."""

    def __init__(self) -> None:
        import quadprog

        self._quadprog = quadprog

    def __call__(self, problem: QPProblem) -> QPResult:
        H, f = problem.hessian()
        eye = np.eye(problem.n)
        # quadprog form: C^T x >= d
        C = np.vstack([-problem.G, eye, -eye]).T
        d = np.concatenate([-problem.b, problem.lb, -problem.ub])
        try:
            x, _f, _xu, iters, _lag, _act = self._quadprog.solve_qp(H, -f, C, d, 0)
        except ValueError as exc:
            status = INFEASIBLE if "inconsistent" in str(exc) else SOLVER_ERROR
            return QPResult(x=None, status=status)
        return QPResult(x=np.asarray(x, dtype=float), status=OPTIMAL, iterations=int(iters[0]))


class CvxpyReference:
    """The filter QP written once in cvxpy with ``Parameter`` s (DPP), the readable reference.

    One compiled problem is kept per shape ``(k, n, r)``; a call only sets parameter values.
    Slow (milliseconds): for tests and the benchmark's comparison, not the control loop.

    Args:
        solver: a cvxpy solver name (default CLARABEL, an interior-point method).
        eps: requested solver accuracy.
    """

    def __init__(self, solver: str = "CLARABEL", eps: float = 1e-10) -> None:
        self.solver, self.eps = solver, eps
        self._cache: dict[tuple[int, int, int], tuple[object, dict[str, object]]] = {}

    def _problem(self, k: int, n: int, r: int) -> tuple[object, dict[str, object]]:
        import cvxpy as cp

        if (k, n, r) not in self._cache:
            p = {"A": cp.Parameter((k, n), name="A"), "c": cp.Parameter(k, name="c"),
                 "lb": cp.Parameter(n, name="lb"), "ub": cp.Parameter(n, name="ub")}
            u = cp.Variable(n, name="u")
            cons = [u >= p["lb"], u <= p["ub"]]
            if r:
                p["G"], p["b"] = cp.Parameter((r, n), name="G"), cp.Parameter(r, name="b")
                cons.append(p["G"] @ u <= p["b"])
            prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(p["A"] @ u - p["c"])), cons)
            if not prob.is_dcp(dpp=True):
                raise RuntimeError("filter QP is not DPP-compliant")
            self._cache[(k, n, r)] = (prob, {**p, "u": u})
        return self._cache[(k, n, r)]

    def __call__(self, problem: QPProblem) -> QPResult:
        import cvxpy as cp

        k, n = problem.A.shape
        r = problem.G.shape[0]
        prob, p = self._problem(k, n, r)
        values = {"A": problem.A, "c": problem.c, "lb": problem.lb, "ub": problem.ub}
        if r:
            values.update(G=problem.G, b=problem.b)
        for name, value in values.items():
            p[name].value = value  # type: ignore[attr-defined]
        opts = {"tol_gap_abs": self.eps, "tol_gap_rel": self.eps, "tol_feas": self.eps} \
            if self.solver == "CLARABEL" else {}
        try:
            prob.solve(solver=self.solver, **opts)  # type: ignore[attr-defined]
        except cp.SolverError as exc:
            logger.warning("cvxpy reference solve failed: %s", exc)
            return QPResult(x=None, status=SOLVER_ERROR)
        status = prob.status  # type: ignore[attr-defined]
        if status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            return QPResult(x=np.asarray(p["u"].value, dtype=float), status=OPTIMAL)  # type: ignore[attr-defined]
        if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            return QPResult(x=None, status=INFEASIBLE)
        return QPResult(x=None, status=str(status))
