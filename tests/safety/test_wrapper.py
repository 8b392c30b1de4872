"""SafetyFilterWrapper: installs the filter as the env's command_filter, applies exactly what
certify returns (B1, bit for bit) and reports per-step filter statistics.

``HookEnv`` is a minimal env with the TwinEnv contract of docs/INTERFACES.md (``robot_model``,
``safety_spec``, ``command_filter(q, dq, qd_nominal, dt)`` called at every low-level step); when
the twin's env is installed the same checks run on it too.
"""

from __future__ import annotations

from dataclasses import replace

import filter_models as M  # tests/safety is on pytest's pythonpath
import gymnasium as gym
import numpy as np
import pytest

from safetwin.safety.filter import FilterConfigError, FilterState, Nominal, SafetyFilter
from safetwin.safety.wrapper import SafetyFilterWrapper


class HookEnv(gym.Env):
    """Planar arm integrated at ``control_dt``; an action is a joint-velocity nominal held for
    ``substeps`` low-level steps, each passed through ``command_filter`` when one is set."""

    def __init__(self, substeps: int = 4) -> None:
        self.robot_model = M.PlanarArm()
        self.safety_spec = M.arm_spec(self.robot_model)
        self.control_dt, self.substeps = 0.01, substeps
        self.command_filter = None
        self.action_space = gym.spaces.Box(-3.0, 3.0, (3,), np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (6,), np.float64)
        self.applied: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.q, self.dq = np.array([-0.5, 1.0, 0.5]), np.zeros(3)
        self.applied = []
        return np.concatenate([self.q, self.dq]), {}

    def step(self, action):
        for _ in range(self.substeps):
            nominal = np.asarray(action, float)
            qd = nominal if self.command_filter is None else \
                self.command_filter(self.q.copy(), self.dq.copy(), nominal, self.control_dt)
            self.applied.append((self.q.copy(), self.dq.copy(), nominal, qd))
            self.q, self.dq = self.q + qd * self.control_dt, qd
        return np.concatenate([self.q, self.dq]), 0.0, False, False, {"cost": 0.0}


def test_b1_applied_command_is_certified_command_bit_for_bit() -> None:
    """B1: every low-level command the env applies is, bit for bit, what certify returns for
    that state and nominal (re-certified with an independent filter instance)."""
    env = SafetyFilterWrapper(HookEnv())
    env.reset(seed=0)
    inner = env.unwrapped
    check = SafetyFilter.from_spec(inner.safety_spec, inner.robot_model, inner.control_dt)
    rng = np.random.default_rng(0)
    for _ in range(15):
        env.step(rng.uniform(-3.0, 3.0, 3))
        for q, dq, nominal, qd in inner.applied[-4:]:
            again, _ = check.certify(FilterState(q, dq), Nominal.joint(nominal))
            assert again.tobytes() == qd.tobytes()
        assert env.last_command.tobytes() == inner.applied[-1][3].tobytes()


def test_safe_nominal_passes_and_info_reports_no_intervention() -> None:
    """B1 through the env: a slow, safe nominal is applied unchanged and counted as no
    intervention; info['filter'] summarises the low-level steps of that env step."""
    env = SafetyFilterWrapper(HookEnv())
    _, info = env.reset(seed=0)
    assert info["filter"]["steps"] == 0
    action = np.array([0.02, -0.02, 0.01])
    env.step(action)  # accelerate to it first (acceleration limit 8 rad/s^2 * 0.01 s)
    _, _, _, _, info = env.step(action)
    stats = info["filter"]
    assert stats["steps"] == 4 and stats["interventions"] == 0 and stats["infeasible"] == 0
    assert stats["last_reason"] == "ok" and stats["max_correction"] == 0.0
    for *_, nominal, qd in env.unwrapped.applied[-4:]:
        assert qd.tobytes() == nominal.tobytes()


def test_aggressive_and_nonfinite_actions_are_counted() -> None:
    """Interventions are counted for aggressive nominals; a NaN nominal brakes (A1/B3) and is
    counted as infeasible, and nothing non-finite is applied."""
    env = SafetyFilterWrapper(HookEnv())
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([3.0, 3.0, 3.0]))
    assert info["filter"]["interventions"] == 4 and info["filter"]["max_correction"] > 1.0
    _, _, _, _, info = env.step(np.array([np.nan, 0.0, 0.0]))
    assert info["filter"]["infeasible"] == 4 and info["filter"]["last_reason"] == "nonfinite_input"
    assert all(np.all(np.isfinite(qd)) for *_, qd in env.unwrapped.applied)
    assert info["filter"]["min_barrier"] == np.inf  # no barrier could be evaluated (NaN dropped)


