"""Safety filter on a 1-D integrator (closed forms) and the fail-closed paths B1, B3-B8.

The slider (one prismatic joint, see test_filter_models.py) is linear in q, so with
``jacobian_lipschitz=0`` the filter's answer has a closed form: the nominal clipped to the
tightest of the velocity, acceleration, position-barrier, braking-distance and Cartesian bounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import filter_models as M  # tests/safety is on pytest's pythonpath
import numpy as np
import pytest

from safetwin.safety import filter_rows as rows
from safetwin.safety.filter import FilterConfigError, FilterState, Nominal, SafetyFilter, spec_with_filter
from safetwin.safety.qp import DaqpSolver, QPResult
from safetwin.safety.spec import Box, JointLimit, Obstacle

DT = 0.01


def slider_filter(**kw) -> SafetyFilter:
    return SafetyFilter.from_spec(M.slider_spec(**kw), M.Slider(), DT, jacobian_lipschitz=0.0)


def closed_form(q: float, dq: float, u: float, lo=-1.0, hi=1.0, v=2.0, a=10.0, gamma=0.5,
                cart_hi=math.inf, gap: bool = False) -> float | None:
    """The 1-D filter's answer, or None when the bounds cross (the filter must brake); with
    ``gap``, how far they cross instead (rad/s)."""
    adt, lam = a * DT, gamma / DT
    h_star = a / lam**2  # below it the barrier rate is self-sustaining; above, brake in time

    def brake_bound(h: float) -> float:
        return -adt + math.sqrt(adt**2 + 2 * a * (h - h_star / 2)) if h > h_star else math.inf

    # outside the range (B6): return, the return speed ramping up by a dt per step
    pos_hi = lam * (hi - q) if q <= hi else max(lam * (hi - q), min(dq, 0.0) - adt)
    pos_lo = -lam * (q - lo) if q >= lo else min(-lam * (q - lo), max(dq, 0.0) + adt)
    up = min(v, dq + adt, pos_hi, brake_bound(hi - q), cart_hi)
    low = max(-v, dq - adt, pos_lo, -brake_bound(q - lo))
    if gap:
        return low - up
    return None if low > up else min(max(u, low), up)


def test_single_and_double_integrator_match_closed_form() -> None:
    """1-D integrator with a position limit: random (q, dq, nominal) against the closed form,
    braking exactly when the bounds cross (B3 for the crossing cases)."""
    filt = slider_filter()
    rng = np.random.default_rng(0)
    braked = solved = 0
    for _ in range(400):
        q, dq, u = rng.uniform(-1.05, 1.05), rng.uniform(-2.0, 2.0) * rng.integers(0, 2), rng.uniform(-4, 4)
        out, rep = filt.certify(FilterState(np.array([q]), np.array([dq])), Nominal.joint([u]))
        want = closed_form(q, dq, u)
        if want is None:
            braked += 1
            assert rep.braked and rep.reason == "infeasible"
            assert out[0] == pytest.approx(dq - np.clip(dq, -0.1, 0.1))
            # diagnosis: relaxing every bound by half the crossing makes it feasible
            assert rep.infeasibility == pytest.approx(closed_form(q, dq, u, gap=True) / 2, rel=1e-6)
        else:
            solved += 1
            assert rep.feasible and not rep.braked
            assert out[0] == pytest.approx(want, abs=1e-8)
    assert solved > 300 and braked > 0


def test_joint_limit_rollouts_never_need_the_brake() -> None:
    """Persistent feasibility at joint limits: from any state that satisfied the bounds, the
    next QP is feasible for every nominal (300 random rollouts of 60 steps, random nominals)."""
    filt = slider_filter()
    rng = np.random.default_rng(4)
    for _ in range(300):
        q, dq = np.array([rng.uniform(-0.5, 0.5)]), np.zeros(1)
        for _ in range(60):
            u, rep = filt.certify(FilterState(q, dq), Nominal.joint([rng.choice([-4.0, 4.0, rng.uniform(-4, 4)])]))
            assert rep.feasible, (q, dq, rep.reason)
            q, dq = q + u * DT, u
            assert -1.0 <= q[0] <= 1.0


def test_double_integrator_full_speed_into_limit_stays_inside_without_braking() -> None:
    """Driving the slider at full speed into its limit: it decelerates in time (braking-distance
    bound), never crosses the limit and never needs the brake."""
    filt = slider_filter(hi=0.5)
    q, dq = np.array([-0.8]), np.array([0.0])
    for _ in range(300):
        u, rep = filt.certify(FilterState(q, dq), Nominal.joint([2.0]))
        assert rep.feasible, rep.reason
        assert abs(u[0] - dq[0]) <= 10.0 * DT + 1e-9
        q, dq = q + u * DT, u
        assert q[0] <= 0.5 + 1e-12
    assert q[0] > 0.49  # it did get close: the filter is not simply frozen


@pytest.mark.parametrize("kind", ["workspace", "keepout", "obstacle"])
def test_cartesian_barriers_match_closed_form(kind: str) -> None:
    """Sphere (r=0.05) at x=q approaching a face at x=0.6: u <= (gamma h - 0) / dt, with
    h = 0.6 - q - r (- distance_margin for keep-out boxes and obstacles)."""
    base = M.slider_spec(lo=-1.0, hi=1.0, distance_margin=0.02)
    margin = 0.0 if kind == "workspace" else 0.02
    if kind == "workspace":
        spec = replace(base, workspace=Box("workspace", (-2.0, -1.0, -1.0), (0.6, 1.0, 1.0)))
    elif kind == "keepout":
        spec = replace(base, keepout=(Box("wall", (0.6, -1.0, -1.0), (0.9, 1.0, 1.0)),))
    else:
        spec = replace(base, obstacles=(Obstacle("cup", "fragile", (0.7, 0.0, 0.0), (0.1, 0.1, 0.1), 0.2),))
    filt = SafetyFilter.from_spec(spec, M.Slider(), DT, jacobian_lipschitz=0.0)
    for q in np.linspace(0.3, 0.5, 9):
        h = 0.6 - q - 0.05 - margin
        u, rep = filt.certify(FilterState(np.array([q]), np.zeros(1)), Nominal.joint([0.05]))
        want = closed_form(q, 0.0, 0.05, cart_hi=0.5 * h / DT)
        assert rep.feasible and u[0] == pytest.approx(want, abs=1e-9)
        assert rep.min_barrier == pytest.approx(min(h, q + 1.0, 1.0 - q), abs=1e-12)


def test_ee_speed_polytope_inside_ball_and_binding() -> None:
    """The end-effector speed rows: the slider can reach the polytope's face (c < v_max) but
    never exceed v_max; the polytope's vertices lie on the sphere."""
    filt = slider_filter(ee_speed=0.25)
    c = filt.limits.ee_offset
    assert 0.8 * 0.25 < c < 0.25
    u, rep = filt.certify(FilterState(np.zeros(1), np.array([0.2])), Nominal.joint([1.0]))
    assert rep.feasible and u[0] == pytest.approx(c, abs=1e-9)
    assert any(name.startswith("ee_speed") for name in rep.active)


