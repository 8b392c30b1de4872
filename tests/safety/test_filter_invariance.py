"""B2 adversarial invariance: random and barrier-seeking nominals from random safe states,
one step of the true kinematics per certified command, no hard constraint broken.

Runs on the analytic test arms always, and on the twin's bundled 6-DoF arm and the Panda when
``safetwin.twin.kinematics`` is installed. The 100,000-step runs are marked slow.
"""

from __future__ import annotations

import filter_models as M  # tests/safety is on pytest's pythonpath
import numpy as np
import pytest

from safetwin.safety.filter import FilterState, Nominal, SafetyFilter, spec_with_filter
from safetwin.safety.filter_check import adversarial_run, barrier_values, random_safe_state, step_violations
from safetwin.safety.spec import Box, FilterParams, JointLimit, Obstacle, SafetySpec

DT = 0.01


def analytic_filter(name: str) -> SafetyFilter:
    if name == "planar":
        arm = M.PlanarArm()
        return SafetyFilter.from_spec(M.arm_spec(arm), arm, DT)
    arm = M.SpatialArm()
    return SafetyFilter.from_spec(M.spatial_spec(arm), arm, DT)


def twin_filter(robot: str) -> SafetyFilter:
    """The filter on a twin robot model with its scene's spec (skips until the twin lands)."""
    kin = pytest.importorskip("safetwin.twin.kinematics", reason="twin kinematics not installed yet", exc_type=ImportError)
    scene_mod = pytest.importorskip("safetwin.twin.scene", reason="twin scenes not installed yet", exc_type=ImportError)
    scene = scene_mod.load_scene("tabletop_push")
    if robot == "bundled":
        spec = spec_with_filter(scene.safety, time_budget_s=1.0)  # B2 checks the QP, not the VM's scheduler
        return SafetyFilter.from_spec(spec, kin.Kinematics.for_scene(scene), DT)
    robots = pytest.importorskip("safetwin.twin.assets.robots", reason="robot data not installed yet",
                                 exc_type=ImportError)
    data = robots.load_robot_data("panda")
    fixed = {name: data.gripper.open for name in data.gripper.joints}
    model = kin.Kinematics(data.model(), data.joint_names, data.ee_link, data.link_primitives, fixed)
    return SafetyFilter.from_spec(panda_spec(data), model, DT)


PANDA_ACCELERATION = (15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0)
"""rad/s^2, Franka Emika Panda joint acceleration limits
(https://frankaemika.github.io/docs/control_parameters.html)."""


def panda_spec(data) -> SafetySpec:
    """A table-top spec for the Panda: URDF position/velocity limits (2 % inside), the datasheet's
    accelerations, a workspace above the table, a keep-out box and a fragile glass."""
    model = data.model()
    joints = []
    for name, acc in zip(data.joint_names, PANDA_ACCELERATION, strict=True):
        j = model.joints[name]
        pad = 0.02 * (j.upper - j.lower)
        joints.append(JointLimit(name, j.lower + pad, j.upper - pad, j.velocity, acc))
    return SafetySpec(joints=tuple(joints), workspace=Box("workspace", (-0.9, -0.9, -0.05), (0.9, 0.9, 1.3)),
                      keepout=(Box("shelf", (0.55, -0.2, 0.0), (0.75, 0.2, 0.3)),),
                      obstacles=(Obstacle("glass", "fragile", (0.45, 0.3, 0.06), (0.03, 0.03, 0.06), 0.07),),
                      ee_speed_max=0.25, contact_force_max=20.0, cost_limit=2.0,
                      filter=FilterParams(time_budget_s=1.0))


def assert_b2(filt: SafetyFilter, steps: int, seed: int) -> None:
    stats = adversarial_run(filt, steps, seed=seed)
    assert stats.trials == steps
    assert stats.violations == 0, stats.examples
    assert stats.feasible >= 0.97 * steps, stats.brakes  # it solves; braking stays rare
    assert set(stats.brakes) <= {"infeasible"}, stats.brakes
    # Feasible outputs never go deeper than the nominal (violations == 0 implies it). The brake
    # (dq - clip(dq, +-a dt), mandated on infeasibility) can, while it decelerates; keep it rare.
    assert stats.deeper <= max(2, steps // 1000), stats.deeper


@pytest.mark.parametrize("arm", ["planar", "spatial"])
def test_b2_adversarial_invariance_analytic_arms(arm: str) -> None:
    """B2: 2,000 random/barrier-seeking nominals in rollouts from random safe states: every
    feasible output keeps h(x+) >= (1 - gamma) h(x) - 1e-6 for every barrier, and the joint
    velocity, acceleration and end-effector speed limits (true kinematics, one step)."""
    assert_b2(analytic_filter(arm), 2000 if arm == "planar" else 1200, seed=7)


@pytest.mark.parametrize("robot", ["bundled", "panda"])
def test_b2_adversarial_invariance_twin_arms(robot: str) -> None:
    """B2 on the twin's bundled 6-DoF arm and the Panda under joint-state randomization."""
    assert_b2(twin_filter(robot), 1500, seed=3)


def test_b2_output_never_deeper_than_nominal_when_feasible() -> None:
    """B2: whenever the filter solves, its one-step barrier values are never below the
    nominal's where the nominal's already break the barrier condition."""
    filt = analytic_filter("spatial")
    rng = np.random.default_rng(1)
    spec, model = filt.spec, filt.robot
    checked = 0
    for _ in range(300):
        q, dq = random_safe_state(spec, model, rng)
        nominal = rng.uniform(-2.0, 2.0, len(q)) * 2.0
        u, rep = filt.certify(FilterState(q, dq), Nominal.joint(nominal))
        if not rep.feasible:
            continue
        checked += 1
        h0 = barrier_values(spec, model, q)
        hu, hn = barrier_values(spec, model, q + u * DT), barrier_values(spec, model, q + nominal * DT)
        for name in h0:
            broken = hn[name] < (1 - spec.filter.gamma) * h0[name]
            assert np.all(hu[name][broken] >= np.minimum(hn[name][broken], 0.0) - 1e-9), name
        assert not step_violations(spec, model, q, dq, u, DT)
    assert checked > 250


@pytest.mark.slow
@pytest.mark.parametrize("which", ["spatial", "bundled", "panda"])
def test_b2_adversarial_invariance_100k(which: str) -> None:
    """B2 at scale: 100,000 adversarial steps, zero violations."""
    filt = analytic_filter(which) if which == "spatial" else twin_filter(which)
    assert_b2(filt, 100_000, seed=11)
