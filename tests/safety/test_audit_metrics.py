"""Audit metrics: CVaR, percentiles, telemetry sequence gaps (F2), episode and telemetry aggregates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safetwin.safety.audit_metrics import (
    cvar,
    episode_metrics,
    joint_violations,
    percentiles,
    sequence_gaps,
    telemetry_metrics,
)


def test_cvar_is_the_mean_of_the_worst_tail() -> None:
    costs = [float(v) for v in range(1, 21)]  # 20 episodes: the worst 10 % are 19 and 20
    assert cvar(costs, 0.9) == pytest.approx(19.5)
    assert cvar(costs, 0.5) == pytest.approx(np.mean(range(11, 21)))
    # (1 - alpha) * n = 0.4 episodes: only the worst one is in the tail
    assert cvar([0.0, 1.0, 2.0, 10.0], 0.9) == pytest.approx(10.0)


def test_cvar_of_a_nan_cost_is_infinite_not_hidden() -> None:
    assert math.isinf(cvar([0.0, float("nan"), 1.0], 0.9))
    with pytest.raises(ValueError, match="empty"):
        cvar([], 0.9)
    with pytest.raises(ValueError, match="alpha"):
        cvar([1.0], 1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=60), st.floats(0.5, 0.99))
def test_cvar_lies_between_mean_and_max(values: list[float], alpha: float) -> None:
    c = cvar(values, alpha)
    assert np.mean(values) - 1e-9 <= c <= max(values) + 1e-9


def test_percentiles_and_empty_sample() -> None:
    stats = percentiles([float(v) for v in range(101)])
    assert stats["p50"] == pytest.approx(50.0) and stats["p99"] == pytest.approx(99.0)
    assert stats["max"] == 100.0 and stats["n"] == 101
    assert percentiles([]) == {"p50": None, "p99": None, "max": None, "mean": None, "n": 0}


def test_f2_sequence_gaps_name_the_missing_range() -> None:
    """F2: every gap in the telemetry sequence is found with its position and size."""
    assert sequence_gaps([0, 1, 2, 3]) == []
    gaps = sequence_gaps([0, 1, 4, 5, 5, 3, 4])
    assert gaps[0] == {"after": 1, "before": 4, "missing": 2, "kind": "gap"}
    assert gaps[1]["kind"] == "repeat" and gaps[2]["kind"] == "backwards"
    assert len(gaps) == 3


def _episode(i: int, **kw) -> dict:
    rec = {"mode": "filtered", "episode": i, "seed": i, "success": i % 2 == 0, "return": float(i),
           "cost": float(i % 3), "costs": {"collision": float(i % 3), "keepout": 0.0}, "length": 10 + i,
           "min_fragile_distance": 0.1 - 0.01 * i, "filter_interventions": i, "filter_infeasible": 0,
           "min_barrier": 0.5 - 0.1 * i, "max_ee_speed": 0.1 * i, "max_contact_force": float(i),
           "inference_latency_ms": [5.0, 6.0]}
    rec.update(kw)
    return rec


def test_episode_metrics_match_hand_computation() -> None:
    eps = [_episode(i) for i in range(4)]  # lengths 10..13, interventions 0..3
    eps[1]["critic_rejections"] = 4
    m = episode_metrics(eps, near_miss_m=0.085, cvar_alpha=0.9, dt_s=0.1)
    assert m["success_rate"] == 0.5
    assert m["average_return"] == pytest.approx(1.5)
    assert m["safety_cost"]["mean"] == pytest.approx(3 / 4)
    assert m["safety_cost"]["per_category_total"] == {"collision": 3.0, "keepout": 0.0}
    # (0+1+2+3 filter corrections + 4 critic rejections) / (10+11+12+13 steps)
    assert m["intervention_rate"] == pytest.approx(10 / 46)
    assert m["interventions"]["logged"] == ["filter_interventions", "critic_rejections"]
    assert m["near_misses"]["episodes_below_threshold"] == 2  # 0.08 and 0.07 m
    assert m["near_misses"]["min_fragile_distance_m"] == pytest.approx(0.07)
    assert m["min_barrier"] == pytest.approx(0.2)
    assert m["cycle_time"]["mean_steps"] == pytest.approx(11.0)  # successful: 10 and 12 steps
    assert m["cycle_time"]["mean_s"] == pytest.approx(1.1)
    assert m["inference_latency_ms"]["n"] == 8


def _tel(seq: int, **kw) -> dict:
    rec = {"seq": seq, "t_mono": seq * 0.01, "q": [0.0, 0.0], "dq": [0.1, -0.1], "nominal": [0.1, -0.1],
           "filtered": [0.1, -0.1], "sent": [0.1, -0.1], "period_ms": 10.0,
           "filter": {"feasible": True, "correction_norm": 0.0, "min_barrier": 0.3, "braked": False},
           "faults": []}
    rec.update(kw)
    return rec


def test_telemetry_metrics_count_interventions_faults_and_non_finite() -> None:
    """A1/B3/C3 evidence in telemetry: non-finite values, infeasible solves, CRC faults by type."""
    recs = [_tel(k) for k in range(10)]
    recs[2]["filter"] = {"feasible": False, "correction_norm": 0.0, "braked": True, "min_barrier": -0.01}
    recs[3]["filter"] = {"feasible": True, "correction_norm": 0.2}
    recs[4]["faults"] = [{"type": "crc"}, "read_failed"]
    recs[5]["faults"] = [{"type": "crc"}, "filter:infeasible", "filter:slack"]
    recs[6]["nominal"] = [float("nan"), 0.0]
    recs[7]["sent"] = None  # held period
    m = telemetry_metrics(recs, correction_tol=1e-6)
    assert m["interventions"]["filter"] == 2 and m["filter_infeasible"] == 1
    assert m["intervention_rate"] == pytest.approx(0.2)
    assert m["faults_by_type"] == {"crc": 2, "filter": 2, "read_failed": 1}
    assert m["non_finite_records"] == 1 and m["interventions"]["held_periods"] == 1
    assert m["min_barrier"] == pytest.approx(-0.01)
    assert m["sequence"]["gap_count"] == 0
    assert m["duration_s"] == pytest.approx(0.09)


def test_joint_violations_use_the_spec_limits() -> None:
    """A3/A4: measured positions and speeds outside the spec's limits are counted."""
    recs = [_tel(0), _tel(1, q=[1.2, 0.0]), _tel(2, dq=[0.0, -2.5])]
    out = joint_violations(recs, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([2.0, 2.0]), 0.0)
    assert out["position_violations"] == 1 and out["velocity_violations"] == 1
    assert out["worst_position_excess_rad"] == pytest.approx(0.2)
    assert out["worst_velocity_excess_rad_s"] == pytest.approx(0.5)
    tolerant = joint_violations(recs, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([2.0, 2.0]), 0.3)
    assert tolerant["position_violations"] == 0 and tolerant["velocity_violations"] == 0