def test_b1_safe_nominal_passes_unchanged_slider() -> None:
    """B1: a nominal deep inside the safe set is returned unchanged, nothing active."""
    filt = slider_filter()
    for u in (-0.05, 0.0, 0.03):
        out, rep = filt.certify(FilterState(np.zeros(1), np.array([u])), Nominal.joint([u]))
        assert out[0] == u and rep.correction_norm == 0.0 and rep.active == () and rep.reason == "ok"


def test_b3_conflicting_barriers_brake_never_nominal() -> None:
    """B3: keep-out boxes on both sides of the slider squeeze the feasible set to nothing while it
    moves: explicit 'infeasible', the brake command, never the nominal, never NaN."""
    spec = replace(M.slider_spec(distance_margin=0.0),
                   keepout=(Box("left", (-1.0, -1, -1), (-0.06, 1, 1)), Box("right", (0.06, -1, -1), (1.0, 1, 1))))
    filt = SafetyFilter.from_spec(spec, M.Slider(), DT, jacobian_lipschitz=0.0)
    dq = np.array([0.9])
    out, rep = filt.certify(FilterState(np.array([0.0]), dq), Nominal.joint([0.9]))
    assert rep.reason == "infeasible" and rep.braked and not rep.feasible
    assert rep.slack == math.inf  # no verified solver output
    assert 0.0 < rep.infeasibility < math.inf  # how far from feasible, computed on demand for the log
    np.testing.assert_array_equal(out, filt.brake(dq))
    assert out[0] == pytest.approx(0.8) and out[0] != 0.9 and np.all(np.isfinite(out))


