"""Lagrange multiplier rules: sign of the update, projection onto lambda >= 0, PID response."""

from __future__ import annotations

import math

import pytest

from safetwin.train.lagrange import LagrangeAdam, PIDLagrange, make_lagrange


def test_adam_rises_when_violated_and_falls_when_satisfied() -> None:
    lag = LagrangeAdam(cost_limit=5.0)
    assert lag.value == pytest.approx(0.001)
    up = [lag.update(10.0) for _ in range(5)]
    assert all(b > a for a, b in zip([0.001, *up], up, strict=False))
    assert up[0] == pytest.approx(0.001 + 0.035, rel=1e-3)  # first Adam step has size lr
    down = [lag.update(0.0) for _ in range(30)]  # Adam momentum first carries it a little further
    assert down[10] < down[9] < max(down)
    assert down[-1] == 0.0  # projected at zero, never negative


def test_adam_projects_onto_nonnegative() -> None:
    lag = LagrangeAdam(cost_limit=5.0, init=0.01)
    values = [lag.update(0.0) for _ in range(20)]
    assert min(values) == 0.0 and values[-1] == 0.0
    assert all(v >= 0.0 for v in values)


def test_adam_state_roundtrip_continues_identically() -> None:
    a = LagrangeAdam(cost_limit=1.0)
    for c in (3.0, 2.0, 0.5):
        a.update(c)
    b = LagrangeAdam(cost_limit=1.0)
    b.load_state_dict(a.state_dict())
    assert [a.update(c) for c in (4.0, 0.0)] == pytest.approx([b.update(c) for c in (4.0, 0.0)])


def test_pid_response_hand_computed() -> None:
    pid = PIDLagrange(cost_limit=5.0, kp=0.1, ki=0.01, kd=0.01, d_delay=2, init=0.0)
    lam1 = pid.update(15.0)
    # error 10: I = 0.1, EMA(error) = 0.5, EMA(cost) = 0.75, derivative 0.75 - 0
    assert lam1 == pytest.approx(0.1 * 0.5 + 0.1 + 0.01 * 0.75)
    lam2 = pid.update(15.0)
    assert lam2 > lam1  # persistent violation: integral and proportional terms grow


def test_pid_integral_antiwindup_and_clamp() -> None:
    pid = PIDLagrange(cost_limit=5.0, init=0.0)
    assert all(pid.update(0.0) == 0.0 for _ in range(5))  # satisfied from the start: stays 0
    capped = PIDLagrange(cost_limit=0.0, ki=10.0, lambda_max=2.0)
    assert capped.update(100.0) == 2.0


def test_pid_state_roundtrip() -> None:
    a = PIDLagrange(cost_limit=1.0)
    for c in (3.0, 2.0):
        a.update(c)
    b = PIDLagrange(cost_limit=1.0)
    b.load_state_dict(a.state_dict())
    assert a.update(5.0) == pytest.approx(b.update(5.0))


def test_selectable_by_name_and_bad_input() -> None:
    assert isinstance(make_lagrange("adam", 1.0), LagrangeAdam)
    assert isinstance(make_lagrange("pid", 1.0), PIDLagrange)
    with pytest.raises(ValueError, match="unknown lagrange rule"):
        make_lagrange("sgd", 1.0)
    with pytest.raises(ValueError, match="finite"):
        LagrangeAdam(1.0).update(math.nan)
