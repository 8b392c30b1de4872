"""Gymnasium wrapper that puts the CBF-QP safety filter between the policy and the simulated
motors, exactly where it sits on the real robot.

``SafetyFilterWrapper(env)`` reads, duck-typed, ``env.unwrapped.robot_model`` (a
:class:`RobotModel`) and ``env.unwrapped.safety_spec`` (a :class:`SafetySpec`) -- falling back to ``kin`` and ``spec``,
the names the twin's ``TwinEnv`` uses -- and installs
itself as ``env.unwrapped.command_filter``: the env calls it at every low-level control step as
``command_filter(q, dq, qd_nominal, dt) -> qd`` (rad, rad/s, s) and applies what it returns.
One filter is built per distinct ``dt``. Obstacle poses are read from the env's current
``safety_spec`` at every call (the twin moves them at reset).

Each env step adds ``info["filter"]``: low-level ``steps``, ``interventions`` (steps with
``correction_norm > intervention_tol``), ``infeasible`` (steps that braked), ``min_barrier``,
``max_correction`` (rad/s), ``last_reason``, ``max_solve_time_s``. Safety must not import the
twin, hence the duck typing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .filter import FilterReport, FilterState, Nominal, SafetyFilter, spec_with_filter
from .filter_config import validate_setup
from .qp import QPSolver
from .robot_model import RobotModel
from .spec import Obstacle, SafetySpec

logger = logging.getLogger(__name__)


ROBOT_ATTRS = ("robot_model", "kin")
"""Where the env exposes its :class:`RobotModel` (the contract's name first)."""
SPEC_ATTRS = ("safety_spec", "spec")
"""Where the env exposes its current :class:`SafetySpec` (the contract's name first)."""
SIM_TIME_BUDGET_S = 0.05
"""Solve-time budget (s) of the filter in the twin (see SafetyFilterWrapper's ``time_budget_s``)."""


def _find(obj: object, names: tuple[str, ...], kind: type) -> object | None:
    return next((v for v in (getattr(obj, a, None) for a in names) if isinstance(v, kind)), None)


@dataclass
class FilterStats:
    """Per-env-step summary of the filter's low-level calls (see the module docstring)."""

    steps: int = 0
    interventions: int = 0
    infeasible: int = 0
    min_barrier: float = math.inf
    max_correction: float = 0.0
    last_reason: str = "none"
    max_solve_time_s: float = 0.0

    def add(self, report: FilterReport, tol: float) -> None:
        self.steps += 1
        self.interventions += int(report.correction_norm > tol)
        self.infeasible += int(not report.feasible)
        if not math.isnan(report.min_barrier):
            self.min_barrier = min(self.min_barrier, report.min_barrier)
        self.max_correction = max(self.max_correction, report.correction_norm)
        self.last_reason = report.reason
        self.max_solve_time_s = max(self.max_solve_time_s, report.solve_time_s)


class SafetyFilterWrapper(gym.Wrapper):
    """Install a :class:`SafetyFilter` as the env's ``command_filter`` (see the module docstring).

    Args:
        env: an env whose ``unwrapped`` has a :class:`RobotModel` (``robot_model`` or ``kin``), a
            :class:`SafetySpec` (``safety_spec`` or ``spec``; unless ``spec`` is given) and a
            settable ``command_filter`` attribute.
        spec: the limits to enforce (default: ``env.unwrapped.safety_spec``).
        solver: optional QP solver hook passed to the filter.
        intervention_tol: correction norm (rad/s) above which a step counts as an intervention.
        time_budget_s: the solve-time budget (s) in the twin. Simulated time stands still while
            the filter solves, so the spec's real-time budget (``safety.filter.time_budget_s``,
            enforced on the robot) would only make simulated results depend on how loaded the
            machine is; the twin uses the larger of this and the spec's budget, still a bound, so
            a hung solver brakes. None: the spec's budget. Solve times are still measured and
            reported in ``info["filter"]``.
    """

    def __init__(self, env: gym.Env, spec: SafetySpec | None = None, *, solver: QPSolver | None = None,
                 intervention_tol: float = 1e-6, time_budget_s: float | None = SIM_TIME_BUDGET_S) -> None:
        super().__init__(env)
        base = env.unwrapped
        robot = _find(base, ROBOT_ATTRS, RobotModel)
        if robot is None:
            raise TypeError(f"SafetyFilterWrapper: {type(base).__name__} has no RobotModel under "
                            f"{' or '.join(ROBOT_ATTRS)}")
        self._spec_attr = next((a for a in SPEC_ATTRS if isinstance(getattr(base, a, None), SafetySpec)), None)
        spec = spec if spec is not None else (getattr(base, self._spec_attr) if self._spec_attr else None)
        if not isinstance(spec, SafetySpec):
            raise TypeError(f"SafetyFilterWrapper: no SafetySpec given and {type(base).__name__} has none "
                            f"under {' or '.join(SPEC_ATTRS)}")
        if not hasattr(base, "command_filter"):
            raise TypeError(f"SafetyFilterWrapper: {type(base).__name__} has no command_filter hook")
        if time_budget_s is not None:
            spec = spec_with_filter(spec, time_budget_s=max(spec.filter.time_budget_s, float(time_budget_s)))
        self.filter_spec, self.robot_model, self.solver = spec, robot, solver
        self.intervention_tol = float(intervention_tol)
        self._filters: dict[float, SafetyFilter] = {}
        self.stats = FilterStats()
        self.last_command: np.ndarray | None = None
        self.last_report: FilterReport | None = None
        self.last_dt: float | None = None
        control_dt = getattr(base, "control_dt", None)
        if control_dt is not None:
            self.filter_for(control_dt)  # refuse a bad setup now, not at the first step (B8)
        else:
            validate_setup(spec, robot, 1.0, None)
        base.command_filter = self.command_filter

    def filter_for(self, dt: float) -> SafetyFilter:
        """The filter for control period ``dt`` (s), built on first use."""
        key = float(dt)
        if key not in self._filters:
            self._filters[key] = SafetyFilter.from_spec(self.filter_spec, self.robot_model, key, solver=self.solver)
        return self._filters[key]

    def current_obstacles(self) -> tuple[Obstacle, ...] | None:
        """Obstacle poses (base frame) from the env's current spec, or None to use the filter spec's."""
        current = getattr(self.env.unwrapped, self._spec_attr, None) if self._spec_attr else None
        return current.obstacles if isinstance(current, SafetySpec) else None

    def command_filter(self, q: np.ndarray, dq: np.ndarray, qd_nominal: np.ndarray, dt: float) -> np.ndarray:
        """The hook: certify ``qd_nominal`` (rad/s) at ``(q, dq)``; returns what must be applied."""
        filt = self.filter_for(dt)
        state = FilterState(np.asarray(q, float), np.asarray(dq, float), self.current_obstacles())
        qd, report = filt.certify(state, Nominal.joint(np.asarray(qd_nominal, float)))
        self.stats.add(report, self.intervention_tol)
        self.last_command, self.last_report, self.last_dt = qd, report, float(dt)
        return qd

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        info = dict(info)
        info["filter"] = asdict(self.stats)
        return info

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.stats = FilterStats()
        self.env.unwrapped.command_filter = self.command_filter
        obs, info = self.env.reset(**kwargs)
        return obs, self._info(info)

    def step(self, action: Any) -> tuple[Any, ...]:
        self.stats = FilterStats()
        result = self.env.step(action)
        return (*result[:-1], self._info(result[-1]))