def test_env_obstacle_poses_are_used_each_call() -> None:
    """The filter reads the env's current obstacle poses: moving the cup onto the arm's path
    changes the filtered command."""
    env = SafetyFilterWrapper(HookEnv())
    env.reset(seed=0)
    inner = env.unwrapped
    q = inner.q
    free = env.command_filter(q, np.zeros(3), np.array([0.05, 0.0, 0.0]), 0.01)
    ee = inner.robot_model.ee_pose(q)[0]
    cup = replace(inner.safety_spec.obstacles[0], center=tuple(ee + [0.0, 0.05, 0.0]))
    inner.safety_spec = inner.safety_spec.with_obstacles([cup])
    blocked = env.command_filter(q, np.zeros(3), np.array([0.05, 0.0, 0.0]), 0.01)
    assert env.last_report.min_barrier < 0.0
    assert not np.array_equal(free, blocked)


def test_wrapper_refuses_env_without_contract() -> None:
    """A missing robot model or spec, or a bad spec (B8), is refused at wrap time."""
    env = HookEnv()
    env.robot_model = object()
    with pytest.raises(TypeError, match="robot_model"):
        SafetyFilterWrapper(env)
    env = HookEnv()
    bad = replace(env.safety_spec, filter=replace(env.safety_spec.filter, gamma=2.0))
    with pytest.raises(FilterConfigError, match="gamma"):
        SafetyFilterWrapper(env, spec=bad)


def test_b1_twin_env_applies_certified_command_bit_for_bit() -> None:
    """B1 on the twin's TwinEnv (tabletop_push): the joint command the env applies at the last
    low-level step is bit for bit what certify returns for that state and nominal."""
    env_mod = pytest.importorskip("safetwin.twin.env", reason="twin env not complete yet", exc_type=ImportError)
    env = SafetyFilterWrapper(env_mod.TwinEnv("tabletop_push", images=False, randomize=False))
    try:
        env.reset(seed=0)
        check = SafetyFilter.from_spec(env.filter_spec, env.robot_model, env.last_dt or 0.01)
        rng = np.random.default_rng(0)
        for _ in range(3):
            _, _, _, _, info = env.step(rng.uniform(-1.0, 1.0, 7).astype(np.float32))
            applied = env.unwrapped.last_command
            assert applied["applied"].tobytes() == env.last_command.tobytes()
            check = check if check.dt == env.last_dt else check.__class__.from_spec(
                env.filter_spec, env.robot_model, env.last_dt)
            state = FilterState(applied["q"], applied["dq"], env.current_obstacles())
            again, _ = check.certify(state, Nominal.joint(applied["nominal"]))
            assert again.tobytes() == applied["applied"].tobytes()
            assert info["filter"]["steps"] >= 1
    finally:
        env.close()


def test_twin_solve_budget_is_generous_but_bounded_b5() -> None:
    """Simulated time stands still during a solve: the twin uses a bounded sim budget, the robot the spec's."""
    from safetwin.safety.filter import spec_with_filter
    from safetwin.safety.wrapper import SIM_TIME_BUDGET_S

    env = HookEnv()
    env.safety_spec = spec_with_filter(env.safety_spec, time_budget_s=0.002)  # a real-time budget
    twin = SafetyFilterWrapper(env)
    assert twin.filter_spec.filter.time_budget_s == SIM_TIME_BUDGET_S
    loose = SafetyFilterWrapper(HookEnv())  # a spec budget above the sim one is kept
    assert loose.filter_spec.filter.time_budget_s == HookEnv().safety_spec.filter.time_budget_s
    env = HookEnv()
    spec_budget = 0.002
    env.safety_spec = spec_with_filter(env.safety_spec, time_budget_s=spec_budget)
    strict = SafetyFilterWrapper(env, time_budget_s=None)
    assert strict.filter_spec.filter.time_budget_s == spec_budget
    assert twin.filter_spec.joints == strict.filter_spec.joints, "only the budget differs"