class PerturbingSolver:
    """Solver hook: the real DAQP answer moved by ``delta`` (a solver returning a bad iterate)."""

    def __init__(self, delta: float) -> None:
        self.inner, self.delta = DaqpSolver(), delta

    def __call__(self, problem):
        res = self.inner(problem)
        return QPResult(x=res.x + self.delta, status=res.status, iterations=res.iterations)


def test_b4_max_iter_and_slack_brake() -> None:
    """B4: iteration limit reached -> 'max_iter'; an output violating a constraint by more than
    slack_tolerance -> 'slack'; both return the brake."""
    arm = M.PlanarArm()
    spec = M.arm_spec(arm)
    state = FilterState(np.array([-0.5, 1.0, 0.5]), np.array([0.1, 0.1, 0.1]))
    nominal = Nominal.joint([1.5, 1.5, 1.5])  # pushes into acceleration and speed bounds
    limited = SafetyFilter.from_spec(spec, arm, DT, solver=DaqpSolver(iter_limit=1))
    out, rep = limited.certify(state, nominal)
    assert rep.reason == "max_iter" and rep.braked
    np.testing.assert_array_equal(out, limited.brake(state.dq))
    sloppy = SafetyFilter.from_spec(spec, arm, DT, solver=PerturbingSolver(1e-3))
    out, rep = sloppy.certify(state, nominal)
    assert rep.reason == "slack" and rep.slack == pytest.approx(1e-3, rel=1e-3) and rep.braked
    nan_solver = SafetyFilter.from_spec(spec, arm, DT, solver=PerturbingSolver(math.nan))
    out, rep = nan_solver.certify(state, nominal)
    assert rep.reason == "nonfinite_output" and np.all(np.isfinite(out))


def test_b5_solver_exception_and_time_budget_brake() -> None:
    """B5: a solver that raises -> 'solver_error'; a solve over the time budget (a real DAQP solve
    against a 1 us budget, and a solver that sleeps) -> 'timeout'. Both brake in the same call."""
    arm = M.PlanarArm()
    state = FilterState(np.array([-0.5, 1.0, 0.5]), np.array([0.2, -0.1, 0.0]))
    nominal = Nominal.joint([0.4, 0.4, 0.4])

    def raising(problem):
        raise RuntimeError("solver crashed")

    def sleeping(problem):
        time.sleep(0.01)
        return DaqpSolver()(problem)

    cases = [(M.arm_spec(arm), raising, "solver_error"), (M.arm_spec(arm, time_budget_s=1e-6), None, "timeout"),
             (M.arm_spec(arm, time_budget_s=0.002), sleeping, "timeout")]
    for spec, solver, reason in cases:
        filt = SafetyFilter.from_spec(spec, arm, DT, solver=solver)
        out, rep = filt.certify(state, nominal)
        assert rep.reason == reason and rep.braked and not rep.feasible
        np.testing.assert_array_equal(out, filt.brake(state.dq))


def test_b6_start_outside_safe_set_recovers_or_brakes() -> None:
    """B6: the slider pushed past its joint limit / into a keep-out box: the command never moves it
    deeper; it recovers at bounded speed (within velocity and acceleration limits) or brakes."""
    filt = slider_filter()
    for q, dq in ((1.0005, 0.0), (1.02, 0.0), (1.0005, 0.05), (-1.001, 0.0)):
        out, rep = filt.certify(FilterState(np.array([q]), np.array([dq])), Nominal.joint([2.0 * np.sign(q)]))
        inward = -np.sign(q)
        if rep.feasible:
            assert inward * out[0] > 0 and abs(out[0]) <= 2.0 and abs(out[0] - dq) <= 0.1 + 1e-12
        else:
            assert rep.braked and out[0] == pytest.approx(dq - np.clip(dq, -0.1, 0.1))
    q, dq = np.array([1.05]), np.zeros(1)  # pushed 5 cm past the limit, at rest
    for _ in range(100):
        out, rep = filt.certify(FilterState(q, dq), Nominal.joint([2.0]))
        assert rep.feasible and out[0] < 0.0 and abs(out[0] - dq[0]) <= 0.1 + 1e-12  # back, ramped
        q, dq = q + out * DT, out
        if q[0] <= 1.0:
            break
    assert q[0] <= 1.0  # recovered into the range, not stuck braking


