"""The CBF-QP safety filter: the last software line between any policy and the motors.

``SafetyFilter.from_spec(spec, robot_model, dt)`` builds it; ``certify(state, nominal)`` returns
``(qd, FilterReport)``: joint velocities (n,) rad/s for the next period ``dt`` s that are closest
to the nominal command while satisfying every hard constraint of the spec (see
:mod:`safetwin.safety.filter_rows`), or the brake command when anything is in doubt.

Fail closed: non-finite input, a robot-model error, degenerate geometry, an infeasible QP, a
solver exception, an iteration limit, a solve over ``spec.filter.time_budget_s``, a solver
output that is non-finite or violates a constraint by more than ``spec.filter.slack_tolerance``
all return :meth:`SafetyFilter.brake` (decelerate toward zero velocity within the acceleration
limits), never the nominal and never an unverified iterate; ``FilterReport.reason`` says why.

Frames and units: base frame, m, rad, rad/s, s. This module imports nothing else of SafeTwin's
outside ``safetwin.safety``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from . import filter_kernels as fk
from . import filter_rows as rows
from .filter_config import FilterConfigError, validate_setup
from .qp import OPTIMAL, DaqpSolver, QPProblem, QPSolver, infeasibility_slack
from .robot_model import RobotModel
from .spec import Obstacle, SafetySpec

logger = logging.getLogger(__name__)

__all__ = ["FilterConfigError", "FilterReport", "FilterState", "Nominal", "SafetyFilter"]

SINGULAR_TOL = 1e-6
"""Smallest singular value (m/rad) of the end-effector Jacobian accepted for a twist nominal."""
ACTIVE_TOL = 1e-7
"""A constraint within this (relative) distance of its bound is reported as active."""


@dataclass(frozen=True)
class FilterState:
    """Measured state: ``q`` (n,) rad, ``dq`` (n,) rad/s; ``obstacles`` (base frame) overrides
    ``spec.obstacles`` with the current poses when given."""

    q: np.ndarray
    dq: np.ndarray
    obstacles: tuple[Obstacle, ...] | None = None


@dataclass(frozen=True)
class Nominal:
    """The command to certify: ``kind="joint"``: joint velocities (n,) rad/s; ``kind="twist"``:
    end-effector twist (6,) ``[v (m/s); omega (rad/s)]`` in the base frame."""

    kind: str
    value: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in ("joint", "twist"):
            raise ValueError(f"Nominal.kind must be 'joint' or 'twist', got {self.kind!r}")

    @classmethod
    def joint(cls, qd: Sequence[float] | np.ndarray) -> Nominal:
        return cls("joint", np.asarray(qd, dtype=float))

    @classmethod
    def twist(cls, twist: Sequence[float] | np.ndarray) -> Nominal:
        return cls("twist", np.asarray(twist, dtype=float))


@dataclass(frozen=True)
class FilterReport:
    """What one :meth:`SafetyFilter.certify` call did.

    feasible: the QP was solved and its output verified; False means the brake was returned.
    reason: ``ok``, ``infeasible``, ``max_iter``, ``slack``, ``nonfinite_input``,
        ``nonfinite_output``, ``timeout``, ``solver_error``, ``degenerate`` or ``model_error``.
    slack: largest constraint violation of the solver output (rad/s or m/s); inf when there is
        no verified output (every brake except ``slack``). For an infeasible QP see
        :attr:`infeasibility`.
    correction_norm: ``|qd - qd_free|`` rad/s, ``qd_free`` the unconstrained optimum (the nominal
        itself for a joint nominal); for a brake, the distance from that optimum to the brake.
    active: names of the constraints at their bound.
    min_barrier: smallest barrier value at the current state (rad for joint limits, m otherwise).
    solve_time_s: wall time of the QP solve (s, monotonic clock).
    braked: the brake command was returned.
    """

    feasible: bool
    reason: str
    slack: float
    correction_norm: float
    active: tuple[str, ...]
    min_barrier: float
    solve_time_s: float
    braked: bool
    infeasible_qp: QPProblem | None = field(default=None, repr=False, compare=False)
    """The QP that was found infeasible (kept only for :attr:`infeasibility`)."""

    @cached_property
    def infeasibility(self) -> float:
        """The smallest uniform relaxation of all constraints (rad/s or m/s) that would make the
        infeasible QP feasible: how far from feasible it was, for diagnosis. Computed on first
        access (a second QP, about as costly as the filter call), so off the control path;
        NaN when the call did not end in an infeasible QP."""
        return math.nan if self.infeasible_qp is None else infeasibility_slack(self.infeasible_qp)


@dataclass
class FilterProblem:
    """The assembled QP of one call, with what is needed to explain its solution."""

    qp: QPProblem
    row_names: tuple[str, ...]
    barrier: np.ndarray
    lows: np.ndarray
    highs: np.ndarray
    free: np.ndarray
    min_barrier: float
    reason: str | None = None
    points: tuple[str, ...] = field(default=())
    needed: np.ndarray | None = None
    """Indices of the rows of ``G u <= b`` that the bounds do not imply (the rest cannot bind,
    see ``filter_kernels.needed_rows``); None: all rows."""
    solver_qp: QPProblem | None = None
    """``qp`` with only the ``needed`` rows, as assembled; None: ``qp``."""

    def reduced(self) -> QPProblem:
        """The QP the solver sees: only the ``needed`` rows (same feasible set and solution)."""
        return self.qp if self.solver_qp is None else self.solver_qp


class SafetyFilter:
    """CBF-QP filter over the joint velocities of ``robot_model`` for periods of ``dt`` s.

    Args:
        spec: every limit and the filter's tuning (``spec.filter``).
        robot_model: any :class:`RobotModel` whose ``joint_names`` equal ``spec.joint_names``.
        dt: control period (s).
        solver: QP solver hook (default :class:`DaqpSolver`).
        jacobian_lipschitz: bound ``L`` (m/rad^2) on ``|d^2 p / dq_i dq_j|`` for every point, for
            the sampled-data margin; default: ``LIPSCHITZ_SAFETY`` (1.5) times the largest value
            measured by central differences at 65 configurations spread over the joint ranges
            (see ``filter_config``). Use 0.0 for models that are linear in ``q``.
    """

    def __init__(self, spec: SafetySpec, robot_model: RobotModel, dt: float, *,
                 solver: QPSolver | None = None, jacobian_lipschitz: float | None = None) -> None:
        setup = validate_setup(spec, robot_model, dt, jacobian_lipschitz)
        self.spec, self.robot, self.dt = spec, robot_model, float(dt)
        self.n = len(spec.joints)
        self.solver: QPSolver = solver if solver is not None else DaqpSolver()
        self.limits = rows.Limits.from_spec(spec)
        self.moving = setup.moving_spheres
        self.lipschitz = setup.lipschitz
        self.tables = rows.KernelTables.make(self.limits, self.dt, spec.filter.position_noise_rad,
                                             spec.filter.state_delay_s, self.lipschitz)
        self.points = ("ee",) + tuple(robot_model.sphere_names[i] for i in self.moving)
        self._obstacles = rows.ObstacleArrays.from_obstacles(spec.obstacles)
        self._names_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._name_arrays: dict[tuple[str, ...], np.ndarray] = {}  # row names -> object array
        self._joint_names = spec.joint_names
        self._bound_names = np.array([[[f"{src}_{side}[{j}]" for j in spec.joint_names]
                                       for src in rows.JOINT_SOURCES] for side in ("lower", "upper")],
                                     dtype=object)  # (2 sides, 4 sources, n joints)
        self._last_brake: str | None = None
        self._kin_all = _combined_kinematics(robot_model, spec)
        self._point_rows = np.concatenate([[0], 1 + np.asarray(self.moving, int)])
        self._eye = np.eye(self.n)
        self._eye.flags.writeable = False
        self._warm_up()

    def _warm_up(self) -> None:
        """Run the whole assembly, solve and verification once at the joint-range centre, so the
        compiled kernels are loaded (or, the first time after an install, compiled) here and not
        inside the first control period, where loading the cached machine code (or compiling it)
        would stall the loop past the bus watchdog."""
        q = (self.limits.lower + self.limits.upper) / 2.0
        zero = np.zeros(self.n)
        try:
            fp = self._build(q, zero, Nominal.joint(zero), zero, None)
            result = self.solver(fp.reduced())
            x = result.x if result.x is not None else zero
            fk.verify(fp.qp.G, fp.qp.b, fp.qp.lb, fp.qp.ub, np.asarray(x, float), fp.lows, fp.highs, ACTIVE_TOL)
        except Exception as exc:  # noqa: BLE001 - certify brakes on the same fault; do not refuse here
            logger.warning("safety filter warm-up at the joint-range centre failed: %s: %s", type(exc).__name__, exc)

    @classmethod
    def from_spec(cls, spec: SafetySpec, robot_model: RobotModel, dt: float, **kwargs: object
                  ) -> SafetyFilter:
        """Build a filter; raises :class:`FilterConfigError` on an invalid setup (scenario B8)."""
        return cls(spec, robot_model, dt, **kwargs)  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------- the brake
    def brake(self, dq: np.ndarray) -> np.ndarray:
        """Decelerate toward zero within the acceleration limits: ``dq - clip(dq, +-a_max dt)``
        (rad/s); joints whose velocity is not finite are commanded 0."""
        dq = np.where(np.isfinite(dq), dq, 0.0)
        step = self.limits.acceleration * self.dt
        return dq - np.clip(dq, -step, step)

    def _braked(self, dq: np.ndarray, reason: str, free: np.ndarray | None, min_barrier: float,
                slack: float = math.inf, solve_time: float = 0.0, infeasible_qp: QPProblem | None = None
                ) -> tuple[np.ndarray, FilterReport]:
        cmd = self.brake(dq)
        corr = float(np.linalg.norm(cmd - free)) if free is not None and np.all(np.isfinite(free)) \
            else math.inf
        log = logger.debug if reason == self._last_brake else logger.warning  # once per episode of braking
        log("safety filter braked: %s (min barrier %.4g)", reason, min_barrier)
        self._last_brake = reason
        return cmd, FilterReport(feasible=False, reason=reason, slack=slack, correction_norm=corr,
                                 active=(), min_barrier=min_barrier, solve_time_s=solve_time,
                                 braked=True, infeasible_qp=infeasible_qp)

    # ----------------------------------------------------------------------------- assembly
    def _check_shapes(self, state: FilterState, nominal: Nominal) -> tuple[np.ndarray, ...]:
        q, dq = np.asarray(state.q, dtype=float), np.asarray(state.dq, dtype=float)
        want = self.n if nominal.kind == "joint" else 6
        for name, arr, size in (("q", q, self.n), ("dq", dq, self.n),
                                (f"nominal ({nominal.kind})", nominal.value, want)):
            if arr.shape != (size,):
                raise ValueError(f"SafetyFilter.certify: {name} must have shape ({size},) for joints "
                                 f"{list(self._joint_names)}, got {arr.shape}")
        return q, dq, np.asarray(nominal.value, dtype=float)

    def _objective(self, nominal: Nominal, value: np.ndarray, jac6: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
        """Least-squares objective ``(A, c)``, its unconstrained optimum, and a degeneracy reason."""
        if nominal.kind == "joint":
            return self._eye, value, value, None
        sv = np.linalg.svd(jac6, compute_uv=False)
        reg = math.sqrt(self.spec.filter.regularization)
        A = np.vstack([jac6, reg * np.eye(self.n)])
        c = np.concatenate([value, np.zeros(self.n)])
        free = np.linalg.solve(A.T @ A, A.T @ c)
        singular = sv[min(6, self.n) - 1] < SINGULAR_TOL
        return A, c, free, ("degenerate" if singular else None)

    def _row_names(self, obs: rows.ObstacleArrays) -> tuple[str, ...]:
        if obs.names not in self._names_cache:
            names = rows.row_names(self.limits, self.points, obs.names)
            self._names_cache[obs.names] = names
            self._name_arrays[names] = np.array(names, dtype=object)
        return self._names_cache[obs.names]

    def build(self, state: FilterState, nominal: Nominal) -> FilterProblem:
        """Assemble the QP for ``state`` and ``nominal`` (inputs assumed finite)."""
        q, dq, value = self._check_shapes(state, nominal)
        return self._build(q, dq, nominal, value, state.obstacles)

    def _build(self, q: np.ndarray, dq: np.ndarray, nominal: Nominal, value: np.ndarray,
               obstacles: tuple[Obstacle, ...] | None) -> FilterProblem:
        obs = self._obstacles if obstacles is None else rows.ObstacleArrays.from_obstacles(obstacles)
        if self._kin_all is not None:  # one FK pass (optional model method, see _combined_kinematics)
            k = self._kin_all(q)
            jac6 = np.asarray(k.ee_jac, dtype=float)
            rows_ = self._point_rows
            p, jac = np.asarray(k.points, float)[rows_], np.asarray(k.point_jac, float)[rows_]
            r = np.concatenate([(0.0,), np.asarray(k.radii, float)[self.moving]])
        else:
            ee_p, _rot = self.robot.ee_pose(q)
            jac6 = np.asarray(self.robot.ee_jacobian(q), dtype=float)
            centers, radii, sjac = self.robot.spheres(q)
            p = np.concatenate([np.asarray(ee_p, float)[None], np.asarray(centers, float)[self.moving]])
            r = np.concatenate([(0.0,), np.asarray(radii, float)[self.moving]])
            jac = np.concatenate([jac6[None, :3], np.asarray(sjac, float)[self.moving]])
        A, c, free, reason = self._objective(nominal, value, jac6)
        t = self.tables
        lb, ub, lows, highs, G, b, h, min_barrier, degenerate, finite, needed, G_needed, b_needed = fk.assemble(
            t.jt, t.sc, t.ee_normals, t.ws, t.keep_lo, t.keep_hi, obs.centers, obs.half,
            np.ascontiguousarray(p), r, np.ascontiguousarray(jac), np.ascontiguousarray(jac6[:3]), q, dq,
            rows.DEGENERATE_ROW_NORM)
        if nominal.kind == "twist":
            finite = finite and math.isfinite(float(A.sum() + free.sum()))
        if degenerate or not finite:
            reason = reason or "degenerate"
        qp = QPProblem(A=A, c=c, G=G, b=b, lb=lb, ub=ub)
        return FilterProblem(qp=qp, row_names=self._row_names(obs), barrier=h, lows=lows, highs=highs,
                             free=free, min_barrier=min_barrier, reason=reason, points=self.points,
                             needed=needed, solver_qp=QPProblem(A=A, c=c, G=G_needed, b=b_needed, lb=lb, ub=ub))

    # ----------------------------------------------------------------------------- certify
    def certify(self, state: FilterState, nominal: Nominal) -> tuple[np.ndarray, FilterReport]:
        """Certify ``nominal`` at ``state``: ``(qd (n,) rad/s, FilterReport)``.

        Raises ``ValueError`` only for wrong array shapes (a programming error, scenario A2);
        every other problem returns the brake command with the reason in the report.
        """
        q, dq, value = self._check_shapes(state, nominal)
        obstacles_ok = state.obstacles is None or \
            rows.ObstacleArrays.from_obstacles(state.obstacles).finite()
        if not (math.isfinite(float(q.sum() + dq.sum() + value.sum())) and obstacles_ok):
            return self._braked(dq, "nonfinite_input", None, math.nan)
        try:
            fp = self._build(q, dq, nominal, value, state.obstacles)
        except Exception as exc:  # noqa: BLE001 - a failing robot model must brake, never propagate
            logger.error("safety filter: robot model / assembly failed: %s: %s", type(exc).__name__, exc)
            return self._braked(dq, "model_error", None, math.nan)
        if fp.reason is not None:
            return self._braked(dq, fp.reason, fp.free, fp.min_barrier)
        if np.any(fp.qp.lb > fp.qp.ub):
            return self._braked(dq, "infeasible", fp.free, fp.min_barrier, infeasible_qp=fp.qp)
        return self._solve(fp, dq)

    def _solve(self, fp: FilterProblem, dq: np.ndarray) -> tuple[np.ndarray, FilterReport]:
        t0 = time.perf_counter()
        try:
            result = self.solver(fp.reduced())
        except Exception as exc:  # noqa: BLE001 - any solver failure must brake, never propagate
            logger.error("safety filter: QP solver raised %s: %s", type(exc).__name__, exc)
            return self._braked(dq, "solver_error", fp.free, fp.min_barrier,
                                solve_time=time.perf_counter() - t0)
        elapsed = time.perf_counter() - t0
        if elapsed > self.spec.filter.time_budget_s:
            return self._braked(dq, "timeout", fp.free, fp.min_barrier, solve_time=elapsed)
        if result.status != OPTIMAL or result.x is None:
            reason = result.status if result.status in ("infeasible", "max_iter") else "solver_error"
            return self._braked(dq, reason, fp.free, fp.min_barrier, solve_time=elapsed,
                                infeasible_qp=fp.qp if reason == "infeasible" else None)
        x = np.array(result.x, dtype=float, copy=True)
        if x.shape != (self.n,) or not math.isfinite(float(x.sum())):
            return self._braked(dq, "nonfinite_output", fp.free, fp.min_barrier, solve_time=elapsed)
        qp = fp.qp
        slack, rows_on, bounds_on = fk.verify(qp.G, qp.b, qp.lb, qp.ub, x, fp.lows, fp.highs, ACTIVE_TOL)
        if not slack <= self.spec.filter.slack_tolerance:  # NaN brakes too
            return self._braked(dq, "slack", fp.free, fp.min_barrier, slack=slack, solve_time=elapsed)
        self._last_brake = None
        report = FilterReport(feasible=True, reason="ok", slack=slack,
                              correction_norm=math.sqrt(float((x - fp.free) @ (x - fp.free))),
                              active=self._active(fp, rows_on, bounds_on), min_barrier=fp.min_barrier,
                              solve_time_s=elapsed, braked=False)
        return x, report

    def _active(self, fp: FilterProblem, rows_on: np.ndarray, bounds_on: np.ndarray) -> tuple[str, ...]:
        """Names of the active rows and bounds (indices from ``filter_kernels.verify``)."""
        names = self._name_arrays[fp.row_names][rows_on].tolist() if rows_on.size else []
        names += [self._bound_names[side, src, j] for side, j, src in bounds_on.tolist()]
        return tuple(names)

    def with_spec(self, spec: SafetySpec) -> SafetyFilter:
        """A new filter with the same robot, period and solver for another spec."""
        return SafetyFilter(spec, self.robot, self.dt, solver=self.solver,
                            jacobian_lipschitz=self.lipschitz)


KIN_ALL_TOL = 1e-9
"""m (or m/rad): largest accepted difference between a model's ``kinematics_all`` and its
protocol methods at the construction-time probe configurations."""


def _combined_kinematics(robot: RobotModel, spec: SafetySpec):  # noqa: ANN202 - duck-typed optional method
    """The model's optional one-pass ``kinematics_all(q)`` (attributes ``ee_jac`` (6, n),
    ``points`` (1 + m, 3) m with the EE first, ``point_jac`` (1 + m, 3, n), ``radii`` (m,) m), or
    None. It is used only if it agrees with ``ee_pose``/``ee_jacobian``/``spheres`` within
    :data:`KIN_ALL_TOL` at the joint-range centre and 4 random configurations; otherwise it raises
    :class:`FilterConfigError` (scenario B8: a model whose two paths disagree is refused)."""
    fn = getattr(robot, "kinematics_all", None)
    if not callable(fn):
        return None
    lower = np.array([j.lower for j in spec.joints])
    upper = np.array([j.upper for j in spec.joints])
    rng = np.random.default_rng(1)
    for q in np.vstack([(lower + upper) / 2, rng.uniform(lower, upper, (4, len(lower)))]):
        k = fn(q)
        centers, radii, sjac = robot.spheres(q)
        pairs = ((k.points[0], robot.ee_pose(q)[0]), (k.ee_jac, robot.ee_jacobian(q)),
                 (k.points[1:], centers), (k.point_jac[1:], sjac), (k.radii, radii),
                 (k.point_jac[0], np.asarray(robot.ee_jacobian(q))[:3]))
        for a, b in pairs:
            a, b = np.asarray(a, float), np.asarray(b, float)
            if a.shape != b.shape or not np.all(np.abs(a - b) <= KIN_ALL_TOL):
                raise FilterConfigError(f"robot model {type(robot).__name__}: kinematics_all disagrees with "
                                        f"ee_pose/ee_jacobian/spheres at q={q.tolist()}")
    return fn


def spec_with_filter(spec: SafetySpec, **params: float) -> SafetySpec:
    """``spec`` with some ``spec.filter`` fields replaced (e.g. ``time_budget_s``)."""
    return replace(spec, filter=replace(spec.filter, **params))
