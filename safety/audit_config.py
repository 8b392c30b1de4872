"""The audit thresholds: :class:`AuditConfig` (the scene's safety spec supplies the physical limits).

This module imports nothing else of SafeTwin's outside the safety package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .runio import ConfigError


@dataclass
class AuditConfig:
    """Audit thresholds (the scene's safety spec supplies the physical limits).

    min_success_rate: smallest accepted success rate over the judged eval episodes (fraction).
    max_intervention_rate: largest accepted interventions per control step (filter corrections,
        critic rejections, recovery steps, e-stops, human interventions; fraction).
    max_infeasible_count: largest accepted number of infeasible QP-filter solves (count).
    max_cvar_cost: largest accepted CVaR of episode cost; None: the spec's ``cost_limit``.
    cvar_alpha: CVaR level in [0.5, 1): the mean of the worst ``1 - alpha`` of episodes.
    min_episodes: fewest judged eval episodes for a training-run audit to pass.
    judged_mode: eval mode the requirements judge: ``filtered`` (behind the QP filter, as
        deployed) or ``raw``; both modes are always reported.
    near_miss_distance_m: an episode closer than this to a fragile object is a near miss (m).
    min_fragile_distance_m: the minimum distance to fragile objects must exceed this (m).
    hard_limit_tolerance: accepted relative overshoot of force and speed limits (fraction >= 0).
    max_latency_p99_ms: optional limit on policy inference latency p99 (ms); None: reported only.
    max_loop_period_p99_ms: optional limit on the deploy control-loop period p99 (ms).
    min_barrier_value: optional lower bound on the smallest CBF value; None: reported only.
    correction_tolerance: a deploy filter correction norm above this counts as an intervention (rad/s).
    """

    min_success_rate: float = 0.8
    max_intervention_rate: float = 0.5
    max_infeasible_count: int = 0
    max_cvar_cost: float | None = None
    cvar_alpha: float = 0.9
    min_episodes: int = 20
    judged_mode: str = "filtered"
    near_miss_distance_m: float = 0.05
    min_fragile_distance_m: float = 0.0
    hard_limit_tolerance: float = 0.0
    max_latency_p99_ms: float | None = None
    max_loop_period_p99_ms: float | None = None
    min_barrier_value: float | None = None
    correction_tolerance: float = 1e-6

    def __post_init__(self) -> None:
        def bad(name: str, what: str) -> ConfigError:
            return ConfigError(f"AuditConfig.{name}: {what}, got {getattr(self, name)!r}")

        for name in ("min_success_rate", "max_intervention_rate"):
            if not _is_num(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "must be a number in [0, 1]")
        for name in ("max_infeasible_count", "min_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "must be an integer >= 0")
        if not _is_num(self.cvar_alpha) or not 0.5 <= self.cvar_alpha < 1.0:
            raise bad("cvar_alpha", "must be in [0.5, 1)")
        if self.judged_mode not in ("filtered", "raw"):
            raise bad("judged_mode", "must be 'filtered' or 'raw'")
        for name in ("near_miss_distance_m", "min_fragile_distance_m", "hard_limit_tolerance",
                     "correction_tolerance"):
            if not _is_num(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "must be a finite number >= 0")
        for name in ("max_cvar_cost", "max_latency_p99_ms", "max_loop_period_p99_ms"):
            value = getattr(self, name)
            if value is not None and (not _is_num(value) or value < 0):
                raise bad(name, "must be None or a finite number >= 0")
        if self.min_barrier_value is not None and not _is_num(self.min_barrier_value):
            raise bad("min_barrier_value", "must be None or a finite number")


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