def test_b6_sphere_inside_keepout_moves_out() -> None:
    """B6 (Cartesian): an arm sphere pushed into the keep-out column while at rest is driven
    back out: every step's penetration is no deeper than the last and it leaves the box."""
    arm = M.PlanarArm()
    spec = M.arm_spec(arm, distance_margin=0.0)
    filt = SafetyFilter.from_spec(spec, arm, DT)
    column = spec.keepout[0]
    q, dq = np.array([0.75, -0.3, 0.0]), np.zeros(3)
    def depth(q):  # how far the deepest point is inside the column's nearest face (m)
        centers, radii, _ = arm.spheres(q)
        pts = np.vstack([arm.ee_pose(q)[0], centers])
        r = np.concatenate([[0.0], radii])
        faces = np.concatenate([pts - column.hi, column.lo - pts], axis=1).max(axis=1) - r
        return -faces.min()
    assert depth(q) > 0.005
    for _ in range(200):
        before = depth(q)
        out, rep = filt.certify(FilterState(q, dq), Nominal.joint([0.0, 0.0, 0.0]))
        assert rep.feasible and np.all(np.abs(out - dq) <= 8.0 * DT + 1e-12)
        q, dq = q + out * DT, out
        assert depth(q) <= before + 1e-9
    assert depth(q) < 0.0


class ZeroGradientModel(M.Slider):
    """A sphere that sits beyond the workspace's x face but can only move along y."""

    def spheres(self, q):
        jac = np.zeros((1, 3, 1))
        jac[0, 1, 0] = 1.0
        return np.array([[12.0, q[0], 0.0]]), np.array([0.05]), jac


class NanModel(M.Slider):
    """Returns a NaN Jacobian once ``broken`` is set (after the construction-time probe)."""

    broken = False

    def ee_jacobian(self, q):
        return np.full((6, 1), np.nan) if self.broken else super().ee_jacobian(q)


def test_b7_degenerate_geometry_brakes_without_nan() -> None:
    """B7: zero barrier gradient (no control authority over a violated barrier), a singular
    Jacobian for a twist nominal, and a model that returns NaN: finite brake, reason given."""
    zero = SafetyFilter.from_spec(M.slider_spec(), ZeroGradientModel(), DT, jacobian_lipschitz=0.0)
    out, rep = zero.certify(FilterState(np.zeros(1), np.array([0.3])), Nominal.joint([0.3]))
    assert rep.reason == "degenerate" and rep.braked and np.all(np.isfinite(out))
    arm = M.PlanarArm()
    filt = SafetyFilter.from_spec(M.arm_spec(arm), arm, DT)
    stretched = FilterState(np.zeros(3), np.zeros(3))
    out, rep = filt.certify(stretched, Nominal.twist([0.05, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert rep.reason == "degenerate" and rep.braked and np.all(out == 0.0)
    model = NanModel()
    nan = SafetyFilter.from_spec(M.slider_spec(), model, DT, jacobian_lipschitz=0.0)
    model.broken = True
    out, rep = nan.certify(FilterState(np.array([0.8]), np.array([0.1])), Nominal.joint([0.1]))
    assert rep.reason == "degenerate" and np.all(np.isfinite(out))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_brakes(bad: float) -> None:
    """A1 at the filter: NaN/Inf in q, dq, the nominal or an obstacle pose -> finite brake."""
    filt = slider_filter()
    ok = FilterState(np.zeros(1), np.array([0.5]))
    cup = Obstacle("cup", "fragile", (bad, 0.0, 0.0), (0.1, 0.1, 0.1), 0.2)
    cases = [(FilterState(np.array([bad]), np.array([0.5])), Nominal.joint([0.1])),
             (FilterState(np.zeros(1), np.array([bad])), Nominal.joint([0.1])),
             (ok, Nominal.joint([bad])),
             (FilterState(np.zeros(1), np.array([0.5]), obstacles=(cup,)), Nominal.joint([0.1]))]
    for state, nominal in cases:
        out, rep = filt.certify(state, nominal)
        assert rep.reason == "nonfinite_input" and rep.braked and np.all(np.isfinite(out))
        assert out[0] != nominal.value[0]


def test_wrong_shapes_raise_named_error() -> None:
    """A2 at the filter: wrong shapes are a typed error naming the joints, never partly applied."""
    filt = slider_filter()
    with pytest.raises(ValueError, match=r"nominal \(joint\).*slide"):
        filt.certify(FilterState(np.zeros(1), np.zeros(1)), Nominal.joint([0.1, 0.2]))
    with pytest.raises(ValueError, match="dq"):
        filt.certify(FilterState(np.zeros(1), np.zeros(2)), Nominal.joint([0.1]))
    with pytest.raises(ValueError, match="kind"):
        Nominal("torque", np.zeros(1))


def _bad_specs():
    s = M.slider_spec()
    joint = s.joints[0]
    yield "gamma", spec_with_filter(s, gamma=0.0)
    yield "gamma", spec_with_filter(s, gamma=1.5)
    yield "velocity", replace(s, joints=(replace(joint, velocity=-1.0),))
    yield "acceleration", replace(s, joints=(replace(joint, acceleration=0.0),))
    yield "position", replace(s, joints=(replace(joint, lower=1.0, upper=1.0),))
    yield "workspace", replace(s, workspace=Box("workspace", (0.0, 0.0, 0.0), (1.0, 0.0, 1.0)))
    yield "ee_speed_max", replace(s, ee_speed_max=0.0)
    yield "time_budget_s", spec_with_filter(s, time_budget_s=-1.0)
    yield "joint_names", replace(s, joints=(replace(joint, name="other"),))
    yield "joint_names", replace(s, joints=(joint, JointLimit("extra", -1, 1, 1, 1)))


@pytest.mark.parametrize("field,spec", list(_bad_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_b8_bad_configuration_refused(field: str, spec) -> None:
    """B8: an invalid spec or a robot whose joints differ from the spec's refuses to start."""
    with pytest.raises(FilterConfigError, match=field):
        SafetyFilter.from_spec(spec, M.Slider(), DT)


@pytest.mark.parametrize("dt", [0.0, -0.01, math.nan, math.inf])
def test_b8_bad_period_refused(dt: float) -> None:
    """B8: a control period that is not a finite positive number refuses to start."""
    with pytest.raises(FilterConfigError, match="dt"):
        SafetyFilter.from_spec(M.slider_spec(), M.Slider(), dt)


class WrongShapeModel(M.Slider):
    def spheres(self, q):
        centers, radii, jac = super().spheres(q)
        return centers, radii, jac[:, :2]  # a (m, 2, n) Jacobian: not a position Jacobian


def test_b8_broken_robot_model_refused() -> None:
    """B8: a robot model with wrong output shapes, or non-finite output, refuses to start."""
    with pytest.raises(FilterConfigError, match="shapes"):
        SafetyFilter.from_spec(M.slider_spec(), WrongShapeModel(), DT)
    broken = NanModel()
    broken.broken = True
    with pytest.raises(FilterConfigError, match="non-finite"):
        SafetyFilter.from_spec(M.slider_spec(), broken, DT)


def test_a5_nyquist_chatter_is_rate_limited_and_counted() -> None:
    """A5: a nominal that flips sign every period at full speed (chatter at Nyquist). The
    acceleration bound limits each period's change to a * dt, so the executed velocity stays in
    a band of width a * dt around zero instead of resonating at +-2 rad/s; every period is a
    correction that the intervention count sees."""
    filt = slider_filter()
    q, dq = np.array([0.0]), np.array([0.0])
    outputs, interventions = [], 0
    for k in range(200):
        u, rep = filt.certify(FilterState(q, dq), Nominal.joint([2.0 if k % 2 == 0 else -2.0]))
        assert rep.feasible and not rep.braked
        assert abs(u[0] - dq[0]) <= 10.0 * DT + 1e-9  # |du| <= a * dt
        interventions += rep.correction_norm > 1e-6
        outputs.append(u[0])
        q, dq = q + u * DT, u
    assert max(abs(v) for v in outputs) <= 10.0 * DT + 1e-9  # never more than one period's change
    # no growing oscillation: the mean velocity stays within half a period's change (the band's
    # midpoint; which side it sits on depends on the chatter's first sign)
    assert abs(np.mean(outputs)) <= 10.0 * DT / 2 + 1e-9
    assert interventions == 200


def _delayed_noisy_run(noise: float, delay: float, eps: float = 0.002, steps: int = 400) -> tuple[float, int]:
    """The slider driven at full speed into its upper limit (0.5 rad) and back, as on a real bus:
    the filter sees the position with a bounded measurement error of up to ``eps`` and its command
    acts one period late (the in-flight command moves the joint meanwhile). Returns the largest
    TRUE position and the number of periods the true state violated the limit (counted, not
    clipped)."""
    filt = SafetyFilter.from_spec(M.slider_spec(hi=0.5, position_noise_rad=noise, state_delay_s=delay),
                                  M.Slider(), DT, jacobian_lipschitz=0.0)
    rng = np.random.default_rng(0)
    q, v, worst, violations = -0.5, 0.0, -math.inf, 0
    for k in range(steps):
        measured = np.array([q + rng.uniform(-eps, eps)])
        u, _ = filt.certify(FilterState(measured, np.array([v])), Nominal.joint([2.0 if k < 300 else -2.0]))
        q, v = q + v * DT, float(u[0])  # this period runs the command sent one period ago
        worst, violations = max(worst, q), violations + (q > 0.5)
    return worst, violations


def test_b9_state_noise_and_delay_margins_keep_the_true_state_safe(caplog) -> None:
    """B9: with 2 mm of measurement error and one period of delay, a filter that trusts the
    measured state lets the true joint overshoot its limit (the violations are counted); with
    the spec's margins set to those measured levels the true trajectory keeps h >= 0."""
    worst, violations = _delayed_noisy_run(noise=0.0, delay=0.0)
    assert violations > 0 and worst > 0.5 + 1e-3  # the scenario is real without margins
    worst, violations = _delayed_noisy_run(noise=0.002, delay=DT)
    assert violations == 0 and worst <= 0.5


def test_b9_margins_tighten_joint_and_cartesian_rows_by_the_unseen_motion() -> None:
    """The joint bound shrinks by exactly the unseen motion noise + |dq| delay + a delay^2 / 2, and
    a Cartesian row's right-hand side by the same motion mapped through the point Jacobian."""
    q, dq = np.array([0.3]), np.array([1.0])
    plain = slider_filter(hi=0.5)
    tight = SafetyFilter.from_spec(M.slider_spec(hi=0.5, position_noise_rad=0.001, state_delay_s=0.02),
                                   M.Slider(), DT, jacobian_lipschitz=0.0)
    a_plain, a_tight = plain.build(FilterState(q, dq), Nominal.joint([0.0])), \
        tight.build(FilterState(q, dq), Nominal.joint([0.0]))
    unseen = 0.001 + 1.0 * 0.02 + 0.5 * 10.0 * 0.02**2
    lam = 0.5 / DT
    assert a_plain.highs[2, 0] - a_tight.highs[2, 0] == pytest.approx(lam * unseen)  # position barrier row
    # Cartesian rows: the motion mapped through each point's Jacobian column norms, the worst point
    jac = np.array([[[1.0], [0.0], [0.0]], [[0.0], [2.0], [0.0]]])  # (P=2, 3, n=1)
    assert rows.state_margin(jac, np.array([unseen])) == pytest.approx(2.0 * unseen)
    assert rows.state_margin(jac, None) == 0.0
    assert np.all(a_tight.qp.b <= a_plain.qp.b + 1e-12) and np.any(a_tight.qp.b < a_plain.qp.b - 1e-9)
    with pytest.raises(FilterConfigError, match="state_delay_s"):
        SafetyFilter.from_spec(M.slider_spec(state_delay_s=-0.01), M.Slider(), DT)
